"""Decoding time of a progressive JPEG against its number of scans, and what ``kaldn.images`` does with it.

    OMP_NUM_THREADS=1 python -m benchmarks.jpeg_scans [--side 2048] [--scans 0 200 1000]

A flat grey ``--side`` x ``--side`` image is saved as a progressive JPEG (10 scans), and its last scan, 16 bytes
of coded data, is repeated; libjpeg decodes every scan over the whole image (repeats only warn). Printed per
count: the file size, Pillow's own decoding time, and the time ``kaldn.images.load_image`` takes to refuse it
(or load it, at or under ``MAX_JPEG_SCANS``).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from kaldn.images import MAX_JPEG_SCANS, ImageError, load_image


def many_scans(side: int, repeats: int) -> bytes:
    """A progressive JPEG of ``side`` x ``side`` flat grey with its last scan repeated ``repeats`` times."""
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    start = data.rindex(b"\xff\xda")  # the last scan runs to the end-of-image marker
    end = len(data) - 2
    return data[:end] + data[start:end] * repeats + data[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--scans", type=int, nargs="+", default=[0, 200, 1000], help="repeats of the last scan")
    args = parser.parse_args()
    print(f"{args.side}x{args.side} progressive JPEG (10 scans) with its last scan repeated; "
          f"MAX_JPEG_SCANS = {MAX_JPEG_SCANS}")
    print("| scans | file | Pillow decode | kaldn load_image |\n|---|---|---|---|")
    for repeats in args.scans:
        data = many_scans(args.side, repeats)
        start = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        pillow = time.perf_counter() - start
        start = time.perf_counter()
        try:
            load_image(data, max_pixels=args.side * args.side)
            outcome = "loaded"
        except ImageError:
            outcome = "refused"
        print(f"| {10 + repeats:,} | {len(data) / 1e3:.0f} kB | {pillow:.2f} s | {outcome} in "
              f"{time.perf_counter() - start:.3f} s |")


if __name__ == "__main__":
    main()
