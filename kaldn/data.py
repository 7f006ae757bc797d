"""Image data for training and evaluation: one loader, the held-out split and the benchmark sets.

Training, validation and evaluation read their (HR, LR) pairs through :func:`load_pairs`, so every
number comes from the same pairs: HR cropped to a multiple of the scale, LR made by the project's
MATLAB-compatible ``imresize`` (DESIGN.md, "Evaluation protocol").

The benchmark sets (``set5``, ``set14``, ``bsd68``) live outside the project, in ``../shared/data``
beside a checkout; ``KALDN_DATA`` names another folder (read when used).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .images import ImageError, load_image
from .resize import make_lr

log = logging.getLogger("kaldn.data")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Benchmark name -> folder under the data root.
DATASETS = {"set5": "bench/set5", "set14": "bench/set14", "bsd68": "val/bsd68"}


class TrainingDataError(ValueError):
    """A data folder that cannot be used; raised before any work starts."""


def data_root() -> Path:
    """``KALDN_DATA``, else ``../shared/data`` beside the checkout this package runs from, else beside the cwd."""
    env = os.environ.get("KALDN_DATA")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    if checkout.is_dir():
        return checkout
    return Path.cwd().parent / "shared" / "data"


def dataset_folder(name: str) -> Path:
    """A dataset name from ``DATASETS`` (under :func:`data_root`) or any folder of HR images."""
    if name in DATASETS:
        return data_root() / DATASETS[name]
    return Path(name)


def list_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingDataError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_holdout(paths: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """(training, validation): every ``every``-th path (the 10th, 20th, ... for 10) is held out."""
    if every < 2:
        raise ValueError(f"val_holdout must be at least 2, got {every}")
    held = [p for i, p in enumerate(paths) if i % every == every - 1]
    return [p for p in paths if p not in held], held


def load_pairs(source: str | Path | list[Path], scale: int, min_lr_side: int = 1,
               purpose: str = "evaluation") -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 pairs from a folder or a list of files, LR by ``imresize``; unusable files skipped with a warning.

    ``min_lr_side``: images whose LR side would be shorter are skipped (training needs a whole patch).
    """
    paths = source if isinstance(source, list) else list_images(source)
    folder = source if not isinstance(source, list) else (paths[0].parent if paths else "(no files)")
    pairs, skipped = [], 0
    for path in paths:
        try:
            image = load_image(path)[..., :3]
        except ImageError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped += 1
            continue
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / 257).round().astype(np.uint8)
        if min(image.shape[:2]) // scale < min_lr_side:
            log.warning("skipping %s: %dx%d is smaller than a %d-pixel patch at x%d",
                        path, image.shape[1], image.shape[0], min_lr_side * scale, scale)
            skipped += 1
            continue
        pairs.append(make_lr(image, scale))
    if not pairs:
        raise TrainingDataError(
            f"{folder}: no usable {purpose} image ({len(paths)} image files found, {skipped} skipped; "
            f"need PNG/JPEG images at least {min_lr_side * scale} pixels on each side)")
    if skipped:
        log.warning("%s: used %d images, skipped %d", folder, len(pairs), skipped)
    return pairs
