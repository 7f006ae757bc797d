"""Does tiling change the output? For every bundled model: its receptive-field radius, and the largest
difference between a tiled and a whole-image ``upscale`` of one image, in 8 bits and in float.

    python -m benchmarks.tiling [--image PATH] [--size 330] [--threads 1]

The radius is measured, not derived: the input pixels that the gradient of one centre output pixel
reaches, on a random input (a ReLU that is off blocks a path, so this can under-read by a pixel or two).
A model that pools statistics over its whole input (FDIWN) reaches the probe's border: "global". Tiles
are ``upscale``'s defaults (256 LR pixels, ``TILE_OVERLAP`` of context a side); the image (default:
Set14's Barbara) is cropped to ``--size`` pixels a side, which must exceed a tile so that it is tiled.
A float difference of about 1e-5 (in grey levels: 0.003) spread over the image is rounding: at x3 the
bicubic skip samples at multiples of 1/3, which float cannot hold, so a tile that starts at an offset
rounds its sampling positions differently; it flips a rare 8-bit value by one. A seam would show as
differences along the tile edges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from kaldn.checkpoint import CONFIG_NAME, load_checkpoint
from kaldn.data import dataset_folder
from kaldn.hub import bundled_dir
from kaldn.images import load_image
from kaldn.inference import TILE_OVERLAP, TILE_SIZE, prepare_model, upscale

PROBE = 64  # LR pixels either side of the probed pixel


def receptive_radius(model: torch.nn.Module, limit: int = PROBE) -> int | None:
    """LR pixels from the centre that reach the centre output pixel of a prepared ``model``; None when the
    reach touches the probe's border (statistics of the whole input, or a radius of ``limit`` or more)."""
    scale = model.config["scale"]
    x = torch.rand(1, 3, 2 * limit + 1, 2 * limit + 1, requires_grad=True)
    centre = limit * scale + scale // 2
    model(x.contiguous(memory_format=torch.channels_last))[0, :, centre, centre].sum().backward()
    ys, xs = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero(as_tuple=True)
    radius = int(max(limit - ys.min(), ys.max() - limit, limit - xs.min(), xs.max() - limit))
    return None if radius >= limit else radius


def tiling_difference(image: np.ndarray, model: torch.nn.Module) -> dict:
    """Largest |tiled - whole| of ``image`` (uint8) in 8 bits and in float (in grey levels), and the share
    of 8-bit values that differ."""
    whole8, tiled8 = (upscale(image, model, tile=t).astype(np.int32) for t in (None, TILE_SIZE))
    exact = image.astype(np.float32) / 255
    whole, tiled = (upscale(exact, model, tile=t) for t in (None, TILE_SIZE))
    return {"max8": int(np.abs(tiled8 - whole8).max()), "share8": float((tiled8 != whole8).mean()),
            "max_float": 255 * float(np.abs(tiled - whole).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help=f"an image of more than {TILE_SIZE} pixels a side (default: Set14's "
                                        "Barbara)")
    parser.add_argument("--size", type=int, default=330, help="crop to this many pixels a side (default 330)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.image) if args.image else dataset_folder("set14") / "barbara.png"
    if not path.is_file():
        print(f"error: no image at {path} (pass --image)", file=sys.stderr)
        return 2
    image = load_image(path)[:args.size, :args.size, :3]
    if max(image.shape[:2]) <= TILE_SIZE:
        print(f"error: {path.name} cropped to {image.shape[1]}x{image.shape[0]} fits in one tile", file=sys.stderr)
        return 2
    print(f"{path.name} cropped to {image.shape[1]}x{image.shape[0]} LR pixels; tiles of {TILE_SIZE} with "
          f"{TILE_OVERLAP} pixels of context a side")
    print(f"{'model':24} {'radius':>7} {'max |diff| 8-bit':>17} {'values differing':>17} "
          f"{'max |diff| float (grey levels)':>31}")
    for folder in sorted(p for p in bundled_dir().iterdir() if (p / CONFIG_NAME).is_file()):
        model = prepare_model(load_checkpoint(folder), "cpu")
        radius = receptive_radius(model)
        diff = tiling_difference(image, model)
        print(f"{folder.name:24} {'global' if radius is None else radius:>7} {diff['max8']:>17} "
              f"{diff['share8']:>16.4%} {diff['max_float']:>31.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
