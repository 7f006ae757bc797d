"""Y-channel PSNR/SSIM as the literature computes them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kaldn.metrics import evaluate_pair, psnr_y, rgb_to_y, ssim_y


def _gray_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def test_rgb_to_y_range_and_inputs() -> None:
    black = np.zeros((2, 2, 3), np.uint8)
    white = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(rgb_to_y(black), 16.0)
    np.testing.assert_allclose(rgb_to_y(white), 235.0)
    np.testing.assert_allclose(rgb_to_y(np.full((2, 2, 3), 65535, np.uint16)), 235.0)
    np.testing.assert_allclose(rgb_to_y(np.ones((2, 2, 3))), 235.0)
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    gray = np.array([[0, 128, 255]], np.uint8)
    y = rgb_to_y(gray)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, rgb_to_y(_gray_rgb(gray)))
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((2, 2, 4), np.uint8))


def test_psnr_of_known_noise() -> None:
    rng = np.random.default_rng(0)
    ref = np.full((40, 50), 128, np.uint8)
    noise = rng.choice([-3, -1, 0, 2, 5], size=ref.shape)
    out = (ref.astype(int) + noise).astype(np.uint8)
    # gray -> R=G=B, so a pixel difference d becomes a Y difference 219 d / 255
    mse = np.mean((219.0 / 255.0 * noise) ** 2)
    expected = 10 * math.log10(255.0**2 / mse)
    assert psnr_y(_gray_rgb(out), _gray_rgb(ref), border=0) == pytest.approx(expected, abs=1e-9)
    assert psnr_y(out, ref, border=0) == pytest.approx(expected, abs=1e-9)


def test_identical_images() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr_y(img, img, border=2) == math.inf
    assert ssim_y(img, img, border=2) == pytest.approx(1.0)
    # float inputs are rounded to 8 bits first, so img/255 equals img
    assert psnr_y(img / 255.0, img, border=0) == math.inf
    noisy = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    assert ssim_y(noisy, img, border=0) < 0.99


def test_border_crop_matters() -> None:
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    out = ref.copy()
    out[:3] = 255 - out[:3]  # differ only in the top 3 rows
    assert psnr_y(out, ref, border=3) == math.inf
    assert math.isfinite(psnr_y(out, ref, border=0))
    assert psnr_y(out, ref, border=2) > psnr_y(out, ref, border=0)  # fewer differing rows left
    assert ssim_y(out, ref, border=3) == pytest.approx(1.0)
    assert ssim_y(out, ref, border=0) < 1.0
    with pytest.raises(ValueError):
        psnr_y(out, ref, border=15)


def test_shape_mismatch() -> None:
    a = np.zeros((20, 20, 3), np.uint8)
    b = np.zeros((20, 21, 3), np.uint8)
    for fn in (psnr_y, ssim_y):
        with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(20, 21, 3\)"):
            fn(a, b, border=0)


def test_evaluate_pair_uses_scale_as_border() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = ref.copy()
    out[:, :4] = 0
    res = evaluate_pair(out, ref, scale=4)
    assert set(res) == {"psnr", "ssim"}
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1.0)
    res2 = evaluate_pair(out, ref, scale=2)
    assert res2["psnr"] == pytest.approx(psnr_y(out, ref, border=2))
    assert res2["ssim"] == pytest.approx(ssim_y(out, ref, border=2))


def test_float_images_outside_unit_range_are_refused() -> None:
    # 0-255 floats used to be clipped to 1 silently: two different images then scored inf.
    with pytest.raises(ValueError, match=r"200\.\.200.*divide 0-255 values by 255"):
        psnr_y(np.full((8, 8, 3), 200.0), np.full((8, 8, 3), 10.0), border=2)
    with pytest.raises(ValueError, match="the reference"):
        ssim_y(np.zeros((20, 20, 3)), np.full((20, 20, 3), 255.0), border=2)
    with pytest.raises(ValueError, match="float images must lie in"):
        rgb_to_y(np.full((4, 4, 3), 3.0))
    # A model's raw output overshoots [0, 1] a little: clipped as its saved PNG would be.
    assert psnr_y(np.full((8, 8, 3), 1.2), np.full((8, 8, 3), 1.0), border=2) == math.inf


def test_ssim_names_the_size_it_needs() -> None:
    small = np.zeros((17, 17, 3), np.uint8)
    assert ssim_y(small, small, border=3) == pytest.approx(1.0)  # 11x11 left: enough
    with pytest.raises(ValueError, match=r"at least 11x11 .* 17x17 image leaves 9x9"):
        ssim_y(small, small, border=4)
