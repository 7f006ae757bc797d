"""Peak memory and time of what the app runs beside a comparison: the views of one finished comparison at
the upload cap, and the input checks of uploads at the cap.

    OMP_NUM_THREADS=1 python -m benchmarks.view_memory [--side 2048] [--outputs 7]

Views (the slider pair's difference map, the zoomed crops) run outside the queue, several at once
(``KALDN_APP_VIEWS``), and the input checks in a line of their own (one at a time), so their memory adds
up beside a running comparison. The checks decode made-up uploads of ``--side`` x ``--side`` (noise, so
the files are as large as they get): an 8-bit RGBA PNG, a JPEG and a 16-bit grey PNG in HR mode, and in LR
mode a 16-bit grey input with its ground truth at x2. This builds one
comparison of ``--side`` x ``--side`` outputs (made-up images: the cost of a view does not depend on
the pixels), keeps it in a ``RunStore`` as the app does, and measures each view in turn: the peak
resident memory above the process's level before it (``VmHWM`` reset through ``/proc/self/clear_refs``,
so Linux only) and the wall time. ``maps`` (the pair map and every output's error map) is what a
comparison draws once at its end, inside its job; it is listed for scale.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kaldn.comparison import Comparison, VariantResult
from kaldn.images import save_png
from kaldn.inputs import Inputs, check_inputs
from kaldn.models import variants
from kaldn.runs import RunStore

KEYS = [v.key for v in variants() if v.backbone is not None]  # the registered conv variants: made-up outputs' labels


def _status_mib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) // 1024


def measure(label: str, fn) -> None:
    # Memory freed by the previous step but kept by malloc would be reused unseen: hand it back first.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
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
        measure_checks(Path(root), args.side, rng)


def measure_checks(folder: Path, side: int, rng: np.random.Generator) -> None:
    """The Compare tab's input checks (as ``check_upload`` and ``check_compare`` run them) at the caps."""
    files = {"rgba.png": rng.integers(0, 256, (side, side, 4), dtype=np.uint8),
             "photo.jpg": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
             "grey16.png": rng.integers(0, 65536, (side, side), dtype=np.uint16),
             "lr16.png": rng.integers(0, 65536, (side // 2, side // 2), dtype=np.uint16)}
    for name, pixels in files.items():
        if name.endswith(".jpg"):
            Image.fromarray(pixels).save(folder / name, quality=95)
        else:
            save_png(pixels, folder / name)
    caps = {"max_pixels": side * side, "max_output_pixels": side * side}
    print(f"input checks of {side}x{side} uploads:")
    for label, kwargs in [("check RGBA", {"image": folder / "rgba.png"}), ("check JPEG", {"image": folder / "photo.jpg"}),
                          ("check 16-bit", {"image": folder / "grey16.png"}),
                          ("check LR+GT", {"image": folder / "lr16.png", "mode": "lr",
                                           "ground_truth": folder / "grey16.png"})]:
        measure(label, lambda: check_inputs(scale=2, **kwargs, **caps))


if __name__ == "__main__":
    main()
