"""MATLAB-compatible imresize: bit-exactness, the literature's bicubic baseline, sanity."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaldn.metrics import psnr_y, ssim_y
from kaldn import resize as R
from kaldn.resize import crop_to_scale, cubic, imresize, make_lr, resize_matrix


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _reference_resize_dim(x: np.ndarray, out_len: int, scale: float, axis: int) -> np.ndarray:
    """Straight per-sample loop transcription of MATLAB's imresize (float, no rounding)."""
    in_len = x.shape[axis]
    kw = 4.0 / scale if scale < 1 else 4.0
    out = []
    for o in range(1, out_len + 1):
        u = o / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kw / 2)
        idx = np.arange(left, left + math.ceil(kw) + 2)
        w = scale * cubic(scale * (u - idx)) if scale < 1 else cubic(u - idx)
        w = w / w.sum()
        src = np.clip(idx, 1, in_len) - 1
        out.append(np.tensordot(w, np.take(x, src, axis=axis), axes=(0, axis)))
    return np.stack(out, axis=axis)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_matlab_bit_exactly(shared_data: Path, scale: int) -> None:
    folder = shared_data / "bench" / "set5_matlab" / f"x{scale}"
    hr_files = sorted((folder / "hr").glob("*.png"))
    assert len(hr_files) == 5
    for hr_path in hr_files:
        hr = _load_rgb(hr_path)
        expected = _load_rgb(folder / "lr" / hr_path.name)
        lr = imresize(hr, scale=1 / scale)
        assert lr.dtype == np.uint8
        assert lr.shape == expected.shape, hr_path.name
        diff = np.abs(lr.astype(np.int16) - expected.astype(np.int16))
        assert diff.max() == 0, f"{hr_path.name} x{scale}: max diff {diff.max()}, {np.count_nonzero(diff)} px differ"
        # make_lr (crop + output_shape path) gives the same LR
        hr_c, lr2 = make_lr(hr, scale)
        assert hr_c.shape == hr.shape
        np.testing.assert_array_equal(lr2, expected)


@pytest.mark.parametrize(
    ("bench", "psnr_ref", "ssim_ref"),
    [("set5", 28.42, 0.8104), ("set14", 26.09, 0.7048)],
)
def test_bicubic_x4_baseline(shared_data: Path, bench: str, psnr_ref: float, ssim_ref: float) -> None:
    psnrs, ssims = [], []
    for path in sorted((shared_data / "bench" / bench).glob("*.png")):
        hr, lr = make_lr(_load_rgb(path), 4)
        sr = imresize(lr, scale=4)
        assert sr.shape == hr.shape
        psnrs.append(psnr_y(sr, hr, border=4))
        ssims.append(ssim_y(sr, hr, border=4))
    psnr, ssim = float(np.mean(psnrs)), float(np.mean(ssims))
    print(f"\nbicubic x4 {bench}: PSNR {psnr:.4f} dB (ref {psnr_ref}), SSIM {ssim:.4f} (ref {ssim_ref})")
    assert abs(psnr - psnr_ref) <= 0.03
    assert abs(ssim - ssim_ref) <= 0.002


def test_pil_bicubic_differs(shared_data: Path) -> None:
    hr = crop_to_scale(_load_rgb(shared_data / "bench" / "set5" / "baby.png"), 4)
    h, w = hr.shape[:2]
    ours = imresize(hr, scale=1 / 4)
    pil = np.asarray(Image.fromarray(hr).resize((w // 4, h // 4), Image.Resampling.BICUBIC))
    assert ours.shape == pil.shape
    assert np.abs(ours.astype(np.float64) - pil).mean() > 0


def test_matches_loop_reference_float() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((23, 17, 3))
    for scale in (1 / 4, 1 / 3, 0.6, 1.7, 3.0):
        got = imresize(x, scale=scale)
        oh, ow = math.ceil(23 * scale - 1e-9), math.ceil(17 * scale - 1e-9)
        ref = _reference_resize_dim(_reference_resize_dim(x, oh, scale, 0), ow, scale, 1)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-12)


def test_float_stays_float_and_round_trips() -> None:
    yy, xx = np.mgrid[0:64, 0:48]
    smooth = (0.5 + 0.25 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    img = np.stack([smooth, smooth * 0.8, 1 - smooth], axis=2)
    down = imresize(img, scale=0.5)
    assert down.dtype == np.float32 and down.shape == (32, 24, 3)
    up = imresize(down, scale=2)
    assert up.dtype == np.float32 and up.shape == img.shape
    # smooth content survives down+up closely away from the borders
    assert np.abs(up - img)[4:-4, 4:-4].max() < 0.02
    # float64 stays float64, no rounding to 8-bit levels
    d64 = imresize(img.astype(np.float64), scale=0.5)
    assert d64.dtype == np.float64
    assert not np.allclose(d64 * 255, np.round(d64 * 255))
    # constant images stay constant (weights sum to one)
    const = np.full((20, 30), 0.3)
    np.testing.assert_allclose(imresize(const, scale=1 / 3), 0.3, atol=1e-12)


def test_uint8_matches_float_within_rounding() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    u8 = imresize(img, scale=0.5)
    f = imresize(img.astype(np.float64), scale=0.5)
    assert u8.dtype == np.uint8
    # rounding after each pass: at most ~1 level from the unrounded result (plus clipping)
    assert np.abs(u8 - np.clip(f, 0, 255)).max() <= 1.0 + 1e-9
    u16 = imresize(img.astype(np.uint16) * 257, scale=0.5)
    assert u16.dtype == np.uint16
    assert np.abs(u16 / 257.0 - np.clip(f, 0, 255)).max() <= 0.01


def test_shapes() -> None:
    gray = np.zeros((10, 14), np.uint8)
    assert imresize(gray, scale=0.5).shape == (5, 7)
    assert imresize(gray, scale=2).shape == (20, 28)
    assert imresize(np.zeros((7, 9), np.uint8), scale=0.5).shape == (4, 5)  # ceil, as MATLAB
    assert imresize(np.zeros((510, 9, 3)), scale=1 / 3).shape == (170, 3, 3)
    assert imresize(np.zeros((10, 14, 5), np.float32), output_shape=(3, 21)).shape == (3, 21, 5)
    assert imresize(gray, output_shape=(10, 14)).shape == (10, 14)
    with pytest.raises(ValueError):
        imresize(gray)
    with pytest.raises(ValueError):
        imresize(np.zeros((0, 4)), scale=2)


def test_non_integer_scale_ramp() -> None:
    # Upscaling: cubic convolution reproduces linear functions, so interior samples land
    # exactly on the ramp at MATLAB's source coordinate u. Downscaling (stretched kernel)
    # only approximately.
    n = 60
    ramp = np.tile(np.arange(1, n + 1, dtype=np.float64), (8, 1))
    for scale, atol in ((1.5, 1e-9), (2.5, 1e-9), (0.7, 0.05)):
        out = imresize(ramp, scale=scale)
        m = out.shape[1]
        assert out.shape == (math.ceil(8 * scale - 1e-9), math.ceil(n * scale - 1e-9))
        u = np.arange(1, m + 1) / scale + 0.5 * (1 - 1 / scale)
        inner = (u > 4 / min(scale, 1)) & (u < n + 1 - 4 / min(scale, 1))
        assert inner.sum() > 10
        np.testing.assert_allclose(out[:, inner], np.tile(u[inner], (out.shape[0], 1)), atol=atol)
        assert np.all(np.diff(out, axis=1) > 0)
    img = (np.arange(30 * 20 * 3) % 256).astype(np.uint8).reshape(30, 20, 3)
    out = imresize(img, scale=1.3)
    assert out.dtype == np.uint8 and out.shape == (39, 26, 3)


def test_crop_to_scale_and_make_lr() -> None:
    img = np.zeros((103, 77, 3), np.uint8)
    assert crop_to_scale(img, 4).shape == (100, 76, 3)
    assert crop_to_scale(img, 3).shape == (102, 75, 3)
    hr, lr = make_lr(img, 4)
    assert hr.shape == (100, 76, 3) and lr.shape == (25, 19, 3) and lr.dtype == np.uint8
    with pytest.raises(ValueError):
        crop_to_scale(np.zeros((2, 2)), 3)


def test_weight_matrices_are_cached() -> None:
    R._MATRICES.clear()
    img = np.zeros((32, 32), np.uint8)
    imresize(img, scale=0.5)  # rows and columns share one (32, 16, 0.5) matrix
    imresize(img, scale=0.5)
    assert R._MATRICES.misses == 1 and R._MATRICES.hits == 3 and len(R._MATRICES) == 1


def test_matrix_cache_is_bounded_in_bytes() -> None:
    cache = R._MatrixCache(max_bytes=50_000)
    for n in range(40, 400, 20):  # 10 to 95 rows of 16-18 taps: ~2 to 20 kB each
        cache.get(n, n // 4, 0.25, "float64")
        assert cache.nbytes <= 50_000
    assert 1 <= len(cache) < 18  # the oldest were evicted
    assert cache.nbytes == sum(R._csr_nbytes(m) for m in cache._items.values())
    newest = (380, 95, 0.25, "float64")
    assert newest in cache._items
    big = cache.get(131072, 32768, 0.25, "float64")  # ~7 MB: used, but never kept
    assert big.shape == (32768, 131072) and big.nnz < 32768 * 20
    assert cache.nbytes <= 50_000 and (131072, 32768, 0.25, "float64") not in cache._items
    # the module cache has a byte budget too
    assert R._MATRICES.max_bytes == R.CACHE_BYTES <= 64 * 2**20


def test_long_thin_image_needs_no_dense_matrix() -> None:
    # 32x131072 is within a 4-megapixel cap; a dense column matrix for x1/4 would be
    # 32768 x 131072 float64 = 32 GiB. Banded weights need a few copies of the image.
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (32, 131072), dtype=np.uint8)
    R._MATRICES.clear()
    tracemalloc.start()
    try:
        lr = imresize(img, scale=1 / 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lr.shape == (8, 32768) and lr.dtype == np.uint8
    image_f64 = img.size * 8  # 32 MiB
    assert peak < 6 * image_f64, f"peak {peak / 2**20:.0f} MiB"
    assert peak < 32768 * 131072 * 8 / 100  # far from what the dense matrix alone would take
    # and it is the same resize: away from the borders, a window of the output equals the
    # resize of the matching (scale-aligned) window of the input
    x0, width = 4 * 20000, 512
    window = imresize(img[:, x0 : x0 + width], scale=1 / 4)
    np.testing.assert_array_equal(lr[:, 20000 + 8 : 20000 + width // 4 - 8], window[:, 8:-8])


def test_resize_matrix_is_the_dense_form() -> None:
    mat = resize_matrix(40, 10)
    assert mat.shape == (10, 40) and mat.dtype == np.float64
    np.testing.assert_allclose(mat.sum(axis=1), 1.0, atol=1e-12)
    x = np.random.default_rng(4).random((40, 7))
    np.testing.assert_allclose(mat @ x, imresize(x, output_shape=(10, 7)), atol=1e-12)
    up = resize_matrix(10, 25, scale=2.5, dtype="float32")
    assert up.dtype == np.float32 and up.shape == (25, 10)
    np.testing.assert_allclose(up @ x[:10], imresize(x[:10], output_shape=(25, 7)), atol=1e-6)  # columns: identity
