"""Upscale images from the command line.

    python -m kaldn INPUT [INPUT ...] --model tiny-kdsconv-det-x4 [--out DIR] [--device auto] [--tile 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .hub import ModelNotFoundError, load_model
from .images import ImageError, load_image, save_png
from .inference import prepare_model, upscale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaldn", description="Upscale images with a kaldn model.")
    parser.add_argument("inputs", nargs="+", help="image files")
    parser.add_argument("--model", default="tiny-kdsconv-det-x4", help="model name or checkpoint folder")
    parser.add_argument("--out", default=".", help="output folder (files are written as NAME_xS.png)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="fp16/bf16: CUDA only")
    parser.add_argument("--tile", type=int, default=256, help="LR tile side (0: whole image)")
    args = parser.parse_args(argv)
    try:
        model = prepare_model(load_model(args.model), args.device, args.precision)
    except (ModelNotFoundError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scale, failures = model.config["scale"], 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        try:
            image = load_image(path)
        except ImageError as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        start = time.perf_counter()
        result = upscale(image, model, tile=args.tile or None)
        target = out_dir / f"{Path(path).stem}_x{scale}.png"
        save_png(result, target)
        print(f"{path} -> {target} ({result.shape[1]}x{result.shape[0]}, {time.perf_counter() - start:.2f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
