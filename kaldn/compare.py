"""What the app computes, with no UI: inputs, comparisons, zoomed crops, the hasty-ReLU statistic,
kernel heat maps and fine-tuning jobs.

``app.py`` is a thin Gradio layer over this module, so every number the app
shows can be reproduced (and is tested) without a browser::

    from kaldn.compare import prepare_inputs, run_comparison, metrics_table
    inputs = prepare_inputs("examples/astronaut.png", scale=4, mode="hr")
    comparison = run_comparison(inputs, ["bicubic", "dsconv", "ldsconv", "kdsconv-det"])
    headers, rows = metrics_table(comparison)

Conventions (DESIGN.md, "Evaluation protocol"):

* the only resize is the project's MATLAB-compatible :func:`kaldn.resize.imresize`:
  it makes the LR input from an HR image *and* is the bicubic baseline;
* PSNR/SSIM are measured on the server's arrays (never on re-encoded browser
  images), on the Y channel, with ``scale`` border pixels cropped;
* the models of the app are the ``tiny`` backbone; a variant key is a conv name
  (``dsconv``, ``ldsconv``, ``kdsconv-det`` ... resolved to ``tiny-<conv>-x<scale>``),
  ``bicubic``, a full model name, or the key of a fine-tuned model.
"""

from __future__ import annotations

import csv
import functools
import itertools
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .images import ImageError, load_image, save_png
from .layers import CONVS, DSConv, FixedScaleDSConv, KDSConv, pool_kernels
from .metrics import evaluate_pair
from .models import count_parameters, parse_model_name
from .resize import crop_to_scale, imresize, make_lr

log = logging.getLogger("kaldn.compare")

__all__ = [
    "APP_BACKBONE", "BICUBIC", "MODEL_VARIANTS", "SCALES", "CompareError", "BusyError",
    "Inputs", "VariantResult", "Comparison", "ModelCache", "FineTunedRegistry", "FineTuneManager",
    "prepare_inputs", "variant_label", "variant_choices", "resolve_variant", "run_comparison",
    "metrics_table", "save_outputs", "clamp_region", "zoom_crops", "draw_region", "to_display",
    "pair_choices", "pair_images", "depthwise_stats", "hasty_relu_report", "kernel_layers",
    "kernel_table", "render_kernel_grid", "render_heatmap", "env_int", "zoo_table",
]

APP_BACKBONE = "tiny"
BICUBIC = "bicubic"
SCALES = (2, 3, 4)
# Conv variants the app offers, in display order; "conv" (the standard-conv RDN, the upper reference of
# paper 001 Table I) is offered too but not selected by default.
MODEL_VARIANTS = ("dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max", "kdsconv-fixed", "conv")
DEFAULT_VARIANTS = (BICUBIC, "dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max", "kdsconv-fixed")
LABELS = {
    BICUBIC: "Bicubic",
    "conv": "Standard conv (RDN)",
    "dsconv": "DSConv",
    "ldsconv": "Linear DSConv",
    "kdsconv-det": "KDSConv (det)",
    "kdsconv-avg": "KDSConv (avg)",
    "kdsconv-max": "KDSConv (max)",
    "kdsconv-fixed": "KDSConv fixed 1.5x (control)",
}
GROUND_TRUTH = "Ground truth"
LR_INPUT = "LR input"
MIN_LR_SIDE = 8   # LR side below which no comparison makes sense (and SSIM's 11x11 window would not fit)


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment, ``default`` when unset or invalid."""
    try:
        value = int(os.environ.get(name, "").strip() or default)
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, os.environ.get(name), default)
        return default
    return value if value > 0 else default


class CompareError(ValueError):
    """A request that cannot be served; ``str(err)`` is a message for the user."""


class BusyError(RuntimeError):
    """Another fine-tuning job is running (one at a time)."""


# --- inputs -----------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What every variant gets: the LR image, the ground truth (or None) and what was done to them."""

    lr: np.ndarray
    gt: np.ndarray | None
    scale: int
    mode: str                      # "hr": the upload is the ground truth; "lr": the upload is the input
    notes: list[str] = field(default_factory=list)

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.lr.shape[0] * self.scale, self.lr.shape[1] * self.scale


def _check_scale(scale: Any) -> int:
    try:
        value = int(scale)
    except (TypeError, ValueError):
        raise CompareError(f"The scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}.") from None
    if value not in SCALES or float(scale) != value:
        raise CompareError(f"The scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}.")
    return value


def _describe_image(image: np.ndarray, what: str) -> list[str]:
    notes = []
    if image.ndim == 3 and image.shape[2] == 4:
        notes.append(f"{what} has an alpha channel: the networks upscale the colour channels and the alpha "
                     "channel is resized with bicubic; metrics use the colour channels only.")
    if image.dtype == np.uint16:
        notes.append(f"{what} has 16 bits per channel: it is processed and saved at 16 bits; PSNR/SSIM are "
                     "computed on it scaled to the 8-bit range.")
    rgb = image[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        notes.append(f"{what} is grayscale: it goes through the colour networks as R = G = B.")
    return notes


def prepare_inputs(image: Any, scale: Any, mode: str = "hr", ground_truth: Any = None,
                   max_pixels: int | None = None, max_output_pixels: int | None = None) -> Inputs:
    """Load and check the user's images; make the LR input.

    ``mode="hr"``: ``image`` is the ground truth; it is cropped so both sides are
    multiples of ``scale`` and LR = ``imresize(hr, 1/scale)`` (the literature's
    protocol). ``mode="lr"``: ``image`` is the LR input; ``ground_truth``, when
    given, must be exactly ``scale`` times its size.
    ``image``/``ground_truth`` are anything :func:`kaldn.images.load_image` takes.
    Raises :class:`~kaldn.images.ImageError` or :class:`CompareError` with a user-facing message.
    """
    scale = _check_scale(scale)
    if mode not in ("hr", "lr"):
        raise CompareError(f"mode must be 'hr' or 'lr', got {mode!r}")
    if image is None:
        raise CompareError("Upload an image first (or click one of the examples).")
    img = load_image(image, max_pixels=max_pixels)
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
        notes += _describe_image(img, "The image")
        hr, lr = make_lr(img, scale)
        if hr.shape[:2] != (h, w):
            notes.append(f"The HR image was cropped from {w}x{h} to {hr.shape[1]}x{hr.shape[0]} "
                         f"(both sides a multiple of {scale}) before making the LR input.")
        notes.insert(0, f"HR mode: LR input {lr.shape[1]}x{lr.shape[0]} made from the {hr.shape[1]}x{hr.shape[0]} "
                        f"ground truth with MATLAB-compatible bicubic (1/{scale}).")
        return Inputs(lr=lr, gt=hr, scale=scale, mode=mode, notes=notes)

    if h < MIN_LR_SIDE or w < MIN_LR_SIDE:
        raise ImageError(f"The LR image ({w}x{h}) is too small: it needs at least {MIN_LR_SIDE} pixels on each side.")
    if max_output_pixels is not None and h * w * scale * scale > max_output_pixels:
        raise ImageError(f"The LR image ({w}x{h}) is too large for x{scale}: the output would be "
                         f"{w * scale}x{h * scale} = {w * h * scale * scale:,} pixels, the limit is "
                         f"{max_output_pixels:,}.")
    notes += _describe_image(img, "The LR image")
    gt = None
    if ground_truth is not None:
        gt_limit = None if max_pixels is None else max_pixels * scale * scale
        gt = load_image(ground_truth, max_pixels=gt_limit)
        gh, gw = gt.shape[:2]
        if (gh, gw) != (h * scale, w * scale):
            message = (f"The ground truth is {gw}x{gh}, but the LR image is {w}x{h}: at x{scale} the ground truth "
                       f"must be exactly {w * scale}x{h * scale}.")
            other = [s for s in SCALES if (gh, gw) == (h * s, w * s)]
            if other:
                message += f" It matches x{other[0]}: choose scale {other[0]}."
            elif crop_to_scale(gt, scale).shape[:2] == (h * scale, w * scale):
                message += (f" Crop it to {w * scale}x{h * scale} (bottom/right), or upload it alone in HR mode, "
                            "which crops it and makes the LR input for you.")
            raise CompareError(message)
        notes += _describe_image(gt, "The ground truth")
    notes.insert(0, f"LR mode: {w}x{h} input, x{scale} output {w * scale}x{h * scale}; "
                    + ("metrics against the uploaded ground truth." if gt is not None
                       else "no ground truth, so no PSNR/SSIM."))
    return Inputs(lr=img, gt=gt, scale=scale, mode=mode, notes=notes)


# --- variants and models ----------------------------------------------------------------------------------

@dataclass
class FineTuned:
    key: str
    path: Path                      # checkpoint directory (model.safetensors + config.json)
    model: str                      # architecture name, e.g. tiny-kdsconv-det-x4
    label: str
    info: dict = field(default_factory=dict)


class FineTunedRegistry:
    """Fine-tuned models of this process, newest last; the oldest are forgotten (and deleted) beyond ``cap``."""

    def __init__(self, cap: int = 8) -> None:
        self.cap = cap
        self._items: OrderedDict[str, FineTuned] = OrderedDict()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, path: str | Path, model: str, info: dict | None = None,
            delete_dir: str | Path | None = None) -> FineTuned:
        with self._lock:
            n = next(self._counter)
            key = f"ft-{n}"
            spec = parse_model_name(model)
            iters = (info or {}).get("iterations")
            label = f"Fine-tuned #{n} ({LABELS.get(spec.conv, spec.conv)} x{spec.scale}" + \
                (f", {iters} it)" if iters else ")")
            entry = FineTuned(key, Path(path), model, label, dict(info or {}, delete_dir=delete_dir))
            self._items[key] = entry
            while len(self._items) > self.cap:
                _, old = self._items.popitem(last=False)
                victim = old.info.get("delete_dir")
                if victim:
                    shutil.rmtree(victim, ignore_errors=True)
            return entry

    def get(self, key: str) -> FineTuned | None:
        with self._lock:
            return self._items.get(key)

    def items(self) -> list[FineTuned]:
        with self._lock:
            return list(self._items.values())


@dataclass
class Variant:
    key: str
    label: str
    ref: str | None                 # what load_model takes: a model name or a checkpoint directory
    model: str | None               # architecture name
    unavailable: str | None = None  # why it cannot run at this scale


def variant_label(key: str, registry: FineTunedRegistry | None = None) -> str:
    if key in LABELS:
        return LABELS[key]
    if registry is not None and (entry := registry.get(key)) is not None:
        return entry.label
    return key


def resolve_variant(key: str, scale: int, registry: FineTunedRegistry | None = None) -> Variant:
    """A variant key -> what to run at ``scale`` (``unavailable`` set when it cannot run at that scale)."""
    key = str(key).strip()
    if key == BICUBIC:
        return Variant(key, LABELS[BICUBIC], None, None)
    if key in CONVS:
        name = f"{APP_BACKBONE}-{key}-x{scale}"
        return Variant(key, LABELS.get(key, key), name, name)
    if registry is not None and (entry := registry.get(key)) is not None:
        model_scale = parse_model_name(entry.model).scale
        missing = None if model_scale == scale else \
            f"{entry.label} is a x{model_scale} model; the chosen scale is x{scale}."
        return Variant(key, entry.label, str(entry.path), entry.model, missing)
    try:
        spec = parse_model_name(key)
    except ValueError:
        valid = [BICUBIC, *CONVS] + ([e.key for e in registry.items()] if registry is not None else [])
        raise CompareError(f"Unknown variant {key!r}; valid: {', '.join(valid)} or a model name "
                           f"such as tiny-kdsconv-det-x4.") from None
    missing = None if spec.scale == scale else f"{key} is a x{spec.scale} model; the chosen scale is x{scale}."
    return Variant(key, key, key, key, missing)


def variant_choices(scale: int, available: Sequence[str], registry: FineTunedRegistry | None = None
                    ) -> list[tuple[str, str]]:
    """(label, key) pairs for a checkbox group; labels say which variants have no checkpoint at ``scale``."""
    choices = [(LABELS[BICUBIC], BICUBIC)]
    for conv in MODEL_VARIANTS:
        name = f"{APP_BACKBONE}-{conv}-x{scale}"
        label = LABELS[conv] if name in available else f"{LABELS[conv]} (no x{scale} checkpoint)"
        choices.append((label, conv))
    for entry in registry.items() if registry is not None else []:
        model_scale = parse_model_name(entry.model).scale
        choices.append((entry.label if model_scale == scale else f"{entry.label} (x{model_scale} only)", entry.key))
    return choices


class ModelCache:
    """Loaded models (CPU, eval) and their fused, prepared copies per device; bounded LRU, thread-safe."""

    def __init__(self, max_models: int = 24, source: str = "auto") -> None:
        self.max_models = max_models
        self.source = source
        self._raw: OrderedDict[str, nn.Module] = OrderedDict()
        self._prepared: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
        self._lock = threading.RLock()

    def _load(self, ref: str) -> nn.Module:
        from .hub import load_model  # lazy: importing it pulls in huggingface_hub
        return load_model(ref, source=self.source)

    def raw(self, ref: str) -> nn.Module:
        with self._lock:
            if ref in self._raw:
                self._raw.move_to_end(ref)
                return self._raw[ref]
            model = self._load(ref).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._raw[ref] = model
            while len(self._raw) > self.max_models:
                self._raw.popitem(last=False)
            return model

    def prepared(self, ref: str, device: torch.device) -> nn.Module:
        from .inference import prepare_model
        key = (ref, str(device))
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
            model = prepare_model(self.raw(ref), device=device)
            self._prepared[key] = model
            while len(self._prepared) > self.max_models:
                self._prepared.popitem(last=False)
            return model

    def forget(self, ref: str) -> None:
        with self._lock:
            self._raw.pop(ref, None)
            for key in [k for k in self._prepared if k[0] == ref]:
                del self._prepared[key]


def _model_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    return (FileNotFoundError, CheckpointError)


# --- running a comparison ---------------------------------------------------------------------------------

@dataclass
class VariantResult:
    key: str
    label: str
    model: str | None
    image: np.ndarray | None
    status: str = "ok"              # "ok", "unavailable" or "error"
    message: str = ""
    psnr: float | None = None
    ssim: float | None = None
    params: int | None = None       # trained parameters
    params_inference: int | None = None  # after fusing (KDSConv's gate folded into the kernels)
    seconds: float | None = None
    device: str = ""


@dataclass
class Comparison:
    inputs: Inputs
    results: list[VariantResult]
    device: str
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "ok"]

    def result(self, key: str) -> VariantResult | None:
        return next((r for r in self.results if r.key == key), None)


def _resolve_device(device: str, notes: list[str]) -> torch.device:
    from .inference import resolve_device
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise CompareError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        notes.append("CUDA was asked for but is not available on this machine: ran on the CPU.")
        device = "cpu"
    return resolve_device(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_comparison(inputs: Inputs, variants: Sequence[str], device: str = "auto",
                   cache: ModelCache | None = None, registry: FineTunedRegistry | None = None,
                   progress: Callable[[float, str], None] | None = None, tile: int = 256) -> Comparison:
    """Upscale ``inputs.lr`` with every variant; metrics against ``inputs.gt`` when there is one.

    A variant without a checkpoint at this scale (or whose checkpoint is broken)
    gives a result with ``status="unavailable"``/``"error"`` and a message rather
    than an exception. Times cover the upscaling only (the model is loaded, fused
    and moved to the device before the clock starts).
    """
    variants = list(dict.fromkeys(str(v) for v in variants or []))  # de-duplicated, order kept
    if not variants:
        raise CompareError("Choose at least one variant to run.")
    cache = cache or ModelCache()
    notes: list[str] = []
    dev = _resolve_device(device, notes)
    lr, gt, scale = inputs.lr, inputs.gt, inputs.scale
    resolved = [resolve_variant(v, scale, registry) for v in variants]
    results: list[VariantResult] = []
    n = len(resolved)

    def report(i: int, frac: float, what: str) -> None:
        if progress is not None:
            progress(min(1.0, (i + frac) / n), what)

    for i, var in enumerate(resolved):
        report(i, 0.0, f"{var.label}: starting")
        if var.key == BICUBIC:
            t0 = time.perf_counter()
            out = imresize(lr, scale=scale)
            seconds = time.perf_counter() - t0
            res = VariantResult(var.key, var.label, None, out, params=0, params_inference=0,
                                seconds=seconds, device="cpu (numpy, MATLAB bicubic)")
        elif var.unavailable:
            res = VariantResult(var.key, var.label, var.model, None, "unavailable", var.unavailable)
        else:
            try:
                raw = cache.raw(var.ref)
                fast = cache.prepared(var.ref, dev)
            except _model_errors() as exc:
                status = "unavailable" if isinstance(exc, FileNotFoundError) else "error"
                msg = (f"No checkpoint for {var.model} (neither bundled nor on the Hub)."
                       if status == "unavailable" else f"Could not load {var.model}: {exc}")
                log.warning("%s: %s", var.key, exc)
                results.append(VariantResult(var.key, var.label, var.model, None, status, msg))
                continue
            if fast.config.get("scale") != scale:  # a checkpoint dir whose config disagrees with its name
                results.append(VariantResult(var.key, var.label, var.model, None, "unavailable",
                                             f"{var.label} is a x{fast.config.get('scale')} model."))
                continue

            def tile_progress(done: int, total: int, i: int = i, label: str = var.label) -> None:
                report(i, done / max(total, 1), f"{label}: tile {done}/{total}")

            _sync(dev)
            t0 = time.perf_counter()
            out = _upscale(lr, fast, tile, tile_progress)
            _sync(dev)
            seconds = time.perf_counter() - t0
            res = VariantResult(var.key, var.label, raw.config.get("model", var.model), out,
                                params=count_parameters(raw), params_inference=count_parameters(fast),
                                seconds=seconds, device=_device_name(dev))
        if res.image is not None and gt is not None:
            metrics = evaluate_pair(res.image[..., :3], gt[..., :3], scale)
            res.psnr, res.ssim = metrics["psnr"], metrics["ssim"]
        results.append(res)
        report(i, 1.0, f"{var.label}: done")
    return Comparison(inputs, results, _device_name(dev), notes)


def _upscale(lr: np.ndarray, model: nn.Module, tile: int, progress: Callable[[int, int], None]) -> np.ndarray:
    from .inference import upscale
    return upscale(lr, model, tile=tile, overlap=24, progress=progress)


METRIC_HEADERS = ["Variant", "Model", "PSNR (dB)", "SSIM", "Δ vs bicubic (dB)", "Params",
                  "Params (fused)", "Time (s)", "Device", "Note"]


def _round(x: float | None, digits: int) -> float | None:
    if x is None:
        return None
    if math.isinf(x):
        return float("inf")
    return round(float(x), digits)


def metrics_table(comparison: Comparison) -> tuple[list[str], list[list[Any]]]:
    """Headers and one row per variant (unavailable ones included, with their reason)."""
    bicubic = comparison.result(BICUBIC)
    base = bicubic.psnr if bicubic is not None else None
    rows = []
    for r in comparison.results:
        delta = None if (r.psnr is None or base is None or r.key == BICUBIC) else r.psnr - base
        note = r.message
        if r.status == "ok" and comparison.inputs.gt is None:
            note = "no ground truth"
        rows.append([r.label, r.model or ("imresize" if r.key == BICUBIC else ""), _round(r.psnr, 3),
                     _round(r.ssim, 4), _round(delta, 3), r.params, r.params_inference,
                     _round(r.seconds, 3), r.device, note])
    return METRIC_HEADERS, rows


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def save_outputs(comparison: Comparison, folder: str | Path) -> dict[str, Path]:
    """Write every output (and the LR input / ground truth) as lossless PNG plus ``metrics.csv``.

    Returns {key: path}; keys are the variant keys, ``"lr"``, ``"gt"`` and ``"metrics"``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = comparison.inputs.scale
    paths: dict[str, Path] = {}
    for r in comparison.ok:
        if r.key == BICUBIC:
            stem = f"bicubic-x{s}"
        elif r.key.startswith("ft-"):
            stem = f"{r.key}-{r.model}"
        else:
            stem = r.model or r.key
        path = folder / f"{_safe_name(stem)}.png"
        save_png(r.image, path)
        paths[r.key] = path
    save_png(comparison.inputs.lr, folder / "lr-input.png")
    paths["lr"] = folder / "lr-input.png"
    if comparison.inputs.gt is not None:
        save_png(comparison.inputs.gt, folder / "ground-truth.png")
        paths["gt"] = folder / "ground-truth.png"
    headers, rows = metrics_table(comparison)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    paths["metrics"] = folder / "metrics.csv"
    return paths


# --- display helpers: 8-bit views, zoomed crops, region overlay ------------------------------------------

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


def zoom_crops(comparison: Comparison, center: tuple[float, float] | None = None, size: int = 64,
               display: int = 256) -> tuple[list[tuple[np.ndarray, str]], tuple[int, int, int, int]]:
    """The same region from the LR input, every result and the ground truth, enlarged (nearest neighbour).

    Returns ([(uint8 crop, caption), ...], region); crops are about ``display``
    pixels wide; the LR crop is enlarged by ``scale`` more so all line up.
    """
    s = comparison.inputs.scale
    shape = comparison.inputs.output_shape
    x0, y0, w, h = clamp_region(center, size, shape, s)
    factor = max(1, display // max(w, h))
    crops = []
    lr = comparison.inputs.lr[y0 // s:(y0 + h) // s, x0 // s:(x0 + w) // s]
    crops.append((enlarge_nearest(to_display(lr), factor * s), f"{LR_INPUT} (nearest x{s})"))
    for r in comparison.ok:
        crop = r.image[y0:y0 + h, x0:x0 + w]
        caption = r.label if r.psnr is None else f"{r.label} · {r.psnr:.2f} dB"
        crops.append((enlarge_nearest(to_display(crop), factor), caption))
    if comparison.inputs.gt is not None:
        crop = comparison.inputs.gt[y0:y0 + h, x0:x0 + w]
        crops.append((enlarge_nearest(to_display(crop), factor), GROUND_TRUTH))
    return crops, (x0, y0, w, h)


def draw_region(image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """An 8-bit RGB copy of ``image`` with the region outlined (for the click-to-zoom picker)."""
    view = to_display(image)[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(view))
    draw = ImageDraw.Draw(pil)
    x0, y0, w, h = region
    width = max(2, min(pil.size) // 200)
    for offset, colour in ((width, (0, 0, 0)), (0, (255, 230, 0))):
        draw.rectangle([x0 - offset, y0 - offset, x0 + w - 1 + offset, y0 + h - 1 + offset],
                       outline=colour, width=width)
    return np.asarray(pil)


def pair_choices(comparison: Comparison) -> list[tuple[str, str]]:
    """(label, key) options for the two sides of the slider: results, ground truth, LR input."""
    options = [(r.label, r.key) for r in comparison.ok]
    if comparison.inputs.gt is not None:
        options.append((GROUND_TRUTH, "gt"))
    options.append((f"{LR_INPUT} (nearest x{comparison.inputs.scale})", "lr"))
    return options


def pair_image(comparison: Comparison, key: str) -> np.ndarray:
    if key == "gt":
        if comparison.inputs.gt is None:
            raise CompareError("There is no ground truth in this comparison.")
        return comparison.inputs.gt
    if key == "lr":
        return enlarge_nearest(comparison.inputs.lr, comparison.inputs.scale)
    r = comparison.result(key)
    if r is None or r.image is None:
        raise CompareError(f"{variant_label(key)} has no output in this comparison.")
    return r.image


def pair_images(comparison: Comparison, left: str, right: str) -> tuple[np.ndarray, np.ndarray]:
    return pair_image(comparison, left), pair_image(comparison, right)


def default_pair(comparison: Comparison) -> tuple[str, str]:
    """Bicubic (or the LR input) on the left, the best-scoring model (or the first one) on the right."""
    ok = comparison.ok
    models = [r for r in ok if r.key != BICUBIC]
    left = BICUBIC if comparison.result(BICUBIC) in ok else "lr"
    if models:
        scored = [r for r in models if r.psnr is not None]
        right = max(scored, key=lambda r: r.psnr).key if scored else models[0].key
    elif comparison.inputs.gt is not None:
        right = "gt"
    else:
        right = ok[0].key if ok and left != ok[0].key else "lr"
    return left, right


# --- colour maps and small renderings (numpy + PIL only) --------------------------------------------------

def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def diverging(values: np.ndarray, limit: float) -> np.ndarray:
    """Blue (negative) - white (0) - red (positive), ``limit`` mapped to full colour; uint8 RGB."""
    v = np.clip(np.asarray(values, dtype=np.float64) / max(float(limit), 1e-12), -1.0, 1.0)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    r = 1.0 - 0.75 * neg
    g = 1.0 - 0.8 * pos - 0.6 * neg
    b = 1.0 - 0.8 * pos
    return np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def sequential(values: np.ndarray) -> np.ndarray:
    """0 -> dark blue, 0.5 -> orange-ish, 1 -> light yellow (a small 'inferno'-like ramp); uint8 RGB."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(stops) - 1)
    i = np.minimum(np.floor(v).astype(int), len(stops) - 2)
    t = (v - i)[..., None]
    return np.round(stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


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
    canvas = Image.new("RGB", (body.shape[1] + bar_w + 56, body.shape[0] + 24), "white")
    canvas.paste(Image.fromarray(body), (0, 24))
    canvas.paste(Image.fromarray(bar), (body.shape[1] + 8, 24))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((2, 4), title, fill="black", font=font)
    draw.text((body.shape[1] + bar_w + 11, 24), f"{100 * hi:.0f}%", fill="black", font=font)
    draw.text((body.shape[1] + bar_w + 11, canvas.height - 14), f"{100 * lo:.0f}%", fill="black", font=font)
    return np.asarray(canvas)


def render_image(image: np.ndarray, title: str, max_side: int = 384) -> np.ndarray:
    """An image enlarged (nearest) to about ``max_side`` with a title, laid out like :func:`render_heatmap`."""
    view = to_display(image)[..., :3]
    factor = max(1, max_side // max(view.shape[:2]))
    body = enlarge_nearest(view, factor)
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + 24), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(body)), (0, 24))
    ImageDraw.Draw(canvas).text((2, 4), title, fill="black", font=_font(12))
    return np.asarray(canvas)


# --- the hasty ReLU --------------------------------------------------------------------------------------

def _effective_kernel(module: DSConv) -> torch.Tensor:
    """The depthwise kernel a layer really applies (KDSConv: (1 + a) W; the control: 1.5 W)."""
    if isinstance(module, KDSConv):
        return module.injected_kernel()
    if isinstance(module, FixedScaleDSConv):
        return module.depthwise.weight * module.scale
    return module.depthwise.weight


@torch.no_grad()
def depthwise_stats(model: nn.Module, lr: np.ndarray, max_side: int = 192) -> dict:
    """How much of every depthwise output is negative, i.e. what a ReLU right after it would zero.

    For DSConv that ReLU exists (the "hasty ReLU" of paper 001) and those values
    are thrown away before the pointwise conv can mix them; linear DSConv (and
    KDSConv) pass them on. Measured on ``lr`` (centre crop of at most
    ``max_side`` pixels, to keep it quick). Returns fractions in [0, 1]:
    ``zeroed_fraction`` (share of values < 0), ``zeroed_energy`` (their share of
    the sum of squares), per layer, plus ``map``: per LR pixel, the share of
    negative depthwise outputs over all channels of all layers.
    """
    rgb = to_display(lr)[..., :3] if lr.dtype not in (np.uint8, np.uint16) else lr[..., :3]
    h, w = rgb.shape[:2]
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    crop = rgb[y0:y0 + max_side, x0:x0 + max_side]
    from .images import image_to_tensor
    x = image_to_tensor(crop)
    device = next(model.parameters()).device
    layers, handles = [], []
    total = {"n": 0, "neg": 0, "energy": 0.0, "neg_energy": 0.0}
    pixel_neg = torch.zeros(crop.shape[:2], dtype=torch.float64)
    pixel_n = [0]

    def hook(name: str, module: DSConv):
        def pre(_module: nn.Module, args: tuple) -> None:
            inp = args[0]
            d = F.conv2d(inp, _effective_kernel(module), module.depthwise.bias,
                         padding=module.depthwise.padding, groups=module.depthwise.groups).float()
            neg = d < 0
            n, n_neg = d.numel(), int(neg.sum())
            energy = float((d * d).sum())
            neg_energy = float((d.clamp(max=0) ** 2).sum())
            layers.append({"layer": name, "channels": int(d.shape[1]), "zeroed_fraction": n_neg / n,
                           "zeroed_energy": neg_energy / energy if energy > 0 else 0.0})
            total["n"] += n
            total["neg"] += n_neg
            total["energy"] += energy
            total["neg_energy"] += neg_energy
            pixel_neg.add_(neg[0].double().sum(dim=0).cpu())
            pixel_n[0] += d.shape[1]
        return pre

    for name, module in model.named_modules():
        if isinstance(module, DSConv):
            handles.append(module.register_forward_pre_hook(hook(name, module)))
    try:
        if not handles:
            raise CompareError("This model has no depthwise-separable layers.")
        model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {
        "model": getattr(model, "config", {}).get("model", ""),
        "relu_after_depthwise": any(type(m) is DSConv for m in model.modules()),
        "layers": layers,
        "zeroed_fraction": total["neg"] / total["n"],
        "zeroed_energy": total["neg_energy"] / total["energy"] if total["energy"] > 0 else 0.0,
        "map": (pixel_neg / max(pixel_n[0], 1)).numpy(),
        "region": (x0, y0, crop.shape[1], crop.shape[0]),
    }


def hasty_relu_report(lr: np.ndarray, scale: int, cache: ModelCache | None = None,
                      convs: Sequence[str] = ("dsconv", "ldsconv")) -> dict:
    """:func:`depthwise_stats` of the DSConv and linear DSConv models at ``scale`` on ``lr``.

    Returns {"rows": table rows, "per_layer": rows, "maps": [(image, caption)], "summary": markdown,
    "stats": {conv: stats}}; models without a checkpoint are listed in ``missing``.
    """
    cache = cache or ModelCache()
    stats, missing = {}, []
    for conv in convs:
        name = f"{APP_BACKBONE}-{conv}-x{scale}"
        try:
            model = cache.raw(name)
        except _model_errors() as exc:
            missing.append(f"{name} (no checkpoint)" if isinstance(exc, FileNotFoundError)
                           else f"{name} ({exc})")
            continue
        stats[conv] = depthwise_stats(model, lr)
    rows, per_layer, maps = [], [], []
    if stats:
        # One colour range for both maps (robust percentiles), so they can be compared by eye.
        values = np.concatenate([st["map"].ravel() for st in stats.values()])
        lo, hi = float(np.percentile(values, 1)), float(np.percentile(values, 99))
        if hi - lo < 0.05:
            mid = (hi + lo) / 2
            lo, hi = max(0.0, mid - 0.025), min(1.0, mid + 0.025)
        x0, y0, w, h = next(iter(stats.values()))["region"]
        region = lr[y0:y0 + h, x0:x0 + w]
        maps.append((render_image(region, f"LR input, {w}x{h} (the region measured)"), "LR input"))
    for conv, st in stats.items():
        relu = st["relu_after_depthwise"]
        rows.append([LABELS[conv], st["model"], "yes: zeroed" if relu else "no: kept",
                     round(100 * st["zeroed_fraction"], 2), round(100 * st["zeroed_energy"], 2)])
        for layer in st["layers"]:
            per_layer.append([LABELS[conv], layer["layer"], layer["channels"],
                              round(100 * layer["zeroed_fraction"], 2), round(100 * layer["zeroed_energy"], 2)])
        verb = "zeroed by the ReLU" if relu else "negative, kept"
        maps.append((render_heatmap(st["map"], f"{LABELS[conv]}: depthwise outputs {verb}", lo, hi),
                     f"{LABELS[conv]}: {100 * st['zeroed_fraction']:.1f}% of values, "
                     f"{100 * st['zeroed_energy']:.1f}% of energy"))
    lines = []
    if "dsconv" in stats:
        st = stats["dsconv"]
        lines.append(f"**DSConv** (ReLU right after the depthwise conv) zeroes **{100 * st['zeroed_fraction']:.1f}%** "
                     f"of its depthwise outputs on this image, **{100 * st['zeroed_energy']:.1f}%** of their energy, "
                     "before the pointwise conv can combine them.")
    if "ldsconv" in stats:
        st = stats["ldsconv"]
        lines.append(f"**Linear DSConv** has no ReLU there: the **{100 * st['zeroed_fraction']:.1f}%** negative "
                     f"depthwise outputs (**{100 * st['zeroed_energy']:.1f}%** of the energy) reach the pointwise "
                     "conv intact.")
    if stats:
        x0, y0, w, h = next(iter(stats.values()))["region"]
        lines.append(f"Measured on the LR input ({w}x{h} pixels from ({x0}, {y0})), all depthwise layers of each "
                     "model. The maps show, per LR pixel, the share of channels (over all layers) whose depthwise "
                     "output is negative.")
    if missing:
        lines.append("Not available: " + ", ".join(missing) + ".")
    return {"rows": rows, "per_layer": per_layer, "maps": maps, "summary": "\n\n".join(lines), "stats": stats,
            "missing": missing}


HASTY_HEADERS = ["Variant", "Model", "ReLU after depthwise", "Negative values (%)", "Negative energy (%)"]
HASTY_LAYER_HEADERS = ["Variant", "Layer", "Channels", "Negative values (%)", "Negative energy (%)"]


# --- kernels and kernel attention -------------------------------------------------------------------------

def kernel_layers(model: nn.Module) -> list[str]:
    """Names of the layers with depthwise kernels (KDSConv first in the app's listing is not needed: in order)."""
    return [name for name, m in model.named_modules() if isinstance(m, DSConv)]


@torch.no_grad()
def kernel_table(model: nn.Module, layer: str) -> dict:
    """A layer's depthwise kernels with each kernel's det/avg/max pooled value and its scale 1 + a.

    For KDSConv, ``z`` is the descriptor the gate sees (the layer's own pooling,
    normalised) and ``a`` the attention; for the fixed control 1 + a = 1.5; for
    DSConv/linear DSConv there is no attention (scale 1).
    """
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], DSConv):
        raise CompareError(f"{layer!r} is not a depthwise layer of this model; choose one of: "
                           f"{', '.join(kernel_layers(model)[:8])} ...")
    m = modules[layer]
    kernels = m.depthwise.weight[:, 0].detach().float().cpu()
    out = {
        "layer": layer,
        "kind": type(m).__name__,
        "kernels": kernels.numpy(),
        "det": pool_kernels(kernels, "det").numpy(),
        "avg": pool_kernels(kernels, "avg").numpy(),
        "max": pool_kernels(kernels, "max").numpy(),
        "kernel_pool": getattr(m, "kernel_pool", None),
        "descriptor_norm": getattr(m, "descriptor_norm", None),
    }
    c = kernels.shape[0]
    if isinstance(m, KDSConv):
        out["z"] = m.descriptor().float().cpu().numpy()
        out["a"] = m.attention().float().cpu().numpy()
        out["scale"] = 1.0 + out["a"]
    elif isinstance(m, FixedScaleDSConv):
        out["z"] = None
        out["a"] = np.full(c, m.scale - 1.0, np.float32)
        out["scale"] = np.full(c, m.scale, np.float32)
    else:
        out["z"], out["a"], out["scale"] = None, None, np.ones(c, np.float32)
    return out


KERNEL_HEADERS = ["Channel", "det", "avg", "max", "z (gate input)", "a", "1 + a"]


def kernel_rows(table: dict) -> list[list[Any]]:
    rows = []
    for c in range(len(table["det"])):
        rows.append([c, float(f"{table['det'][c]:.3g}"), round(float(table["avg"][c]), 4),
                     round(float(table["max"][c]), 4),
                     None if table["z"] is None else round(float(table["z"][c]), 3),
                     None if table["a"] is None else round(float(table["a"][c]), 4),
                     round(float(table["scale"][c]), 4)])
    return rows


def render_kernel_grid(table: dict, columns: int = 16, cell: int = 18) -> np.ndarray:
    """The layer's depthwise kernels as small heat maps (blue < 0 < red, one colour scale for the layer),
    each labelled with its channel and 1 + a; uint8 RGB image."""
    kernels = table["kernels"]
    scales = table["scale"]
    c, k, _ = kernels.shape
    limit = float(np.abs(kernels).max()) or 1.0
    font = _font(10)
    tile_w = max(k * cell, 40)
    tile_h = k * cell + 26
    pad = 6
    columns = max(1, min(columns, c))
    rows = math.ceil(c / columns)
    header = 34
    width = columns * (tile_w + pad) + pad
    canvas = Image.new("RGB", (width, header + rows * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    title = (f"{table['layer']} ({table['kind']}): {c} depthwise {k}x{k} kernels"
             + (f", pooling {table['kernel_pool']}, descriptor {table['descriptor_norm']}" if table["kernel_pool"] else ""))
    draw.text((pad, 4), title, fill="black", font=_font(12))
    draw.text((pad, 19), f"colour: weight, blue < 0 < red, full colour at |w| = {limit:.3g}; "
                         "below each kernel: channel #, then its scale 1 + a", fill=(60, 60, 60), font=font)
    colours = diverging(kernels, limit)
    # Emphasise the scale: the frame of each kernel is darker the more attention it gets.
    smin, smax = float(np.min(scales)), float(np.max(scales))
    for i in range(c):
        r, col = divmod(i, columns)
        x = pad + col * (tile_w + pad)
        y = header + pad + r * (tile_h + pad)
        tile = enlarge_nearest(colours[i], cell)
        ox = x + (tile_w - tile.shape[1]) // 2
        canvas.paste(Image.fromarray(tile), (ox, y))
        t = 0.0 if smax - smin < 1e-6 else (float(scales[i]) - smin) / (smax - smin)
        frame = tuple(int(200 - 170 * t) for _ in range(3))
        draw.rectangle([ox - 1, y - 1, ox + tile.shape[1], y + tile.shape[0]], outline=frame, width=1)
        draw.text((x + 1, y + k * cell + 2), f"#{i}", fill=(90, 90, 90), font=font)
        draw.text((x + 1, y + k * cell + 13), f"{float(scales[i]):.3f}", fill="black", font=font)
    return np.asarray(canvas)


def gate_rows(model: nn.Module) -> tuple[list[str], list[list[Any]]]:
    """:func:`kaldn.attention.gate_report` as a table (empty for models without KDSConv)."""
    from .attention import gate_report
    report = gate_report(model)
    headers = ["Layer", "Channels", "Pooling", "Descriptor", "a min", "a max", "a mean", "a std",
               "median |pooled|", "z std"]
    rows = [[r["layer"], r["channels"], r["kernel_pool"], r["descriptor_norm"], round(r["a_min"], 4),
             round(r["a_max"], 4), round(r["a_mean"], 4), round(r["a_std"], 4),
             float(f"{r['raw_pooled_median_abs']:.3g}"), round(r["z_std"], 3)] for r in report]
    return headers, rows


# --- model zoo ------------------------------------------------------------------------------------------

ZOO_DATASETS = ("set5", "set14", "bsd68")


@functools.lru_cache(maxsize=None)
def _parameter_count(name: str) -> int:
    # A model's size follows from its name: build each once, not on every table refresh.
    from .models import create_model
    return count_parameters(create_model(name))


def zoo_table(folder: str | Path | None = None, scale: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """The shipped models' measured numbers, read from their ``config.json`` (no weights loaded).

    The numbers are those ``python -m kaldn.evaluate --ship`` wrote (DESIGN.md protocol), next to
    each model's size and training budget, so the app shows what README's results tables show.
    """
    from .checkpoint import CheckpointError, read_config
    from .evaluate import format_budget, format_metrics
    from .hub import bundled_dir
    folder = Path(folder) if folder is not None else bundled_dir()
    headers = ["Model", "Scale", "Variant", "Params",
               *[f"{d} PSNR / SSIM" for d in ZOO_DATASETS], "Training budget"]
    rows = []
    for config_path in sorted(folder.glob("*/config.json")):
        try:
            config = read_config(config_path)
            spec = parse_model_name(config["model"])
        except (CheckpointError, ValueError) as exc:
            log.warning("zoo table: skipping %s (%s)", config_path.parent.name, exc)
            continue
        if scale is not None and spec.scale != scale:
            continue
        metrics = config.get("metrics") or {}
        rows.append([config["model"], spec.scale, LABELS.get(spec.conv, spec.conv), _parameter_count(spec.name),
                     *[format_metrics(metrics.get(d)) for d in ZOO_DATASETS],
                     format_budget(config.get("training"), with_seed=True)])
    order = {conv: i for i, conv in enumerate(MODEL_VARIANTS)}
    rows.sort(key=lambda r: (r[1], order.get(parse_model_name(r[0]).conv, len(order))))
    return headers, rows


# --- fine-tuning ------------------------------------------------------------------------------------------

@dataclass
class FineTuneSettings:
    base: str                       # model name or checkpoint dir
    iters: int
    lr: float
    batch: int = 8
    patch: int = 32
    device: str = "auto"
    seed: int = 0


def prepare_finetune_data(images: Sequence[Any], scale: int, patch: int, folder: str | Path,
                          max_pixels: int | None = None) -> tuple[int, list[str], int]:
    """Check the user's HR images and write them as 8-bit RGB PNGs into ``folder``.

    Images smaller than the training crop are skipped with a note. Returns
    (number written, notes, patch to use): the patch shrinks (down to 16 LR
    pixels) so that small uploads can still be used.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    notes, loaded = [], []
    for i, source in enumerate(images):
        name = Path(str(source)).name if isinstance(source, (str, os.PathLike)) else f"image {i + 1}"
        try:
            img = load_image(source, max_pixels=max_pixels)
        except ImageError as exc:
            notes.append(f"Skipped {name}: {exc}")
            continue
        rgb = to_display(img)[..., :3]
        loaded.append((name, rgb))
    if not loaded:
        raise CompareError("No usable training image: " + (" ".join(notes) if notes else "upload some HR images."))
    smallest = min(min(rgb.shape[:2]) for _, rgb in loaded) // scale
    if smallest < patch:
        patch = max(16, smallest)
    written = 0
    for i, (name, rgb) in enumerate(loaded):
        if min(rgb.shape[:2]) // scale < patch:
            notes.append(f"Skipped {name}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the "
                         f"{patch * scale}-pixel training crop at x{scale}.")
            continue
        save_png(np.ascontiguousarray(rgb), folder / f"{i:03d}.png")
        written += 1
    if written == 0:
        raise CompareError(f"No usable training image: each needs at least {16 * scale} pixels per side at x{scale}. "
                           + " ".join(notes))
    return written, notes, patch


class FineTuneJob:
    """One training run in a background thread; ``events()`` yields its progress dicts."""

    def __init__(self, settings: FineTuneSettings, data: Path, out: Path, owner: str | None) -> None:
        self.settings = settings
        self.data = data
        self.out = out
        self.owner = owner
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.result = None
        self.error: str | None = None
        self.started = time.time()

    def _run(self, release: Callable[[], None]) -> None:
        from .train import TrainConfig, load_pairs, train, validate
        try:
            s = self.settings
            config = TrainConfig(data=str(self.data), val=str(self.data), out=str(self.out), init=s.base,
                                 iters=s.iters, batch=s.batch, patch=s.patch, lr=s.lr, seed=s.seed,
                                 device=s.device, val_every=max(10, s.iters // 10),
                                 save_every=max(50, s.iters), log_every=max(1, min(10, s.iters // 20)))
            # Iteration 0 of the curves: the base model on the same images.
            from .hub import load_model
            from .inference import resolve_device
            base = load_model(s.base)
            dev = resolve_device(s.device)
            pairs = load_pairs(self.data, base.config["scale"], 4, "validation")
            before = validate(base.to(dev), pairs, base.config["scale"], dev)
            self.queue.put({"event": "validation", "iteration": 0, **before})
            self.result = train(config, progress=self.queue.put, stop=self.stop)
        except Exception as exc:  # noqa: BLE001 - reported to the user, the server keeps running
            log.exception("fine-tuning failed")
            self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        finally:
            release()
            self.queue.put({"event": "end"})

    def events(self, poll: float = 0.5) -> Iterator[dict]:
        """Progress dicts until the job ends; a ``{"event": "tick"}`` every ``poll`` seconds of silence."""
        while True:
            try:
                event = self.queue.get(timeout=poll)
            except queue.Empty:
                if self.thread is not None and not self.thread.is_alive() and self.queue.empty():
                    return
                yield {"event": "tick"}
                continue
            if event.get("event") == "end":
                return
            yield event

    def checkpoint_dir(self) -> Path | None:
        for sub in ("best", "last"):
            if (self.out / sub / "model.safetensors").is_file() and (self.out / sub / "config.json").is_file():
                return self.out / sub
        return None


class FineTuneManager:
    """One fine-tuning job at a time for the whole process; finished models go to ``registry``."""

    def __init__(self, registry: FineTunedRegistry, root: str | Path | None = None,
                 max_iters: int | None = None) -> None:
        self.registry = registry
        self.root = Path(root) if root else Path(tempfile.gettempdir()) / "kaldn-finetune"
        self.max_iters = max_iters or env_int("KALDN_FINETUNE_MAX_ITERS", 2000)
        self._lock = threading.Lock()
        self.job: FineTuneJob | None = None
        self._count = itertools.count(1)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def start(self, images: Sequence[Any], settings: FineTuneSettings, owner: str | None = None,
              max_pixels: int | None = None) -> tuple[FineTuneJob, list[str]]:
        """Validate, prepare the data and start training; raises BusyError / CompareError / ImageError."""
        if not isinstance(settings.iters, int) or not 1 <= settings.iters <= self.max_iters:
            raise CompareError(f"Iterations must be between 1 and {self.max_iters} on this server "
                               f"(KALDN_FINETUNE_MAX_ITERS), got {settings.iters}.")
        if not (1e-6 <= float(settings.lr) <= 1e-2):
            raise CompareError(f"The learning rate must be between 1e-6 and 1e-2, got {settings.lr}.")
        if not 1 <= settings.batch <= 32:
            raise CompareError(f"The batch size must be between 1 and 32, got {settings.batch}.")
        if not 16 <= settings.patch <= 96:
            raise CompareError(f"The patch size must be between 16 and 96 LR pixels, got {settings.patch}.")
        if not images:
            raise CompareError("Upload a few HR images to fine-tune on (or use the examples).")
        try:
            spec = parse_model_name(settings.base)
        except ValueError:
            entry = next((e for e in self.registry.items() if str(e.path) == settings.base), None)
            if entry is None:
                raise CompareError(f"Unknown base model {settings.base!r}.") from None
            spec = parse_model_name(entry.model)
        if not self._lock.acquire(blocking=False):
            raise BusyError("Another fine-tuning job is running on this server (one at a time, to keep the "
                            "demo responsive). Try again when it has finished.")
        try:
            n = next(self._count)
            folder = Path(tempfile.mkdtemp(prefix=f"job{n}-", dir=self._root()))
            count, notes, patch = prepare_finetune_data(images, spec.scale, settings.patch, folder / "data",
                                                        max_pixels=max_pixels)
            if patch != settings.patch:
                notes.append(f"Training patch reduced to {patch} LR pixels to fit the smallest image.")
                settings.patch = patch
            notes.insert(0, f"Training on {count} image(s); validation on the same images "
                            "(it measures how well the model fits them).")
            job = FineTuneJob(settings, folder / "data", folder / "run", owner)
            job.folder = folder
            self.job = job
            job.thread = threading.Thread(target=job._run, args=(self._lock.release,), daemon=True,
                                          name=f"kaldn-finetune-{n}")
            job.thread.start()
            return job, notes
        except BaseException:
            self._lock.release()
            raise

    def _root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def cancel(self, owner: str | None = None) -> bool:
        """Ask the running job to stop (only its owner may, when owners are given); True if one was asked."""
        job = self.job
        if job is None or not self.busy:
            return False
        if owner is not None and job.owner is not None and owner != job.owner:
            return False
        job.stop.set()
        return True

    def register(self, job: FineTuneJob) -> FineTuned | None:
        """Add a finished (or cancelled) job's model to the registry."""
        path = job.checkpoint_dir()
        if path is None:
            return None
        from .checkpoint import read_config
        config = read_config(path / "config.json")
        done = (config.get("training") or {}).get("iterations_done")
        validation = config.get("validation") or {}
        return self.registry.add(path, config["model"], {"iterations": done, "base": job.settings.base,
                                                         "val_psnr": validation.get("val_psnr")},
                                 delete_dir=getattr(job, "folder", None))
