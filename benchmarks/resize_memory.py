"""Peak memory and speed of ``kaldn.resize.imresize`` on long, thin images and on a photo-sized one.

    OMP_NUM_THREADS=1 python -m benchmarks.resize_memory [--resize-file PATH] [--limit-gib 8]

Each case runs in its own process, so its peak RSS (``ru_maxrss``) is its own, under an
address-space limit (``--limit-gib``) so that an implementation that asks for a huge weight
matrix fails with ``MemoryError`` instead of taking the machine's memory. ``resize.py`` is
loaded straight from its file (it needs only numpy), so the baseline is numpy alone, not torch;
``--resize-file`` points at another version of it (e.g. ``git show REV:kaldn/resize.py``) to
compare before/after on the same machine. Cases (uint8 RGB, the app's path: HR -> LR at 1/4,
then bicubic LR -> x4):

* 256x16384 and 32x131072: within a 4-megapixel cap, but extreme aspect ratios;
* 1024x768: a typical photo, and 2048x2048: the app's default upload cap.

Times are medians of ``--repeats`` runs (one for the long, thin cases), down x1/4 and up x4.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_RESIZE = Path(__file__).resolve().parent.parent / "kaldn" / "resize.py"
CASES = {
    "256x16384": (256, 16384),
    "32x131072": (32, 131072),
    "1024x768": (768, 1024),
    "2048x2048": (2048, 2048),
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("resize_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str, resize_file: Path, limit_gib: float, repeats: int) -> dict:
    """One case in this (fresh) process: time and peak RSS of down x1/4 then up x4."""
    limit = int(limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    mod = _load(resize_file)
    h, w = CASES[case]
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = _rss_mib()
    row: dict = {"case": case, "image MiB": img.nbytes / 2**20, "base RSS MiB": base}
    times_down, times_up = [], []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            lr = mod.imresize(img, scale=1 / 4)
            times_down.append(time.perf_counter() - start)
            start = time.perf_counter()
            sr = mod.imresize(lr, scale=4)
            times_up.append(time.perf_counter() - start)
        assert sr.shape == img.shape
        row.update(status="ok", down_s=statistics.median(times_down), up_s=statistics.median(times_up))
    except MemoryError as exc:
        row.update(status=f"MemoryError ({str(exc)[:80]})")
    row["peak RSS MiB"] = _peak_mib()
    row["RSS after MiB"] = _rss_mib()  # what stays (caches) once the calls have returned
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resize-file", type=Path, default=DEFAULT_RESIZE)
    parser.add_argument("--limit-gib", type=float, default=8.0, help="address-space limit of each case's process")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the 1024x768 case")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        repeats = args.repeats if args.child in ("1024x768", "2048x2048") else 1
        print(json.dumps(child(args.child, args.resize_file, args.limit_gib, repeats)))
        return

    print(f"resize.py: {args.resize_file}  (address-space limit {args.limit_gib:g} GiB per case)")
    print(f"{'case':>10} {'status':>8} {'down s':>8} {'up s':>8} {'base MiB':>9} {'peak MiB':>9} {'after MiB':>9}")
    for case in args.cases:
        cmd = [sys.executable, "-m", "benchmarks.resize_memory", "--child", case,
               "--resize-file", str(args.resize_file), "--limit-gib", str(args.limit_gib),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode != 0:
            print(f"{case:>10} crashed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        down = f"{r['down_s']:.3f}" if "down_s" in r else "-"
        up = f"{r['up_s']:.3f}" if "up_s" in r else "-"
        status = r["status"] if r["status"] == "ok" else "failed"
        print(f"{case:>10} {status:>8} {down:>8} {up:>8} {r['base RSS MiB']:9.0f} {r['peak RSS MiB']:9.0f} "
              f"{r['RSS after MiB']:9.0f}" + ("" if status == "ok" else f"  {r['status']}"))


if __name__ == "__main__":
    main()
