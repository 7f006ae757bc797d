"""Image input/output shared by the CLI, the app and training.

Every entry point takes user images, so all the awkward cases are handled in
one place and every failure surfaces as :class:`ImageError` with a message fit
to show a user (never a raw PIL/OSError traceback):

* modes: RGB, RGBA, grayscale ``L`` and ``1`` (replicated to RGB), ``LA``
  (to RGBA), palette ``P`` (RGBA if it has transparency, else RGB), CMYK /
  YCbCr (to RGB), 16-bit grayscale ``I;16`` / ``I`` (to uint16 RGB);
* EXIF orientation is applied, so phone photos come out upright;
* the pixel count is checked *before* decoding, so a small file that claims to
  be huge (a decompression bomb) is refused without allocating memory.

Limitation: Pillow decodes 16-bit-per-channel RGB/RGBA PNGs to 8 bits, so
those load as uint8; only 16-bit grayscale keeps its 16 bits. 32-bit integer
(``I``) and float (``F``) grayscale are rounded and clipped to 0..65535.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "ImageError",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "max_pixels_limit",
    "load_image",
    "save_png",
    "image_to_tensor",
    "tensor_to_image",
]

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image (width * height) accepted unless ``KALDN_MAX_PIXELS`` says otherwise."""

MAX_PIXELS_ENV = "KALDN_MAX_PIXELS"

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, BinaryIO]


class ImageError(ValueError):
    """An input image that cannot be used; ``str(err)`` is a message for the user."""


def max_pixels_limit() -> int:
    """The pixel limit in force: ``$KALDN_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Read on each call so a deployment can change it without code changes.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}")
    return value


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"The image is empty ({width}x{height} pixels).")
    if width * height > max_pixels:
        raise ImageError(
            f"The image is too large: {width}x{height} = {width * height:,} pixels, "
            f"the limit is {max_pixels:,} pixels."
        )


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return "the uploaded data"


def load_image(source: ImageSource, max_pixels: int | None = None) -> np.ndarray:
    """Load ``source`` as an HxWx3 (RGB) or HxWx4 (RGBA) uint8/uint16 array.

    ``source`` is a path, the encoded file's bytes (or an open binary file), a ``PIL.Image`` or a numpy
    array (HxW, HxWx1, HxWx3 or HxWx4; uint8/uint16 kept, bool -> 0/255,
    float assumed in [0, 1] -> uint8). Alpha is kept; uint16 is returned only
    for 16-bit grayscale sources (and uint16 arrays). Raises :class:`ImageError`
    for anything that is not a usable image, including images above
    ``max_pixels`` (default :func:`max_pixels_limit`).
    """
    limit = max_pixels_limit() if max_pixels is None else int(max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, limit)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, limit)
        try:
            return _from_pil(source)
        except ImageError:
            raise
        except Exception as exc:  # decode errors of a lazily loaded image
            raise ImageError(f"Could not read the image: {exc}") from exc

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"File not found: '{path}'.")
        if path.is_dir():
            raise ImageError(f"'{path}' is a folder, not an image file.")
        try:
            if path.stat().st_size == 0:
                raise ImageError(f"'{path}' is an empty file, not an image.")
        except OSError as exc:
            raise ImageError(f"Could not read '{path}': {exc.strerror or exc}.") from exc
        opener: object = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("The uploaded data is empty, not an image.")
        opener = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        opener = source  # an open binary file object
    else:
        raise ImageError(f"Cannot load an image from a {type(source).__name__}.")

    what = _describe(source)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(opener)  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageError(f"The image in {what} is too large to open safely ({exc}).") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{what[0].upper() + what[1:]} is not an image in a format that can be read.") from exc
    except OSError as exc:
        raise ImageError(f"Could not read {what}: {exc.strerror or exc}.") from exc
    except Exception as exc:
        raise ImageError(f"Could not read {what}: {exc}.") from exc

    with im:
        _check_size(im.width, im.height, limit)  # before any pixel is decoded
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
            raise ImageError(f"The image in {what} is damaged or truncated and cannot be decoded ({exc}).") from exc
        try:
            return _from_pil(im)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"Could not convert the image in {what}: {exc}.") from exc


def _from_pil(im: Image.Image) -> np.ndarray:
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass  # malformed EXIF: keep the stored orientation rather than refuse the image
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(im)
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"))
    elif mode in ("LA", "La", "PA", "RGBa", "RGBX") or (mode == "P" and _palette_has_alpha(im)):
        arr = np.asarray(im.convert("RGBA" if mode != "RGBX" else "RGB"))
    elif mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64 if mode == "F" else np.int64)
        arr = np.clip(np.round(arr) if mode == "F" else arr, 0, 65535).astype(np.uint16)
    else:  # P without transparency, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _palette_has_alpha(im: Image.Image) -> bool:
    if "transparency" in im.info:
        return True
    palette = im.palette
    return palette is not None and palette.mode == "RGBA"


def _from_array(arr: np.ndarray, limit: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"Expected an HxW, HxWx3 or HxWx4 image array, got shape {arr.shape}.")
    _check_size(arr.shape[1], arr.shape[0], limit)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageError("The image array contains NaN or infinite values.")
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype not in (np.uint8, np.uint16):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ImageError(f"Unsupported image array dtype {arr.dtype}.")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageError(f"Integer image values must lie in 0..65535, got {lo}..{hi}.")
        arr = arr.astype(np.uint8 if hi <= 255 else np.uint16)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _write_png16(arr: np.ndarray, path: Path) -> None:
    """16-bit RGB(A) PNG writer: Pillow cannot write these."""
    h, w, c = arr.shape
    color_type = {3: 2, 4: 6}[c]
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
    data += _png_chunk(b"IEND", b"")
    path.write_bytes(data)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``image`` as a lossless PNG (uint8 or uint16; HxW, HxWx1, HxWx3 or HxWx4).

    Outputs are always PNG so that saved results keep every bit for evaluation.
    """
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"save_png needs a uint8 or uint16 array, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"save_png needs an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"save_png got an empty image of shape {arr.shape}")
    path = Path(path)
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16 and arr.ndim == 3:
        _write_png16(arr, path)
    elif arr.dtype == np.uint16:
        Image.fromarray(arr.astype("<u2")).save(path, format="PNG")  # mode I;16
    else:
        Image.fromarray(arr).save(path, format="PNG")


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8/uint16/float array -> 1x3xHxW float32 tensor in [0, 1] (the model's input).

    Floats are taken as already in [0, 1]. Alpha is the caller's business:
    split it off before and reattach it after.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image_to_tensor expects an HxWx3 RGB array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
    else:
        raise ValueError(f"image_to_tensor expects uint8, uint16 or float, got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def tensor_to_image(t: torch.Tensor, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """1x3xHxW (or 3xHxW) tensor -> HxWx3 array of ``dtype``: clamped to [0, 1] and rounded.

    Rounding (not truncating) is what the evaluation protocol expects.
    """
    dtype = np.dtype(dtype)
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor_to_image expects a batch of one, got shape {tuple(t.shape)}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"tensor_to_image expects 1xCxHxW or CxHxW, got shape {tuple(t.shape)}")
    x = torch.nan_to_num(t.detach().to("cpu", torch.float32), nan=0.0).clamp_(0.0, 1.0)
    arr = x.permute(1, 2, 0).numpy()
    if dtype == np.uint8:
        return np.round(arr * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.round(arr.astype(np.float64) * 65535.0).astype(np.uint16)
    if np.issubdtype(dtype, np.floating):
        return np.ascontiguousarray(arr.astype(dtype))
    raise ValueError(f"tensor_to_image supports uint8, uint16 or float dtypes, got {dtype}")
