"""The user's images, checked and turned into what every variant gets: the LR input and, when known, the ground truth.

Conventions (DESIGN.md, "Evaluation protocol"): in HR mode the upload is the ground truth, cropped so both
sides are multiples of the scale, and the LR input is made with the project's MATLAB-compatible
:func:`kaldn.resize.imresize`; in LR mode the upload is the input and an optional ground truth must be
exactly ``scale`` times its size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import UserError, quoted
from .images import ImageError, TooLargeError, load_image_with_notes
from .models import check_scale, scales
from .resize import make_lr

__all__ = ["MIN_LR_SIDE", "Checked", "Inputs", "check_inputs", "image_source", "measurement_input", "prepare_inputs"]

MIN_LR_SIDE = 8   # LR side below which no comparison makes sense (and SSIM's 11x11 window would not fit)


@dataclass
class Inputs:
    """What every variant gets: the LR image, the ground truth (or None) and what was done to them."""

    lr: np.ndarray
    gt: np.ndarray | None
    scale: int
    mode: str                      # "hr": the upload is the ground truth; "lr": the upload is the input
    notes: list[str] = field(default_factory=list)
    source: str | None = None      # the file the image came from, when it came from one

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.lr.shape[0] * self.scale, self.lr.shape[1] * self.scale


def image_source(upload: Any) -> Any:
    """What :func:`kaldn.images.load_image` takes (a path, bytes, an array or a PIL image); None for no
    upload. A payload dict is refused (the app hands over the path of a file Gradio received); a string is a
    local path, never fetched."""
    if upload is None or (isinstance(upload, str) and upload == ""):
        return None
    if isinstance(upload, os.PathLike):
        return str(upload)
    if isinstance(upload, dict):
        raise UserError("An image is a file path, bytes or an array, not a payload.")
    return upload


def _describe_image(image: np.ndarray, what: str, load_notes: list[str]) -> list[str]:
    """The loader's notes (16-bit, frames, colour spaces, EXIF) and what the comparison does with the image,
    each said once."""
    notes = list(load_notes)
    if image.ndim == 3 and image.shape[2] == 4:
        notes.append(f"{what} has an alpha channel: the networks upscale the colour channels and the alpha "
                     "channel is resized with bicubic; metrics use the colour channels only.")
    if image.dtype == np.uint16:  # the loader said the 16 bits are kept; say what happens to them here
        notes.append(f"{what} is processed and saved at 16 bits; PSNR/SSIM are computed on it scaled to the "
                     "8-bit range.")
    rgb = image[..., :3]
    gray = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    if gray and not any("grayscale" in note for note in load_notes):
        notes.append(f"{what} is grayscale: it goes through the colour networks as R = G = B.")
    return notes


class Checked(NamedTuple):
    notes: list[str]
    lr_size: tuple[int, int]    # (height, width) of the LR input that prepare_inputs would make


def check_inputs(image: Any, scale: Any, mode: str = "hr", ground_truth: Any = None,
                 max_pixels: int | None = None, max_output_pixels: int | None = None,
                 image_name: str | None = None, gt_name: str | None = None) -> Checked:
    """Every check :func:`prepare_inputs` makes, without making the LR input: for telling a user at once,
    on upload, what is wrong with a file. Returns the notes and the LR input's size; raises as
    :func:`prepare_inputs` does."""
    img, _, scale, notes = _load_checked(image, scale, mode, ground_truth, max_pixels, max_output_pixels,
                                         image_name, gt_name)
    h, w = img.shape[:2]
    return Checked(notes, (h // scale, w // scale) if mode == "hr" else (h, w))


def prepare_inputs(image: Any, scale: Any, mode: str = "hr", ground_truth: Any = None,
                   max_pixels: int | None = None, max_output_pixels: int | None = None,
                   image_name: str | None = None, gt_name: str | None = None) -> Inputs:
    """Load and check the user's images; make the LR input.

    ``mode="hr"``: ``image`` is the ground truth; it is cropped so both sides are
    multiples of ``scale`` and LR = ``imresize(hr, 1/scale)`` (the literature's
    protocol). ``mode="lr"``: ``image`` is the LR input; ``ground_truth``, when
    given, must be exactly ``scale`` times its size.
    ``image``/``ground_truth`` are anything :func:`kaldn.images.load_image` takes, or an upload
    (see :func:`image_source`). Raises :class:`~kaldn.images.ImageError` or :class:`UserError`
    with a user-facing message, which names the images ``image_name`` / ``gt_name`` when given (an upload's
    original file name) instead of their file names on the server.
    """
    img, gt, scale, notes = _load_checked(image, scale, mode, ground_truth, max_pixels, max_output_pixels,
                                          image_name, gt_name)
    h, w = img.shape[:2]
    if mode == "hr":
        hr, lr = make_lr(img, scale)
        if hr.shape[:2] != (h, w):
            notes.append(f"The HR image was cropped from {w}x{h} to {hr.shape[1]}x{hr.shape[0]} "
                         f"(both sides a multiple of {scale}) before making the LR input.")
        notes.insert(0, f"HR mode: LR input {lr.shape[1]}x{lr.shape[0]} made from the {hr.shape[1]}x{hr.shape[0]} "
                        f"ground truth with MATLAB-compatible bicubic (1/{scale}).")
        return Inputs(lr=lr, gt=hr, scale=scale, mode=mode, notes=notes, source=_file_of(image))
    notes.insert(0, f"LR mode: {w}x{h} input, x{scale} output {w * scale}x{h * scale}; "
                    + ("metrics against the uploaded ground truth." if gt is not None
                       else "no ground truth, so no PSNR/SSIM."))
    return Inputs(lr=img, gt=gt, scale=scale, mode=mode, notes=notes, source=_file_of(image))


def _file_of(image: Any) -> str | None:
    return str(image) if isinstance(image, (str, os.PathLike)) else None


def _load_checked(image: Any, scale: Any, mode: str, ground_truth: Any, max_pixels: int | None,
                  max_output_pixels: int | None, image_name: str | None = None,
                  gt_name: str | None = None) -> tuple[np.ndarray, np.ndarray | None, int, list[str]]:
    """Load the upload(s) and check sizes and modes: (image, ground truth or None, scale, notes)."""
    scale = check_scale(scale)
    if mode not in ("hr", "lr"):
        raise UserError(f"mode must be 'hr' or 'lr', got {quoted(mode)}")
    image, ground_truth = image_source(image), image_source(ground_truth)
    if image is None:
        raise UserError("Upload an image first (or click one of the examples).")
    img, load_notes = load_image_with_notes(image, max_pixels=max_pixels, name=image_name)
    h, w = img.shape[:2]
    notes: list[str] = []

    if mode == "hr":
        if h // scale < MIN_LR_SIDE or w // scale < MIN_LR_SIDE:
            raise ImageError(f"The image ({w}x{h}) is too small for x{scale}: in HR mode it needs at least "
                             f"{MIN_LR_SIDE * scale} pixels on each side.")
        if max_output_pixels is not None and h * w > max_output_pixels:
            raise ImageError(f"The image ({w}x{h} = {w * h:,} pixels) is too large: the limit is "
                             f"{max_output_pixels:,} pixels.")
        if ground_truth is not None:
            notes.append("A separate ground truth is only used in LR mode; in HR mode the image itself is "
                         "the ground truth, so the second upload was ignored.")
        notes += _describe_image(img, "The image", load_notes)
        return img, None, scale, notes

    if h < MIN_LR_SIDE or w < MIN_LR_SIDE:
        raise ImageError(f"The LR image ({w}x{h}) is too small: it needs at least {MIN_LR_SIDE} pixels on each side.")
    if max_output_pixels is not None and h * w * scale * scale > max_output_pixels:
        raise ImageError(f"The LR image ({w}x{h}) is too large for x{scale}: the output would be "
                         f"{w * scale}x{h * scale} = {w * h * scale * scale:,} pixels, the limit is "
                         f"{max_output_pixels:,}.")
    notes += _describe_image(img, "The LR image", load_notes)
    gt = None
    if ground_truth is not None:
        # Refused from its header when larger than it could be at any scale (or than any output may be),
        # before a pixel is decoded.
        gt_limit = h * w * max(scales()) ** 2
        if max_output_pixels is not None:
            gt_limit = min(gt_limit, max_output_pixels)
        try:
            gt, gt_notes = load_image_with_notes(ground_truth, max_pixels=gt_limit, name=gt_name)
        except TooLargeError as exc:
            if exc.size is None:
                raise
            raise UserError(_gt_mismatch(exc.size, (w, h), scale, max_output_pixels)) from None
        gh, gw = gt.shape[:2]
        if (gh, gw) != (h * scale, w * scale):
            raise UserError(_gt_mismatch((gw, gh), (w, h), scale, max_output_pixels))
        notes += _describe_image(gt, "The ground truth", gt_notes)
    return img, gt, scale, notes


def _gt_mismatch(gt_size: tuple[int, int], lr_size: tuple[int, int], scale: int,
                 max_output_pixels: int | None = None) -> str:
    """Why a ground truth of ``gt_size`` (width, height) does not fit an LR image at ``scale``, and what would."""
    (gw, gh), (w, h) = gt_size, lr_size
    message = (f"The ground truth is {gw}x{gh}, but the LR image is {w}x{h}: at x{scale} the ground truth "
               f"must be exactly {w * scale}x{h * scale}.")
    fits = max_output_pixels is None or gh * gw <= max_output_pixels  # an output (or HR upload) this size runs
    other = [s for s in scales() if (gh, gw) == (h * s, w * s) and fits]
    if other:
        message += f" It matches x{other[0]}: choose scale {other[0]}."
    elif (gh - gh % scale, gw - gw % scale) == (h * scale, w * scale):  # what crop_to_scale would leave
        message += f" Crop it to {w * scale}x{h * scale} (bottom/right)"
        message += (", or upload it alone in HR mode, which crops it and makes the LR input for you."
                    if fits else ".")
    return message


def measurement_input(scale: Any, last: Inputs | None = None, upload: Any = None, mode: str = "hr",
                      example: Path | None = None, max_pixels: int | None = None,
                      max_output_pixels: int | None = None, upload_name: str | None = None) -> tuple[np.ndarray, str]:
    """The LR image to measure a model on, and where it came from: the ``last`` comparison's input when it was
    made at this scale from the current ``upload`` (or there is none now), else the ``upload`` (in ``mode``),
    else the ``example`` (as HR). An upload that cannot be used falls back to the last comparison's input at
    this scale, or the example, and ``where`` says why."""
    scale = check_scale(scale)
    mode = mode if mode in ("hr", "lr") else "hr"
    source = image_source(upload)
    reusable = last is not None and last.scale == scale
    if reusable and (source is None or (last.source == _file_of(source) and last.mode == mode)):
        return last.lr, "the LR input of your last comparison"
    if source is not None:
        try:
            return prepare_inputs(source, scale, mode, max_pixels=max_pixels, max_output_pixels=max_output_pixels,
                                  image_name=upload_name).lr, "the image on the Compare tab"
        except (UserError, ImageError) as exc:
            why = f" (the image on the Compare tab cannot be used: {str(exc).rstrip('.')})"
        if reusable:
            return last.lr, "the LR input of your last comparison" + why
    else:
        why = ""
    if example is None:
        raise UserError("Upload an image on the Compare tab first.")
    lr = prepare_inputs(str(example), scale, "hr", max_pixels=max_pixels, max_output_pixels=max_output_pixels).lr
    return lr, f"the example {Path(example).name}{why}"
