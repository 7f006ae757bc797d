"""Regenerate the example images of the app from scikit-image's bundled sample images.

    python examples/make_examples.py

Each example is a 256x256 crop (small enough for the repository, large enough
for x2/x3/x4 comparisons: 256 is not a multiple of 3, so the x3 path also
shows the crop-to-scale step). Licences: see ``examples/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent
SIZE = 256

# name -> (skimage loader, top, left) of the 256x256 crop
CROPS = {
    "astronaut": (data.astronaut, 20, 150),   # face, badge and flag: skin, text, stripes
    "coffee": (data.coffee, 40, 150),         # cup rim, saucer and wood grain
    "chelsea": (data.chelsea, 20, 70),        # cat's face: fur and whiskers
}


def make(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, (loader, top, left) in CROPS.items():
        image = np.asarray(loader())
        crop = np.ascontiguousarray(image[top:top + SIZE, left:left + SIZE, :3])
        if crop.shape != (SIZE, SIZE, 3):
            raise RuntimeError(f"{name}: crop {crop.shape} does not fit the {image.shape} image")
        path = out_dir / f"{name}.png"
        Image.fromarray(crop).save(path, format="PNG", optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in make():
        print(f"wrote {p} ({p.stat().st_size // 1024} KiB)")
