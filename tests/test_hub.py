"""kaldn.hub against a local stand-in for the Hugging Face Hub (no internet).

``FakeHub`` serves what huggingface_hub 2.4's real code path asks for (read from file_download.py and hf_api.py):

- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` (``hf_hub_url``; revision URL-quoted): 200 with
  ``X-Repo-Commit`` (required, else FileMetadataError), ``ETag`` (the cache blob name; sha256 for LFS files as
  on the Hub, git-sha1 otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS files and ``Content-Length``;
  404 with ``X-Error-Code`` ``RepoNotFound``/``RevisionNotFound``/``EntryNotFound`` (``hf_raise_for_status``).
  No redirect: the real Hub redirects LFS files to a CDN host, which huggingface_hub does not follow on HEAD.
- ``GET /api/models/{repo_id}/revision/{revision}`` (``model_info``: ``sha``) and
  ``GET /api/models/{repo_id}/tree/{revision}`` (``list_repo_tree``) for ``snapshot_download``.

Every request is logged, so tests can assert which ones (if any) reached the "Hub".
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from kaldn import hub
from kaldn.checkpoint import CheckpointError, save_checkpoint
from kaldn.hub import ModelNotFoundError, available_models, load_model
from kaldn.models import create_model

REPO = "tester/kaldn-models"
NAMES = ("tiny-ldsconv-x2", "tiny-dsconv-x2", "tiny-conv-x2")


def _commit(revision: str) -> str:
    return hashlib.sha1(f"commit {revision}".encode()).hexdigest()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """A Hub model repo in memory: {revision: {path: bytes}}; commit hashes also resolve."""

    def __init__(self, repo_id: str = REPO):
        self.repo_id = repo_id
        self.revisions: dict[str, dict[str, bytes]] = {}
        self.announced_sha256: dict[tuple[str, str], str] = {}  # (revision, path) -> etag to lie about
        self.requests: list[tuple[str, str]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub_._handle(self, body=False)

            def do_GET(self):
                hub_._handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_folder(self, revision: str, folder: Path) -> None:
        files = self.revisions.setdefault(revision, {})
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = path.read_bytes()

    def resolve(self, revision: str) -> str | None:
        if revision in self.revisions:
            return revision
        return next((r for r in self.revisions if _commit(r) == revision), None)

    def _reply(self, handler, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def _error(self, handler, code: str, body: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._reply(handler, 404, headers, json.dumps({"error": code}).encode(), body)

    def _handle(self, handler, body: bool) -> None:
        path = urlsplit(handler.path).path
        self.requests.append((handler.command, path))
        resolve_prefix = f"/{self.repo_id}/resolve/"
        api_prefix = f"/api/models/{self.repo_id}/"
        if path.startswith(resolve_prefix):
            revision, _, filename = path[len(resolve_prefix):].partition("/")
            return self._serve_file(handler, unquote(revision), unquote(filename), body)
        if path.startswith(api_prefix):
            kind, _, rest = path[len(api_prefix):].partition("/")
            revision = self.resolve(unquote(rest.split("/")[0]))
            if kind not in ("revision", "tree") or revision is None:
                return self._error(handler, "RevisionNotFound", body)
            if kind == "revision":
                data = {"id": self.repo_id, "sha": _commit(revision), "private": False}
            else:
                data = [self._tree_entry(revision, p, d) for p, d in self.revisions[revision].items()]
            return self._reply(handler, 200, {"Content-Type": "application/json"}, json.dumps(data).encode(), body)
        self._error(handler, "RepoNotFound", body)

    def _tree_entry(self, revision: str, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": _git_sha1(data)}
        if path.endswith(".safetensors"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _serve_file(self, handler, revision: str, filename: str, body: bool) -> None:
        resolved = self.resolve(revision)
        if resolved is None:
            return self._error(handler, "RevisionNotFound", body)
        data = self.revisions[resolved].get(filename)
        if data is None:
            return self._error(handler, "EntryNotFound", body, commit=_commit(resolved))
        headers = {"X-Repo-Commit": _commit(resolved), "Content-Type": "application/octet-stream"}
        if filename.endswith(".safetensors"):  # an LFS file, as on the Hub: etag = sha256 of the content
            sha = self.announced_sha256.get((resolved, filename), hashlib.sha256(data).hexdigest())
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{_git_sha1(data)}"'
        self._reply(handler, 200, headers, data, body)


# --- fixtures -------------------------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: connecting is refused at once


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh HF cache, no token, our repo, a short timeout and a forgotten hub state around each test."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
                "KALDN_HUB_REVISION", "KALDN_HUB_RETRY_AFTER", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setenv("KALDN_HUB_REPO", REPO)
    monkeypatch.setenv("KALDN_HUB_TIMEOUT", "2")
    monkeypatch.setenv("KALDN_CHECKPOINTS", str(tmp_path / "bundled"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    (tmp_path / "bundled").mkdir()
    # huggingface_hub freezes HF_HUB_OFFLINE when first imported (by gradio, in the app tests, perhaps
    # while they had it set): give the library the same view as this test's environment.
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub.reset_hub_state()
    yield tmp_path
    hub.reset_hub_state()


@pytest.fixture
def fake_hub(env, monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


def _checkpoint(folder: Path, name: str, seed: int) -> dict[str, torch.Tensor]:
    """Save a model with seeded random weights; return its state dict for comparisons."""
    torch.manual_seed(seed)
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    save_checkpoint(folder / name, model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def _hub_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kaldn.hub" and r.levelno == logging.WARNING]


# --- 1-2: download through huggingface_hub, then offline from its cache --------------------------------------

def test_hub_download_matches_served_weights(env, fake_hub):
    served = _checkpoint(env / "repo", NAMES[0], seed=1)
    fake_hub.add_folder("main", env / "repo")
    _checkpoint(env / "bundled", NAMES[0], seed=2)  # must not be used

    model = load_model(NAMES[0])

    _assert_weights(model, served)
    assert ("GET", f"/{REPO}/resolve/main/{NAMES[0]}/model.safetensors") in fake_hub.requests
    assert ("GET", f"/{REPO}/resolve/main/{NAMES[0]}/config.json") in fake_hub.requests
    assert list((env / "hf_home" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    assert model.config["model"] == NAMES[0]


def test_offline_load_comes_from_cache(env, fake_hub, monkeypatch):
    served = _checkpoint(env / "repo", NAMES[0], seed=1)
    fake_hub.add_folder("main", env / "repo")
    _checkpoint(env / "bundled", NAMES[0], seed=2)
    _assert_weights(load_model(NAMES[0], source="hub"), served)

    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_weights(load_model(NAMES[0], source="hub"), served)  # server still up: nothing may reach it
    assert fake_hub.requests == []
    fake_hub.stop()
    _assert_weights(load_model(NAMES[0]), served)
    assert fake_hub.requests == []


def test_cache_used_when_hub_goes_down(env, fake_hub, monkeypatch, caplog):
    served = _checkpoint(env / "repo", NAMES[0], seed=1)
    fake_hub.add_folder("main", env / "repo")
    _checkpoint(env / "bundled", NAMES[0], seed=2)
    load_model(NAMES[0])
    fake_hub.stop()
    with caplog.at_level(logging.INFO, logger="kaldn.hub"):
        _assert_weights(load_model(NAMES[0]), served)  # not offline mode: the probe fails, the cache answers
    assert _hub_warnings(caplog) == []


# --- 3: unreachable and nothing cached -> bundled, one log line -----------------------------------------------

def test_unreachable_falls_back_to_bundled_and_logs_once(env, caplog):
    bundled = {n: _checkpoint(env / "bundled", n, seed=i) for i, n in enumerate(NAMES[:2])}
    with caplog.at_level(logging.DEBUG, logger="kaldn.hub"):
        for _ in range(2):
            for name in NAMES[:2]:
                _assert_weights(load_model(name), bundled[name])
    warnings = _hub_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"hub unavailable for {NAMES[0]} (ConnectError: ")
    assert warnings[0].endswith(f"; using bundled {env / 'bundled' / NAMES[0]}")
    assert "\n" not in warnings[0]


def test_missing_model_on_hub_falls_back_and_hub_only_raises(env, fake_hub, caplog):
    _checkpoint(env / "repo", NAMES[0], seed=1)
    fake_hub.add_folder("main", env / "repo")
    bundled = _checkpoint(env / "bundled", NAMES[1], seed=3)
    with caplog.at_level(logging.WARNING, logger="kaldn.hub"):
        _assert_weights(load_model(NAMES[1]), bundled)
    assert len(_hub_warnings(caplog)) == 1 and "RemoteEntryNotFoundError" in _hub_warnings(caplog)[0]
    with pytest.raises(ModelNotFoundError, match="RemoteEntryNotFoundError"):
        load_model(NAMES[1], source="hub")
    with pytest.raises(ModelNotFoundError, match="RevisionNotFoundError"):
        load_model(NAMES[0], source="hub", revision="no-such-branch")
    with pytest.raises(ModelNotFoundError, match="RepositoryNotFoundError"):
        load_model(NAMES[0], source="hub", repo_id="someone/else")
    with pytest.raises(ModelNotFoundError, match="bundled: no"):
        load_model(NAMES[2])


# --- 4: revisions ---------------------------------------------------------------------------------------------

def test_pinned_revision_is_respected(env, fake_hub, monkeypatch):
    main = _checkpoint(env / "main", NAMES[0], seed=10)
    v1 = _checkpoint(env / "v1", NAMES[0], seed=11)
    fake_hub.add_folder("main", env / "main")
    fake_hub.add_folder("v1", env / "v1")

    _assert_weights(load_model(NAMES[0], source="hub"), main)
    _assert_weights(load_model(NAMES[0], source="hub", revision="v1"), v1)
    _assert_weights(load_model(NAMES[0], source="hub", revision=_commit("v1")), v1)
    _assert_weights(load_model(NAMES[0], source="hub", revision=_commit("main")), main)
    monkeypatch.setenv("KALDN_HUB_REVISION", "v1")
    _assert_weights(load_model(NAMES[0], source="hub"), v1)
    paths = {p for _, p in fake_hub.requests}
    assert f"/{REPO}/resolve/v1/{NAMES[0]}/model.safetensors" in paths
    assert f"/{REPO}/resolve/{_commit('v1')}/{NAMES[0]}/config.json" in paths


# --- 5: bad files are refused loudly, never replaced by the fallback -----------------------------------------

def _serve_with(env, fake_hub, name: str, weights: bytes | None = None, config: dict | None = None) -> None:
    _checkpoint(env / "repo", name, seed=1)
    if weights is not None:
        (env / "repo" / name / "model.safetensors").write_bytes(weights)
    if config is not None:
        (env / "repo" / name / "config.json").write_text(json.dumps(config))
    fake_hub.add_folder("main", env / "repo")
    _checkpoint(env / "bundled", name, seed=2)  # a good fallback exists and must not be used


@pytest.mark.parametrize("kind", ["garbage", "pickle", "header-flipped"])
def test_invalid_hub_weights_raise(env, fake_hub, kind):
    name = NAMES[0]
    good = save_checkpoint(env / "good" / name, create_model(name)) / "model.safetensors"
    if kind == "garbage":
        data = b"\x00not safetensors at all" * 10
    elif kind == "pickle":
        data = pickle.dumps({"weight": torch.zeros(3)})
    else:
        raw = bytearray(good.read_bytes())
        raw[8:40] = bytes(b ^ 0xFF for b in raw[8:40])  # inside the JSON header
        data = bytes(raw)
    _serve_with(env, fake_hub, name, weights=data)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file") as info:
        load_model(name)
    assert f"{REPO}@main" in str(info.value)


def test_bytes_flipped_in_transit_raise(env, fake_hub):
    name = NAMES[0]
    _serve_with(env, fake_hub, name)
    path = f"{name}/model.safetensors"
    data = bytearray(fake_hub.revisions["main"][path])
    fake_hub.announced_sha256[("main", path)] = hashlib.sha256(data).hexdigest()
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # tensor bytes: still parses, different weights
    fake_hub.revisions["main"][path] = bytes(data)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: content sha256 .* does not match"):
        load_model(name)


def test_tampered_cache_raises(env, fake_hub, monkeypatch):
    name = NAMES[0]
    _serve_with(env, fake_hub, name)
    load_model(name)
    blob = next(p for p in (env / "hf_home" / "hub").rglob("blobs/*") if len(p.name) == 64)
    raw = bytearray(blob.read_bytes())
    raw[-4:] = b"\x00\x01\x02\x03"
    blob.write_bytes(bytes(raw))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(name)


def test_unknown_architecture_raises(env, fake_hub):
    _serve_with(env, fake_hub, NAMES[0], config={"format_version": 1, "model": "huge-evilconv-x9"})
    with pytest.raises(CheckpointError, match=r"config\.json: unknown model 'huge-evilconv-x9'"):
        load_model(NAMES[0])


def test_mismatched_weights_raise(env, fake_hub):
    other = save_checkpoint(env / "other" / NAMES[2], create_model(NAMES[2])) / "model.safetensors"
    _serve_with(env, fake_hub, NAMES[0], weights=other.read_bytes())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensors do not match"):
        load_model(NAMES[0])


def test_local_pickle_and_bad_bundled_raise(env):
    folder = env / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": NAMES[0]}))
    torch.save(create_model(NAMES[0]).state_dict(), folder / "model.bin")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no such weights file"):
        load_model(str(folder))
    (env / "bundled" / NAMES[1]).mkdir()
    (env / "bundled" / NAMES[1] / "model.safetensors").write_bytes(b"garbage")
    (env / "bundled" / NAMES[1] / "config.json").write_text(json.dumps({"model": NAMES[1]}))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model(NAMES[1])


# --- 6: fast failure ------------------------------------------------------------------------------------------

def test_closed_port_fails_fast_and_probes_once(env, monkeypatch):
    import huggingface_hub

    bundled = {n: _checkpoint(env / "bundled", n, seed=i) for i, n in enumerate(NAMES)}
    probes = []
    real = huggingface_hub.get_hf_file_metadata
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: probes.append(a) or real(*a, **k))
    start = time.perf_counter()
    models = [load_model(n) for n in NAMES]
    elapsed = time.perf_counter() - start
    for name, model in zip(NAMES, models):
        _assert_weights(model, bundled[name])
    assert elapsed < 10, elapsed
    assert len(probes) == 1  # the Hub is remembered as unreachable after the first failure


def test_silent_server_times_out_quickly(env, monkeypatch, caplog):
    """A host that accepts connections but never answers (captive proxy, black hole): read timeout, once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("KALDN_HUB_TIMEOUT", "0.5")
    bundled = {n: _checkpoint(env / "bundled", n, seed=i) for i, n in enumerate(NAMES)}
    try:
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="kaldn.hub"):
            for name in NAMES:
                _assert_weights(load_model(name), bundled[name])
        assert time.perf_counter() - start < 5
    finally:
        listener.close()
    assert len(_hub_warnings(caplog)) == 1 and "Timeout" in _hub_warnings(caplog)[0]


def test_retry_after_expires(env, monkeypatch):
    import huggingface_hub

    _checkpoint(env / "bundled", NAMES[0], seed=0)
    monkeypatch.setenv("KALDN_HUB_RETRY_AFTER", "0")
    probes = []
    real = huggingface_hub.get_hf_file_metadata
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: probes.append(a) or real(*a, **k))
    load_model(NAMES[0])
    load_model(NAMES[0])
    assert len(probes) == 2


# --- sources, paths, listing ----------------------------------------------------------------------------------

def test_sources_and_paths(env, fake_hub):
    hub_w = _checkpoint(env / "repo", NAMES[0], seed=1)
    fake_hub.add_folder("main", env / "repo")
    bundled = _checkpoint(env / "bundled", NAMES[0], seed=2)
    local = _checkpoint(env / "local", NAMES[0], seed=3)

    _assert_weights(load_model(NAMES[0], local_dir=env / "local"), local)
    _assert_weights(load_model(NAMES[0], "local", local_dir=env / "local"), local)
    _assert_weights(load_model(NAMES[0], "bundled"), bundled)
    _assert_weights(load_model(NAMES[0], "hub"), hub_w)
    _assert_weights(load_model(str(env / "local" / NAMES[0])), local)
    _assert_weights(load_model(env / "local" / NAMES[0]), local)
    fake_hub.requests.clear()
    _assert_weights(load_model(NAMES[0], "bundled"), bundled)
    assert fake_hub.requests == []  # "bundled" never touches the network
    with pytest.raises(ModelNotFoundError, match="local: no"):
        load_model(NAMES[1], "local", local_dir=env / "local")
    # A valid name without weights anywhere points to the names that have them.
    with pytest.raises(ModelNotFoundError, match=r"bundled: no .*\); kaldn.available_models\(\) lists the \d+ "):
        load_model("paper-dsconv-x3", "bundled")
    with pytest.raises(ModelNotFoundError, match="no such checkpoint directory"):
        load_model(str(env / "nowhere" / NAMES[0]))
    with pytest.raises(ValueError, match="source"):
        load_model(NAMES[0], "internet")
    # A typo says it is not a model name; "auto" is a device (it was read as a corrupt file before).
    with pytest.raises(ModelNotFoundError, match=r"bundled: no .*; unknown model 'tiny-ldsconv-xx2'; did you mean tiny-ldsconv-x2"):
        load_model("tiny-ldsconv-xx2", "bundled")
    _assert_weights(load_model(NAMES[0], "bundled", device="auto").cpu(), bundled)
    with pytest.raises(TypeError, match="model name or path"):
        load_model(4)

    class PathObject:  # any os.PathLike is a path, as open() takes it (not only pathlib.Path)
        def __fspath__(self) -> str:
            return str(env / "local" / NAMES[0])

    _assert_weights(load_model(PathObject()), local)


def test_hf_hub_names_load_that_repository_only(env, monkeypatch):
    """``hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]``: another repository than KALDN_HUB_REPO, never the bundled copy."""
    other = "someone/their-models"
    theirs = FakeHub(other)
    monkeypatch.setenv("HF_ENDPOINT", theirs.url)
    try:
        sub = _checkpoint(env / "repo", NAMES[0], seed=1)
        theirs.add_folder("main", env / "repo")
        root = _checkpoint(env / "flat", NAMES[1], seed=2)  # files at the top of the repository, on a branch
        theirs.add_folder("v1", env / "flat" / NAMES[1])
        _checkpoint(env / "bundled", NAMES[0], seed=3)  # must not be used

        _assert_weights(load_model(f"hf-hub:{other}/{NAMES[0]}"), sub)
        _assert_weights(load_model(f"hf-hub:{other}@v1"), root)
        assert ("GET", f"/{other}/resolve/v1/model.safetensors") in theirs.requests
        with pytest.raises(ModelNotFoundError, match=r"not found \(hub someone/their-models@main: "):
            load_model(f"hf-hub:{other}/{NAMES[2]}")
        for bad in ("hf-hub:", "hf-hub:justone", "hf-hub:a/b@", "hf-hub:a/b/../c"):
            with pytest.raises(ModelNotFoundError, match="not a Hub name"):
                load_model(bad)
    finally:
        theirs.stop()


def test_a_single_safetensors_file_describes_itself(env):
    weights = _checkpoint(env / "local", NAMES[0], seed=4)
    folder = env / "local" / NAMES[0]
    lone = env / "elsewhere" / "my-upscaler.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    model = load_model(str(lone))  # no config.json beside it: the header carries the full config
    _assert_weights(model, weights)
    assert model.config["model"] == NAMES[0] and model.config["descriptor_norm"] == "standardize"
    _assert_weights(load_model(folder / "model.safetensors"), weights)  # in its folder: config.json is read
    from kaldn.checkpoint import read_safetensors_config
    assert read_safetensors_config(lone) == json.loads((folder / "config.json").read_text())
    # A file of an older kaldn, whose header names only the model, still loads.
    from safetensors.torch import save_file
    old = env / "elsewhere" / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old), metadata={"model": NAMES[0]})
    _assert_weights(load_model(str(old)), weights)
    save_file({"x": torch.zeros(1)}, str(env / "elsewhere" / "anon.safetensors"))
    with pytest.raises(CheckpointError, match="names no model"):
        load_model(str(env / "elsewhere" / "anon.safetensors"))
    with pytest.raises(ModelNotFoundError, match="no such weights file"):
        load_model(str(env / "elsewhere" / "missing.safetensors"))
    # A header json cannot read (nested past the recursion limit, a number too long) is a CheckpointError too.
    for i, text in enumerate(["[" * 100_000 + "]" * 100_000, "1" + "0" * 5000]):
        odd = env / "elsewhere" / f"odd{i}.safetensors"
        save_file({"x": torch.zeros(1)}, str(odd), metadata={"model": NAMES[0], "kaldn_config": text})
        with pytest.raises(CheckpointError, match="kaldn_config is not JSON"):
            load_model(str(odd))
        (folder / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match="not a valid JSON config"):
            load_model(folder)


def test_available_models(env):
    _checkpoint(env / "bundled", NAMES[0], seed=0)
    _checkpoint(env / "local", NAMES[1], seed=0)
    (env / "bundled" / "half-done").mkdir()
    assert available_models() == [NAMES[0]]
    assert available_models(local_dir=env / "local") == sorted(NAMES[:2])


def test_import_does_no_network():
    import subprocess
    import sys

    code = "import sys, kaldn.hub; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


# --- 7: CLI ---------------------------------------------------------------------------------------------------

def test_push_builds_the_right_calls(env, monkeypatch, capsys):
    from huggingface_hub import HfApi

    folder = env / "to_push"
    for name in NAMES[:2]:
        _checkpoint(folder, name, seed=0)
    (folder / "README.md").write_text("---\nlibrary_name: kaldn\n---\n")
    (folder / NAMES[0] / "optimizer.pt").write_bytes(b"pickle")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
                        or f"{self.endpoint}/{repo_id}")
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("create_branch", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw["repo_id"], kw)))

    assert hub.main(["push", "--repo-id", "me/models", "--private", "--folder", str(folder)]) == 0
    assert [c[:2] for c in calls] == [("create_repo", "me/models"), ("upload_folder", "me/models")]
    assert calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    upload = calls[1][2]
    assert upload["folder_path"] == str(folder)
    assert upload["allow_patterns"] == ["*.safetensors", "*.json", "*.md", "*.jsonl"]
    assert upload["revision"] is None
    assert "pushed" in capsys.readouterr().out

    calls.clear()
    assert hub.main(["push", "--repo-id", "me/models", "--folder", str(folder), "--revision", "v2"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[1][2]["branch"] == "v2" and calls[2][2]["revision"] == "v2"
    assert calls[0][2]["private"] is False

    calls.clear()
    (folder / NAMES[1] / "model.safetensors").write_bytes(b"garbage")
    assert hub.main(["push", "--repo-id", "me/models", "--folder", str(folder)]) == 1
    assert calls == []  # a broken checkpoint never reaches the Hub
    err = capsys.readouterr().err
    assert err.startswith("error: CheckpointError") and err.count("\n") == 1


def test_push_offline_prints_one_line(env, capsys):
    folder = env / "to_push"
    _checkpoint(folder, NAMES[0], seed=0)
    assert hub.main(["push", "--repo-id", "me/models", "--folder", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ConnectError") and "cannot be reached" in err and err.count("\n") == 1


def test_pull_unreachable_exits_nonzero_with_one_line(env, capsys):
    start = time.perf_counter()
    assert hub.main(["pull"]) == 1
    assert time.perf_counter() - start < 10
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ConnectError") and captured.err.count("\n") == 1


def test_pull_then_offline(env, fake_hub, monkeypatch, capsys):
    served = {n: _checkpoint(env / "repo", n, seed=i) for i, n in enumerate(NAMES[:2])}
    (env / "repo" / "README.md").write_text("model card\n")
    (env / "repo" / NAMES[0] / "model.bin").write_bytes(b"pickle, never fetched")
    fake_hub.add_folder("main", env / "repo")

    assert hub.main(["pull", "--models", NAMES[0]]) == 0
    out = capsys.readouterr().out
    assert f"pulled 1 models of {REPO}@main into " in out
    snapshot = Path(out.split(" into ")[1].splitlines()[0])
    assert (snapshot / NAMES[0] / "model.safetensors").is_file() and not (snapshot / NAMES[1]).exists()
    assert not (snapshot / NAMES[0] / "model.bin").exists()

    assert hub.main(["pull"]) == 0
    assert NAMES[1] in capsys.readouterr().out
    fake_hub.stop()
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in NAMES[:2]:
        _assert_weights(load_model(name, source="hub"), served[name])
    assert fake_hub.requests == []

    assert hub.main(["pull"]) == 1
    assert "offline" in capsys.readouterr().err
