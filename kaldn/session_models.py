"""The models one app session added, fine-tuned or uploaded: visible to that session alone.

A session's models live in its own folders and are listed by key (``ft-3``, ``up-4``), never by path, so a
client names them without learning, or choosing, anything on the server. :func:`import_checkpoint` turns an
uploaded checkpoint file into one: size-checked, converted by :func:`kaldn.convert.convert_isolated` in a
child process with capped memory and time, then registered for its owner.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .admission import EndedSessions
from .checkpoint import CONFIG_NAME, read_config
from .convert import ConversionError, convert_isolated, published_architectures
from .errors import BusyError, UserError, quoted
from .models import changed_options, check_scale, model_label, parse_model_name

__all__ = ["CHECKPOINT_SUFFIXES", "FINE_TUNED", "UPLOADED", "SessionModel", "SessionModels", "import_checkpoint",
           "is_session_key"]

FINE_TUNED, UPLOADED = "Fine-tuned", "Uploaded"
KEY_PREFIX = {FINE_TUNED: "ft", UPLOADED: "up"}

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
AUTO_ARCH = "auto"  # the file's own metadata names the model (kaldn .safetensors)
MAX_CONFIG_BYTES = 64 << 10  # a converted folder's config.json; the converter writes ~2 KB


def is_session_key(key: str) -> bool:
    """Whether ``key`` has the form of a session model's key (``ft-3``, ``up-1``), whoever holds it now."""
    prefix, _, number = str(key).partition("-")
    return prefix in KEY_PREFIX.values() and number.isdigit()


@dataclass
class SessionModel:
    key: str                        # what clients use to name it
    path: Path                      # checkpoint directory (model.safetensors + config.json), server-side only
    model: str                      # model name, e.g. tiny-kdsconv-det-x4
    label: str
    info: dict = field(default_factory=dict)
    owner: str | None = None        # the session that made it: only that session sees it (None: everyone)
    client: str | None = None       # the address that made it (admission.client_key), None where unknown
    kind: str = FINE_TUNED
    last_used: float = field(default_factory=time.monotonic)

    @property
    def third_party(self) -> bool:
        """Weights from someone else's release (not to be trained further or shipped from here): marked so by the
        converter, or an uploaded peer architecture, whose file may say anything about its origin."""
        return self.info.get("origin") == "third-party" or (
            self.kind == UPLOADED and parse_model_name(self.model).backbone is None)


_FULL = "The server holds as many session models as it can; try again when other sessions have ended."


def _client_full(cap: int) -> str:
    return (f"Your address already holds {cap} added or fine-tuned models (from other tabs or clients, or others on "
            "your network): end one of those sessions (close its page) or wait for them to expire, then try again.")


class SessionModels:
    """Fine-tuned and uploaded models of this process, newest last.

    Every model has an owner (the app's session); :meth:`for_owner` is what one session may see and use,
    and :meth:`end_owner` forgets (and deletes) a session's models when it ends. Beyond ``cap`` models of
    one owner, that owner's oldest is forgotten (and deleted); one owner never evicts another's. Beyond
    ``total_cap`` models in all, a new one is refused until sessions end; beyond ``client_cap`` models of one
    client address (over its sessions), that address's new one is refused, so one client with many sessions
    cannot take every place. A model unused for ``max_idle_s`` is forgotten too: a client that never opens the
    page's heartbeat never "ends" its session.
    """

    def __init__(self, cap: int = 8, total_cap: int = 64, max_idle_s: float = 3600,
                 on_forget: Callable[[str], None] | None = None, client_cap: int | None = None) -> None:
        self.cap = cap
        self.total_cap = total_cap
        self.client_cap = max(1, total_cap // 4) if client_cap is None else client_cap  # 0: no per-address bound
        self.max_idle_s = max_idle_s
        self.on_forget = on_forget  # told each forgotten model's path, so a model cache drops it too
        self._items: OrderedDict[str, SessionModel] = OrderedDict()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._ended = EndedSessions(keep_s=max_idle_s)

    def add(self, path: str | Path, model: str, info: dict | None = None,
            delete_dir: str | Path | None = None, owner: str | None = None, kind: str = FINE_TUNED,
            since: float | None = None, client: str | None = None) -> SessionModel:
        """Keep a model for ``owner``; refused (``delete_dir`` deleted) when the owner's session ended after
        ``since``, the ``time.monotonic()`` its making started."""
        self.expire()
        with self._lock:
            ended = self._ended.ended(owner, since)  # its page closed while this was made: nobody will use it
            if not ended:
                mine = [k for k, e in self._items.items() if e.owner == owner]
                refusal = self._refusal(owner, client)
                if refusal:
                    raise BusyError(refusal)
                n = next(self._counter)
                key = f"{KEY_PREFIX[kind]}-{n}"
                spec = parse_model_name(model)
                iters = (info or {}).get("iterations")
                details = [f"{model_label(spec.name)} x{spec.scale}",
                           *(f"{k} {v}" for k, v in ((info or {}).get("options") or {}).items()),
                           *([f"{iters} it"] if iters else [])]
                label = f"{kind} #{n} ({', '.join(details)})"
                entry = SessionModel(key, Path(path), model, label, dict(info or {}, delete_dir=delete_dir), owner,
                                     client, kind)
                self._items[key] = entry
                # This owner's oldest, beyond its cap; deleted after the lock (deleting a folder takes a while).
                evicted = [self._items.pop(k) for k in mine[:max(0, len(mine) + 1 - self.cap)]]
        if ended:
            if delete_dir:
                shutil.rmtree(delete_dir, ignore_errors=True)
            raise UserError("This page's session has ended: reload the page to start a new one.")
        for old in evicted:
            self._delete(old)
        return entry

    def _delete(self, entry: SessionModel) -> None:
        if self.on_forget is not None:
            self.on_forget(str(entry.path))
        victim = entry.info.get("delete_dir")
        if victim:
            shutil.rmtree(victim, ignore_errors=True)

    def has_room(self, owner: str | None, client: str | None = None) -> bool:
        """Whether :meth:`add` for ``owner`` (from ``client``) would succeed now (asked before costly work)."""
        return self._refusal_now(owner, client) is None

    def require_room(self, owner: str | None, client: str | None = None) -> None:
        """:meth:`has_room`, or the :class:`BusyError` :meth:`add` would raise."""
        refusal = self._refusal_now(owner, client)
        if refusal:
            raise BusyError(refusal)

    def _refusal_now(self, owner: str | None, client: str | None) -> str | None:
        self.expire()
        with self._lock:
            return self._refusal(owner, client)

    def _refusal(self, owner: str | None, client: str | None) -> str | None:
        """Why a new model of ``owner`` from ``client`` cannot be kept now; None when it can. (Under the lock.)"""
        mine = [e for e in self._items.values() if e.owner == owner]
        # An owner at its cap replaces its oldest model, so that one does not count against the bounds.
        replaced = mine[0] if len(mine) >= self.cap else None
        if len(self._items) - (replaced is not None) >= self.total_cap:
            return _FULL
        if client and self.client_cap:
            theirs = sum(1 for e in self._items.values() if e.client == client)
            if theirs - (replaced is not None and replaced.client == client) >= self.client_cap:
                return _client_full(self.client_cap)
        return None

    def expire(self) -> int:
        """Forget (and delete) models unused for ``max_idle_s``; how many."""
        now = time.monotonic()
        with self._lock:
            gone = [k for k, e in self._items.items() if now - e.last_used > self.max_idle_s]
            entries = [self._items.pop(k) for k in gone]
        for entry in entries:
            self._delete(entry)
        return len(entries)

    def for_owner(self, owner: str | None) -> "SessionModels":
        """A read-only view with only ``owner``'s models (none for no owner): what one session may use."""
        return _OwnerView(self, owner)

    def end_owner(self, owner: str | None) -> int:
        """``owner``'s session ended: its models are deleted, and one finished later is not kept; how many."""
        self._ended.end(owner)
        return self.drop_owner(owner)

    def drop_owner(self, owner: str | None) -> int:
        """Forget and delete every model of ``owner``; how many."""
        if not owner:
            return 0
        with self._lock:
            gone = [k for k, e in self._items.items() if e.owner == owner]
            entries = [self._items.pop(k) for k in gone]
        for entry in entries:
            self._delete(entry)
        return len(entries)

    def get(self, key: str) -> SessionModel | None:
        with self._lock:
            return self._items.get(key)

    def items(self) -> list[SessionModel]:
        with self._lock:
            return list(self._items.values())

    def choices(self) -> list[tuple[str, str]]:
        """(label, key) of every model, for model lists."""
        return [(e.label, e.key) for e in self.items()]


class _OwnerView(SessionModels):
    """One owner's models of a registry (reads only; adding goes to the registry itself)."""

    def __init__(self, registry: SessionModels, owner: str | None) -> None:
        self._registry, self._owner = registry, owner

    def add(self, *args: Any, **kwargs: Any) -> SessionModel:
        raise TypeError("add models to the registry, not to an owner's view")

    def get(self, key: str) -> SessionModel | None:
        entry = self._registry.get(key)
        if entry is None or not self._owner or entry.owner != self._owner:
            return None
        entry.last_used = time.monotonic()  # its owner uses it: not idle
        return entry

    def items(self) -> list[SessionModel]:
        return [e for e in self._registry.items() if self._owner and e.owner == self._owner]

    def for_owner(self, owner: str | None) -> SessionModels:
        return _OwnerView(self._registry, owner if owner == self._owner else None)

    def drop_owner(self, owner: str | None) -> int:
        return self._registry.drop_owner(owner) if owner == self._owner else 0


def upload_archs() -> list[tuple[str, str]]:
    """(label, value) of what an uploaded checkpoint can be: a kaldn file that names itself, or a peer."""
    return [("kaldn .safetensors (named in the file)", AUTO_ARCH)] + \
        [(f"{a.label} (published .pt / .pth)", name) for name, a in published_architectures().items()]


def import_checkpoint(source: str | Path, name: str, arch: str | None, scale: Any, registry: SessionModels,
                      owner: str | None, root: str | Path, max_bytes: int, memory_bytes: int,
                      timeout_s: float, client: str | None = None) -> SessionModel:
    """Convert the uploaded file ``source`` (shown to its owner as ``name``) into a model only ``owner`` sees.

    Refused with a :class:`UserError` that names the file only: no owner, a suffix other than .pt / .pth /
    .safetensors, a file over ``max_bytes``, an unknown architecture or scale, and anything the converter
    refuses (code in a pickle, tensors that do not fit, a file that needs more than ``memory_bytes`` or
    ``timeout_s`` to read).
    """
    started = time.monotonic()
    if not owner:
        raise UserError("Adding a checkpoint needs a session (the page, or gradio_client).")
    source, name = Path(source), Path(str(name)).name or "checkpoint"
    suffix = Path(name).suffix.lower()
    name = name if len(name) <= 80 else name[:60] + "..." + name[-16:]  # shown in messages: short, suffix kept
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{name}: a checkpoint must be a .pt, .pth or .safetensors file.")
    size = source.stat().st_size
    if size > max_bytes:
        raise UserError(f"{name}: {size / 2**20:.1f} MiB; checkpoints up to {max_bytes / 2**20:.0f} MiB are "
                        "accepted here (KALDN_APP_MAX_CHECKPOINT_BYTES).")
    arch = None if arch in (None, "", AUTO_ARCH) else str(arch)
    if arch is not None and arch not in published_architectures():
        raise UserError(f"Unknown architecture {quoted(arch)}; choose one from the list.")
    if arch is None and suffix != ".safetensors":
        raise UserError(f"{name}: a .pt / .pth file does not say what it holds: choose its architecture.")
    scale_value = check_scale(scale) if arch is not None else None
    registry.require_room(owner, client)
    Path(root).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=root))
    try:
        local = folder / f"checkpoint{suffix}"  # the converter picks the reader by suffix: ours, not the client's
        shutil.copyfile(source, local)
        try:
            out = convert_isolated(local, folder / "model", arch, scale_value, memory_bytes=memory_bytes,
                                   timeout_s=timeout_s, display_name=name)
        except ConversionError as exc:
            raise UserError(str(exc)) from None
        local.unlink()
        if (out / CONFIG_NAME).stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"{name}: its metadata is too large to keep.")
        config = read_config(out / CONFIG_NAME)
        weights = config.get("weights") or {}
        info = {"origin": weights.get("origin"), "file": name, "options": changed_options(config)}
        return registry.add(out, config["model"], info,
                            delete_dir=folder, owner=owner, kind=UPLOADED, since=started, client=client)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
