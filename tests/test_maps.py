"""Error maps, pair difference maps, colour bars and the zoom hotspot, on synthetic images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import ImageFont

from kaldn.display import clamp_region
from kaldn.maps import (NO_GROUND_TRUTH, colour_bar, colourize_error, colourize_pair, default_zoom_center,
                        error_colour_bar, error_maps, hotspot, pair_colour_bar, pair_difference,
                        render_error_map, render_pair_difference, y_channel)
from kaldn.metrics import psnr_y, rgb_to_y

# A grey RGB step of d becomes a Y step of 219 d / 255 (metrics' BT.601 weights sum to 219).
Y_PER_RGB = 219.0 / 255.0


def _gt(shape: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, (*shape, 3), dtype=np.uint8)


def _shift(image: np.ndarray, delta: int, where: tuple[slice, slice] | None = None) -> np.ndarray:
    out = image.astype(int)
    if where is None:
        out += delta
    else:
        out[where] += delta
    return np.clip(out, 0, 255).astype(np.uint8)


def test_y_channel_is_metrics_y_with_the_border_crop() -> None:
    gt = _gt()
    np.testing.assert_array_equal(y_channel(gt), rgb_to_y(gt))
    np.testing.assert_array_equal(y_channel(gt, border=4), rgb_to_y(gt)[4:-4, 4:-4])
    # floats are rounded to 8 bits and alpha dropped, as psnr_y sees the image
    np.testing.assert_array_equal(y_channel(gt / 255.0), rgb_to_y(gt))
    rgba = np.concatenate([gt, np.zeros((*gt.shape[:2], 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(y_channel(rgba), rgb_to_y(gt))
    with pytest.raises(ValueError, match="leaves nothing"):
        y_channel(gt, border=24)


def test_error_maps_known_answers() -> None:
    gt = _gt()
    off = _shift(gt, 3)                                   # every pixel 3 RGB steps brighter
    maps = error_maps({"exact": gt, "off by 3": off}, gt, border=4)
    assert list(maps.maps) == ["exact", "off by 3"]
    assert maps.maps["exact"].shape == gt.shape[:2]       # full size, aligned with the outputs
    assert not maps.maps["exact"].any()
    assert maps.mean_abs["exact"] == 0.0
    np.testing.assert_allclose(maps.maps["off by 3"], 3 * Y_PER_RGB)
    assert maps.mean_abs["off by 3"] == pytest.approx(3 * Y_PER_RGB)
    assert maps.limit == 3.0                              # 2.576 rounded up to a whole grey level, shared
    assert error_maps({"exact": gt}, gt, border=0).limit == 1.0   # never 0
    with pytest.raises(ValueError, match="No ground truth"):
        error_maps({"exact": gt}, None, border=4)
    assert "ground truth" in NO_GROUND_TRUTH
    with pytest.raises(ValueError, match="same size"):
        error_maps({"small": gt[:40]}, gt, border=4)


def test_error_statistics_skip_the_border_as_metrics_do() -> None:
    gt = _gt()
    ring = _shift(gt, 40)
    ring[4:-4, 4:-4] = gt[4:-4, 4:-4]                     # wrong only inside the 4-pixel border
    maps = error_maps({"ring": ring}, gt, border=4)
    assert maps.mean_abs["ring"] == 0.0
    assert maps.maps["ring"].max() == pytest.approx(40 * Y_PER_RGB)  # the map itself still shows it
    assert error_maps({"ring": ring}, gt, border=0).mean_abs["ring"] > 0


def test_pair_difference_identical_variant_is_zero_and_wins_nothing() -> None:
    gt = _gt()
    a = _shift(gt, 5, (slice(10, 20), slice(10, 30)))
    same = pair_difference(a, a.copy(), gt, border=4)
    assert not same.signed.any() and not same.absolute.any()
    assert same.a_wins == 0.0 and same.b_wins == 0.0
    assert same.psnr_delta == 0.0 and same.limit == 1.0
    exact = pair_difference(gt, gt.copy(), gt, border=4)
    assert exact.psnr_a == math.inf and exact.psnr_delta == 0.0


def test_pair_difference_swap_flips_sign_and_win_shares() -> None:
    gt = _gt()
    a = _shift(gt, 4, (slice(0, 24), slice(None)))        # A wrong in the top half
    b = _shift(gt, -2, (slice(None), slice(0, 32)))       # B wrong in the left half
    ab = pair_difference(a, b, gt, border=4, labels=("A", "B"))
    ba = pair_difference(b, a, gt, border=4, labels=("B", "A"))
    np.testing.assert_array_equal(ba.signed, -ab.signed)
    np.testing.assert_array_equal(ba.absolute, ab.absolute)
    assert (ba.a_wins, ba.b_wins) == (ab.b_wins, ab.a_wins)
    assert ba.psnr_delta == pytest.approx(-ab.psnr_delta)
    assert ab.limit == ba.limit
    # known answer inside the 4-pixel border (40 x 56 pixels): A is closer where only B is wrong
    # (bottom-left quarter, 20 x 28); B is closer where only A is wrong (top-right) and where both are
    # wrong (top-left: |A-GT| = 3.4 vs |B-GT| = 1.7 grey levels); bottom-right is a tie.
    inner = 40 * 56
    assert ab.a_wins == pytest.approx(20 * 28 / inner)
    assert ab.b_wins == pytest.approx(2 * 20 * 28 / inner)
    assert ab.psnr_delta == pytest.approx(psnr_y(a, gt, 4) - psnr_y(b, gt, 4))
    assert ab.psnr_delta < 0                              # A's larger error covers as much area
    assert "A" in ab.summary() and "%" in ab.summary()


def test_win_threshold_is_one_grey_level() -> None:
    gt = np.full((16, 16, 3), 100, np.uint8)
    a = gt.copy()
    b = _shift(gt, 1)                                      # 0.86 grey levels: not a win
    assert pair_difference(a, b, gt, border=0).a_wins == 0.0
    b2 = _shift(gt, 2)                                     # 1.72 grey levels: a win everywhere
    result = pair_difference(a, b2, gt, border=0)
    assert result.a_wins == 1.0 and result.b_wins == 0.0


def test_pair_difference_without_ground_truth() -> None:
    gt = _gt()
    a = gt
    b = _shift(gt, 7, (slice(20, 30), slice(30, 40)))
    diff = pair_difference(a, b, border=4, labels=("LDSConv", "KDSConv"))
    assert not diff.has_ground_truth and diff.signed is None
    assert diff.a_wins is None and diff.psnr_delta is None
    assert diff.max_abs == pytest.approx(7 * Y_PER_RGB)
    assert diff.limit == 7.0                               # 6.01 rounded up
    assert diff.mean_abs == pytest.approx(7 * Y_PER_RGB * 100 / (40 * 56))
    np.testing.assert_array_equal(diff.magnitude, diff.absolute)
    assert "No ground truth" in diff.summary()
    image = colourize_pair(diff)
    assert image.shape == (*gt.shape[:2], 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, colourize_error(diff.absolute, diff.limit))


def test_hotspot_finds_a_planted_blob() -> None:
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, (120, 160))
    values[70:86, 30:46] += 5.0                            # a 16x16 blob centred at (38, 78)
    assert hotspot(values, 16) == (38.0, 78.0)
    cx, cy = hotspot(values, 32)                           # a larger window still contains it
    assert 30 <= cx <= 46 and 70 <= cy <= 86
    # the border is excluded: a bigger blob at the edge loses to the planted one
    values[0:4, 0:40] += 50.0
    assert hotspot(values, 16, border=4) == (38.0, 78.0)
    assert hotspot(values, 16)[1] < 20
    # a flat map: the centre; a window larger than the image: clipped to it
    assert hotspot(np.zeros((40, 60)), 10) == (30.0, 20.0)
    assert hotspot(np.ones((10, 12)), 64) == (6.0, 5.0)


def test_default_zoom_center_follows_the_pair_then_the_gain() -> None:
    gt = _gt((96, 128))
    a = _shift(gt, 1)
    b = _shift(a, 30, (slice(60, 76), slice(90, 106)))     # the pair differs at (98, 68)
    pair = pair_difference(a, b, gt, border=4)
    center = default_zoom_center(16, pair=pair)
    assert center == (98.0, 68.0)
    assert clamp_region(center, 16, gt.shape[:2], 4) == (88, 60, 16, 16)
    assert default_zoom_center(16, pair=pair_difference(a, b, border=4)) == (98.0, 68.0)
    # no pair: where the best variant gains most over bicubic
    bicubic = _shift(gt, 20, (slice(8, 24), slice(8, 24)))
    gain = pair_difference(gt, bicubic, gt, border=4)
    assert default_zoom_center(16, best_vs_bicubic=gain) == (16.0, 16.0)
    assert default_zoom_center(16) is None


def _font_has_glyphs(text: str) -> bool:
    """The bundled default font draws a box for characters it lacks; check none of ``text`` is one."""
    font = ImageFont.load_default(12)

    def glyph(ch: str) -> tuple:
        mask = font.getmask(ch)
        return mask.size, np.array(mask).tobytes()

    missing = glyph("\uffff")
    return all(ch == " " or glyph(ch) != missing for ch in text)


def test_colour_bars_are_labelled_at_both_ends() -> None:
    bar = error_colour_bar(12, length=200, title=None)
    assert bar.shape == (6 + 14 + 4 + 16 + 6, 212, 3) and bar.dtype == np.uint8
    with_title = error_colour_bar(12, length=200)
    assert with_title.shape == (6 + 16 + 14 + 4 + 16 + 6, 212, 3)
    strip = bar[8, 6:206].astype(int)                      # the ramp: dark at 0, light at the limit
    assert strip[0].sum() < 100 and strip[-1].sum() > 600
    labels = bar[6 + 14 + 4:, :]                           # the label row has dark text at both ends
    assert (labels[:, :20] < 128).any() and (labels[:, -100:] < 128).any()
    # a bar whose labels are longer than it grows to fit them
    long = colour_bar(np.zeros((2, 3), np.uint8), "a long left label", "a long right label", length=40)
    assert long.shape[1] > 52
    for text in ("0", ">= 12 grey levels", "|SR - ground truth|, Y channel", "KDSConv (det) closer by >= 3"):
        assert _font_has_glyphs(text), text
    assert not _font_has_glyphs("≥")                       # why the drawn labels are ASCII


def _text_runs(label_row: np.ndarray, gap: int = 8) -> int:
    """How many blocks of text a label row holds: columns with dark pixels, split where >= gap are blank."""
    inked = np.flatnonzero((label_row < 128).any(axis=(0, 2)))
    return 1 + int((np.diff(inked) > gap).sum()) if inked.size else 0


def test_a_centred_label_never_runs_into_a_long_end_label() -> None:
    # A long model name at one end only: the centre label must stay apart from it (left, middle, right).
    for left, right in (("KDSConv (det), small closer by >= 12", "Bicubic closer by >= 12"),
                        ("Bicubic closer by >= 12", "KDSConv (det), small closer by >= 12")):
        bar = colour_bar(np.zeros((2, 3), np.uint8), left.replace(" ", "_"), right.replace(" ", "_"),
                         middle="equal", length=256)
        assert _text_runs(bar[6 + 14 + 4:, :]) == 3, (left, right)


def test_pair_bar_and_renderings() -> None:
    gt = _gt()
    a = _shift(gt, 4, (slice(0, 24), slice(None)))
    b = _shift(gt, -2, (slice(None), slice(0, 32)))
    pair = pair_difference(a, b, gt, border=4, labels=("LDSConv", "KDSConv (det)"))
    bar = pair_colour_bar(pair, length=300)
    assert bar.shape[1] >= 312
    strip = bar[6 + 16 + 2, 6:-6].astype(int)
    assert strip[0, 2] > strip[0, 0] and strip[-1, 0] > strip[-1, 2]   # blue (B closer) left, red (A) right
    colours = colourize_pair(pair)
    red = colours[30, 10].astype(int)                      # bottom-left: only B wrong, A closer -> red
    blue = colours[5, 50].astype(int)                      # top-right: only A wrong -> blue
    assert red[0] > red[2] and blue[2] > blue[0]
    assert (colours[30, 50] == 255).all()                  # both exact: white
    picture = render_pair_difference(pair)
    assert picture.ndim == 3 and picture.shape[1] >= 256 and picture.std() > 10
    no_gt = render_pair_difference(pair_difference(a, b, border=4))
    assert no_gt.shape[1] >= 256 and no_gt.std() > 10
    maps = error_maps({"A": a, "B": b}, gt, border=4)
    image = render_error_map(maps.maps["A"], maps.limit, "A", maps.mean_abs["A"])
    assert image.shape[1] == 64 * 4 and image.std() > 10   # small maps enlarged (nearest) to ~256
    assert maps.tile("A").shape == (48 * 4, 64 * 4, 3)  # enlarged (nearest) to about 256
    assert maps.colour_bar(100).shape[1] >= 112
