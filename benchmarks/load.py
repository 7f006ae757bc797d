"""Load test of the app: N concurrent users, then the same users beside a client that floods the queue.

    OMP_NUM_THREADS=1 python -m benchmarks.load [--users 20] [--flood 40] [--image examples/astronaut.png | cap]

Not a test: it starts ``python app.py`` itself on a free 127.0.0.1 port (offline, its
temporary files in a folder of its own), talks to it only through ``gradio_client``
and the app's ``/compare`` endpoint, and stops it at the end. Everything stays on
loopback and is bounded: at most ``--users`` + ``--flood`` + a few jobs, and a
deadline of ``--time-limit`` seconds for the whole run (jobs still pending then
count as failures and are cancelled).

Phases, each with its own peak server RSS (the app's process tree, sampled from
``/proc`` every 50 ms, so Linux only):

1. ``solo``: one user, ``--solo`` jobs one after the other (the first loads the
   models; the others give the time of one job on a warm server);
2. ``users``: ``--users`` clients, each with its own session, submit one
   comparison of the example image at the same moment;
3. ``users+flood``: one hostile client submits ``--flood`` comparisons as fast as
   it can, and 0.5 s later the same ``--users`` clients submit theirs.

It prints successes, failures (with the server's message), p50/p95/max latency
and peak RSS per phase, and how much longer the normal users waited beside the
flood, in units of one solo job. Targets (issue 11): 20 users, 0 failures, peak
RSS under 2 GiB at the default caps; the flood delays each normal user by at
most one job. ``--image cap`` uses a random image of the app's largest upload
(``KALDN_APP_MAX_PIXELS``, default 2048x2048) instead of the example: the
worst case for memory, and much slower on a CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "examples" / "astronaut.png"
MAX_USERS = 64
MAX_FLOOD = 256


# --- the server --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MiB (0 once it is gone)."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    """Samples the server's RSS every ``interval`` s; ``peak()`` since the last ``reset()``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self._peak = 0.0
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = tree_rss_mib(self.pid)
            with self._lock:
                self._peak = max(self._peak, rss)
            time.sleep(self.interval)

    def reset(self) -> None:
        with self._lock:
            self._peak = tree_rss_mib(self.pid)

    def peak(self) -> float:
        with self._lock:
            return max(self._peak, tree_rss_mib(self.pid))

    def stop(self) -> None:
        self._stop_event.set()


def start_app(port: int, workdir: Path, startup_s: float) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(workdir / "gradio"), "TMPDIR": str(workdir),
        "PYTHONUNBUFFERED": "1",
    })
    log = open(workdir / "server.log", "wb")
    # Its own session, so that stopping it stops its children too (and nothing else).
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + startup_s
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    tail = (workdir / "server.log").read_text(errors="replace")[-3000:]
    raise SystemExit(f"the app did not start within {startup_s:.0f} s:\n{tail}")


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --- the clients -------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)

    def add(self, latency: float | None, error: str | None) -> None:
        if error is None and latency is not None:
            self.latencies.append(latency)
        else:
            self.failures[(error or "unknown")[:160]] += 1


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def make_client(url: str, max_workers: int = 4):
    from gradio_client import Client
    return Client(url, verbose=False, download_files=False, analytics_enabled=False, max_workers=max_workers)


def compare_args(image: Path, variants: list[str], scale: int) -> tuple:
    from gradio_client import handle_file
    return ("hr", handle_file(str(image)), None, scale, variants, "cpu", 64)


def one_job(client, args: tuple, deadline: float) -> tuple[float | None, str | None]:
    """Submit one comparison and wait for it; (latency, None) or (None, error)."""
    start = time.perf_counter()
    job = None
    try:
        job = client.submit(*args, api_name="/compare")
        job.result(timeout=max(1.0, deadline - time.time()))
        return time.perf_counter() - start, None
    except BaseException as exc:  # noqa: BLE001 - every failure is counted, the run goes on
        if job is not None:
            job.cancel()
        return None, _message(exc)


def run_users(url: str, count: int, args: tuple, deadline: float, clients: list | None = None,
              start_gate: threading.Event | None = None) -> Outcome:
    """``count`` users, each its own client (own session), submitting one comparison at the same moment."""
    clients = clients or [make_client(url) for _ in range(count)]
    outcome, lock = Outcome(), threading.Lock()
    barrier = threading.Barrier(count)

    def user(client) -> None:
        if start_gate is not None:
            start_gate.wait()
        barrier.wait()
        latency, error = one_job(client, args, deadline)
        with lock:
            outcome.add(latency, error)

    threads = [threading.Thread(target=user, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.time()) + 5)
    return outcome


def flood(url: str, count: int, args: tuple, deadline: float, submitted: threading.Event) -> tuple[Outcome, list]:
    """One client that submits ``count`` jobs as fast as it can, then waits for them."""
    client = make_client(url, max_workers=count)
    outcome, jobs, starts = Outcome(), [], []
    for _ in range(count):
        starts.append(time.perf_counter())
        jobs.append(client.submit(*args, api_name="/compare"))
    submitted.set()
    for job, start in zip(jobs, starts):
        try:
            job.result(timeout=max(0.1, deadline - time.time()))
            outcome.add(time.perf_counter() - start, None)
        except BaseException as exc:  # noqa: BLE001
            outcome.add(None, _message(exc))
    return outcome, jobs


# --- the run -----------------------------------------------------------------------------------------------

def _row(name: str, jobs: str, outcome: Outcome, peak: float) -> str:
    lat = outcome.latencies
    p50, p95, top = (_percentile(lat, 0.5), _percentile(lat, 0.95), max(lat) if lat else math.nan)
    failed = sum(outcome.failures.values())
    return (f"{name:<13} {jobs:>6} {len(lat):>4} {failed:>6} {p50:>7.2f} {p95:>7.2f} {top:>7.2f} {peak:>10.0f}")


def _cap_image(workdir: Path) -> Path:
    import numpy as np
    from PIL import Image
    pixels = int(os.environ.get("KALDN_APP_MAX_PIXELS", 2048 * 2048))
    side = int(math.isqrt(pixels))
    path = workdir / f"cap-{side}x{side}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20, help=f"concurrent normal users (at most {MAX_USERS})")
    parser.add_argument("--flood", type=int, default=40, help=f"jobs the hostile client submits (at most {MAX_FLOOD}; "
                        "0: no flood phase)")
    parser.add_argument("--solo", type=int, default=3, help="sequential jobs of one user first (at least 2)")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="image to compare, or 'cap' for a random image "
                        "of the app's largest upload")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=None, help="default: the app's default variants")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the whole run, start-up included")
    parser.add_argument("--startup", type=float, default=180, help="seconds to wait for the app to answer")
    args = parser.parse_args()
    if not 1 <= args.users <= MAX_USERS or not 0 <= args.flood <= MAX_FLOOD or args.solo < 2:
        parser.error(f"--users must be 1..{MAX_USERS}, --flood 0..{MAX_FLOOD}, --solo >= 2")

    sys.path.insert(0, str(ROOT))
    from kaldn.choices import default_variants
    from kaldn.hub import available_models
    variants = args.variants or default_variants(args.scale, available_models())

    t_begin = time.time()
    deadline = t_begin + args.time_limit
    workdir = Path(tempfile.mkdtemp(prefix="kaldn-load-"))
    proc = None
    try:
        image = _cap_image(workdir) if args.image == "cap" else Path(args.image).resolve()
        port = free_port()
        proc = start_app(port, workdir, min(args.startup, args.time_limit))
        url = f"http://127.0.0.1:{port}/"
        sampler = RssSampler(proc.pid)
        sampler.start()
        idle = tree_rss_mib(proc.pid)
        job_args = compare_args(image, variants, args.scale)
        from PIL import Image
        with Image.open(image) as im:
            size = f"{im.width}x{im.height}"
        print(f"app on {url} (pid {proc.pid}), started in {time.time() - t_begin:.1f} s, idle RSS {idle:.0f} MiB")
        print(f"job: /compare, HR mode, {image.name} ({size}), x{args.scale}, variants {' '.join(variants)}")
        print(f"{'phase':<13} {'jobs':>6} {'ok':>4} {'failed':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
              f"{'peak RSS MiB':>10}")

        solo, solo_client = Outcome(), make_client(url)
        sampler.reset()
        for _ in range(args.solo):
            solo.add(*one_job(solo_client, job_args, deadline))
        print(_row("solo", f"1x{args.solo}", solo, sampler.peak()))
        warm = solo.latencies[1:]
        job_s = statistics.median(warm) if warm else math.nan

        clients = [make_client(url) for _ in range(args.users)]
        sampler.reset()
        users = run_users(url, args.users, job_args, deadline, clients)
        print(_row("users", str(args.users), users, sampler.peak()))

        flooded = hostile = None
        if args.flood:
            sampler.reset()
            submitted, box = threading.Event(), {}
            hostile_thread = threading.Thread(
                target=lambda: box.update(result=flood(url, args.flood, job_args, deadline, submitted)), daemon=True)
            hostile_thread.start()
            gate = threading.Event()  # the users start once the flood is in the queue, plus 0.5 s
            if submitted.wait(60):
                time.sleep(0.5)
            gate.set()
            flooded = run_users(url, args.users, job_args, deadline, clients, start_gate=gate)
            hostile_thread.join(max(0.0, deadline - time.time()) + 10)
            peak = sampler.peak()
            hostile, jobs = box.get("result", (Outcome(), []))
            for job in jobs:
                if not job.done():
                    job.cancel()
            print(_row("users+flood", str(args.users), flooded, peak))
            print(_row("  the flood", str(args.flood), hostile, peak))
        sampler.stop()
        after = tree_rss_mib(proc.pid)

        print(f"one job on a warm server (median of solo runs 2..): {job_s:.2f} s; "
              f"server RSS idle {idle:.0f} MiB, at the end {after:.0f} MiB")
        for name, outcome in (("solo", solo), ("users", users), ("users+flood", flooded), ("the flood", hostile)):
            if outcome is not None and outcome.failures:
                print(f"failures in {name}:")
                for message, n in outcome.failures.most_common(5):
                    print(f"  {n} x {message}")
        if flooded is not None and flooded.latencies and users.latencies and job_s == job_s:
            extra = [(_percentile(flooded.latencies, q) - _percentile(users.latencies, q)) / job_s
                     for q in (0.5, 0.95)]
            worst = (max(flooded.latencies) - max(users.latencies)) / job_s
            print(f"extra wait beside the flood, in solo jobs: p50 {extra[0]:+.1f}, p95 {extra[1]:+.1f}, "
                  f"slowest user {worst:+.1f} (target: at most +1)")
        ok = sum(len(o.latencies) for o in (users, flooded) if o is not None)
        bad = sum(sum(o.failures.values()) for o in (users, flooded) if o is not None)
        print(f"normal users: {ok} ok, {bad} failed; whole run {time.time() - t_begin:.0f} s")
    finally:
        if proc is not None:
            stop_app(proc)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
