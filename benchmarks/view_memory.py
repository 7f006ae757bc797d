"""Peak memory and time of the app's views of one finished comparison at the upload cap.

    OMP_NUM_THREADS=1 python -m benchmarks.view_memory [--side 2048] [--outputs 7]

Views (the slider pair's difference map, the zoomed crops) run outside the queue, several at once
(``KALDN_APP_VIEWS``), so their memory adds up beside a running comparison. This builds one
comparison of ``--side`` x ``--side`` outputs (made-up images: the cost of a view does not depend on
the pixels), keeps it in a ``RunStore`` as the app does, and measures each view in turn: the peak
resident memory above the process's level before it (``VmHWM`` reset through ``/proc/self/clear_refs``,
so Linux only) and the wall time. ``maps`` (the pair map and every output's error map) is what a
comparison draws once at its end, inside its job; it is listed for scale.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from kaldn.comparison import Comparison, VariantResult
from kaldn.inputs import Inputs
from kaldn.runs import RunStore

KEYS = ["dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max", "kdsconv-fixed", "conv"]


def _status_mib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) // 1024


def measure(label: str, fn) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current RSS
    before = _status_mib("VmRSS:")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"{label:<12} {seconds:6.2f} s   peak +{_status_mib('VmHWM:') - before} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--outputs", type=int, default=len(KEYS) - 1, help="model outputs besides bicubic")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)

    def near_gt() -> np.ndarray:
        return np.clip(gt.astype(np.int16) + rng.integers(-3, 4, gt.shape, dtype=np.int16), 0, 255).astype(np.uint8)

    results = [VariantResult("bicubic", "Bicubic", None, near_gt(), psnr=28.0, ssim=0.8)]
    results += [VariantResult(k, k, k, near_gt(), psnr=30.0, ssim=0.9) for k in KEYS[:args.outputs]]
    comparison = Comparison(Inputs(lr=gt[::4, ::4].copy(), gt=gt, scale=4, mode="hr"), results, "cpu")
    with tempfile.TemporaryDirectory() as root:
        _, run = RunStore(root).save(comparison, owner="bench")
        print(f"one comparison: {args.side}x{args.side}, bicubic and {args.outputs} outputs, with a ground truth")
        measure("pair view", lambda: run.pair_view(KEYS[0], KEYS[1]))
        measure("zoom", lambda: run.zoom((args.side // 3, args.side // 3), 64))
        measure("maps", lambda: run.maps(KEYS[0], KEYS[1]))


if __name__ == "__main__":
    main()
