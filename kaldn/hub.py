"""One model loader for the app, the CLI, training (``--init``) and evaluation.

``load_model(name_or_path)`` takes a checkpoint directory or a single ``.safetensors`` file (loaded as is),
an ``hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]`` name (that Hub repository only, as timm's ``hf-hub:``
names), or a model name, resolved in this order (``source="auto"``):

1. ``local_dir/<name>/`` when ``local_dir`` is given;
2. the Hugging Face Hub: subfolder ``<name>`` of ``repo_id`` at ``revision``,
   through ``huggingface_hub.hf_hub_download`` and therefore its cache,
   ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and token;
3. the bundled checkpoints (``KALDN_CHECKPOINTS`` overrides the folder): the repository's ``checkpoints/``
   in a checkout, installed with the package as ``kaldn/bundled/`` (pyproject.toml maps the one onto the
   other, so the files are not duplicated in the repository).

The ``checkpoints/`` folder is laid out exactly as the Hub model repository, so
the same files travel both ways (``python -m kaldn.hub push`` / ``pull``).

Settings, all read when used (never at import, so a process can set them first). ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_HOME``/``HF_HUB_CACHE`` are read on each call too (huggingface_hub itself reads them
once, when first imported, which gradio may do early); unset, the library's defaults apply.

- ``KALDN_HUB_REPO`` (default ``kaldn/kaldn-models``), ``KALDN_HUB_REVISION`` (``main``);
- ``KALDN_CHECKPOINTS``: the bundled folder;
- ``KALDN_HUB_TIMEOUT`` (seconds, default 3): connect/read timeout of the Hub
  look-up; ``KALDN_HUB_RETRY_AFTER`` (seconds, default 60): after a connection
  failure the Hub is treated as unreachable (cache only) for that long.

Why the probe: with no network and nothing cached, ``hf_hub_download`` retries
its HEAD request with ``retry_on_errors=True`` (``file_download.py``: "No local
file found. Retrying..", ``etag_timeout=_ETAG_RETRY_TIMEOUT`` = 60) and
``http_backoff``'s default ``max_retries=5`` sleeps 1+2+4+8+8 = 23 s per file.
No setting shortens that, so before downloading we send one HEAD ourselves with
``get_hf_file_metadata(..., timeout=KALDN_HUB_TIMEOUT, retry_on_errors=False)``
(no retries) and only call ``hf_hub_download`` when the Hub answered.

Safety: only ``model.safetensors`` is read (through ``kaldn.checkpoint``, nothing
is unpickled). A Hub file that is not valid safetensors, whose bytes do not
match the sha256 the Hub announced for it, or whose config names an unknown
architecture raises ``CheckpointError`` naming the file. That error is never
turned into a fallback: a tampered download is refused loudly, not silently
replaced by the bundled weights. Only *availability* problems (offline,
unreachable, repo/revision/model missing on the Hub) fall back, with one
WARNING line per (repo, kind of reason) per process on logger ``kaldn.hub``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from torch import nn

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint_files, load_safetensors_file
from .models import parse_model_name
from .settings import DEFAULT_MODEL_SOURCE, MODEL_SOURCES

logger = logging.getLogger("kaldn.hub")

DEFAULT_REPO_ID = "kaldn/kaldn-models"
DEFAULT_REVISION = "main"
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_RETRY_AFTER_S = 60.0
SOURCES = ("auto", "local", "hub", "bundled")
# What a model repository holds (log.jsonl: the training curve shown beside a model); anything else (pickles,
# optimizer states, stdout logs) never leaves or enters.
HUB_FILE_PATTERNS = ["*.safetensors", "*.json", "*.md", "*.jsonl"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFoundError(FileNotFoundError):
    """No allowed source has the model; the message lists every source tried and why it failed."""


class _HubUnavailable(Exception):
    """The Hub could not provide the model (an availability problem, never a bad file)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


# --- settings (read lazily) ---------------------------------------------------------------------------------

def hub_repo_id(repo_id: str | None = None) -> str:
    """The Hub repository: argument, else ``KALDN_HUB_REPO``, else ``kaldn/kaldn-models``."""
    return repo_id or os.environ.get("KALDN_HUB_REPO") or DEFAULT_REPO_ID


def hub_revision(revision: str | None = None) -> str:
    """Branch, tag or commit to load: argument, else ``KALDN_HUB_REVISION``, else ``main``."""
    return revision or os.environ.get("KALDN_HUB_REVISION") or DEFAULT_REVISION


HF_HUB_PREFIX = "hf-hub:"
INSTALLED_BUNDLE = Path(__file__).resolve().parent / "bundled"      # package data of an installed kaldn
CHECKOUT_BUNDLE = Path(__file__).resolve().parents[1] / "checkpoints"  # the repository's folder


def bundled_dir() -> Path:
    """The bundled checkpoints folder (same layout as the Hub repo); ``KALDN_CHECKPOINTS`` overrides it.

    Installed, the checkpoints are package data (``kaldn/bundled``); in a checkout, ``checkpoints/``.
    """
    env = os.environ.get("KALDN_CHECKPOINTS")
    if env:
        return Path(env)
    return INSTALLED_BUNDLE if INSTALLED_BUNDLE.is_dir() else CHECKOUT_BUNDLE


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _timeout() -> float:
    return _float_env("KALDN_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)


def _endpoint() -> str | None:
    # huggingface_hub reads HF_ENDPOINT once, when it is imported; reading it here as well means a value set
    # by the process later (tests, notebooks) is honoured too. None: the library's own default.
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def _cache_dir() -> str | None:
    # Same precedence as huggingface_hub.constants, but read now rather than when the library was imported
    # (gradio, for one, imports it early). None: the library's own default.
    value = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not value and os.environ.get("HF_HOME"):
        value = os.path.join(os.environ["HF_HOME"], "hub")
    return os.path.expanduser(os.path.expandvars(value)) if value else None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.strip().lower() in _TRUE


# --- process-wide Hub state: unreachable window and warnings already given ---------------------------------

_state_lock = threading.Lock()
_unreachable_until: dict[str, tuple[float, str]] = {}
_warned: set[tuple[str, str]] = set()


def reset_hub_state() -> None:
    """Forget remembered Hub failures and given warnings (tests; an app that knows the network is back)."""
    with _state_lock:
        _unreachable_until.clear()
        _warned.clear()


def _endpoint_key() -> str:
    return _endpoint() or "default"


def _remembered_unreachable() -> str | None:
    with _state_lock:
        entry = _unreachable_until.get(_endpoint_key())
        if entry is None:
            return None
        if time.monotonic() >= entry[0]:
            del _unreachable_until[_endpoint_key()]
            return None
        return entry[1]


def _remember_unreachable(reason: str) -> None:
    with _state_lock:
        until = time.monotonic() + _float_env("KALDN_HUB_RETRY_AFTER", DEFAULT_RETRY_AFTER_S)
        _unreachable_until[_endpoint_key()] = (until, reason)


def _warn_once(repo_id: str, kind: str, message: str) -> None:
    with _state_lock:
        first = (repo_id, kind) not in _warned
        _warned.add((repo_id, kind))
    if first:
        logger.warning(message)
    else:
        logger.debug(message)


# --- the Hub ------------------------------------------------------------------------------------------------

def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _classify(exc: BaseException) -> tuple[str, bool] | None:
    """(reason kind, remember as unreachable) for an availability error; None for anything else."""
    try:
        import httpx2  # huggingface_hub 2.x
    except ImportError:  # pragma: no cover - older huggingface_hub releases use httpx
        import httpx as httpx2
    from huggingface_hub.errors import (FileMetadataError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, OfflineModeIsEnabled):
        return "offline", False
    if isinstance(exc, (httpx2.TransportError, FileMetadataError)):  # connect/read/timeouts/proxy; not a Hub
        return "unreachable", True
    if isinstance(exc, GatedRepoError):
        return "no-access", False
    if isinstance(exc, RepositoryNotFoundError):
        return "repo-not-found", False
    if isinstance(exc, RevisionNotFoundError):
        return "revision-not-found", False
    if isinstance(exc, RemoteEntryNotFoundError):
        return "model-not-on-hub", False
    if isinstance(exc, LocalEntryNotFoundError):
        return "not-cached", False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return "no-access", False
        return ("unreachable", True) if status >= 500 or status in (408, 429) else ("hub-error", False)
    return None


def _verify_download(path: Path) -> None:
    """Check a cached file against the sha256 the Hub announced for it (its blob name, for LFS files).

    huggingface_hub checks only the size; flipped bytes in transit or in the cache would otherwise load silently.
    """
    if not path.is_symlink():
        return  # cache without symlinks (copied files): the blob name is not at hand
    # One link only: snapshots/<commit>/<file> -> blobs/<etag>. The blob itself may link on into a shared
    # store named by another hash, so resolve() would give the wrong name.
    blob = Path(os.path.normpath(path.parent / os.readlink(path)))
    if blob.parent.name != "blobs" or not _SHA256.fullmatch(blob.name):
        return  # plain git file: its etag is a git sha1, not a content hash we can check cheaply
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        raise CheckpointError(f"{path}: content sha256 {digest.hexdigest()[:16]}... does not match the "
                              f"{blob.name[:16]}... announced by the Hub (corrupted or tampered download)")


def _hub_files(name: str, repo_id: str, revision: str) -> tuple[Path, Path]:
    """Paths of ``<name>/config.json`` and ``<name>/model.safetensors`` in the local Hub cache, fetching if needed.

    ``name`` is the subfolder; empty: the files at the top of the repository.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = _endpoint()
    timeout = _timeout()
    local_only = _offline()
    why_local = "offline mode (HF_HUB_OFFLINE)" if local_only else None
    if not local_only:
        remembered = _remembered_unreachable()
        if remembered is not None:
            local_only, why_local = True, f"{remembered}, remembered"
    if not local_only:
        # One quick HEAD with no retries: the fast way to learn the Hub cannot be reached (see module docstring).
        url = hf_hub_url(repo_id, f"{name}/{CONFIG_NAME}" if name else CONFIG_NAME, revision=revision,
                         endpoint=endpoint)
        try:
            get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint, retry_on_errors=False)
        except Exception as exc:  # noqa: BLE001 - classified below, unknown errors re-raised
            kind = _classify(exc)
            if kind is None:
                raise
            if not kind[1]:
                raise _HubUnavailable(kind[0], _describe(exc)) from None
            _remember_unreachable(_describe(exc))
            local_only, why_local = True, _describe(exc)

    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, subfolder=name or None, revision=revision,
                                              endpoint=endpoint, etag_timeout=timeout, cache_dir=_cache_dir(),
                                              local_files_only=local_only)))
        except Exception as exc:  # noqa: BLE001
            kind = _classify(exc)
            if kind is None:
                raise
            if kind[1]:
                _remember_unreachable(_describe(exc))
            if local_only:  # nothing cached: report why we did not ask the Hub
                raise _HubUnavailable("offline" if why_local.startswith("offline") else "unreachable",
                                      why_local) from None
            raise _HubUnavailable(kind[0], _describe(exc)) from None
    if local_only:
        logger.info("hub not contacted for %s (%s); using cached %s", name, why_local, paths[1].parent)
    return paths[0], paths[1]


def _load_from_hub(name: str, repo_id: str, revision: str, device: str) -> nn.Module:
    config_path, weights_path = _hub_files(name, repo_id, revision)
    try:
        _verify_download(weights_path)
        return load_checkpoint_files(weights_path, config_path, device)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} [from hub {repo_id}@{revision}, {name or '.'}/]") from None


def parse_hf_hub_name(name: str) -> tuple[str, str, str | None]:
    """``hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]`` -> (repo_id, subfolder or "", revision or None)."""
    path, at, revision = name[len(HF_HUB_PREFIX):].partition("@")
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts) or (at and not revision):
        raise ModelNotFoundError(f"{name!r} is not a Hub name: use hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


# --- local folders ------------------------------------------------------------------------------------------

def _is_checkpoint_dir(path: Path) -> bool:
    # A folder of that name is the intended checkpoint: an incomplete one is a loud CheckpointError, not skipped.
    return path.is_dir()


def _checkpoint_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file())


def available_models(local_dir: str | Path | None = None) -> list[str]:
    """Names loadable without the network: bundled checkpoints plus ``local_dir`` ones (no Hub listing)."""
    names = set(_checkpoint_names(bundled_dir()))
    if local_dir is not None:
        names.update(_checkpoint_names(Path(local_dir)))
    return sorted(names)


def _looks_like_path(name: str) -> bool:
    return any(sep in name for sep in ("/", "\\", os.sep)) or name in (".", "..") or name.startswith("~")


# --- the loader ---------------------------------------------------------------------------------------------

def add_source_option(parser: argparse.ArgumentParser, flag: str = "--source", what: str = "a model name") -> None:
    """The commands' option choosing where ``what`` loads from (bundled unless asked: README's numbers describe
    the bundled files)."""
    parser.add_argument(flag, default=DEFAULT_MODEL_SOURCE, choices=MODEL_SOURCES,
                        help=f"where {what} loads from: the bundled checkpoints (default), auto (the Hub's "
                             "KALDN_HUB_REPO, then bundled) or hub")


def load_model(name_or_path: str | os.PathLike, source: str = "auto", *, local_dir: str | Path | None = None,
               repo_id: str | None = None, revision: str | None = None, device: str = "cpu") -> nn.Module:
    """Load a model by checkpoint directory, ``.safetensors`` file, ``hf-hub:`` name or model name.

    ``source``: ``"auto"`` (local dir if given, then Hub, then bundled), or only one of ``"local"``, ``"hub"``,
    ``"bundled"``. Availability problems of the Hub fall back (auto) or raise ``ModelNotFoundError`` (hub, and
    ``hf-hub:`` names, which name one repository); a bad file raises ``CheckpointError`` whatever the source, so
    tampering is never papered over. ``device``: ``"cpu"``, ``"cuda[:N]"`` or ``"auto"`` (CUDA when present).
    """
    if isinstance(name_or_path, os.PathLike) and not isinstance(name_or_path, Path):
        name_or_path = Path(os.fsdecode(name_or_path))  # any path object counts as a path, as in open()
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"load_model takes a model name or path (str or os.PathLike), got {type(name_or_path).__name__}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if isinstance(name_or_path, str) and name_or_path.startswith(HF_HUB_PREFIX):
        repo, subfolder, rev = parse_hf_hub_name(name_or_path)
        rev = rev or DEFAULT_REVISION
        try:
            return _load_from_hub(subfolder, repo, rev, device)
        except _HubUnavailable as exc:
            raise ModelNotFoundError(f"model {name_or_path!r} not found (hub {repo}@{rev}: {exc.reason})") from None
    path = Path(name_or_path).expanduser()
    if path.suffix == ".safetensors" and not path.is_dir():
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: no such weights file")
        return load_safetensors_file(path, device)
    if isinstance(name_or_path, Path) or path.is_dir() or _looks_like_path(str(name_or_path)):
        if not path.is_dir():
            raise ModelNotFoundError(f"{path}: no such checkpoint directory")
        return load_checkpoint_files(path / WEIGHTS_NAME, path / CONFIG_NAME, device)

    name = str(name_or_path)
    if not name or name.startswith("."):
        raise ModelNotFoundError(f"{name!r} is not a model name")
    tried: list[str] = []

    if source in ("auto", "local"):
        if local_dir is not None:
            candidate = Path(local_dir).expanduser() / name
            if _is_checkpoint_dir(candidate):
                return load_checkpoint_files(candidate / WEIGHTS_NAME, candidate / CONFIG_NAME, device)
            tried.append(f"local: no {candidate}")
        elif source == "local":
            raise ValueError("source='local' needs local_dir")

    hub_problem: _HubUnavailable | None = None
    repo, rev = hub_repo_id(repo_id), hub_revision(revision)
    if source in ("auto", "hub"):
        try:
            return _load_from_hub(name, repo, rev, device)
        except _HubUnavailable as exc:
            hub_problem = exc
            tried.append(f"hub {repo}@{rev}: {exc.reason}")

    if source in ("auto", "bundled"):
        candidate = bundled_dir() / name
        if _is_checkpoint_dir(candidate):
            model = load_checkpoint_files(candidate / WEIGHTS_NAME, candidate / CONFIG_NAME, device)
            if hub_problem is not None:
                _warn_once(repo, hub_problem.kind,
                           f"hub unavailable for {name} ({hub_problem.reason}); using bundled {candidate}")
            return model
        tried.append(f"bundled: no {candidate}")

    try:
        parse_model_name(name)
        unknown = f"; kaldn.available_models() lists the {len(available_models(local_dir))} with weights here"
    except ValueError as exc:  # a typo reads as one, not only as files that are missing
        unknown = f"; {exc}"
    raise ModelNotFoundError(f"model {name!r} not found ({'; '.join(tried)}){unknown}")


# --- CLI: push / pull ---------------------------------------------------------------------------------------

def _file_weights_record(path: Path) -> dict:
    """The ``weights`` record a safetensors file carries in its metadata (kaldn.convert writes one), or {}."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("weights")
    try:
        record = json.loads(text) if text else {}
    except (ValueError, RecursionError):  # not JSON, a number too long, nesting too deep: no record
        return {}
    return record if isinstance(record, dict) else {}


def _verify_folder(folder: Path) -> list[str]:
    """Load every checkpoint in ``folder`` before uploading: a broken file must not reach the Hub."""
    names = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / CONFIG_NAME).is_file() or any(sub.glob("*.safetensors")):
            model = load_checkpoint_files(sub / WEIGHTS_NAME, sub / CONFIG_NAME)  # CheckpointError names the file
            # Weights converted from a peer's release (kaldn.convert) are the authors', without a licence.
            weights = model.config.get("weights") or _file_weights_record(sub / WEIGHTS_NAME)
            if weights.get("origin") == "third-party":
                raise CheckpointError(f"{sub}: holds third-party weights ({weights.get('source_file')}, "
                                      f"{weights.get('published_at')}); they are never uploaded")
            names.append(sub.name)
    return names


def push(repo_id: str, folder: str | Path = "checkpoints", *, private: bool = False,
         revision: str | None = None) -> str:
    """Upload the checkpoints folder as the Hub model repo (safetensors, json and md files only); returns its URL.

    Every checkpoint is loaded first; a broken one, or one holding third-party weights (``kaldn.convert`` of a
    peer's release), stops the upload before anything is sent.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: no such folder")
    names = _verify_folder(folder)
    if not names:
        raise ModelNotFoundError(f"{folder}: no checkpoints (<name>/{WEIGHTS_NAME} + {CONFIG_NAME}) to push")
    api = HfApi(endpoint=_endpoint())
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                      allow_patterns=HUB_FILE_PATTERNS,
                      commit_message=f"Upload {len(names)} kaldn checkpoints: {', '.join(names)}")
    return str(repo_url)


def pull(repo_id: str | None = None, revision: str | None = None, models: Sequence[str] | None = None) -> Path:
    """Fetch models into the Hugging Face cache so later loads work offline; returns the snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download

    repo, rev = hub_repo_id(repo_id), hub_revision(revision)
    endpoint = _endpoint()
    if _offline():
        raise ConnectionError("offline mode (HF_HUB_OFFLINE) is set: nothing can be pulled")
    # Quick look-up first, for a fast clear failure instead of snapshot_download's cache fallback.
    HfApi(endpoint=endpoint).repo_info(repo, revision=rev, repo_type="model", timeout=_timeout())
    patterns = HUB_FILE_PATTERNS if not models else \
        [f"{m}/{p}" for m in models for p in HUB_FILE_PATTERNS] + ["README.md"]
    snapshot = Path(snapshot_download(repo, revision=rev, allow_patterns=patterns, endpoint=endpoint,
                                      cache_dir=_cache_dir(), etag_timeout=_timeout()))
    missing = [m for m in models or () if not _is_checkpoint_dir(snapshot / m)]
    if missing:
        raise ModelNotFoundError(f"not in {repo}@{rev}: {', '.join(missing)}")
    return snapshot


def _error_line(exc: BaseException) -> str:
    kind = None
    try:
        kind = _classify(exc)
    except ImportError:
        pass
    hint = ""
    if kind is not None and kind[0] in ("unreachable", "offline"):
        hint = " (the Hugging Face Hub cannot be reached: check the network, HF_ENDPOINT and HF_HUB_OFFLINE)"
    return f"error: {_describe(exc)}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kaldn.hub push|pull``: share checkpoints on the Hub, or pre-fetch them for offline use."""
    parser = argparse.ArgumentParser(prog="python -m kaldn.hub", description="Share kaldn checkpoints on the "
                                     "Hugging Face Hub (push) or pre-fetch them for offline use (pull).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_push = sub.add_parser("push", help="upload the checkpoints folder to a Hub model repo")
    p_push.add_argument("--repo-id", required=True, help="USER/NAME")
    p_push.add_argument("--private", action="store_true")
    p_push.add_argument("--folder", default=str(bundled_dir()))
    p_push.add_argument("--revision", default=None, help="branch to upload to (created if missing)")
    p_pull = sub.add_parser("pull", help="download models into the Hugging Face cache for offline use")
    p_pull.add_argument("--repo-id", default=None, help=f"default: $KALDN_HUB_REPO or {DEFAULT_REPO_ID}")
    p_pull.add_argument("--revision", default=None, help=f"default: $KALDN_HUB_REVISION or {DEFAULT_REVISION}")
    p_pull.add_argument("--models", nargs="+", default=None, help="only these models (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            url = push(args.repo_id, args.folder, private=args.private, revision=args.revision)
            print(f"pushed {args.folder} to {url}")
        else:
            snapshot = pull(args.repo_id, args.revision, args.models)
            names = args.models or _checkpoint_names(snapshot)
            print(f"pulled {len(names)} models of {hub_repo_id(args.repo_id)}@{hub_revision(args.revision)} "
                  f"into {snapshot}")
            for n in names:
                print(f"  {n}: {snapshot / n}")
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI prints one line, not a traceback
        print(_error_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
