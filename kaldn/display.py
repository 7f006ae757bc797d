"""Display helpers: 8-bit views, nearest-neighbour enlargement, regions, colour maps and small renderings.

Pure numpy + PIL, no models and no UI: the comparison, the model inspection and the app draw with these.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["centre_crop", "clamp_region", "crop_region", "diverging", "draw_region", "enlarge_nearest", "font",
           "label_above", "map_tile", "render_heatmap", "render_image", "sequential", "tile_grid", "to_display"]


# --- 8-bit views, enlargement, regions --------------------------------------------------------------------

def to_display(image: np.ndarray) -> np.ndarray:
    """An 8-bit view of an image for the screen (uint16 -> uint8 by rounding v / 257); shape kept."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    return np.round(np.clip(image.astype(np.float32), 0, 1) * 255).astype(np.uint8)


def enlarge_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor: every pixel becomes a factor x factor block."""
    factor = int(factor)
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def clamp_region(center: tuple[float, float] | None, size: int, shape: tuple[int, int], scale: int
                 ) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a square region of about ``size`` output pixels centred on ``center`` = (x, y).

    The region is aligned to multiples of ``scale`` so that it maps onto whole LR
    pixels (the LR crop then shows exactly what the networks saw), and kept
    inside an image of ``shape`` = (height, width). ``center=None``: the image centre.
    """
    height, width = int(shape[0]), int(shape[1])
    size = max(2 * scale, int(round(size / scale)) * scale)
    w = min(size, width - width % scale or width)
    h = min(size, height - height % scale or height)
    if center is None:
        cx, cy = width / 2, height / 2
    else:
        cx, cy = float(center[0]), float(center[1])
    x0 = int(round(cx - w / 2)) // scale * scale
    y0 = int(round(cy - h / 2)) // scale * scale
    x0 = max(0, min(x0, (width - w) // scale * scale))
    y0 = max(0, min(y0, (height - h) // scale * scale))
    return x0, y0, w, h


def centre_crop(image: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The centre of ``image``, at most ``side`` pixels a side, and its top-left corner (x0, y0)."""
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y0:y0 + side, x0:x0 + side], (x0, y0)


def crop_region(image: np.ndarray, region: tuple[int, int, int, int], factor: int = 1) -> np.ndarray:
    """The (x0, y0, w, h) region of ``image`` as an 8-bit view, enlarged ``factor`` times (nearest neighbour)."""
    x0, y0, w, h = region
    return enlarge_nearest(to_display(image[y0:y0 + h, x0:x0 + w]), factor)


PICKER_SIDE = 1024  # the click-to-zoom picker's longest side at most, in its own pixels


def picker_factor(shape: tuple[int, ...]) -> int:
    """The whole factor the picker of an image of ``shape`` is reduced by, so its longest side is at most
    PICKER_SIDE: every view draws and encodes it again, and a full 2048^2 one costs seconds and megabytes a call."""
    return max(1, -(-max(int(shape[0]), int(shape[1])) // PICKER_SIDE))


def draw_region(image: np.ndarray, region: tuple[int, int, int, int], factor: int = 1) -> np.ndarray:
    """An 8-bit RGB copy of ``image`` with the region outlined (for the click-to-zoom picker), reduced
    ``factor`` times (box filter); ``region`` is in the image's own pixels."""
    view = to_display(image)[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(view))
    if factor > 1:
        pil = pil.reduce(factor)
        region = tuple(v // factor for v in region[:2]) + tuple(max(1, -(-v // factor)) for v in region[2:])
    draw = ImageDraw.Draw(pil)
    x0, y0, w, h = region
    width = max(2, min(pil.size) // 200)
    for offset, colour in ((width, (0, 0, 0)), (0, (255, 230, 0))):
        draw.rectangle([x0 - offset, y0 - offset, x0 + w - 1 + offset, y0 + h - 1 + offset],
                       outline=colour, width=width)
    return np.asarray(pil)


# --- colour maps and small renderings --------------------------------------------------------------------

def font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def diverging(values: np.ndarray, limit: float) -> np.ndarray:
    """Blue (negative) - white (0) - red (positive), ``limit`` mapped to full colour; uint8 RGB."""
    v = np.clip(np.asarray(values, dtype=np.float64) / max(float(limit), 1e-12), -1.0, 1.0)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    out = np.empty(v.shape + (3,), np.uint8)  # one channel at a time: a 2048^2 map stays ~130 MB at its peak
    out[..., 0] = np.round((1.0 - 0.75 * neg) * 255)
    out[..., 1] = np.round((1.0 - 0.8 * pos - 0.6 * neg) * 255)
    out[..., 2] = np.round((1.0 - 0.8 * pos) * 255)
    return out


def sequential(values: np.ndarray) -> np.ndarray:
    """0 -> dark blue, 0.5 -> orange-ish, 1 -> light yellow (a small 'inferno'-like ramp); uint8 RGB."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(np.floor(v).astype(int), len(stops) - 2)
    t = v - i
    out = np.empty(v.shape + (3,), np.uint8)  # one channel at a time, as in diverging
    for c in range(3):
        out[..., c] = np.round(stops[i, c] * (1 - t) + stops[i + 1, c] * t)
    return out


def render_heatmap(values: np.ndarray, title: str, lo: float = 0.0, hi: float = 1.0,
                   max_side: int = 384) -> np.ndarray:
    """A map of shares (0..1) as a colour image with a title and a colour bar labelled ``lo``..``hi``.

    The colours span ``lo``..``hi`` (clipped outside), so small differences stay visible;
    the bar says which range that is.
    """
    h, w = values.shape
    factor = max(1, max_side // max(h, w))
    span = max(hi - lo, 1e-6)
    body = enlarge_nearest(sequential((values - lo) / span), factor)
    bar_w = 18
    bar = sequential(np.linspace(1, 0, body.shape[0])[:, None].repeat(bar_w, axis=1))
    canvas = Image.new("RGB", (body.shape[1] + bar_w + 62, body.shape[0] + 24), "white")
    canvas.paste(Image.fromarray(body), (0, 24))
    canvas.paste(Image.fromarray(bar), (body.shape[1] + 8, 24))
    draw = ImageDraw.Draw(canvas)
    small = font(12)
    draw.text((2, 4), title, fill="black", font=small)
    # Both ends labelled to a tenth: a range such as 43.5-51% must not read as 0-51%.
    draw.text((body.shape[1] + bar_w + 11, 24), f"{100 * hi:.1f}%", fill="black", font=small)
    draw.text((body.shape[1] + bar_w + 11, canvas.height - 14), f"{100 * lo:.1f}%", fill="black", font=small)
    return np.asarray(canvas)


def render_image(image: np.ndarray, title: str, max_side: int = 384) -> np.ndarray:
    """An image enlarged (nearest) to about ``max_side`` with a title, laid out like :func:`render_heatmap`."""
    view = to_display(image)[..., :3]
    factor = max(1, max_side // max(view.shape[:2]))
    body = enlarge_nearest(view, factor)
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + 24), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(body)), (0, 24))
    ImageDraw.Draw(canvas).text((2, 4), title, fill="black", font=font(12))
    return np.asarray(canvas)


def label_above(image: np.ndarray, text: str, height: int = 20, square: bool = False) -> np.ndarray:
    """``image`` (8-bit view) under a white band with ``text``: a caption that never covers the pixels
    (a gallery's own captions are drawn over the image's corner). ``square``: white margins left and right
    make the result square, so a gallery's square thumbnails show all of it."""
    view = to_display(image)[..., :3]
    width = max(view.shape[1], view.shape[0] + height) if square else view.shape[1]
    canvas = Image.new("RGB", (width, view.shape[0] + height), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(view)), ((width - view.shape[1]) // 2, height))
    ImageDraw.Draw(canvas).text((3, max(1, (height - 13) // 2)), text, fill="black", font=font(12))
    return np.asarray(canvas)


# --- grids of maps ------------------------------------------------------------------------------------------

def map_tile(values: np.ndarray, side: int = 256, most: int = 512) -> np.ndarray:
    """A map (H x W values, or H x W x C) for the overview grid: small ones enlarged (nearest) to about
    ``side``; large ones reduced by an integer factor keeping each block's largest value (the largest error),
    so no hotspot disappears. Reduce the values, then colour them: a colour ramp need not rise in every
    channel, so the channel-wise largest of colours can be a colour that is on no ramp."""
    h, w = values.shape[:2]
    if max(h, w) <= most:
        return enlarge_nearest(values, max(1, side // max(h, w)))
    f = -(-max(h, w) // most)  # ceil
    padded = np.pad(values, ((0, -h % f), (0, -w % f)) + ((0, 0),) * (values.ndim - 2), mode="edge")
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, *values.shape[2:])
    return blocks.max(axis=(1, 3))


def tile_grid(tiles: list[np.ndarray], columns: int, bar: np.ndarray, pad: int = 6) -> np.ndarray:
    """Tiles in rows of ``columns`` on white, the colour bar under them; uint8 RGB."""
    columns = max(1, min(columns, len(tiles)))
    tw = max(t.shape[1] for t in tiles)
    th = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // columns)
    width = max(columns * (tw + pad) + pad, bar.shape[1] + 2 * pad)
    canvas = np.full((rows * (th + pad) + pad + bar.shape[0], width, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        canvas[y:y + t.shape[0], x:x + t.shape[1]] = t[..., :3]
    y = rows * (th + pad) + pad
    canvas[y:y + bar.shape[0], pad:pad + bar.shape[1]] = bar
    return canvas
