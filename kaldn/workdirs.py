"""Temporary folders owned by one process: ``<base>/<pid>-<token>``, removed at exit; leftovers of dead ones swept.

Several app instances may share a temporary directory (a Space restarts, two local runs): each works in
a root of its own, so one never prunes another's files, and a new instance removes what a killed one left
behind (half-written ``*.tmp`` checkpoint files included), but never a folder of a process still alive.
:func:`delete_expired_files` safely empties a set of temporary files that requests keep adding to (Gradio's
cache), and :func:`delete_abandoned_uploads` the parts of uploads that never finished.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger("kaldn.workdirs")

__all__ = ["delete_abandoned_uploads", "delete_expired_files", "instance_root", "sweep_dead_instances"]

_ROOT_NAME = re.compile(r"^(\d+)-[0-9a-f]{8}$")
_PARTIAL_UPLOAD = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile.NamedTemporaryFile's names, no suffix
_roots: dict[str, Path] = {}
_lock = threading.Lock()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_dead_instances(base: str | Path) -> list[Path]:
    """Remove every ``<pid>-<token>`` folder under ``base`` whose process is gone; the removed folders."""
    base = Path(base)
    removed = []
    if not base.is_dir():
        return removed
    for path in base.iterdir():
        match = _ROOT_NAME.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d folder(s) left by stopped instances under %s", len(removed), base)
    return removed


def instance_root(base: str | Path) -> Path:
    """This process's own folder under ``base`` (created once; leftovers of dead processes swept first);
    removed when the process exits normally."""
    base = Path(base)
    key = str(base.resolve()) if base.exists() else str(base)
    with _lock:
        root = _roots.get(key)
        if root is not None and root.is_dir():
            return root
        base.mkdir(parents=True, exist_ok=True)
        sweep_dead_instances(base)
        root = base / f"{os.getpid()}-{secrets.token_hex(4)}"
        root.mkdir()
        _roots[key] = root
        atexit.register(shutil.rmtree, root, True)
        return root


def _delete_if_old(path: str, max_age_s: float) -> bool | None:
    """Delete the regular file (or link) ``path`` if its ctime is over ``max_age_s`` ago. True: deleted; False:
    too young; None: gone, no regular file (never deleted) or not deletable (logged)."""
    try:
        info = os.lstat(path)
        if time.time() - info.st_ctime <= max_age_s:
            return False
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            return None
        os.remove(path)
        return True
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # unreadable, or a NUL in the name
        log.warning("cannot delete the cached file %r: %s", path[:200], exc)
        return None


def delete_expired_files(paths: set[str], max_age_s: float, keep: Collection[str] = ()) -> int:
    """Delete the files named in ``paths`` that are older than ``max_age_s`` (by ctime) and forget them, and forget
    those already gone or that are no regular file (never deleted); ``keep`` stays. Returns how many were deleted.

    Other threads may add to ``paths`` meanwhile: it walks a copy and never raises. Gradio's own sweep walks the
    live set, so an upload arriving during it ("Set changed size during iteration"), or one folder named in it,
    ended the sweeping for good, and uploads then filled the disk.
    """
    deleted = 0
    for path in list(paths):  # one atomic copy
        if path not in keep and (outcome := _delete_if_old(path, max_age_s)) is not False:
            deleted += bool(outcome)
            paths.discard(path)
    return deleted


def delete_abandoned_uploads(folder: str | Path, max_age_s: float) -> int:
    """Delete the files directly in Gradio's upload ``folder`` named as its parser names an arriving upload
    (``tempfile``'s ``tmpXXXXXXXX``) and untouched for ``max_age_s``: the parts of uploads that never finished
    (refused while arriving, or the client went away), which the parser keeps on disk and in no file set. A
    finished upload lives in a subfolder; the folder may be shared, and another app's upload stalled that long
    is deleted too, nothing else of it."""
    try:
        names = [e.path for e in os.scandir(folder) if _PARTIAL_UPLOAD.fullmatch(e.name)]
    except OSError:  # no uploads yet
        return 0
    return sum(bool(_delete_if_old(path, max_age_s)) for path in names)
