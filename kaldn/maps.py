"""Where the variants differ, and by how much: error maps, pairwise difference maps, colour bars and
the default zoom region. Pure functions over image arrays, no UI.

On the bundled examples the variants' outputs differ by about one grey level on average (README, "Where the
variants differ"), which no side-by-side view shows. These maps do::

    from kaldn.maps import error_maps, pair_difference, default_zoom_center, render_error_map
    errors = error_maps({"LDSConv": sr_a, "KDSConv (det)": sr_b}, gt, border=4)
    diff = pair_difference(sr_a, sr_b, gt, border=4, labels=("LDSConv", "KDSConv (det)"))
    center = default_zoom_center(64, pair=diff)          # feed to kaldn.display.clamp_region

Conventions (the same as :mod:`kaldn.metrics`, DESIGN.md "Evaluation protocol"):

* every map is on the Y channel of BT.601 (``metrics.rgb_to_y``), in *grey levels* of 8-bit Y
  (one unit = one step of Y in [16, 235]); float outputs are rounded to 8 bits first, alpha is
  dropped, uint16 is scaled to the 8-bit range, exactly as PSNR/SSIM see the images;
* the maps themselves are full size, pixel-aligned with the outputs (so they can sit beside them,
  in the slider, and share the zoom region's coordinates); every *number* derived from them (mean
  error, the colour-scale limit, win shares, PSNR, the hotspot) skips ``border`` pixels per side,
  as ``psnr_y`` does. Pass ``border=scale`` to match the reported PSNR/SSIM.

Labels drawn into images are ASCII (">=", "-"): Pillow's bundled default font has no glyph for
"≥", "−" or "Δ" and would draw boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from .display import diverging, enlarge_nearest, font, map_tile, sequential
from .metrics import _as_8bit, crop_border, psnr_of_y, rgb_to_y

__all__ = [
    "NO_GROUND_TRUTH", "WIN_THRESHOLD", "SCALE_PERCENTILE", "ErrorMaps", "PairDifference",
    "y_channel", "error_maps", "pair_difference", "hotspot", "default_zoom_center",
    "colourize_error", "colourize_pair", "colour_bar", "error_colour_bar", "pair_colour_bar",
    "render_error_map", "render_pair_difference",
]

NO_GROUND_TRUTH = ("No ground truth, so no error maps: upload the high-resolution image in HR mode, or add "
                   "a ground truth in LR mode, to see where each variant is wrong.")
WIN_THRESHOLD = 1.0      # grey levels by which a variant must be closer to count as a "win" at a pixel
SCALE_PERCENTILE = 99.0  # colour scales end at this percentile, so a few outliers do not wash out the rest


# --- Y channel and small helpers --------------------------------------------------------------------------

def _colour(image: np.ndarray) -> np.ndarray:
    """The colour channels: alpha is not part of any metric (as in comparison.run_comparison)."""
    img = np.asarray(image)
    return img[..., :3] if img.ndim == 3 and img.shape[2] == 4 else img


def y_channel(image: np.ndarray, border: int = 0) -> np.ndarray:
    """Y (BT.601, [16, 235], float64) exactly as :func:`kaldn.metrics.psnr_y` sees the image.

    Floats are rounded to 8 bits first and alpha is dropped; ``border`` pixels are cropped
    from every side (0: the full, pixel-aligned map).
    """
    return crop_border(rgb_to_y(_as_8bit(_colour(image))), border)


def _same_shape(images: Mapping[str, np.ndarray]) -> tuple[int, int]:
    shapes = {name: np.asarray(img).shape[:2] for name, img in images.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {w}x{h}" for name, (h, w) in shapes.items())
        raise ValueError(f"all images must have the same size, got {listed}")
    return next(iter(shapes.values()))


def _scale_limit(values: np.ndarray, in_place: bool = False) -> float:
    """The upper end of a colour scale: the 99th percentile rounded up to a whole grey level, at least 1.
    ``in_place``: ``values`` may be reordered (no copy of a large array)."""
    p = float(np.percentile(values, SCALE_PERCENTILE, overwrite_input=in_place)) if values.size else 0.0
    return float(max(1, math.ceil(round(p, 6))))  # round first: 3.0000000001 is 3, not 4


def _levels(x: float) -> str:
    return f"{x:g}"


# --- error maps -------------------------------------------------------------------------------------------

@dataclass
class ErrorMaps:
    """|SR - ground truth| on Y, per variant, all on one colour scale."""

    maps: dict[str, np.ndarray]       # full-size float32 maps, grey levels, in the order given
    mean_abs: dict[str, float]        # mean |error| inside the border crop, grey levels
    limit: float                      # shared colour-scale end (whole grey levels, >= 1)
    border: int

    def tile(self, name: str) -> np.ndarray:
        """The map of ``name`` for the overview grid (:func:`~kaldn.display.map_tile`), as uint8 RGB."""
        return colourize_error(map_tile(self.maps[name]), self.limit)

    def colour_bar(self, length: int = 256) -> np.ndarray:
        return error_colour_bar(self.limit, length)


def error_maps(outputs: Mapping[str, np.ndarray], ground_truth: np.ndarray, *, border: int) -> ErrorMaps:
    """Per-variant |dY| against the ground truth, with one shared colour-scale limit.

    ``outputs`` maps a label to an HR-sized output; ``border`` is what metrics crop (the scale).
    The shared limit is the 99th percentile of all variants' errors inside the border, rounded
    up to a whole grey level and never 0, so every map uses the same colours for the same error.
    Raises ValueError without a ground truth (show :data:`NO_GROUND_TRUTH` instead) or outputs.
    """
    if ground_truth is None:
        raise ValueError(NO_GROUND_TRUTH)
    if not outputs:
        raise ValueError("error_maps needs at least one output")
    _same_shape({**outputs, "ground truth": ground_truth})
    y_gt = y_channel(ground_truth)
    maps, mean_abs = {}, {}
    for name, out in outputs.items():  # one float64 map at a time; kept as float32 (display only), half the memory
        error = np.abs(y_channel(out) - y_gt)
        mean_abs[name] = float(crop_border(error, border).mean())
        maps[name] = error.astype(np.float32)
    inner = np.concatenate([crop_border(m, border).ravel() for m in maps.values()])
    return ErrorMaps(maps=maps, mean_abs=mean_abs, limit=_scale_limit(inner, in_place=True), border=int(border))


# --- pairwise difference ----------------------------------------------------------------------------------

@dataclass
class PairDifference:
    """How two outputs A and B differ; with a ground truth, which one is closer where.

    ``signed`` = |B - GT| - |A - GT| on Y: positive where A is closer. Shares and PSNRs are
    measured inside the border crop; ``psnr_delta`` = PSNR(A) - PSNR(B) with metrics' protocol.
    """

    labels: tuple[str, str]
    absolute: np.ndarray              # |A - B| on Y, full size, grey levels
    signed: np.ndarray | None         # |B - GT| - |A - GT|, full size; None without a ground truth
    limit: float                      # colour-scale end (whole grey levels, >= 1); symmetric when signed
    border: int
    max_abs: float                    # largest |A - B| inside the border
    mean_abs: float                   # mean |A - B| inside the border
    a_wins: float | None = None       # share of pixels (0..1) where A is closer by >= WIN_THRESHOLD
    b_wins: float | None = None
    psnr_a: float | None = None
    psnr_b: float | None = None
    psnr_delta: float | None = None

    @property
    def has_ground_truth(self) -> bool:
        return self.signed is not None

    @property
    def magnitude(self) -> np.ndarray:
        """Where the pair differs, >= 0: |signed| with a ground truth, else |A - B|."""
        return np.abs(self.signed) if self.signed is not None else self.absolute

    def summary(self) -> str:
        """One line for the page (Unicode is fine there, unlike in the drawn images)."""
        a, b = self.labels
        if self.signed is None:
            return (f"No ground truth: |{a} − {b}| is {self.mean_abs:.2f} grey levels on average, "
                    f"{self.max_abs:.1f} at most (Y channel, {self.border}-pixel border excluded).")
        return (f"{a} is closer to the ground truth by ≥ {WIN_THRESHOLD:g} grey level on "
                f"{100 * self.a_wins:.1f} % of pixels, {b} on {100 * self.b_wins:.1f} %; "
                f"PSNR {a} − {b} = {self.psnr_delta:+.3f} dB (Y channel, {self.border}-pixel border excluded).")


def _psnr_delta(pa: float, pb: float) -> float:
    if math.isinf(pa) and math.isinf(pb):
        return 0.0  # both equal the ground truth
    return pa - pb


def pair_difference(a: np.ndarray, b: np.ndarray, ground_truth: np.ndarray | None = None, *, border: int,
                    labels: tuple[str, str] = ("A", "B")) -> PairDifference:
    """Compare outputs ``a`` and ``b`` (HR-sized), against ``ground_truth`` when there is one.

    With a ground truth: the signed map |B - GT| - |A - GT| (positive where A is closer), the shares
    of pixels where each is closer by at least :data:`WIN_THRESHOLD` grey level, and PSNR(A) - PSNR(B)
    as :func:`kaldn.metrics.psnr_y` measures them. Without: |A - B| and its maximum. Swapping A and B
    flips the sign of ``signed`` and ``psnr_delta`` and swaps the win shares.
    """
    images = {labels[0]: a, labels[1]: b} if labels[0] != labels[1] else {"A": a, "B": b}
    if ground_truth is not None:
        images["ground truth"] = ground_truth
    _same_shape(images)
    y_a, y_b = y_channel(a), y_channel(b)
    absolute = np.abs(y_a - y_b)
    inner_abs = crop_border(absolute, border)
    common = dict(labels=(str(labels[0]), str(labels[1])), absolute=absolute, border=int(border),
                  max_abs=float(inner_abs.max()), mean_abs=float(inner_abs.mean()))
    if ground_truth is None:
        return PairDifference(signed=None, limit=_scale_limit(inner_abs), **common)
    y_gt = y_channel(ground_truth)
    signed = np.abs(y_b - y_gt) - np.abs(y_a - y_gt)
    inner = crop_border(signed, border)
    eps = 1e-9  # Y differences are sums of float products; a difference of exactly 1 must count
    psnr_a, psnr_b = psnr_of_y(y_a, y_gt, border), psnr_of_y(y_b, y_gt, border)  # psnr_y's, from these planes
    return PairDifference(signed=signed, limit=_scale_limit(np.abs(inner)),
                          a_wins=float(np.mean(inner >= WIN_THRESHOLD - eps)),
                          b_wins=float(np.mean(inner <= -WIN_THRESHOLD + eps)),
                          psnr_a=psnr_a, psnr_b=psnr_b, psnr_delta=_psnr_delta(psnr_a, psnr_b), **common)


# --- zoom where it matters --------------------------------------------------------------------------------

def hotspot(values: np.ndarray, size: int, border: int = 0) -> tuple[float, float]:
    """Centre (x, y) of the ``size`` x ``size`` window with the largest sum of ``values``.

    Windows lie inside the ``border`` crop (clipped to it when it is smaller than ``size``).
    Window sums come from a summed-area table (cumulative sums), so this is O(H W) for any size.
    Ties (a flat map) go to the window nearest the image centre.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"hotspot expects a 2-D map, got shape {values.shape}")
    inner = crop_border(values, border)
    h, w = inner.shape
    kh, kw = max(1, min(int(size), h)), max(1, min(int(size), w))
    table = np.zeros((h + 1, w + 1))
    table[1:, 1:] = np.nan_to_num(inner).cumsum(axis=0).cumsum(axis=1)
    sums = table[kh:, kw:] - table[:-kh, kw:] - table[kh:, :-kw] + table[:-kh, :-kw]
    best = sums.max()
    # cumulative sums carry rounding error, so "equal" windows are equal to a tolerance
    ties = np.argwhere(sums >= best - 1e-9 * max(1.0, abs(best), float(np.abs(inner).sum())))
    centres = ties[:, ::-1] + np.array([kw / 2, kh / 2]) + border     # (x, y) in full-image coordinates
    full_h, full_w = values.shape
    nearest = np.argmin(((centres - np.array([full_w / 2, full_h / 2])) ** 2).sum(axis=1))
    cx, cy = centres[nearest]
    return float(cx), float(cy)


def default_zoom_center(size: int, pair: PairDifference | None = None,
                        best_vs_bicubic: PairDifference | None = None) -> tuple[float, float] | None:
    """Where to zoom by default: where the chosen pair differs most, else where the best variant
    gains most over bicubic; None (the image centre) when neither is given.

    ``pair``: the two variants chosen in the app (their ``magnitude`` map is used).
    ``best_vs_bicubic``: ``pair_difference(best, bicubic, gt)``: with a ground truth the window with
    the largest net gain (``signed``, positive where the model is closer); without, where the model
    changes bicubic's output most (``absolute``). The result goes to ``kaldn.display.clamp_region``.
    """
    if pair is not None:
        return hotspot(pair.magnitude, size, pair.border)
    if best_vs_bicubic is not None:
        gain = best_vs_bicubic.signed if best_vs_bicubic.signed is not None else best_vs_bicubic.absolute
        return hotspot(gain, size, best_vs_bicubic.border)
    return None


# --- colours and colour bars ------------------------------------------------------------------------------

def colourize_error(values: np.ndarray, limit: float) -> np.ndarray:
    """An error map (grey levels) as uint8 RGB: 0 dark, ``limit`` and above light yellow."""
    return sequential(np.asarray(values, dtype=np.float64) / max(float(limit), 1e-12))


def colourize_pair(pair: PairDifference) -> np.ndarray:
    """The pair map as uint8 RGB, same size as the outputs: red where A is closer, blue where B is
    (white: equally close); without a ground truth |A - B| on the error ramp."""
    if pair.signed is None:
        return colourize_error(pair.absolute, pair.limit)
    return diverging(pair.signed, pair.limit)


_PAD, _BAR_H, _LINE = 6, 14, 16


def colour_bar(colours: np.ndarray, left: str, right: str, middle: str | None = None,
               title: str | None = None, length: int = 256) -> np.ndarray:
    """A horizontal colour bar, ``colours`` (N x 3 uint8, left to right) stretched to ``length`` pixels,
    with the labels under its two ends (and centre), an optional title above; uint8 RGB.

    The image is ``length + 12`` pixels wide (wider when the labels or title need it) and
    ``6 + (16 if title) + 14 + 4 + 16 + 6`` pixels high.
    """
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    label_font = font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [measure.textlength(t, font=label_font) for t in (left, right, middle or "", title or "")]
    # The middle label is centred, so each end label needs half the bar beside it, the longer end included.
    need = max(2 * max(widths[0], widths[1]) + widths[2] + 24 if middle else widths[0] + widths[1] + 12, widths[3])
    length = max(int(length), math.ceil(need), 2)
    top = _PAD + (_LINE if title else 0)
    canvas = Image.new("RGB", (length + 2 * _PAD, top + _BAR_H + 4 + _LINE + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    index = np.minimum((np.arange(length) * len(colours)) // length, len(colours) - 1)
    strip = np.repeat(colours[index][None], _BAR_H, axis=0)
    canvas.paste(Image.fromarray(np.ascontiguousarray(strip)), (_PAD, top))
    draw.rectangle([_PAD - 1, top - 1, _PAD + length, top + _BAR_H], outline=(90, 90, 90))
    if title:
        draw.text((_PAD, _PAD - 2), title, fill="black", font=label_font)
    y = top + _BAR_H + 3
    draw.text((_PAD, y), left, fill="black", font=label_font)
    draw.text((_PAD + length - widths[1], y), right, fill="black", font=label_font)
    if middle:
        draw.line([_PAD + length // 2, top + _BAR_H, _PAD + length // 2, top + _BAR_H + 3], fill="black")
        draw.text((_PAD + (length - widths[2]) / 2, y), middle, fill="black", font=label_font)
    return np.asarray(canvas)


def error_colour_bar(limit: float, length: int = 256, title: str | None = "|SR - ground truth|, Y channel"
                     ) -> np.ndarray:
    """The error scale: "0" at the left, ">= {limit} grey levels" at the right."""
    ramp = sequential(np.linspace(0.0, 1.0, 256))
    return colour_bar(ramp, "0", f">= {_levels(limit)} grey levels", title=title, length=length)


def pair_colour_bar(pair: PairDifference, length: int = 256) -> np.ndarray:
    """The pair scale: "<B> closer by >= N" (blue) at the left, "<A> closer ..." (red) at the right;
    without a ground truth the |A - B| scale from 0 to ">= N grey levels"."""
    a, b = pair.labels
    n = _levels(pair.limit)
    if pair.signed is None:
        return colour_bar(sequential(np.linspace(0.0, 1.0, 256)), "0", f">= {n} grey levels",
                          title=f"|{a} - {b}|, Y channel (no ground truth)", length=length)
    return colour_bar(diverging(np.linspace(-1.0, 1.0, 257), 1.0), f"{b} closer by >= {n}",
                      f"{a} closer by >= {n}", middle="equal",
                      title=f"|{b} - GT| - |{a} - GT|, grey levels", length=length)


def _compose(lines: list[str], body: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """Title lines above the body, the colour bar below it; uint8 RGB, as wide as the widest part."""
    label_font = font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((measure.textlength(line, font=label_font) for line in lines), default=0)
    width = max(body.shape[1], bar.shape[1], math.ceil(text_w) + 2 * _PAD)
    head = _PAD + _LINE * len(lines)
    canvas = Image.new("RGB", (width, head + body.shape[0] + bar.shape[0]), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((_PAD, _PAD - 2 + _LINE * i), line, fill="black", font=label_font)
    canvas.paste(Image.fromarray(np.ascontiguousarray(body)), (0, head))
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (0, head + body.shape[0]))
    return np.asarray(canvas)


def _enlarge(image: np.ndarray, min_side: int) -> np.ndarray:
    """Small maps are enlarged (nearest) to about ``min_side``; large ones are never shrunk (detail matters)."""
    return enlarge_nearest(image, max(1, min_side // max(image.shape[:2])))


def render_error_map(values: np.ndarray, limit: float, title: str, mean_abs: float | None = None,
                     min_side: int = 256) -> np.ndarray:
    """One error map with its title (and mean error) above and the labelled shared-scale bar below."""
    body = _enlarge(colourize_error(values, limit), min_side)
    lines = [title if mean_abs is None else f"{title}: mean |error| {mean_abs:.2f} grey levels"]
    return _compose(lines, body, error_colour_bar(limit, length=body.shape[1] - 2 * _PAD, title=None))


def render_pair_difference(pair: PairDifference, min_side: int = 256) -> np.ndarray:
    """The pair map with a title, the win shares and PSNR difference (or |A - B|'s maximum), and its bar."""
    a, b = pair.labels
    body = _enlarge(colourize_pair(pair), min_side)
    if pair.signed is None:
        lines = [f"|{a} - {b}| (no ground truth)",
                 f"mean {pair.mean_abs:.2f}, max {pair.max_abs:.1f} grey levels"]
    else:
        lines = [f"Red: {a} closer to the ground truth. Blue: {b} closer.",
                 f"closer by >= {WIN_THRESHOLD:g} grey level: {a} {100 * pair.a_wins:.1f}% of pixels, "
                 f"{b} {100 * pair.b_wins:.1f}%",
                 f"PSNR {a} - {b}: {pair.psnr_delta:+.3f} dB"]
    return _compose(lines, body, pair_colour_bar(pair, length=body.shape[1] - 2 * _PAD))
