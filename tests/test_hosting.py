"""Issue 11: the app as a hostile caller sees it (one test per attack class), plus the library parts behind it.

The served app is driven through raw HTTP where an attacker would (``/gradio_api/call``, ``/run``, bodies
chosen by hand) and through ``gradio_client`` where a normal user would. Each session hash is new, so the
one-job-per-session rule never mixes tests.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kaldn.admission import SessionSlots, SingleFlight
from kaldn.comparison import run_comparison
from kaldn.runs import RunStore
from kaldn.errors import UserError
from kaldn.finetune import FineTuneManager, FineTuneSettings
from kaldn.session_models import SessionModels
from kaldn.images import load_image, save_png
from kaldn.inputs import prepare_inputs
from kaldn.workdirs import instance_root, sweep_dead_instances

from app_server import png_bytes, rng_image, running_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def served(throwaway):
    pytest.importorskip("gradio_client")
    with running_app(throwaway) as server:
        yield server


def session() -> str:
    return uuid.uuid4().hex[:11]


def call(url: str, api: str, data: list, session_hash: str | None = None, timeout: float = 120,
         headers: dict | None = None) -> dict:
    """One event through the queue by hand: {"refused": detail} before queueing, else {"error": message} or
    {"data": outputs}."""
    import httpx
    r = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data, "session_hash": session_hash}, timeout=30,
                   headers=headers)
    if r.status_code != 200:
        return {"refused": r.text, "status": r.status_code}
    try:
        text = httpx.get(f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=timeout).text
    except httpx.RemoteProtocolError:  # Gradio's /call stream can miss an event that ended before it connected
        return {"error": None, "queued": True}
    event, payload = None, None
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            payload = json.loads(line.split(":", 1)[1])
    if event == "complete":
        return {"data": payload}
    return {"error": (payload or {}).get("error") if isinstance(payload, dict) else str(payload)}


def upload(url: str, path: Path) -> dict:
    """A file as the page uploads it: Gradio saves it and names it; the payload that refers to it."""
    import httpx
    with open(path, "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f, "image/png")}, timeout=30)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def compare_data(image, gt=None, mode="hr", variants=("bicubic",)) -> list:
    return [mode, image, gt, 4, list(variants), "cpu", 64]


def output_files(value, found=None) -> list[str]:
    """Every file path in an endpoint's outputs."""
    found = [] if found is None else found
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            found.append(value["path"])
        for v in value.values():
            output_files(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            output_files(v, found)
    return found


# --- 1: no endpoint reads a file the client names --------------------------------------------------------

def test_1_no_endpoint_reads_a_server_file_outside_the_upload_folder(served, tmp_path):
    secret = rng_image(64, 64, seed=42)
    path = tmp_path / "server-secret.png"
    save_png(secret, path)
    missing = tmp_path / "does-not-exist.png"
    meta = {"_type": "gradio.FileData"}
    payloads = [{"path": str(path)}, {"path": str(path), "orig_name": "a.png"},
                {"path": str(path), "meta": meta}, {"path": str(path), "url": f"file://{path}", "meta": meta},
                {"url": f"file://{path}"}, str(path)]
    lr = tmp_path / "lr.png"
    save_png(rng_image(16, 16), lr)  # at x4 the secret is exactly the ground truth's size
    lr_upload = upload(served["url"], lr)
    assert "data" in call(served["url"], "compare", compare_data(lr_upload, mode="lr"), session())  # a real upload
    results = []
    for p in payloads:
        results.append(call(served["url"], "compare", compare_data(p), session()))
        results.append(call(served["url"], "compare", compare_data(lr_upload, p, mode="lr"), session()))
        results.append(call(served["url"], "hasty_relu", ["hr", p, None, 4], session()))
    for result in results:
        assert "data" not in result, result  # refused or an error, never an output
        for f in output_files(result.get("data")):
            assert not (Path(f).is_file() and np.array_equal(load_image(f)[..., :3], secret))
    # The answer does not depend on whether the path exists (nothing to learn about the server's files).
    a = call(served["url"], "compare", compare_data({"path": str(path)}), session())
    b = call(served["url"], "compare", compare_data({"path": str(missing)}), session())
    assert a == b and a["status"] == 400 and "not an upload this server holds" in a["refused"]
    assert str(tmp_path) not in a["refused"]
    # Without a path (only a URL) the handler refuses it, in the same words whatever the URL names.
    a = call(served["url"], "compare", compare_data({"url": f"file://{path}"}), session())
    b = call(served["url"], "compare", compare_data({"url": f"file://{missing}"}), session())
    assert a["error"] == b["error"] and "uploaded image file" in a["error"] and str(tmp_path) not in a["error"]


# --- 3: only the owner cancels a fine-tune ----------------------------------------------------------------

def test_3_cancel_without_a_session_or_by_another_session_is_refused(served):
    import httpx
    from gradio_client import Client
    app = served["app"]
    owner = Client(served["url"], verbose=False)
    job = owner.submit(None, True, "tiny-ldsconv-x2", app.FINETUNE.max_iters, 2e-4, 2, 16, api_name="/finetune")
    deadline = time.time() + 120
    while not app.FINETUNE.busy and time.time() < deadline:
        time.sleep(0.2)
    assert app.FINETUNE.busy
    r = httpx.post(f"{served['url']}gradio_api/run/cancel_finetune", json={"data": []}, timeout=30)
    assert r.status_code == 200  # answered, but nothing stopped
    call(served["url"], "cancel_finetune", [], session())
    time.sleep(2)
    assert app.FINETUNE.busy and not app.FINETUNE.job.stop.is_set()
    owner.predict(api_name="/cancel_finetune")
    status, *_ = job.result(timeout=180)
    assert "Cancelled" in status


# --- 4: the queue cannot be skipped -----------------------------------------------------------------------

def test_4_the_rest_route_of_a_queued_endpoint_is_closed(served):
    import httpx
    r = httpx.post(f"{served['url']}gradio_api/run/compare", json={"data": compare_data(None)}, timeout=30)
    assert r.status_code == 404 and "queue" in r.text


# --- 5: the upload cap holds for every way a file can arrive ----------------------------------------------

def test_5_inline_files_and_oversized_bodies_are_refused(served):
    import httpx
    png = png_bytes(rng_image(8, 8))
    inline = {"url": "data:image/png;base64," + base64.b64encode(png).decode(), "meta": {"_type": "gradio.FileData"}}
    result = call(served["url"], "compare", compare_data(inline), session())
    assert "uploaded image file" in result["error"]
    larger = {**inline, "url": "data:image/png;base64," + base64.b64encode(png_bytes(rng_image(64, 64))).decode()}
    r = httpx.post(f"{served['url']}gradio_api/call/compare", json={"data": compare_data(larger), "session_hash": "x"},
                   timeout=30)
    assert r.status_code == 413 and "upload route" in r.text  # a string longer than any event sends
    big = {"url": "data:image/png;base64," + "A" * (3 << 20)}  # 3 MiB of base64: over the body cap, never decoded
    r = httpx.post(f"{served['url']}gradio_api/call/compare", json={"data": compare_data(big), "session_hash": "x"},
                   timeout=30)
    assert r.status_code == 413
    r = httpx.post(f"{served['url']}gradio_api/queue/join", content=b"{" * (2 << 20),
                   headers={"content-type": "application/json", "transfer-encoding": "chunked"}, timeout=30)
    assert r.status_code == 413


def test_5_a_file_named_by_url_is_refused_before_gradio_fetches_it(served, monkeypatch, tmp_path):
    """Gradio downloads a FileData whose path is a URL (an allow-listed public host, any size) while it
    prepares inputs, before any validator or handler runs; the app refuses such a body at the door."""
    import httpx
    import gradio.processing_utils
    fetched = []

    async def record(url, cache_dir):
        fetched.append(url)
        raise RuntimeError("not fetched in tests")

    monkeypatch.setattr(gradio.processing_utils, "async_ssrf_protected_download", record)
    remote = {"path": "https://huggingface.co/org/repo/resolve/main/huge.png", "meta": {"_type": "gradio.FileData"}}
    for route, body in [("call/compare", {"data": compare_data(remote), "session_hash": session()}),
                        ("call/hasty_relu", {"data": ["hr", {**remote, "path": " HTTPS://hf.co/x.png"}, None, 4]}),
                        ("queue/join", {"data": compare_data(remote), "fn_index": 0, "session_hash": session()})]:
        r = httpx.post(f"{served['url']}gradio_api/{route}", json=body, timeout=30)
        assert r.status_code == 400 and "upload" in r.text, (route, r.status_code, r.text)
    assert fetched == []
    # A page upload's payload carries an http `url` beside its local path: still admitted and run.
    save_png(rng_image(32, 32), tmp_path / "small.png")
    page = upload(served["url"], tmp_path / "small.png")
    page["url"] = f"{served['url']}gradio_api/file={page['path']}"
    assert "data" in call(served["url"], "compare", compare_data(page), session())


# --- 6: one client cannot fill the queue ------------------------------------------------------------------

def test_6_one_session_has_one_job_queued_others_still_get_in(served):
    from concurrent.futures import ThreadPoolExecutor
    from gradio_client import handle_file  # noqa: F401 - the client must be installed for the served app
    flood = session()
    image = upload(served["url"], EXAMPLE)  # a job of a few seconds: all eight arrive while it runs
    job = compare_data(image, variants=["bicubic", "ldsconv", "kdsconv-det", "dsconv"])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(served["url"], "compare", job, flood), range(8)))
    refused = [r for r in results if "refused" in r]
    assert len(refused) == 7 and all("already have a comparison waiting or running" in r["refused"]
                                     for r in refused)
    other = call(served["url"], "compare", compare_data(None), session())
    assert "refused" not in other  # queued and run (ending with the user's own error: no image)
    time.sleep(0.5)
    again = call(served["url"], "compare", compare_data(None), flood)
    assert "refused" not in again  # its slot came back when its job ended
    no_session = call(served["url"], "compare", compare_data(None), None)
    assert no_session["status"] == 400 and "No session" in no_session["refused"]  # no session: no job, said so


def test_6_one_client_address_has_three_jobs_over_all_its_sessions(served):
    # Sessions are made up by the client; its address is not. The test client is on loopback, which uvicorn
    # trusts as a proxy by default, so X-Forwarded-For stands in for addresses out on the internet.
    from concurrent.futures import ThreadPoolExecutor
    slots = served["app"].SLOTS
    assert slots.client_limit == 8  # the default, KALDN_APP_CLIENT_JOBS; three here, for a shorter test
    image = upload(served["url"], EXAMPLE)
    job = compare_data(image, variants=["bicubic", "ldsconv", "kdsconv-det", "dsconv"])
    one_address = {"X-Forwarded-For": "8.8.4.4"}
    saved, slots.client_limit = slots.client_limit, 3
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: call(served["url"], "compare", job, session(), headers=one_address),
                                    range(6)))
        refused = [r for r in results if "refused" in r]
        assert len(refused) == 3 and all("your address already has 3 jobs" in r["refused"] for r in refused)
        assert all("refused" not in r for r in (call(served["url"], "compare", job, session(),
                                                     headers={"X-Forwarded-For": "9.9.9.9"}),
                                                call(served["url"], "compare", job, session())))  # others, loopback
        time.sleep(0.5)
        assert "refused" not in call(served["url"], "compare", job, session(), headers=one_address)  # given back
    finally:
        slots.client_limit = saved


def test_6_a_proxy_uvicorn_does_not_trust_is_said_once_and_star_turns_the_bounds_off(served, caplog, monkeypatch):
    from types import SimpleNamespace
    app = served["app"]

    def request(host, forwarded=None):
        return SimpleNamespace(client=SimpleNamespace(host=host), headers={"x-forwarded-for": forwarded} if forwarded else {})
    monkeypatch.setattr(app, "_proxy_warned", False)
    assert app.client_of(request("8.8.4.4")) == "8.8.4.4" and app.client_of(None) is None
    with caplog.at_level(logging.WARNING, logger="kaldn.app"):
        assert app.client_of(request("10.16.3.80", "8.8.4.4")) is None
        assert app.client_of(request("10.16.3.81", "9.9.9.9")) is None
    assert sum("uvicorn does not trust" in r.message for r in caplog.records) == 1  # once, naming the fix
    monkeypatch.setattr(app, "_FORGEABLE", True)  # FORWARDED_ALLOW_IPS=*: the address is the client's to choose
    assert app.client_of(request("8.8.4.4")) is None


def test_6_only_a_global_address_is_one_client():
    from kaldn.admission import client_key
    assert client_key("8.8.4.4") == "8.8.4.4" and client_key("::ffff:8.8.4.4") == "8.8.4.4"
    # Loopback (the machine itself), a proxy or balancer uvicorn does not trust (every visitor would share its
    # address, so a few sessions would lock everyone out), a LAN, documentation ranges: nobody's.
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.16.3.80", "192.168.1.2", "fd00::1", "203.0.113.7",
                 "testclient", "", None):
        assert client_key(host) is None, host
    # One IPv6 subscriber holds a /56: its addresses are one client.
    assert client_key("2a00:1450:4001:81a::200e") == client_key("2a00:1450:4001:8ff:ffff::1") == "2a00:1450:4001:800::/56"
    assert client_key("2a00:1450:4001:900::1") != client_key("2a00:1450:4001:800::1")
    slots = SessionSlots(limit=1, client_limit=2)
    assert slots.admit("a", client="x") and slots.admit("b", client="x")
    assert slots.refusal("c", client="x") == "client" and slots.refusal("a", client="y") == "session"
    assert slots.admit("c", client="y") and slots.admit("d")  # others, no address
    slots.started("a"), slots.finished("a")
    assert slots.admit("e", client="x")
    views = SingleFlight(limit=4)  # half of the shared views per address
    assert views.enter("a", "x") and views.enter("b", "x") and not views.enter("c", "x")
    assert views.enter("c", "y") and views.enter("d") and not views.enter("e", "z")  # four in all
    views.leave("a", "x")
    assert views.enter("e", "x")


def test_6_a_slot_whose_job_left_the_queue_is_given_back():
    pending = {"s": 0}
    slots = SessionSlots(limit=1, pending=lambda s: pending[s], grace_s=0.05)
    assert slots.admit("s") and not slots.admit("s")  # on its way into the queue: counted
    time.sleep(0.06)
    assert slots.admit("s")  # the first one never reached the queue: stale, given back
    pending["s"] = 1
    time.sleep(0.06)
    assert not slots.admit("s")  # this one is in the queue: refused
    slots.started("s")
    slots.finished("s")
    assert slots.held("s") == 0 and slots.admit("s") and not slots.admit(None)
    # A refusal can say what the session is waiting for.
    named = SessionSlots(limit=1)
    assert named.admit("s", "a fine-tuning job") and not named.admit("s", "a comparison")
    assert named.holding("s") == ["a fine-tuning job"] and named.holding("t") == [] and named.holding(None) == []


# --- 7 and 10: session state holds an id; runs stay while their session does ---------------------------------

def _comparison(seed: int):
    return run_comparison(prepare_inputs(rng_image(64, 64, seed=seed), 2), ["bicubic"])


def test_7_runs_keep_arrays_within_a_memory_budget_and_read_them_back(tmp_path):
    one = _comparison(0)
    store = RunStore(tmp_path, memory_bytes=int(1.5 * (one.inputs.lr.nbytes + one.inputs.gt.nbytes
                                                       + one.results[0].image.nbytes)))
    first, run = store.save(one, owner="a")
    expected = run.comparison.results[0].image.copy()
    for i in range(1, 5):
        store.save(_comparison(i), owner=f"u{i}")
    assert store.memory() <= store.memory_bytes
    again = store.get(first, owner="a")  # stripped in memory, read back from its PNGs
    assert np.array_equal(again.comparison.results[0].image, expected)
    assert again.zoom(None, 16).crops and store.get(first, owner="someone else") is None


def test_7_the_session_state_holds_a_run_id_not_arrays(served):
    from gradio_client import Client, handle_file
    client = Client(served["url"], verbose=False)
    client.predict("hr", handle_file(str(EXAMPLE)), None, 4, ["bicubic"], "cpu", 64, api_name="/compare")
    values = [v for demo in list(served["app"]._DEMOS) for h, s in demo.state_holder.session_data.items()
              if h == client.session_hash for v in s.state_data.values()]
    assert len(values) == 1 and isinstance(values[0], str)
    run = served["app"].RUNS.get(values[0], client.session_hash)
    assert run is not None and run.comparison.inputs.gt.shape == (256, 256, 3)


def test_10_a_live_run_survives_any_number_of_later_runs(tmp_path):
    store = RunStore(tmp_path, memory_bytes=0)
    mine, run = store.save(_comparison(0), owner="me")
    for i in range(40):
        store.save(_comparison(i % 3), owner=f"other{i}")
    assert run.folder.is_dir() and store.get(mine, "me") is not None
    assert Path(store.get(mine, "me").slider("bicubic", "gt")[0]).is_file()
    store.save(_comparison(1), owner="me")  # the owner's next run replaces it
    assert not run.folder.exists() and store.get(mine, "me") is None
    store.drop_owner("me")
    assert len(store) == 40


# --- 8: fine-tuning is bounded in time, images and memory ------------------------------------------------

@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(3):
        save_png(rng_image(64, 64, seed=i), tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    return paths


def test_8_finetune_caps_and_time_budget(use_throwaway, tmp_path, images):
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs", max_iters=100000, time_budget_s=3,
                              max_images=2, max_total_pixels=64 * 64 * 2, max_batch_pixels=16 * 48 * 48)
    settings = FineTuneSettings("tiny-ldsconv-x2", iters=100000, lr=2e-4, batch=2, patch=16, device="cpu")
    with pytest.raises(UserError, match="limit on this server is 2"):
        manager.start(images, settings, owner="a")
    with pytest.raises(UserError, match="KALDN_FINETUNE_MAX_BATCH_PIXELS"):
        manager.start(images[:2], FineTuneSettings("tiny-ldsconv-x2", 10, 2e-4, batch=32, patch=96), owner="a")
    manager.max_total_pixels = 64 * 64
    with pytest.raises(UserError, match="KALDN_FINETUNE_MAX_TOTAL_PIXELS"):
        manager.start(images[:2], settings, owner="a")
    assert not manager.busy and list((tmp_path / "jobs").iterdir()) == []  # refused jobs leave nothing
    manager.max_total_pixels = 64 * 64 * 2
    t0 = time.time()
    *_, last = manager.run(images[:2], settings, owner="a", min_interval=0.0)
    assert time.time() - t0 < 60 and "time budget" in last.status and last.entry is not None


# --- 9: nothing is left behind ----------------------------------------------------------------------------

def test_9_job_folders_go_with_failures_abandoned_jobs_and_their_owner(use_throwaway, tmp_path, images):
    root = tmp_path / "jobs"
    manager = FineTuneManager(SessionModels(), root=root, max_iters=1000)
    settings = FineTuneSettings("tiny-ldsconv-x2", iters=1000, lr=2e-4, batch=2, patch=16, device="cpu")
    updates = manager.run(images, settings, owner="a", min_interval=0.0)
    next(updates)
    updates.close()  # the user went away
    assert list(root.iterdir()) == []
    *_, last = manager.run(images, FineTuneSettings("tiny-ldsconv-x2", 10, 2e-4, 2, 16, "cpu"), owner="a")
    assert last.entry.path.is_dir()
    assert manager.registry.drop_owner("a") == 1 and list(root.iterdir()) == []


def test_9_instances_sweep_what_dead_ones_left_and_nothing_else(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"{int(dead.stdout)}-0123abcd"
    (leftover / "job1" / "run" / "last").mkdir(parents=True)
    (leftover / "job1" / "run" / "last" / ".model.safetensors.x.tmp").write_bytes(b"")
    alive = tmp_path / f"{os.getppid()}-89abcdef"  # the parent process: alive
    alive.mkdir()
    other = tmp_path / "not-an-instance"
    other.mkdir()
    mine = instance_root(tmp_path)
    assert not leftover.exists() and alive.is_dir() and other.is_dir() and mine.is_dir()
    assert mine.name.startswith(f"{os.getpid()}-") and instance_root(tmp_path) == mine
    assert sweep_dead_instances(tmp_path) == []


# --- 11: fine-tuned models are private to their session ---------------------------------------------------

def test_11_another_sessions_fine_tuned_model_is_invisible_and_unusable(served, throwaway):
    from gradio_client import Client
    app = served["app"]
    entry = app.SESSION_MODELS.add(throwaway / "tiny-ldsconv-x4", "tiny-ldsconv-x4", owner="someone-else")
    try:
        client = Client(served["url"], verbose=False)
        variants, bases, hows = client.predict(4, ["bicubic"], None, None, api_name="/refresh_models")
        assert entry.key not in [c[1] for c in variants["choices"]]
        assert entry.key not in [c[1] for c in bases["choices"]] + [c[1] for c in hows["choices"]]
        result = call(served["url"], "compare", compare_data(None, variants=["bicubic", entry.key]), session())
        assert "Upload an image" in result["error"]
        from kaldn.choices import resolve_variant
        with pytest.raises(UserError, match="not one of this session's models"):
            resolve_variant(entry.key, 4, app.SESSION_MODELS.for_owner(client.session_hash))
        assert resolve_variant(entry.key, 4, app.SESSION_MODELS.for_owner("someone-else")).ref == str(entry.path)
    finally:
        app.SESSION_MODELS.drop_owner("someone-else")


# --- 12: messages name the upload, not the server; user errors are one log line ----------------------------

def test_12_messages_name_the_upload_and_user_errors_log_one_line(served, tmp_path, capfd, caplog):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio.utils import get_upload_folder
    bad = tmp_path / "holiday photo.png"
    bad.write_text("not an image")
    client = Client(served["url"], verbose=False)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="kaldn.app"), pytest.raises(AppError) as err:
        client.predict("hr", handle_file(str(bad)), None, 4, ["bicubic"], "cpu", 64, api_name="/compare")
    message = str(err.value)
    assert "'holiday photo.png'" in message and get_upload_folder() not in message and "PIL" not in message
    out, errors = capfd.readouterr()
    assert "Traceback" not in out + errors
    assert [r for r in caplog.records if "holiday photo.png" in r.getMessage()]


def test_12_a_damaged_checkpoint_is_reported_without_its_path(tmp_path):
    folder = tmp_path / "ft"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"junk")
    (folder / "config.json").write_text(json.dumps({"model": "tiny-ldsconv-x2", "scale": 2}))
    registry = SessionModels()
    entry = registry.add(folder, "tiny-ldsconv-x2", owner="a")
    result = run_comparison(prepare_inputs(rng_image(32, 32), 2), ["bicubic", entry.key],
                            registry=registry.for_owner("a")).result(entry.key)
    assert result.status == "error" and str(tmp_path) not in result.message and "damaged" in result.message


# --- found by a hostile review after the merge --------------------------------------------------------------

def test_views_run_outside_the_queue_one_per_session_and_bounded(served):
    import httpx
    dependencies = httpx.get(f"{served['url']}config", timeout=30).json()["dependencies"]
    queued = {d.get("api_name"): d.get("queue") for d in dependencies}
    for view in ("slider_pair", "zoom", "select_region", "kernels", "kernel_model", "open_how_it_works",
                 # and the cheap lists and tables, which had no validator to stop one session filling the queue
                 "set_mode", "variant_choices", "zoo", "results", "refresh_models", "refresh_after_finetune",
                 "refresh_after_checkpoint"):
        assert queued[view] is False, view  # a flood of views cannot fill the queue the jobs wait in
    guard = SingleFlight(limit=2)
    assert guard.enter("a") and not guard.enter("a")  # one view per session at a time
    assert guard.enter("b") and not guard.enter("c")  # and a bound on all of them
    assert not guard.enter(None)  # no session, no view
    guard.leave("a")
    assert guard.enter("c")
    lists = SingleFlight(limit=3, per_session=2)
    assert lists.enter("a") and lists.enter("a") and not lists.enter("a")  # two per session
    assert lists.enter("b") and not lists.enter("c")  # three in all
    lists.leave("a")
    assert lists.enter("c") and not lists.enter("a")
    lists.leave("a"), lists.leave("a")
    assert lists.enter("a")
    # Every queued event but the cheap ones has a validator: nothing else one session can pile into the queue.
    demo = next(iter(served["app"]._DEMOS))
    unguarded = [f.api_name or f.name for f in demo.fns.values() if f.queue and f.validator is None
                 and not f.is_validator_function]
    assert unguarded == ["end_session"], unguarded  # the unload listener: Gradio runs it on a disconnect
    # Every job that runs a model but fine-tuning (a line of its own) waits in one line (one heavy job at a time,
    # per the limit); the input checks,
    # which only decode the upload, in a second line of their own, one at a time, not behind the comparisons.
    lines = {f.api_name: (f.concurrency_id, f.concurrency_limit) for f in demo.fns.values()
             if f.api_name in ("compare", "check_compare", "check_upload", "add_checkpoint", "hasty_relu",
                               "compare_example", "check_compare_example")}
    assert len(lines) == 7, lines
    heavy = {name: line for name, line in lines.items() if not name.startswith("check_")}
    checks = {name: line for name, line in lines.items() if name.startswith("check_")}
    assert {line[0] for line in heavy.values()} == {"compute"}, heavy
    assert set(checks.values()) == {("checks", 1)}, checks


def test_a_path_ending_in_upload_is_not_exempt_from_the_body_cap(served):
    import httpx
    for route in ("gradio_api/call/upload", "gradio_api/call/v2/upload", "gradio_api/call/upload/"):
        r = httpx.post(f"{served['url']}{route}", content=b"{" + b" " * (2 << 20) + b"}",
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413, route


def test_duplicate_and_padded_variant_names_run_once_and_the_list_is_capped():
    inputs = prepare_inputs(rng_image(24, 24), 2, "lr")
    comparison = run_comparison(inputs, ["bicubic", " bicubic", "bicubic\t", "bicubic  "])
    assert [r.key for r in comparison.results] == ["bicubic"]
    with pytest.raises(UserError, match="At most"):
        run_comparison(inputs, [f"x{i}" for i in range(40)])


def test_one_owner_cannot_evict_another_owners_fine_tuned_models(tmp_path):
    registry = SessionModels(cap=2, total_cap=4)
    victim = registry.add(tmp_path / "v", "tiny-ldsconv-x2", owner="victim")
    for i in range(6):
        registry.add(tmp_path / f"a{i}", "tiny-ldsconv-x2", owner="attacker")
    assert registry.for_owner("victim").get(victim.key) is not None
    assert len(registry.for_owner("attacker").items()) == 2  # its own oldest went
    registry.add(tmp_path / "b0", "tiny-ldsconv-x2", owner="b")
    from kaldn.errors import BusyError
    with pytest.raises(BusyError):  # full: refused, nobody's model deleted
        registry.add(tmp_path / "c0", "tiny-ldsconv-x2", owner="c")
    assert registry.for_owner("victim").get(victim.key) is not None


def test_one_address_with_many_sessions_cannot_take_every_model_place(tmp_path):
    """Sessions are free to make: one address's models over all its sessions are bounded (a quarter of the
    server's places by default), so others still have room; its own sessions still replace their oldest."""
    from kaldn.errors import BusyError
    registry = SessionModels(cap=1, total_cap=8)
    assert registry.client_cap == 2
    for s in range(2):
        registry.add(tmp_path / f"a{s}", "tiny-ldsconv-x2", owner=f"s{s}", client="203.0.113.7")
    with pytest.raises(BusyError, match="Your address already holds 2"):
        registry.add(tmp_path / "a2", "tiny-ldsconv-x2", owner="s2", client="203.0.113.7")
    assert not registry.has_room("s2", "203.0.113.7") and registry.has_room("s2", "198.51.100.1")
    with pytest.raises(BusyError, match="Your address"):
        registry.require_room("s9", "203.0.113.7")  # refused before the costly work, too
    kept = registry.add(tmp_path / "b", "tiny-ldsconv-x2", owner="victim", client="198.51.100.1")
    assert registry.for_owner("victim").get(kept.key) is not None
    # A session at its own cap replaces its oldest, which frees the address's place it held.
    first = registry.for_owner("s0").items()[0]
    again = registry.add(tmp_path / "a3", "tiny-ldsconv-x2", owner="s0", client="203.0.113.7")
    assert registry.for_owner("s0").items() == [again] and registry.get(first.key) is None
    assert len(registry.for_owner("s1").items()) == 1  # the address's other session keeps its model
    # Where the address is unknown (a private network, or the bounds off) only the per-session bounds hold.
    assert SessionModels(cap=1, total_cap=8, client_cap=0).has_room("x", "203.0.113.7")
    assert registry.has_room("s5", None)


def test_work_that_finishes_after_its_session_ended_is_not_kept(tmp_path):
    """A cancelled fine-tune registers its model, a comparison saves its run, after the page closed: both
    are deleted at once instead of waiting, counted against the server's caps, for an expiry."""
    registry = SessionModels()
    started = time.monotonic()
    kept = registry.add(tmp_path / "k", "tiny-ldsconv-x2", owner="gone")
    assert registry.end_owner("gone") == 1 and registry.for_owner("gone").get(kept.key) is None
    folder = tmp_path / "late"
    folder.mkdir()
    with pytest.raises(UserError, match="session has ended"):
        registry.add(folder / "model", "tiny-ldsconv-x2", delete_dir=folder, owner="gone", since=started)
    assert not folder.exists() and registry.items() == []
    assert registry.add(tmp_path / "o", "tiny-ldsconv-x2", owner="other").owner == "other"  # others unaffected
    # A page whose connection dropped goes on under the same session: what it starts afterwards is kept.
    assert registry.add(tmp_path / "n", "tiny-ldsconv-x2", owner="gone", since=time.monotonic()).owner == "gone"

    store = RunStore(tmp_path / "runs")
    comparison = run_comparison(prepare_inputs(rng_image(24, 24), 2, "lr"), ["bicubic"])
    started = time.monotonic()
    store.save(comparison, owner="gone")
    store.end_owner("gone")
    with pytest.raises(UserError, match="session has ended"):
        store.save(comparison, owner="gone", since=started)
    assert list((tmp_path / "runs").iterdir()) == []  # neither the old run nor the late one left files
    assert store.save(comparison, owner="other")[1].folder.exists()
    assert store.save(comparison, owner="gone", since=time.monotonic())[1].folder.exists()


def test_ended_sessions_are_remembered_for_a_while_and_boundedly():
    from kaldn.admission import EndedSessions
    ended = EndedSessions(keep_s=3600, cap=3)
    for s in "abcd":
        ended.end(s)
    assert [ended.ended(s) for s in "abcd"] == [False, True, True, True]  # the oldest beyond the cap forgotten
    assert not ended.ended(None) and not ended.ended("e")
    assert ended.ended("d", since=0.0) and not ended.ended("d", since=time.monotonic())  # only work begun before
    brief = EndedSessions(keep_s=0.0)
    brief.end("a")
    time.sleep(0.01)
    assert not brief.ended("a")


def test_expiring_keys_keep_the_newest_notes_within_cap_and_time():
    from kaldn.expiring import ExpiringKeys
    keys = ExpiringKeys(keep_s=3600, cap=2)
    keys.note("a"), keys.note("b"), keys.note("a")  # noting "a" again makes it the newest
    keys.note("c")
    assert keys.noted_at("b") is None and keys.noted_at("a") is not None and keys.noted_at("c") is not None
    keys.keep_s = 0.0
    time.sleep(0.01)
    assert keys.noted_at("a") is None and keys.noted_at("c") is None


def test_forgotten_session_models_leave_the_model_cache(tmp_path):
    """A model its session no longer has is dropped from the loaded-model cache too, not kept until LRU
    pushes it out: evicted beyond the owner's cap, dropped with the session, or expired unused."""
    from kaldn.cache import ModelCache

    cache = ModelCache()
    registry = SessionModels(cap=1, max_idle_s=3600, on_forget=cache.forget)
    first = registry.add(tmp_path / "a", "tiny-ldsconv-x2", owner="s")
    cache._raw[str(first.path)] = torch.nn.Identity()
    cache._prepared[(str(first.path), "cpu")] = torch.nn.Identity()
    second = registry.add(tmp_path / "b", "tiny-ldsconv-x2", owner="s")  # evicts the first (cap 1)
    cache._raw[str(second.path)] = torch.nn.Identity()
    assert str(first.path) not in cache._raw and (str(first.path), "cpu") not in cache._prepared
    assert str(second.path) in cache._raw
    registry.drop_owner("s")
    assert str(second.path) not in cache._raw
    third = registry.add(tmp_path / "c", "tiny-ldsconv-x2", owner="t")
    cache._raw[str(third.path)] = torch.nn.Identity()
    registry.max_idle_s = -1  # everything is now idle too long
    assert registry.expire() == 1 and str(third.path) not in cache._raw


def test_a_model_found_nowhere_is_not_looked_up_again_for_a_while(monkeypatch):
    """Each lookup holds the cache's lock (and may wait on the Hub): a client naming missing models over and
    over must not stall everyone's views and runs."""
    from kaldn import cache as cache_module
    from kaldn.cache import ModelCache
    calls = []

    def missing(ref, source="auto"):
        calls.append(ref)
        raise FileNotFoundError(ref)

    monkeypatch.setattr(cache_module, "load_model", missing)
    cache = ModelCache(missing_ttl_s=3600)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            cache.raw("paper-dsconv-x2")
    assert calls == ["paper-dsconv-x2"]  # looked up once
    cache._missing.keep_s = 0.0  # the while is over: looked up again
    with pytest.raises(FileNotFoundError):
        cache.raw("paper-dsconv-x2")
    assert len(calls) == 2


def test_a_slow_load_does_not_hold_up_models_already_in_memory(monkeypatch):
    """A load (maybe a Hub round trip) holds its own model's lock, not the cache's: a view or run of a model in
    memory goes on meanwhile; two requests for the model being loaded share one load."""
    import threading
    from kaldn import cache as cache_module
    from kaldn.cache import ModelCache
    release, calls = threading.Event(), []

    def slow(ref, source="auto"):
        calls.append(ref)
        if ref == "slow":
            assert release.wait(30)
        return torch.nn.Conv2d(1, 1, 1)

    monkeypatch.setattr(cache_module, "load_model", slow)
    cache = ModelCache()
    fast = cache.raw("fast")
    got: list = []
    loaders = [threading.Thread(target=lambda: got.append(cache.raw("slow"))) for _ in range(2)]
    for t in loaders:
        t.start()
    deadline = time.monotonic() + 30
    while calls.count("slow") < 1:
        assert time.monotonic() < deadline, "the slow load never started"
        time.sleep(0.01)
    done = threading.Event()
    threading.Thread(target=lambda: (cache.raw("fast"), cache.prepared("fast", "cpu"), done.set())).start()
    assert done.wait(10)  # served while "slow" still loads
    release.set()
    for t in loaders:
        t.join(10)
    assert not any(t.is_alive() for t in loaders) and len(got) == 2 and got[0] is got[1]  # one load, shared
    assert calls == ["fast", "slow"] and cache.raw("fast") is fast


def test_a_model_forgotten_while_it_loads_is_not_kept(monkeypatch):
    """A session model forgotten (its session ended, its folder deleted) while a request loads it: the load
    still answers that request but does not put the model back into the cache, nor its prepared copy."""
    import threading
    from kaldn import cache as cache_module
    from kaldn.cache import ModelCache
    started, release = threading.Event(), threading.Event()

    def slow(ref, source="auto"):
        started.set()
        assert release.wait(30)
        return torch.nn.Conv2d(1, 1, 1)

    monkeypatch.setattr(cache_module, "load_model", slow)
    cache = ModelCache()
    results = []
    loader = threading.Thread(target=lambda: results.append(cache.prepared("/runs/up-1/model", "cpu")))
    loader.start()
    assert started.wait(10)
    cache.forget("/runs/up-1/model")  # does not wait for the load
    release.set()
    loader.join(10)
    assert results and "/runs/up-1/model" not in cache._raw and not cache._prepared and not cache._loading


def test_names_remote_file_finds_a_url_path_at_any_depth_and_nothing_else():
    from kaldn.admission import names_remote_file
    assert names_remote_file({"data": [1, {"x": [{"path": "http://a/b.png"}]}]})
    assert names_remote_file([{"path": "  HTTPS://a/b.png"}])
    assert not names_remote_file({"data": [{"path": "/tmp/gradio/x.png", "url": "http://host/gradio_api/file=x"}]})
    assert not names_remote_file({"data": ["http://a/b.png", {"url": "https://a/b.png"}], "path": 3})


def test_a_quiet_server_still_deletes_expired_runs_and_session_models(served, tmp_path):
    """Saving a run or adding a model sweeps; the app's sweeper thread also does when nothing happens."""
    app = served["app"]
    assert app._SWEEPER.is_alive()
    folder = tmp_path / "model"
    folder.mkdir()
    entry = app.SESSION_MODELS.add(folder, "tiny-ldsconv-x2", delete_dir=folder, owner="quiet")
    run_id, run = app.RUNS.save(run_comparison(prepare_inputs(rng_image(24, 24), 2, "lr"), ["bicubic"]), "quiet")
    app.sweep_expired()  # nothing has expired yet
    assert folder.is_dir() and run.folder.is_dir()
    entry.last_used -= app.SESSION_MODELS.max_idle_s + 1
    app.RUNS._runs[run_id].created -= app.RUNS.max_age_s + 1
    app.SWEEP_NOW.set()  # the sweeper thread's next round, now instead of within a minute
    deadline = time.time() + 10
    while (folder.exists() or run.folder.exists()) and time.time() < deadline:
        time.sleep(0.05)
    assert not folder.exists() and app.SESSION_MODELS.get(entry.key) is None
    assert not run.folder.exists() and app.RUNS.get(run_id, "quiet") is None


def _asgi_call(app, path: str, chunks: list[bytes], headers: list | None = None,
               client: str | None = None) -> tuple[int, bytes]:
    """One POST through an ASGI app, the body in ``chunks``, from ``client``'s address: (status, body)."""
    import asyncio
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or [], "client": (client, 5000)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _echo(scope, receive, send):
    """The app behind the middleware: answers 200 with the body it read."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_uploads_are_capped_and_wait_for_disk_declared_or_not(tmp_path, monkeypatch):
    from kaldn import admission
    from kaldn.admission import BodyLimit
    length = lambda n: [(b"content-length", str(n).encode())]  # noqa: E731
    guard = BodyLimit(_echo, max_body=10, max_upload=100, min_free=1, disk=str(tmp_path))
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 60, b"x" * 30], length(90))[0] == 200  # over max_body
    code, text = _asgi_call(guard, "/gradio_api/upload", [b"x" * 120], length(120))  # judged before reading
    assert code == 413 and b"Upload over 100 bytes" in text
    # Declaring nothing, or a small length beside Transfer-Encoding (which the server then ignores): counted.
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 60, b"x" * 60])[0] == 413
    chunked = length(1) + [(b"transfer-encoding", b"chunked")]
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 60, b"x" * 60], chunked)[0] == 413
    assert _asgi_call(guard, "/gradio_api/queue/join", [b"x" * 6, b"x" * 5])[0] == 413
    short = BodyLimit(_echo, max_body=10, max_upload=100, min_free=1 << 62, disk=str(tmp_path / "not" / "yet"))
    code, text = _asgi_call(short, "/gradio_api/upload", [b"x"], length(1))
    assert code == 507 and b"disk space" in text
    assert _asgi_call(short, "/gradio_api/queue/join", [b"x"])[0] == 200  # only uploads wait for disk
    # The disk runs short while an upload arrives (other uploads fill it): stopped on the next check.
    free = iter([10_000, 10_000, 0])
    monkeypatch.setattr(admission, "_free_bytes", lambda path: next(free))
    filling = BodyLimit(_echo, max_body=10, max_upload=1000, min_free=100, disk=str(tmp_path))
    filling.DISK_CHECK_BYTES = 50
    code, text = _asgi_call(filling, "/gradio_api/upload", [b"x" * 60, b"x" * 60, b"x" * 60], length(180))
    assert code == 507 and b"disk space" in text


def test_checked_bodies_pass_the_body_on_intact_and_refuse_urls_and_oversized_values():
    import json as _json
    from kaldn.admission import MAX_BODY_STRING, MAX_BODY_VALUES, BodyLimit, CheckedBodies
    guard = BodyLimit(CheckedBodies(_echo), max_body=1 << 20)
    body = _json.dumps({"data": [{"path": "/tmp/gradio/a.png", "url": "http://host/gradio_api/file=a"}]}).encode()
    assert _asgi_call(guard, "/gradio_api/queue/join", [body[:10], body[10:]]) == (200, body)  # chunked, replayed
    assert _asgi_call(guard, "/gradio_api/queue/join", [b"not json"]) == (200, b"not json")  # Gradio's to refuse
    remote = _json.dumps({"data": [[{"path": "https://hf.co/big.bin"}]]}).encode()
    code, text = _asgi_call(guard, "/gradio_api/queue/join", [remote])
    assert code == 400 and b"named by URL" in text
    assert _asgi_call(guard, "/gradio_api/queue/join", [b"[" * 100_000])[0] == 200  # too deep to parse: passed on
    assert _asgi_call(guard, "/gradio_api/queue/join", [b"x" * (2 << 20)])[0] == 413  # the cap still holds inside
    # Gradio keeps every input's value in the session's state before any check: no more than the app sends.
    files = [{"path": f"/tmp/gradio/{i:064x}/photo.png", "url": "http://host/gradio_api/file=x", "size": 1,
              "orig_name": "photo.png", "mime_type": "image/png", "is_stream": False,
              "meta": {"_type": "gradio.FileData"}} for i in range(8)]
    finetune = _json.dumps({"data": [files, False, "tiny-kdsconv-det-x4", 200, 2e-4, 16, 48], "fn_index": 3,
                            "session_hash": "abc", "event_data": None, "trigger_id": 9}).encode()
    assert _asgi_call(guard, "/gradio_api/queue/join", [finetune]) == (200, finetune)  # the largest event
    for data, what in (([[]] * MAX_BODY_VALUES, b"more than"), (["x" * (MAX_BODY_STRING + 1)], b"a string over"),
                       ([{"k" * (MAX_BODY_STRING + 1): 1}], b"a string over")):
        code, text = _asgi_call(guard, "/gradio_api/run/zoo", [_json.dumps({"data": data}).encode()])
        assert code == 413 and what in text, data[:2]


def test_the_upload_cap_follows_the_file_size_cap_and_the_image_count(monkeypatch):
    from kaldn.settings import AppSettings, file_size_bytes
    assert file_size_bytes("25mb") == 25 << 20 and file_size_bytes("1 GB") == 1 << 30 and file_size_bytes(7) == 7
    for bad in ("mb", "25xb", ""):
        with pytest.raises(ValueError):
            file_size_bytes(bad)
    monkeypatch.setenv("KALDN_APP_MAX_FILE_SIZE", "10mb")
    monkeypatch.setenv("KALDN_FINETUNE_MAX_IMAGES", "3")
    assert AppSettings.from_env().upload_cap == 3 * (10 << 20) + (1 << 20)  # every image at the cap, one request
    monkeypatch.setenv("KALDN_APP_MAX_UPLOAD_BODY", "5000")
    assert AppSettings.from_env().upload_cap == 5000
    # 0 turns the disk check and the fine-tune turns off; it is no cap for the others (the default stays).
    for name in ("KALDN_APP_MIN_FREE_DISK", "KALDN_FINETUNE_TURN_S", "KALDN_APP_VIEWS"):
        monkeypatch.setenv(name, "0")
    settings = AppSettings.from_env()
    assert settings.min_free_disk == 0 and settings.finetune_turn_s == 0 and settings.views == AppSettings().views


def test_the_app_serves_the_bundled_weights_unless_told_otherwise(monkeypatch):
    """The results the app shows describe the bundled files, so it reads no repository unless the owner names
    one; an unknown source falls back to that default instead of failing every load later."""
    from kaldn.settings import AppSettings
    monkeypatch.delenv("KALDN_APP_MODEL_SOURCE", raising=False)
    assert AppSettings.from_env().model_source == "bundled"
    monkeypatch.setenv("KALDN_APP_MODEL_SOURCE", "hub")
    assert AppSettings.from_env().model_source == "hub"
    for bad in ("local", "/etc", "HUB"):
        monkeypatch.setenv("KALDN_APP_MODEL_SOURCE", bad)
        assert AppSettings.from_env().model_source == "bundled", bad


def test_a_busy_server_keeps_the_page_load_quiet_and_says_so_elsewhere(served):
    """With the lists' limiter full for a session, the page-load refresh leaves the lists as built (no error
    toast on every visit); a list asked for explicitly says the server is busy."""
    import httpx
    app, sid = served["app"], session()
    payload = {"data": [4, ["bicubic"], None, None], "session_hash": sid}
    r = httpx.post(f"{served['url']}gradio_api/run/refresh_models", json=payload, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"]) == 3
    for _ in range(app.LISTS.per_session):
        assert app.LISTS.enter(sid)
    try:
        r = httpx.post(f"{served['url']}gradio_api/run/refresh_models", json=payload, timeout=30)
        assert r.status_code == 200, r.text
        assert all(value == {"__type__": "update"} for value in r.json()["data"])  # gr.skip(): unchanged
        r = httpx.post(f"{served['url']}gradio_api/run/zoo", json={"data": ["all"], "session_hash": sid},
                       timeout=30)
        assert r.status_code != 200 and "One at a time" in r.text
    finally:
        for _ in range(app.LISTS.per_session):
            app.LISTS.leave(sid)


def test_a_megabyte_of_client_text_is_not_repeated_in_messages():
    """Messages (shown and logged) quote a client's value cut short, whatever it is."""
    from kaldn.choices import resolve_variant
    from kaldn.inputs import Inputs
    from kaldn.models import check_scale
    huge = "x" * 100_000
    small = Inputs(lr=np.zeros((8, 8, 3), np.uint8), gt=None, scale=4, mode="lr")
    for call in (lambda: check_scale(huge), lambda: resolve_variant(huge, 4),
                 lambda: run_comparison(small, ["bicubic"], device=huge),
                 lambda: FineTuneSettings.from_form("tiny-ldsconv-x2", huge, 1e-4, 4, 32)):
        with pytest.raises(UserError) as err:
            call()
        assert "100,002 characters" in str(err.value) and len(str(err.value)) < 2000


def test_a_runs_source_is_read_without_its_arrays(tmp_path):
    store = RunStore(tmp_path / "runs", memory_bytes=0)  # every run but the newest is stripped at once
    path = tmp_path / "a.png"
    save_png(rng_image(24, 24), path)
    first, _ = store.save(run_comparison(prepare_inputs(str(path), 2, "lr"), ["bicubic"]), owner="a")
    store.save(run_comparison(prepare_inputs(rng_image(24, 24), 2, "lr"), ["bicubic"]), owner="b")
    assert store.source(first, "a") == str(path) and store.source(first, "b") is None
    assert store.source(None, "a") is None and store.source("nope", "a") is None


def test_only_a_session_with_work_in_flight_is_remembered_as_ended():
    """Any client can "end" a made-up session (Gradio runs the unload listener on any dropped heartbeat):
    that must cost nothing, so only a session holding a job slot leaves a marker."""
    import app
    from kaldn.admission import EndedSessions
    request = lambda session: type("Request", (), {"session_hash": session})()  # noqa: E731
    app.end_session(request("made-up-1"))
    assert not app.RUNS._ended.ended("made-up-1") and not app.SESSION_MODELS._ended.ended("made-up-1")
    assert app.SLOTS.admit("busy-1", "a comparison")
    try:
        app.end_session(request("busy-1"))
    finally:
        app.SLOTS.started("busy-1")
        app.SLOTS.finished("busy-1")
    assert app.SLOTS.holding("busy-1") == []
    assert app.RUNS._ended.ended("busy-1") and app.SESSION_MODELS._ended.ended("busy-1")
    ended = EndedSessions()
    ended.end("x" * 65)
    assert not ended.ended("x" * 65)  # no session of Gradio's is that long


def test_checked_bodies_refuse_file_references_that_are_not_held_uploads(tmp_path):
    """Gradio adds every path under its cache that a body names to the set its hourly cleanup removes, before any
    handler runs: a folder there stopped that cleanup for good, made-up paths stayed in the set forever."""
    import json as _json
    from kaldn.admission import BodyLimit, CheckedBodies, stray_file_reference
    uploads = tmp_path / "gradio"
    (uploads / "abc").mkdir(parents=True)
    (uploads / "abc" / "a.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    (uploads / "abc" / "link.png").symlink_to(tmp_path / "outside.png")
    held = {"path": str(uploads / "abc" / "a.png"), "meta": {"_type": "gradio.FileData"}}
    assert not stray_file_reference({"data": [held, None, "x", {"url": "u"}]}, uploads)
    for path in (uploads, uploads / "abc", uploads / "abc" / "gone.png", uploads / "abc" / "link.png",
                 uploads / "abc" / ".." / ".." / "outside.png", tmp_path / "outside.png", "a\x00b", "/"):
        assert stray_file_reference({"data": [[held, {"path": str(path)}]]}, uploads), path
    guard = BodyLimit(CheckedBodies(_echo, uploads=uploads), max_body=1 << 20)
    body = _json.dumps({"data": [held, 4, "hr"]}).encode()
    assert _asgi_call(guard, "/gradio_api/queue/join", [body]) == (200, body)
    code, text = _asgi_call(guard, "/gradio_api/queue/join", [_json.dumps({"data": [{"path": str(uploads)}]}).encode()])
    assert code == 400 and b"not an upload this server holds" in text


def test_a_folder_named_as_a_file_is_refused_before_gradio_sees_it(served, tmp_path):
    """Through the served app: the upload folder itself, named as an image, never reaches Gradio's file set."""
    import httpx
    from gradio.utils import get_upload_folder
    demo = served["demo"]
    png = tmp_path / "fine.png"
    save_png(rng_image(48, 48), png)
    held = upload(served["url"], png)
    before = {f for s in demo.temp_file_sets for f in s}
    folder = {**held, "path": str(Path(held["path"]).parent)}
    for bad in (folder, {**held, "path": get_upload_folder()}, {**held, "path": held["path"] + ".gone"}):
        r = httpx.post(f"{served['url']}gradio_api/call/compare", json={"data": compare_data(bad), "session_hash": "x"},
                       timeout=30)
        assert r.status_code == 400 and "not an upload this server holds" in r.json()["detail"], bad  # shown
    r = httpx.post(f"{served['url']}gradio_api/run/status_after_change", json={"data": [folder, 4, "hr"]}, timeout=30)
    assert r.status_code == 400 and "not an upload this server holds" in r.json()["error"]  # outside the queue
    assert {f for s in demo.temp_file_sets for f in s} == before
    assert "data" in call(served["url"], "compare", compare_data(held), session())


def test_one_address_uploads_a_bounded_amount_within_the_time_uploads_are_kept(monkeypatch):
    """Each upload under the caps, one client could still fill the disk down to the floor that refuses everyone's
    uploads, and keep it there: an address has a byte budget over the time uploads are kept."""
    from kaldn import admission
    from kaldn.admission import BodyLimit
    clock = [1000.0]
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # not the server's clock
    length = lambda n: [(b"content-length", str(n).encode())]  # noqa: E731
    guard = BodyLimit(_echo, max_body=10, max_upload=100, client_upload=250, upload_window_s=7200)
    a, b = "8.8.4.4", "9.9.9.9"  # global addresses (documentation ranges are not)
    for _ in range(2):
        assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 90], length(90), client=a)[0] == 200
    code, text = _asgi_call(guard, "/gradio_api/upload", [b"x" * 90], length(90), client=a)  # declared: at once
    assert code == 429 and b"Your address uploaded" in text
    # Undeclared, it is stopped where it crosses the budget; what arrived counts (it was written too).
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 50, b"x" * 50], client=b)[0] == 200
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 50, b"x" * 50], client=b)[0] == 200
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 40, b"x" * 40], client=b)[0] == 429
    assert guard.ledger.used(b) == 280  # both chunks of the refused one arrived
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 5], length(5), client=a)[0] == 200  # 180 + 5: the refused one sent nothing
    assert _asgi_call(guard, "/gradio_api/queue/join", [b"x" * 5], client=a)[0] == 200  # only uploads count
    # Addresses that may be many clients' (a proxy uvicorn does not trust, a LAN) keep the other bounds only.
    for _ in range(4):
        assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 90], length(90), client="10.0.0.2")[0] == 200
    clock[0] += 7201  # the window passed: its uploads are gone from the disk, and from the count
    assert _asgi_call(guard, "/gradio_api/upload", [b"x" * 90], length(90), client=a)[0] == 200
    assert guard.ledger.used(a) == 90 and guard.ledger.used(b) == 0


def test_the_cache_sweep_survives_uploads_arriving_during_it_and_folders_in_it(tmp_path, monkeypatch):
    """Gradio's own sweep (delete_cache) walks the live set of cached files: an upload arriving meanwhile, or a
    folder named in it, ended the sweeping for good, and uploads then filled the disk. The app's sweep walks a
    copy, deletes only regular files and forgets what it cannot delete."""
    import os as _os
    from gradio.route_utils import delete_files_created_by_app
    from kaldn import workdirs
    from kaldn.workdirs import delete_expired_files
    old, kept = tmp_path / "old.png", tmp_path / "example.png"
    for f in (old, kept):
        f.write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    middle = time.time()
    time.sleep(0.05)
    young = tmp_path / "young.png"
    young.write_bytes(b"x")
    files = {str(p) for p in (old, young, kept, tmp_path / "folder", tmp_path / "gone.png")}
    real_lstat = _os.lstat

    def arriving(path):  # an upload lands while the sweep reads the disk
        files.add(str(tmp_path / f"new-{len(files)}.png"))
        return real_lstat(path)
    monkeypatch.setattr(workdirs, "os", SimpleNamespace(lstat=arriving, remove=_os.remove))  # this module's only
    monkeypatch.setattr(workdirs, "time", SimpleNamespace(time=lambda: middle + 100))  # old over 100 s, young under
    assert delete_expired_files(files, max_age_s=100, keep={str(kept)}) == 1
    assert not old.exists() and young.exists() and kept.exists() and (tmp_path / "folder").is_dir()
    assert not {str(old), str(tmp_path / "folder"), str(tmp_path / "gone.png")} & files
    assert {str(young), str(kept)} <= files and any("new-" in f for f in files)
    monkeypatch.undo()
    # Gradio's sweep, on such a set, stops at the first arrival (when this fails, Gradio fixed it).

    class Blocks:
        blocks: dict = {}
        temp_file_sets = [{str(young), str(kept)}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "lstat", lambda self: (Blocks.temp_file_sets[0].add(str(self) + "+"), real_lstat(self))[1])
        with pytest.raises(RuntimeError, match="changed size during iteration"):
            delete_files_created_by_app(Blocks, age=0)


def test_abandoned_uploads_are_deleted_once_untouched_for_the_age():
    """Gradio's parser writes an upload to a tmp* file in the upload folder and deletes it only on its own parse
    errors: an upload refused while arriving (over a cap, the disk, the address's budget) or dropped by its
    client stayed on disk in no file set. Finished uploads (subfolders) and other files are left alone."""
    import tempfile as _tempfile
    from kaldn import workdirs
    from kaldn.workdirs import delete_abandoned_uploads
    with _tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("tmpab_12cd3", "tmpab_12cd3.png", "notes.txt"):  # the parser's name, and others
            (root / name).write_bytes(b"x")
        (root / "tmpfolder").mkdir()
        (root / "0123abcd").mkdir()
        (root / "0123abcd" / "tmpphoto.png").write_bytes(b"x")
        assert delete_abandoned_uploads(root, 60) == 0  # all young
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(workdirs, "time", SimpleNamespace(time=lambda: time.time() + 61))  # this module's only
            assert delete_abandoned_uploads(root, 60) == 1
        assert sorted(p.name for p in root.iterdir()) == ["0123abcd", "notes.txt", "tmpab_12cd3.png", "tmpfolder"]
        assert delete_abandoned_uploads(root / "missing", 60) == 0


def test_the_sweep_deletes_gradios_cached_uploads_once_they_are_an_hour_old(served, monkeypatch):
    """The app's sweep empties Gradio's cache (its own delete_cache is off: it stopped for good on a busy server)
    and the upload folder's abandoned parts, sparing the examples. Last in this module: it empties the cache."""
    from gradio.utils import get_upload_folder
    app, demo = served["app"], served["demo"]
    png = Path(get_upload_folder()) / "kaldn-test.png"
    save_png(rng_image(48, 48), png)
    held = upload(served["url"], png)
    png.unlink()
    result = call(served["url"], "compare", compare_data(held), session())
    shown = output_files(result["data"])
    abandoned = Path(get_upload_folder()) / "tmpkaldn_te"  # as Gradio's parser names an arriving upload
    abandoned.write_bytes(b"x")
    examples = {f for block in demo.blocks.values() for f in getattr(block, "keep_in_cache", ())}
    assert examples and shown and all(Path(f).is_file() for f in [held["path"], *shown, *examples])
    app.sweep_expired()  # nothing is an hour old
    assert all(Path(f).is_file() for f in [held["path"], *shown, abandoned])
    monkeypatch.setattr(app, "UPLOAD_MAX_AGE_S", -1.0)
    app.sweep_expired()
    assert not any(Path(f).exists() for f in [held["path"], *shown, abandoned])
    assert all(Path(f).is_file() for f in examples)
    assert not {held["path"], *shown} & {f for files in demo.temp_file_sets for f in files}
