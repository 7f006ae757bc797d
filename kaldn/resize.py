"""MATLAB-compatible bicubic ``imresize``.

Super-resolution papers make their low-resolution inputs with MATLAB's
``imresize(hr, 1/s, 'bicubic')`` and report PSNR/SSIM on those. torch's bicubic
uses another kernel (a = -0.75 against MATLAB's -0.5) and no antialiasing, which
moves the numbers by tenths of a dB; PIL's has MATLAB's kernel and antialiasing
but rounds differently and differs at the borders (docs/benchmarks.md).
This module reproduces MATLAB bit-exactly for 8-bit images (checked against
MATLAB-made Set5 LR images at x2, x3, x4), so numbers here are comparable with
published ones.

How MATLAB does it (and so do we):

* cubic kernel with a = -0.5 (Keys), support [-2, 2];
* when shrinking (scale < 1) the kernel is widened by 1/scale (antialiasing);
* output sample ``x`` (1-based) maps to input coordinate
  ``u = x / scale + 0.5 * (1 - 1 / scale)``;
* out-of-range source indices are clamped to the edge;
* each row of weights is normalised to sum to 1;
* the image is resized one dimension at a time, dimension with the smallest
  scale first (rows first when the scales are equal);
* integer images are rounded (half away from zero) and saturated to their
  type after *each* of the two passes.

Each pass is a product with a sparse (CSR) ``out_len x in_len`` matrix that
holds only the ``taps`` non-zero weights of each output sample
(``taps = ceil(kernel width) + 2``: 6 when enlarging, 18 for x1/4), so memory
is O(out_len x taps + image) for any shape: a 32x131072 image costs what any
other 4-megapixel image costs, where a dense weight matrix would take 32 GiB.
SciPy's CSR product adds the taps of each output sample one after the other in
float64, which gives the same 8-bit results as MATLAB on all 15 Set5 reference
images and as the earlier dense version on every image in ``../shared/data`` at
x2/x3/x4, down and up (at non-integer scales an exact tie at .5 can round the
other way: ~5 pixels in a million differ by one level). The matrices are kept
in a cache bounded in bytes (:data:`CACHE_BYTES`), so repeated sizes cost nothing.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
from scipy import sparse

__all__ = ["imresize", "crop_to_scale", "make_lr", "cubic", "resize_matrix"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0
    ) * ((absx > 1) & (absx <= 2))


CACHE_BYTES = 32 * 2**20
"""Most bytes the weight-matrix cache holds (a matrix is ~out_len x taps x 12 bytes: 0.4 MB for 2048 samples)."""


def _csr_nbytes(mat: sparse.csr_array) -> int:
    return mat.data.nbytes + mat.indices.nbytes + mat.indptr.nbytes


class _MatrixCache:
    """A thread-safe LRU of sparse weight matrices, bounded in bytes rather than entries.

    ``functools.lru_cache`` bounds the entry count only, so a few matrices for
    very long sides could pin any amount of memory; a matrix larger than the
    budget is not kept at all (it is cheap to rebuild beside the resize it serves).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, sparse.csr_array] = OrderedDict()
        self._lock = threading.Lock()  # the app resizes from several threads

    def get(self, in_len: int, out_len: int, scale: float, dtype: str) -> sparse.csr_array:
        key = (in_len, out_len, scale, dtype)
        with self._lock:
            mat = self._items.get(key)
            if mat is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return mat
            self.misses += 1
        mat = _sparse_matrix(in_len, out_len, scale, dtype)
        size = _csr_nbytes(mat)
        with self._lock:
            if size <= self.max_bytes and key not in self._items:
                self._items[key] = mat
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.nbytes -= _csr_nbytes(old)
        return mat

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


_MATRICES = _MatrixCache(CACHE_BYTES)


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-sample weights and (0-based, clamped) source indices, as MATLAB: both ``out_len x taps``."""
    kernel_width = 4.0
    if scale < 1:  # antialiasing: widen the kernel by 1/scale
        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        kernel = cubic

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    indices = np.clip(indices, 1, in_len).astype(np.int64) - 1
    keep = np.any(weights != 0, axis=0)  # drop all-zero tap columns, as MATLAB
    return weights[:, keep], indices[:, keep]


def _sparse_matrix(in_len: int, out_len: int, scale: float, dtype: str) -> sparse.csr_array:
    """The resize matrix in CSR form: row ``o`` holds output sample ``o``'s taps, in tap order.

    Taps clamped to the same edge sample stay separate entries (not summed), so
    the product adds them one by one as the per-sample loop does.
    """
    weights, indices = _contributions(in_len, out_len, scale)
    taps = weights.shape[1]
    indptr = np.arange(0, out_len * taps + 1, taps, dtype=np.int64)
    return sparse.csr_array((weights.astype(dtype).ravel(), indices.ravel(), indptr), shape=(out_len, in_len))


def resize_matrix(in_len: int, out_len: int, scale: float | None = None, dtype: str = "float64") -> np.ndarray:
    """The dense ``out_len x in_len`` matrix that resizes one dimension (a new array on each call).

    Exposed so torch code can apply the same resize on the GPU
    (``out = M @ x`` along one axis); ``scale`` defaults to ``out_len / in_len``.
    It has ``out_len * in_len`` elements: :func:`imresize` itself never builds it.
    """
    if scale is None:
        scale = out_len / in_len
    mat = _MATRICES.get(int(in_len), int(out_len), float(scale), "float64")
    return mat.toarray().astype(np.dtype(dtype), copy=False)  # toarray adds up taps clamped to one sample


def _resize_axis(x: np.ndarray, mat: sparse.csr_array, axis: int) -> np.ndarray:
    """Resize ``x`` (HxW or HxWxC) along ``axis`` (0 or 1) with the sparse matrix ``mat``.

    The axis is moved to the front and the rest flattened, so the product is one
    (out_len x in_len) @ (in_len x everything else); peak memory is the input,
    a copy of it (for axis 1) and the output.
    """
    front = np.ascontiguousarray(np.moveaxis(x, axis, 0))
    out = mat @ front.reshape(front.shape[0], -1)
    return np.moveaxis(out.reshape((mat.shape[0],) + front.shape[1:]), 0, axis)


def _output_length(in_len: int, scale: float) -> int:
    # MATLAB: ceil(in * scale). Guard against 510 * (1/3) = 170.00000000000003.
    return max(1, int(math.ceil(in_len * scale - 1e-9)))


def _quantize(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half away from zero and saturate, as MATLAB's integer casts do (in place for unsigned)."""
    info = np.iinfo(dtype)
    if info.min == 0:
        # Saturating first changes nothing for unsigned types (negatives round to <= 0 anyway)
        # and leaves x >= 0, where half away from zero is floor(x + 0.5): no temporaries.
        np.clip(x, 0, info.max, out=x)
        x += 0.5
        return np.floor(x, out=x)
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), info.min, info.max)


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resize an HxW or HxWxC image like MATLAB's ``imresize(..., 'bicubic')``.

    Give either ``scale`` (e.g. ``1/4`` to shrink, ``4`` to enlarge; output size
    is ``ceil(size * scale)``) or ``output_shape=(height, width)``; with both,
    ``output_shape`` sets the size and ``scale`` the kernel, as in MATLAB.
    uint8/uint16 input is rounded and saturated after each pass and returned in
    its dtype (this is what makes it bit-exact with MATLAB); float input is
    returned as float (float32 stays float32) without rounding or clipping.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"imresize got an empty image of shape {img.shape}")
    in_shape = img.shape[:2]

    if scale is None and output_shape is None:
        raise ValueError("imresize needs scale or output_shape")
    if output_shape is not None:
        out_shape = (int(output_shape[0]), int(output_shape[1]))
        if out_shape[0] <= 0 or out_shape[1] <= 0:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        if scale is not None:
            scales = (float(scale), float(scale))
        else:
            scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    else:
        assert scale is not None
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        scales = (float(scale), float(scale))
        out_shape = (_output_length(in_shape[0], scales[0]), _output_length(in_shape[1], scales[1]))

    in_dtype = img.dtype
    if in_dtype == np.bool_:
        raise ValueError("imresize does not support boolean images")
    is_int = np.issubdtype(in_dtype, np.integer)
    if is_int:
        work_dtype = np.dtype(np.float64)
    elif in_dtype == np.float64:
        work_dtype = np.dtype(np.float64)
    else:
        work_dtype = np.dtype(np.float32)  # float16/float32 work in float32

    out = img.astype(work_dtype, copy=False)
    # MATLAB resizes the dimension with the smallest scale first (stable: rows first on ties).
    order = sorted((0, 1), key=lambda d: scales[d])
    for dim in order:
        if out_shape[dim] == in_shape[dim] and scales[dim] == 1.0:
            continue  # identity along this dimension
        mat = _MATRICES.get(in_shape[dim], out_shape[dim], scales[dim], work_dtype.name)
        out = _resize_axis(out, mat, dim)
        if is_int:
            out = _quantize(out, in_dtype)
    out = np.ascontiguousarray(out)
    if is_int:
        return out.astype(in_dtype)
    return out.astype(in_dtype if in_dtype != np.float16 else np.float32, copy=False)


def crop_to_scale(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of ``scale`` (the HR convention)."""
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = image.shape[:2]
    hh, ww = h - h % scale, w - w % scale
    if hh == 0 or ww == 0:
        raise ValueError(f"image of size {w}x{h} is smaller than the scale {scale}")
    return image[:hh, :ww]


def make_lr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(hr_cropped, lr)`` with LR made as the literature does (MATLAB bicubic, 1/scale)."""
    hr_c = crop_to_scale(hr, scale)
    h, w = hr_c.shape[:2]
    lr = imresize(hr_c, scale=1.0 / int(scale), output_shape=(h // int(scale), w // int(scale)))
    return hr_c, lr
