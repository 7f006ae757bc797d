"""Image input/output shared by the CLI, the app and training.

Every entry point takes user images, so all the awkward cases are handled in
one place and every failure surfaces as :class:`ImageError` with a message fit
to show a user (never a raw PIL/OSError traceback):

* modes: RGB, RGBA, grayscale ``L`` and ``1`` (replicated to RGB), ``LA``
  (to RGBA), palette ``P`` (RGBA if it has transparency, else RGB), CMYK /
  YCbCr (to RGB), 16-bit grayscale ``I;16`` / ``I`` (to uint16 RGB);
* formats: PNG, JPEG, WebP, BMP, TIFF, GIF and PPM only; Pillow opens many
  more, some through external programs (EPS runs Ghostscript), none of them
  a photo format a user needs;
* EXIF orientation is applied, so phone photos come out upright;
* the pixel count is checked *before* decoding, so a small file that claims to
  be huge (a decompression bomb) is refused without allocating memory;
* messages name a file by its base name only (or the ``name`` the caller
  gives, e.g. the upload's original file name), never a server path, and carry
  no PIL internals (the original exception stays chained for logs).

What is not kept as it was is reported by :func:`load_image_with_notes` as a
note for the user: 16-bit-per-channel colour (Pillow decodes 16-bit RGB/RGBA/LA
PNGs and TIFFs to 8 bits, the top 8 bits of each sample, so those load as
uint8; only 16-bit grayscale keeps its 16 bits), animations and multi-page
files (the first frame is used), CMYK and other colour spaces (converted to
RGB), EXIF rotation, and 32-bit integer (``I``) and float (``F``) grayscale
(rounded and clipped to 0..65535).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "ImageError",
    "TooLargeError",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "max_pixels_limit",
    "load_image",
    "load_image_with_notes",
    "save_png",
    "check_float_range",
    "image_to_tensor",
    "tensor_to_image",
]

# What Image.open may decode (Pillow names); anything else is "not an image in a format that can be read".
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image (width * height) accepted unless ``KALDN_MAX_PIXELS`` says otherwise."""

MAX_PIXELS_ENV = "KALDN_MAX_PIXELS"

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, BinaryIO]


class ImageError(ValueError):
    """An input image that cannot be used; ``str(err)`` is a message for the user."""


class TooLargeError(ImageError):
    """Over the pixel limit, found from the header before decoding; ``size`` = (width, height) if known."""

    def __init__(self, message: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.size = size


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


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _check_size(width: int, height: int, max_pixels: int, label: str = "the image") -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{_cap(label)} is empty ({width}x{height} pixels).")
    if width * height > max_pixels:
        raise TooLargeError(
            f"{_cap(label)} is too large: {width}x{height} is over the {_megapixels(max_pixels)}-megapixel limit "
            f"({width * height:,} pixels, the limit is {max_pixels:,}).", (width, height))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _display_name(name: str) -> str:
    """A file name fit for a message: no directory (of either OS), no control characters, not too long."""
    base = _UNPRINTABLE.sub("", re.split(r"[\\/]", str(name))[-1]).strip()
    if len(base) > 80:
        base = base[:77] + "..."
    return f"'{base}'" if base else "the file"


def _label(source: object, name: str | os.PathLike | None) -> str:
    """How messages call the image: its (given or own) file name, else what kind of input it is."""
    if name is not None:
        return _display_name(os.fspath(name))
    if isinstance(source, (str, os.PathLike)):
        return _display_name(os.fspath(source))
    file_name = getattr(source, "name", None)  # an open file
    if isinstance(file_name, str) and not isinstance(source, (np.ndarray, Image.Image)):
        return _display_name(file_name)
    if isinstance(source, np.ndarray):
        return "the image array"
    if isinstance(source, Image.Image):
        return "the image"
    return "the upload"


def load_image(source: ImageSource, max_pixels: int | None = None, name: str | os.PathLike | None = None) -> np.ndarray:
    """Load ``source`` as an HxWx3 (RGB) or HxWx4 (RGBA) uint8/uint16 array.

    ``source`` is a path, the encoded file's bytes (or an open binary file), a ``PIL.Image`` or a numpy
    array (HxW, HxWx1, HxWx3 or HxWx4; uint8/uint16 kept, bool -> 0/255,
    float assumed in [0, 1] -> uint8). Alpha is kept; uint16 is returned only
    for 16-bit grayscale sources (and uint16 arrays). Raises :class:`ImageError`
    for anything that is not a usable image, including images above
    ``max_pixels`` (default :func:`max_pixels_limit`). Messages call the image
    ``name`` (e.g. an upload's original file name; only its base name is used),
    by default the file's base name. :func:`load_image_with_notes` also says
    what was converted.
    """
    return load_image_with_notes(source, max_pixels=max_pixels, name=name)[0]


def load_image_with_notes(
    source: ImageSource, max_pixels: int | None = None, name: str | os.PathLike | None = None
) -> tuple[np.ndarray, list[str]]:
    """:func:`load_image`, plus notes for the user on what was not kept as it was.

    Notes (one sentence each, naming the image as error messages do) cover
    16-bit colour read at 8 bits, 16-bit grayscale kept at 16 bits, the first
    frame of an animation or multi-page file, CMYK and other colour spaces
    converted to RGB, EXIF rotation and 32-bit/float grayscale clipped to 16 bits.
    """
    limit = max_pixels_limit() if max_pixels is None else int(max_pixels)
    label = _label(source, name)
    if isinstance(source, np.ndarray):
        return _from_array(source, limit, label), []
    if isinstance(source, Image.Image):
        _check_size(*_upright_size(source), limit, label)
        try:
            return _from_pil(source, label, _raw_mode(source))
        except ImageError:
            raise
        except Exception as exc:  # decode errors of a lazily loaded image
            raise ImageError(f"{_cap(label)} could not be read: it is damaged or not a supported image.") from exc

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{_cap(label)}: file not found.")
        if path.is_dir():
            raise ImageError(f"{_cap(label)} is a folder, not an image file.")
        try:
            if path.stat().st_size == 0:
                raise ImageError(f"{_cap(label)} is an empty file, not an image.")
        except OSError as exc:
            raise ImageError(f"{_cap(label)} could not be read ({exc.strerror or 'operating system error'}).") from exc
        opener: object = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{_cap(label)} is empty, not an image.")
        opener = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        opener = source  # an open binary file object
    else:
        raise ImageError(f"Cannot load an image from a {type(source).__name__}.")

    gif = _prescan(opener, label)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(opener, formats=IMAGE_FORMATS)  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        # PIL refuses before we see the size; its message has the pixel count (over 2 x 89 megapixels).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        raise TooLargeError(f"{_cap(label)} is too large: {size} is over the {_megapixels(limit)}-megapixel limit.") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{_cap(label)} is not an image in a format that can be read.") from exc
    except OSError as exc:
        raise ImageError(f"{_cap(label)} could not be read ({exc.strerror or 'damaged or unsupported data'}).") from exc
    except Exception as exc:
        raise ImageError(f"{_cap(label)} could not be read: it is damaged or not a supported image.") from exc

    with im:
        _check_size(*_upright_size(im), limit, label)  # before any pixel is decoded
        notes = _frame_notes(im, label, gif)
        _check_size(*_upright_size(im), limit, label)  # the frame that decodes is the one checked
        raw_mode = _raw_mode(im)  # the file's own sample layout, gone once decoded
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
            raise ImageError(f"{_cap(label)} is damaged or truncated and cannot be decoded.") from exc
        try:
            arr, more = _from_pil(im, label, raw_mode)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(f"{_cap(label)} could not be converted to RGB.") from exc
        return arr, notes + more


MAX_GIF_COMMENT_BYTES = 64 << 10
MAX_COUNTED_PAGES = 100  # a TIFF or GIF with more says "over 99 pages / frames"
# The markers libjpeg reads with a length (frames, tables, scans, APPn, comments) and the end of the image. Any
# other (a restart, stuffing, fill, or one libjpeg skips while resyncing after a restart) is searched past, so no
# length can be made to hide a scan: the count can only be too high.
_JPEG_MARKER = re.compile(rb"\xff(?=[\xc0-\xcf\xd9-\xef\xfe])")
MAX_JPEG_SEGMENTS = 4096  # photos have tens; the walk stays in C but for one step per segment
MAX_JPEG_SCANS = 100  # libjpeg's progressive default is 10 (YCbCr); a scan of 4 MP decodes in ~6 ms here
_GIF_BLOCK = re.compile(rb"[!,;]")


class GifScan(NamedTuple):
    comment_bytes: int  # what Pillow's comments grow to over the frames scanned, counted to just over the limit
    frames: int         # image blocks scanned, at most MAX_COUNTED_PAGES
    complete: bool      # the scan reached the end: ``frames`` is every frame


def _prescan(opener: object, label: str) -> GifScan | None:
    """Refuse, before Pillow opens it, a GIF or JPEG whose decoding time a small file can make unbounded; a GIF's
    first MAX_COUNTED_PAGES frames, scanned once (None for other files; only GIFs and JPEGs are read whole).

    Pillow joins a GIF's comments piece by piece, in time quadratic in their number (every 255-byte piece,
    and a newline for every further comment, even an empty one): a few MB of them hold the server for
    minutes while the file is opened, so such a GIF is refused. Pillow's own frame count walks every frame
    (seconds for a small file of many tiny frames), so the scan counts them instead, up to the bound: only
    the first frame is used, and Pillow reads no comment past the second. A progressive JPEG is decoded one
    scan at a time over the whole image, and a scan can take 16 bytes (:func:`jpeg_scans`)."""
    scan, scans = None, 0
    try:
        f = open(opener, "rb") if isinstance(opener, Path) else opener
        try:
            start = f.tell()
            magic = f.read(4)
            f.seek(start)
            if magic == b"GIF8":
                scan = gif_scan(f.read())
            elif magic[:2] == b"\xff\xd8":
                scans = jpeg_scans(f.read())
            f.seek(start)
        finally:
            if f is not opener:
                f.close()
    except (OSError, ValueError):
        pass  # unreadable here: Pillow says so, with the usual message
    if scan is not None and scan.comment_bytes > MAX_GIF_COMMENT_BYTES:
        raise ImageError(f"{_cap(label)} is a GIF with over {MAX_GIF_COMMENT_BYTES // 1024} KiB of comments: "
                         "save it as PNG and upload that.")
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"{_cap(label)} is a progressive JPEG of over {MAX_JPEG_SCANS} scans or {MAX_JPEG_SEGMENTS:,} "
                         "segments (each scan is decoded over the whole image; photos have about 10): save it as PNG "
                         "and upload that.")
    return scan


def jpeg_scans(data: bytes) -> int:
    """A JPEG's start-of-scan markers up to its end-of-image marker, counted to just over MAX_JPEG_SCANS. It is
    walked as libjpeg reads it: segments by their lengths (EXIF and its thumbnail, an ICC profile, tables and
    comments between scans are skipped whole), coded data to the next marker, other bytes skipped; nothing after
    the end of the image (a motion photo's video) is decoded, so nothing there counts. Over MAX_JPEG_SEGMENTS
    segments count as too many scans."""
    count, pos = 0, 2
    for _ in range(MAX_JPEG_SEGMENTS):
        found = _JPEG_MARKER.search(data, pos)
        if found is None or count > MAX_JPEG_SCANS or data[found.start() + 1] == 0xD9:  # D9: end of image
            return count
        pos = found.start()
        count += data[pos + 1] == 0xDA  # its coded data follows the header; the search skips it
        pos += 2 + max(2, int.from_bytes(data[pos + 2:pos + 4], "big"))  # under 2: libjpeg stops with an error
    return MAX_JPEG_SCANS + 1  # so many segments: refused as if scans


def gif_scan(data: bytes) -> GifScan:
    """A GIF's comment bytes as Pillow's comments grow (their bytes plus one per comment), counted up to just
    over MAX_GIF_COMMENT_BYTES, and its frames, up to MAX_COUNTED_PAGES. Reads the blocks in Pillow's own
    order (GifImagePlugin ``_seek``): a byte that
    starts no block is skipped, a non-comment extension is read to the next empty sub-block *after* its
    first one (even when that first one was already empty), NETSCAPE2.0 reads one more, and an image's data
    is skipped sub-block by sub-block."""
    n = len(data)
    if n < 13:
        return GifScan(0, 0, True)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table

    def sub_block() -> tuple[int, int]:
        """Pillow's ``data()``: (start, length read); length 0 at an empty sub-block or the end."""
        nonlocal pos
        if pos >= n or not data[pos]:
            pos += 1
            return pos, 0
        start, pos = pos + 1, pos + 1 + data[pos]
        return start, min(pos, n) - start

    total, frame = 0, 0
    while total <= MAX_GIF_COMMENT_BYTES and frame < MAX_COUNTED_PAGES:
        found = _GIF_BLOCK.search(data, pos)  # stray bytes are skipped (in C here, one by one in Pillow)
        if found is None or found.group() == b";":
            return GifScan(total, frame, True)
        pos = found.end()
        if found.group() == b"!":
            if pos >= n:
                return GifScan(total, frame, True)
            label = data[pos]
            pos += 1
            start, length = sub_block()
            if label == 0xFE:
                size = 0
                while length:
                    size += length
                    start, length = sub_block()
                total += size + 1
                continue
            if label == 0xFF and frame == 0 and data[start:start + 11] == b"NETSCAPE2.0" and length:
                sub_block()
            while sub_block()[1]:
                pass
        else:  # an image: descriptor, local colour table, LZW code size, then its data
            if pos + 9 > n:
                return GifScan(total, frame, True)
            flags = data[pos + 8]
            pos += 9 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            while sub_block()[1]:
                pass
            frame += 1
    return GifScan(total, frame, False)  # stopped at a bound: more may follow


def _frame_notes(im: Image.Image, label: str, gif: GifScan | None = None) -> list[str]:
    """A note when only the first of several frames (animation) or pages (TIFF) is used."""
    try:
        frames, exact = _frame_count(im, gif)
    except Exception:  # a damaged later frame: the first may still decode; say nothing about the rest
        frames, exact = 1, True
    try:
        if im.tell() != 0:
            im.seek(0)  # counting moved on: back to the first frame, the one whose size was checked
    except Exception as exc:
        raise ImageError(f"{_cap(label)} is damaged: its first frame cannot be read again.") from exc
    if frames <= 1:
        return []
    fmt = im.format or "image"
    many = f"{frames}" if exact else f"over {frames - 1}"
    if fmt == "TIFF":
        return [f"{_cap(label)} is a multi-page TIFF with {many} pages: only the first page is used."]
    kind = "APNG" if fmt == "PNG" else fmt
    return [f"{_cap(label)} is an animated {kind} with {many} frames: only the first frame is used."]


def _frame_count(im: Image.Image, gif: GifScan | None = None) -> tuple[int, bool]:
    """(frames, exact). A GIF's are its scan's (``gif``); a TIFF's pages are counted up to MAX_COUNTED_PAGES
    only: Pillow's ``n_frames`` walks every page in quadratic time (minutes for a small file of many tiny
    pages, on the one checks worker)."""
    if gif is not None and im.format == "GIF":
        return gif.frames, gif.complete
    if im.format != "TIFF":
        return int(getattr(im, "n_frames", 1)), True
    if not getattr(im, "is_animated", False):  # read from the first page's header at open
        return 1, True
    pages = 1
    try:
        while pages < MAX_COUNTED_PAGES:
            im.seek(pages)
            pages += 1
    except EOFError:
        return pages, True
    return pages, False


def _raw_mode(im: Image.Image) -> str:
    """How the file stores its samples (e.g. ``RGB;16B``), from the decoder's tile; '' when unknown."""
    try:
        args = im.tile[0].args if im.tile else None
    except Exception:
        return ""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _header_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag as far as the header tells without decoding (JPEG, WebP, TIFF; a PNG's
    ``getexif`` would decode the whole image first); 1 when absent or malformed."""
    try:
        if raw := im.info.get("exif"):
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(0x0112, 1) or 1)
        if (tags := getattr(im, "tag_v2", None)) is not None:
            return int(tags.get(0x0112, 1) or 1)
    except Exception:
        pass
    return 1


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) once turned upright (orientations 5-8 turn it a quarter), from the header: the size
    the user sees, which messages name."""
    return (im.height, im.width) if _header_orientation(im) in (5, 6, 7, 8) else (im.width, im.height)


def _from_pil(im: Image.Image, label: str = "the image", raw_mode: str = "") -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation not in (None, 1):  # only then: exif_transpose copies even an upright image
            upright = ImageOps.exif_transpose(im)
            if upright is not None and upright.size != (0, 0):
                if orientation in (2, 3, 4, 5, 6, 7, 8):
                    notes.append(f"{_cap(label)} was turned upright as its EXIF orientation tag says.")
                im = upright
    except Exception:
        pass  # malformed EXIF: keep the stored orientation rather than refuse the image
    mode = im.mode
    sixteen = ";16" in raw_mode
    if sixteen and not mode.startswith("I"):
        notes.append(f"{_cap(label)} has 16 bits per channel, but 16-bit colour is read at 8 bits here "
                     "(the top 8 bits of each sample are kept); only 16-bit grayscale keeps all 16 bits.")
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(im)
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"))
    elif mode in ("LA", "La", "PA", "RGBa", "RGBX") or (mode == "P" and _palette_has_alpha(im)):
        arr = np.asarray(im.convert("RGBA" if mode != "RGBX" else "RGB"))
    elif mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64 if mode == "F" else np.int64)
        arr = np.clip(np.round(arr) if mode == "F" else arr, 0, 65535).astype(np.uint16)
        if mode.startswith("I;16") or (mode == "I" and sixteen):
            notes.append(f"{_cap(label)} is 16-bit grayscale: all 16 bits are kept (as R = G = B).")
        elif mode == "I":
            notes.append(f"{_cap(label)} is 32-bit integer grayscale: values are clipped to 0..65535 (16 bits).")
        else:
            notes.append(f"{_cap(label)} is floating-point grayscale: values are rounded and clipped to "
                         "0..65535 (16 bits).")
    else:  # P without transparency, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(im.convert("RGB"))
        if mode == "CMYK":
            notes.append(f"{_cap(label)} is CMYK: converted to RGB by a simple formula without a colour "
                         "profile, so colours can differ from what an image editor shows.")
        elif mode != "P":
            notes.append(f"{_cap(label)} is in the {mode} colour space: converted to RGB.")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr), notes


def _palette_has_alpha(im: Image.Image) -> bool:
    if "transparency" in im.info:
        return True
    palette = im.palette
    return palette is not None and palette.mode == "RGBA"


def _from_array(arr: np.ndarray, limit: int, label: str = "the image array") -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"Expected an HxW, HxWx3 or HxWx4 image array, got shape {arr.shape}.")
    _check_size(arr.shape[1], arr.shape[0], limit, label)
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


# Float images are in [0, 1]; a model's raw output overshoots a little and is clipped, as its PNG would be.
# Beyond this margin the caller has passed another range (0-255 floats): a clear error, not inf or nonsense.
FLOAT_MARGIN = 0.5


def check_float_range(img: np.ndarray, label: str = "the image") -> None:
    """Refuse a float image whose values are not (about) in [0, 1], naming the range it has."""
    if np.issubdtype(img.dtype, np.floating) and img.size:
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if lo < -FLOAT_MARGIN or hi > 1.0 + FLOAT_MARGIN:
            raise ValueError(f"{label} is float with values {lo:g}..{hi:g}; float images must lie in [0, 1] "
                             "(divide 0-255 values by 255, or pass uint8)")


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8/uint16/float array -> 1x3xHxW float32 tensor in [0, 1] (the model's input).

    Floats must be in [0, 1] (0-255 floats are refused). Alpha is the caller's business:
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
        check_float_range(arr)
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
