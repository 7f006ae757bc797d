"""PSNR / SSIM exactly as super-resolution papers compute them.

The literature measures on the Y channel of ITU-R BT.601 YCbCr (MATLAB's
``rgb2ycbcr``), on outputs rounded to 8 bits, after cropping ``scale`` pixels
from every border, with data range 255. Doing anything else (RGB PSNR, no
border crop, unrounded floats) moves the numbers by tenths of a dB and makes
them incomparable with published tables.

Note: Y is kept in float64 here (as BasicSR and most Python ports do); MATLAB's
``rgb2ycbcr`` on uint8 input would additionally round Y to uint8, which changes
PSNR by about 0.01 dB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.metrics import structural_similarity

from .images import check_float_range

__all__ = ["rgb_to_y", "psnr_y", "psnr_of_y", "ssim_y", "evaluate_pair", "mean_scores"]


def _to_unit_float(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        check_float_range(img, "the image")
        return img.astype(np.float64)
    raise ValueError(f"unsupported image dtype {img.dtype} (use uint8, uint16 or float in [0, 1])")


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Luma Y in [16, 235] (float64), as MATLAB's ``rgb2ycbcr``; the channel papers report.

    Accepts HxWx3 RGB or HxW / HxWx1 grayscale (treated as R = G = B), as uint8
    (divided by 255), uint16 (by 65535) or float in [0, 1].
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return 16.0 + (65.481 + 128.553 + 24.966) * _to_unit_float(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects HxWx3 RGB or HxW grayscale, got shape {img.shape}")
    # One channel at a time (the same arithmetic, in the same order): a float copy of one plane, not three.
    return 16.0 + 65.481 * _to_unit_float(img[:, :, 0]) + 128.553 * _to_unit_float(img[:, :, 1]) \
        + 24.966 * _to_unit_float(img[:, :, 2])


def _as_8bit(image: np.ndarray, label: str = "the image") -> np.ndarray:
    """Round float outputs (in [0, 1]) to 8 bits, as the outputs saved to PNG would be."""
    img = np.asarray(image)
    if np.issubdtype(img.dtype, np.floating):
        check_float_range(img, label)
        return np.round(np.clip(np.nan_to_num(img.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return img


def crop_border(values: np.ndarray, border: int) -> np.ndarray:
    """``values`` without ``border`` pixels on every side (the protocol's crop of ``scale`` pixels)."""
    border = int(border)
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    h, w = values.shape[:2]
    if h - 2 * border <= 0 or w - 2 * border <= 0:
        raise ValueError(f"border {border} leaves nothing of a {w}x{h} image")
    return values[border:h - border, border:w - border] if border else values


def _prepare(output: np.ndarray, reference: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.asarray(output)
    ref = np.asarray(reference)
    if out.shape != ref.shape:
        raise ValueError(f"output and reference shapes differ: output {out.shape} vs reference {ref.shape}")
    crop_border(out, border)  # checks the border before any conversion work
    return (crop_border(rgb_to_y(_as_8bit(out, "the output")), border),
            crop_border(rgb_to_y(_as_8bit(ref, "the reference")), border))


def psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """Y-channel PSNR in dB (data range 255) after cropping ``border`` pixels per side.

    Returns ``math.inf`` for identical images (zero error).
    """
    return psnr_of_y(*_prepare(output, reference, border))


def psnr_of_y(y_out: np.ndarray, y_ref: np.ndarray, border: int = 0) -> float:
    """:func:`psnr_y` of two Y planes already made (``rgb_to_y``), after cropping ``border`` pixels per side."""
    diff = crop_border(y_out, border) - crop_border(y_ref, border)
    mse = float(np.mean(diff ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


SSIM_WINDOW = 11  # the Gaussian window (sigma 1.5, truncated at 3.5 sigma): SSIM needs this many pixels a side


def ssim_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """Y-channel SSIM (Gaussian 11x11 window, sigma 1.5, data range 255) after the border crop."""
    y_out, y_ref = _prepare(output, reference, border)
    if min(y_out.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping {border} from "
                         f"every border; a {np.asarray(output).shape[1]}x{np.asarray(output).shape[0]} image "
                         f"leaves {y_out.shape[1]}x{y_out.shape[0]}")
    return float(
        structural_similarity(
            y_out,
            y_ref,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
    )


def evaluate_pair(output: np.ndarray, reference: np.ndarray, scale: int) -> dict[str, float]:
    """``{'psnr': ..., 'ssim': ...}`` with the literature's border (= scale)."""
    return {
        "psnr": psnr_y(output, reference, border=scale),
        "ssim": ssim_y(output, reference, border=scale),
    }


def mean_scores(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], scale: int) -> dict[str, float]:
    """A dataset's score: the mean of :func:`evaluate_pair` over its images, ``{'psnr': ..., 'ssim': ...}``."""
    scores = [evaluate_pair(out, ref, scale) for out, ref in zip(outputs, references, strict=True)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("psnr", "ssim")}
