"""The comparison: every chosen variant upscales the same LR input, measured against the same ground truth.

No UI here: the app shows what these functions return, and every number it shows can be reproduced
(and is tested) without a browser::

    from kaldn.inputs import prepare_inputs
    from kaldn.comparison import run_comparison, metrics_table
    inputs = prepare_inputs("examples/astronaut.png", scale=4, mode="hr")
    comparison = run_comparison(inputs, ["bicubic", "dsconv", "ldsconv", "kdsconv-det"])
    headers, rows = metrics_table(comparison)

* The bicubic baseline is the project's MATLAB-compatible :func:`kaldn.resize.imresize`.
* PSNR/SSIM are measured on the server's arrays (never on re-encoded browser images), on the Y
  channel, with ``scale`` border pixels cropped.
* A variant key is a registered variant (``dsconv``, ``kdsconv-det``, ... resolved at the chosen scale
  to its model on the app's backbone, see :func:`kaldn.models.variants`), ``bicubic``, a full model
  name, or the key of a fine-tuned model (:mod:`kaldn.finetune`).

:class:`ComparisonRun` is one run as the app keeps it: the outputs saved as lossless PNGs with a
``metrics.csv``, the slider's two images, the zoomed crops and the status text.
"""

from __future__ import annotations

import csv
import logging
import math
import secrets
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .cache import MODEL_ERRORS, ModelCache
from .display import clamp_region, crop_region, draw_region, enlarge_nearest, label_above, to_display
from .errors import UserError
from .images import load_image, save_png
from .inference import resolve_device, upscale
from .inputs import Inputs
from .maps import (NO_GROUND_TRUTH, PairDifference, default_zoom_center, error_colour_bar, error_maps,
                   pair_difference, render_pair_difference)
from .metrics import evaluate_pair
from .hub import available_models
from .models import count_parameters, model_label, on_other_backbone, parse_model_name, variant_of, variants
from .models import variants as registered_variants  # run_comparison's argument is also called variants
from .resize import imresize
from .session_models import SessionModels, is_session_key

log = logging.getLogger("kaldn.comparison")

__all__ = ["BICUBIC", "DEFAULT_REGION_SIZE", "REGION_SIZES", "region_size", "BICUBIC_LABEL", "GROUND_TRUTH", "LR_INPUT", "METRIC_HEADERS", "Comparison", "ComparisonRun",
           "MapsView", "ResolvedVariant", "RunStore", "VariantResult", "ZoomView", "default_pair", "default_variants",
           "metrics_table", "pair_choices", "pair_image", "pair_images", "resolve_variant", "run_comparison",
           "runnable_selection", "save_outputs", "variant_choices", "variant_label", "zoom_crops"]

BICUBIC = "bicubic"
BICUBIC_LABEL = "Bicubic"
GROUND_TRUTH = "Ground truth"
LR_INPUT = "LR input"


# --- variants: what the user can choose, resolved at a scale ----------------------------------------------

@dataclass
class ResolvedVariant:
    key: str
    label: str
    ref: str | None                 # what load_model takes: a model name or a checkpoint directory
    model: str | None               # model name
    unavailable: str | None = None  # why it cannot run at this scale


def variant_label(key: str, registry: SessionModels | None = None) -> str:
    if key == BICUBIC:
        return BICUBIC_LABEL
    labels = {v.key: v.label for v in variants()}
    if key in labels:
        return labels[key]
    if registry is not None and (entry := registry.get(key)) is not None:
        return entry.label
    try:
        return model_label(key)
    except ValueError:  # not a model name
        return key


def other_backbone_models(available: Sequence[str], scale: int | None = None) -> list[str]:
    """The ``available`` family models on a backbone other than the variants' (``small-kdsconv-det-x4``), which
    the app offers beside the variants; by scale, then variant order; ``scale`` keeps that scale's only."""
    found = [n for n in available if on_other_backbone(n) and (scale is None or parse_model_name(n).scale == scale)]
    return sorted(found, key=lambda n: (parse_model_name(n).scale, variant_of(n).order, n))


def requested_keys(variants: Any, scale: int, registry: SessionModels | None = None) -> list[str]:
    """A client's list of variant keys, checked before anything is resolved or run: strings only, stripped,
    de-duplicated (order kept), at least one, and no more than there are distinct choices at ``scale``
    (each costs a model run and a full-size output)."""
    if not isinstance(variants, (list, tuple)) or not all(isinstance(v, str) for v in variants):
        raise UserError("The variants must be a list of names.")
    keys = list(dict.fromkeys(v.strip() for v in variants))
    if not keys:
        raise UserError("Choose at least one variant to run.")
    limit = (1 + len(registered_variants()) + len(other_backbone_models(available_models(), scale))
             + (len(registry.items()) if registry is not None else 0))
    if len(keys) > limit:
        raise UserError(f"At most {limit} variants can be compared at once; {len(keys)} were given.")
    return keys


def resolve_variant(key: str, scale: int, registry: SessionModels | None = None) -> ResolvedVariant:
    """A variant key -> what to run at ``scale`` (``unavailable`` set when it cannot run at that scale)."""
    key = str(key).strip()
    if key == BICUBIC:
        return ResolvedVariant(key, BICUBIC_LABEL, None, None)
    known = {v.key: v for v in variants()}
    if key in known:
        v = known[key]
        if scale not in v.scales:
            return ResolvedVariant(key, v.label, None, None, f"no x{scale} model")
        name = v.model_name(scale)
        return ResolvedVariant(key, v.label, name, name)
    if registry is not None and (entry := registry.get(key)) is not None:
        model_scale = parse_model_name(entry.model).scale
        # Messages never repeat the label: they are shown after it ("<label>: <message>").
        missing = None if model_scale == scale else f"a x{model_scale} model; the chosen scale is x{scale}"
        return ResolvedVariant(key, entry.label, str(entry.path), entry.model, missing)
    if is_session_key(key):  # expired, evicted, or another session's: the same answer, so nothing leaks
        raise UserError(f"{key!r} is not one of this session's models (any more): fine-tuned and uploaded models "
                        "belong to the session that made them and are dropped after a while unused. Fine-tune "
                        "or upload it again.")
    try:
        spec = parse_model_name(key)
    except ValueError:
        valid = [BICUBIC, *known] + ([e.key for e in registry.items()] if registry is not None else [])
        raise UserError(f"Unknown variant {key!r}; valid: {', '.join(valid)} or a model name "
                        f"such as {variants()[0].model_name(variants()[0].scales[-1])}.") from None
    missing = None if spec.scale == scale else f"a x{spec.scale} model; the chosen scale is x{scale}"
    return ResolvedVariant(key, model_label(key), key, key, missing)


def variant_choices(scale: int, available: Sequence[str], registry: SessionModels | None = None
                    ) -> list[tuple[str, str]]:
    """(label, key) pairs for a checkbox group; labels say which variants have no checkpoint at ``scale``."""
    choices = [(BICUBIC_LABEL, BICUBIC)]
    for v in variants():
        shipped = scale in v.scales and v.model_name(scale) in available
        choices.append((v.label if shipped else f"{v.label} (no x{scale} checkpoint)", v.key))
    for name in other_backbone_models(available):
        model_scale = parse_model_name(name).scale
        choices.append((model_label(name) if model_scale == scale else f"{model_label(name)} (x{model_scale} only)",
                        name))
    for entry in registry.items() if registry is not None else []:
        model_scale = parse_model_name(entry.model).scale
        choices.append((entry.label if model_scale == scale else f"{entry.label} (x{model_scale} only)", entry.key))
    return choices


def runnable_selection(selected: Sequence[str] | None, scale: int, available: Sequence[str],
                       registry: SessionModels | None = None) -> list[str]:
    """The keys of ``selected`` that can run at ``scale`` (a scale switch unticks fine-tuned models and variants
    of another scale instead of leaving them ticked to fail); the defaults when none is left."""
    runnable = {BICUBIC} | {v.key for v in variants() if scale in v.scales and v.model_name(scale) in available}
    runnable |= set(other_backbone_models(available, scale))
    runnable |= {e.key for e in (registry.items() if registry is not None else [])
                 if parse_model_name(e.model).scale == scale}
    kept = [key for key in selected or [] if key in runnable]
    return kept or default_variants(scale, available)


def default_variants(scale: int, available: Sequence[str]) -> list[str]:
    """Bicubic and every variant selected by default that has a checkpoint at ``scale``. Models of another
    backbone are offered but not ticked: the default comparison keeps one backbone and one training budget."""
    return [BICUBIC] + [v.key for v in variants()
                        if v.default and scale in v.scales and v.model_name(scale) in available]


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
    notes: list[str] = field(default_factory=list)       # shown with the results
    device_warnings: list[str] = field(default_factory=list)  # also worth a pop-up (CUDA asked for, not there)

    @property
    def ok(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "ok"]

    def result(self, key: str) -> VariantResult | None:
        return next((r for r in self.results if r.key == key), None)

    @property
    def warnings(self) -> list[str]:
        """One line per variant that did not run, and any device fallback: for pop-ups."""
        return [f"{r.label}: {r.message}" for r in self.results if r.status != "ok"] + self.device_warnings

    def status_markdown(self) -> str:
        """What was run where, the notes on the inputs, the best PSNR and what did not run: a Markdown list."""
        lines = [f"**x{self.inputs.scale}** on **{self.device}**."] + self.inputs.notes + self.notes
        scored = [r for r in self.ok if r.psnr is not None and r.key != BICUBIC]
        bicubic = self.result(BICUBIC)
        if scored:
            best = max(scored, key=lambda r: r.psnr)
            gain = f" ({best.psnr - bicubic.psnr:+.2f} dB vs bicubic)" if bicubic is not None and bicubic.psnr else ""
            lines.append(f"Best PSNR: **{best.label}**, {best.psnr:.2f} dB{gain}.")
        unavailable = [f"{r.label} ({r.message})" for r in self.results if r.status != "ok"]
        if unavailable:
            lines.append("Not run: " + "; ".join(unavailable))
        return "\n\n".join(f"- {line}" for line in lines)


def _resolve_device(device: str, warnings: list[str]) -> torch.device:
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        warnings.append("CUDA was asked for but is not available on this machine: ran on the CPU.")
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
                   cache: ModelCache | None = None, registry: SessionModels | None = None,
                   progress: Callable[[float, str], None] | None = None, tile: int = 256) -> Comparison:
    """Upscale ``inputs.lr`` with every variant; metrics against ``inputs.gt`` when there is one.

    A variant without a checkpoint at this scale (or whose checkpoint is broken)
    gives a result with ``status="unavailable"``/``"error"`` and a message rather
    than an exception. Times cover the upscaling only (the model is loaded, fused
    and moved to the device before the clock starts).
    """
    variants = requested_keys(variants or [], inputs.scale, registry)
    cache = cache or ModelCache()
    device_warnings: list[str] = []
    dev = _resolve_device(device, device_warnings)
    lr, gt, scale = inputs.lr, inputs.gt, inputs.scale
    resolved, seen = [], set()
    for var in (resolve_variant(v, scale, registry) for v in variants):
        if (var.ref or var.key) not in seen:  # two names for one model (a key and its model name) run it once
            seen.add(var.ref or var.key)
            resolved.append(var)
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
            except MODEL_ERRORS as exc:
                status = "unavailable" if isinstance(exc, FileNotFoundError) else "error"
                # The exception's text may name server paths: it goes to the log, not to the user.
                msg = (f"No checkpoint for {var.model} (neither bundled nor on the Hub)."
                       if status == "unavailable" else f"Could not load {var.model}: its checkpoint is damaged.")
                log.warning("%s: %s", var.key, exc)
                results.append(VariantResult(var.key, var.label, var.model, None, status, msg))
                continue
            if fast.config.get("scale") != scale:  # a checkpoint dir whose config disagrees with its name
                results.append(VariantResult(var.key, var.label, var.model, None, "unavailable",
                                             f"a x{fast.config.get('scale')} model"))
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
    return Comparison(inputs, results, _device_name(dev), list(device_warnings), device_warnings)


def _upscale(lr: np.ndarray, model: nn.Module, tile: int, progress: Callable[[int, int], None]) -> np.ndarray:
    return upscale(lr, model, tile=tile, overlap=24, progress=progress)


# No time column: one cold run per variant on a shared machine ranks variants at random (0.05 s against
# 1.12 s for identical fused costs). Speed is the benchmark's (Model zoo: CPU ms, median of warm runs).
METRIC_HEADERS = ["Variant", "Model", "PSNR (dB)", "SSIM", "Δ vs bicubic (dB)", "Params",
                  "Params (fused)", "Device", "Note"]


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
                     _round(r.ssim, 4), _round(delta, 3), r.params, r.params_inference, r.device, note])
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
        elif r.key.startswith(("ft-", "up-")):
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


# --- display: zoomed crops and the slider's pairs ---------------------------------------------------------

REGION_SIZES = (16, 256)  # the zoom region's side, output pixels: smallest, largest
DEFAULT_REGION_SIZE = 64


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{what} must be a number, got {str(value)[:40]!r}.")
    return number


def region_size(value: Any) -> int:
    """The zoom region's side from a client (None: the default), checked: a whole number within REGION_SIZES."""
    if value is None:
        return DEFAULT_REGION_SIZE
    size = _finite(value, "The region size")
    low, high = REGION_SIZES
    if not low <= size <= high:
        raise UserError(f"The region size must be from {low} to {high} output pixels, got {size:g}.")
    return int(round(size))


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
        caption = r.label if r.psnr is None else f"{r.label}, {r.psnr:.2f} dB"
        crops.append((crop_region(r.image, (x0, y0, w, h), factor), caption))
    if comparison.inputs.gt is not None:
        crops.append((crop_region(comparison.inputs.gt, (x0, y0, w, h), factor), GROUND_TRUTH))
    return crops, (x0, y0, w, h)


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
            raise UserError("There is no ground truth in this comparison.")
        return comparison.inputs.gt
    if key == "lr":
        return enlarge_nearest(comparison.inputs.lr, comparison.inputs.scale)
    r = comparison.result(key)
    if r is None or r.image is None:
        raise UserError(f"{variant_label(key)} has no output in this comparison.")
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


def _tile(image: np.ndarray, side: int = 256, most: int = 512) -> np.ndarray:
    """A map for the overview grid: small ones enlarged (nearest) to about ``side``; large ones reduced by
    an integer factor keeping each block's brightest pixel (the largest error), so no hotspot disappears."""
    h, w = image.shape[:2]
    if max(h, w) <= most:
        return enlarge_nearest(image, max(1, side // max(h, w)))
    f = -(-max(h, w) // most)  # ceil
    padded = np.pad(image, ((0, -h % f), (0, -w % f), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, -1)
    return blocks.max(axis=(1, 3))  # colours rise with the error, so the brightest is the largest error


def _grid(tiles: list[np.ndarray], columns: int, bar: np.ndarray, pad: int = 6) -> np.ndarray:
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


# --- one run as the app keeps it: files, slider, crops ----------------------------------------------------

def new_run_dir(root: str | Path, keep: int = 32) -> Path:
    """A fresh folder under ``root`` for one run's files; of the earlier runs, the ``keep`` newest are kept."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep] if keep > 0 else runs:
        shutil.rmtree(old, ignore_errors=True)
    path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


@dataclass
class ZoomView:
    picker: np.ndarray                       # the reference image with the region outlined
    crops: list[tuple[np.ndarray, str]]      # (crop, caption): LR input, every output, ground truth
    center: tuple[int, int]                  # of the region, in output pixels

    def labelled(self) -> list[np.ndarray]:
        """The crops with their captions drawn above them (a gallery's captions would cover the crop)."""
        return [label_above(crop, caption, square=True) for crop, caption in self.crops]


@dataclass
class MapsView:
    """Where the outputs are wrong (error maps) and where the slider's two images differ (pair map)."""

    errors: np.ndarray | None                # every output's error map on one scale, one colour bar
    errors_note: str                         # Markdown: the shared scale, or why there are no maps
    pair: np.ndarray | None                  # the rendered pair map (title, map, colour bar)
    pair_note: str                           # Markdown: win shares and PSNR difference, or |A - B|


@dataclass
class ComparisonRun:
    """A comparison with its outputs written to ``folder`` (lossless PNGs and ``metrics.csv``)."""

    comparison: Comparison
    folder: Path
    paths: dict[str, Path]
    region: tuple[int, int, int, int] | None = None
    pair: tuple[str, str] | None = None      # the slider's two keys, set by :meth:`slider`

    @classmethod
    def save(cls, comparison: Comparison, root: str | Path, keep: int = 32) -> "ComparisonRun":
        """Write the outputs into a new folder under ``root``; a :class:`UserError` when nothing could run."""
        if not comparison.ok:
            raise UserError("None of the chosen variants could run: "
                            + "; ".join(f"{r.label}: {r.message}" for r in comparison.results if r.message) + ".")
        folder = new_run_dir(root, keep)
        return cls(comparison, folder, save_outputs(comparison, folder))

    @property
    def scale(self) -> int:
        return self.comparison.inputs.scale

    def downloads(self) -> list[str]:
        """The files to offer: every output, the LR input, the ground truth and ``metrics.csv``."""
        return [str(path) for key, path in self.paths.items() if key != "lr-nearest"]

    def slider(self, left: str, right: str) -> tuple[str, str]:
        """Paths of the two images for the slider (``lr``: the LR input enlarged to the output size, written
        on first use)."""
        missing = [k for k in (left, right) if k != "lr" and k not in self.paths]
        if missing:
            raise UserError(f"Not part of this comparison: {', '.join(missing)}.")
        self.pair = (left, right)
        return self._path(left), self._path(right)

    def _path(self, key: str) -> str:
        if key != "lr":
            return str(self.paths[key])
        path = self.folder / f"lr-nearest-x{self.scale}.png"
        if not path.exists():
            save_png(pair_image(self.comparison, "lr"), path)
        self.paths["lr-nearest"] = path
        return str(path)

    def label(self, key: str) -> str:
        if key == "gt":
            return GROUND_TRUTH
        if key == "lr":
            return f"{LR_INPUT} (nearest x{self.scale})"
        r = self.comparison.result(key)
        return r.label if r is not None else variant_label(key)

    def pair_difference(self, left: str, right: str) -> PairDifference:
        """:func:`kaldn.maps.pair_difference` of two slider keys (A = ``left``), against the ground truth
        when there is one; border = scale, as the metrics."""
        a, b = pair_images(self.comparison, left, right)
        labels = (self.label(left), self.label(right))
        if labels[0] == labels[1]:
            labels = (f"{labels[0]} (left)", f"{labels[1]} (right)")
        return pair_difference(a, b, self.comparison.inputs.gt, border=self.scale, labels=labels)

    def default_center(self, size: int) -> tuple[float, float] | None:
        """Where to zoom first: where the slider's pair differs most (two different outputs), else where the
        best model gains most over bicubic; None (the centre) when neither can be told."""
        if self.pair is not None and self.pair[0] != self.pair[1] and "lr" not in self.pair:
            return default_zoom_center(size, pair=self.pair_difference(*self.pair))
        models = [r for r in self.comparison.ok if r.key != BICUBIC]
        if not models or self.comparison.result(BICUBIC) not in self.comparison.ok:
            return None
        scored = [r for r in models if r.psnr is not None]
        best = max(scored, key=lambda r: r.psnr) if scored else models[0]
        gain = pair_difference(best.image, self.comparison.result(BICUBIC).image, self.comparison.inputs.gt,
                               border=self.scale, labels=(best.label, BICUBIC_LABEL))
        return default_zoom_center(size, best_vs_bicubic=gain)

    def error_view(self, columns: int = 4) -> tuple[np.ndarray | None, str]:
        """Every output's |SR - ground truth| on Y, side by side on one shared colour scale with one labelled
        colour bar (one image), and a Markdown note; without a ground truth no image and a note that says why."""
        if self.comparison.inputs.gt is None:
            return None, NO_GROUND_TRUTH
        ok = self.comparison.ok
        maps = error_maps({r.label: r.image for r in ok}, self.comparison.inputs.gt, border=self.scale)
        tiles = [label_above(_tile(maps.colourized(r.label)), f"{r.label}: mean {maps.mean_abs[r.label]:.2f}")
                 for r in ok]
        note = (f"|output − ground truth| on the Y channel, in grey levels, every map on **one scale**: "
                f"black = 0, light yellow = {maps.limit:g} or more (the 99th percentile of all maps); the title "
                f"gives each output's mean error. The {self.scale}-pixel border the metrics skip is drawn but not "
                "counted. Same places bright in every map: hard for all; a place darker in one map: that variant "
                "does better there.")
        return _grid(tiles, columns, error_colour_bar(maps.limit, length=256)), note

    def pair_view(self, left: str, right: str) -> tuple[np.ndarray | None, str]:
        """The slider pair's difference map (rendered with its labelled colour bar) and a one-line summary."""
        if left == right:
            return None, "The slider shows the same image on both sides: choose two different ones."
        pair = self.pair_difference(left, right)
        return render_pair_difference(pair), pair.summary()

    def maps(self, left: str, right: str) -> MapsView:
        errors, errors_note = self.error_view()
        pair, pair_note = self.pair_view(left, right)
        return MapsView(errors, errors_note, pair, pair_note)

    def zoom(self, center: tuple[Any, Any] | None, size: Any) -> ZoomView:
        """Crops of the same region (about ``size`` output pixels, centred on ``center``; None: where the slider's
        pair differs most, see :meth:`default_center`)."""
        size = region_size(size)
        if center is not None:
            center = (_finite(center[0], "The region's x"), _finite(center[1], "The region's y"))
        if center is None:
            center = self.default_center(size)
        crops, region = zoom_crops(self.comparison, center, size)
        self.region = region
        inputs = self.comparison.inputs
        reference = inputs.gt if inputs.gt is not None else self.comparison.ok[-1].image
        x0, y0, w, h = region
        return ZoomView(draw_region(reference, region), crops, (x0 + w // 2, y0 + h // 2))


# --- the runs of this process: one live run per session, in memory within a byte budget, on disk until dropped --

def _nbytes(comparison: Comparison) -> int:
    arrays = [comparison.inputs.lr, comparison.inputs.gt] + [r.image for r in comparison.results]
    return sum(a.nbytes for a in arrays if a is not None)


def _stripped(run: ComparisonRun) -> ComparisonRun:
    """The same run without its arrays (metrics, labels and file paths kept): what stays in memory."""
    c = run.comparison
    inputs = replace(c.inputs, lr=None, gt=None)
    results = [replace(r, image=None) for r in c.results]
    return ComparisonRun(replace(c, inputs=inputs, results=results), run.folder, dict(run.paths), run.region)


def _reloaded(run: ComparisonRun) -> ComparisonRun:
    """The arrays read back from the run's lossless PNGs (16-bit colour comes back at 8 bits: display only)."""
    c = run.comparison
    paths = run.paths
    inputs = replace(c.inputs, lr=load_image(paths["lr"], max_pixels=1 << 40),
                     gt=load_image(paths["gt"], max_pixels=1 << 40) if "gt" in paths else None)
    results = [replace(r, image=load_image(paths[r.key], max_pixels=1 << 40) if r.status == "ok" else None)
               for r in c.results]
    return ComparisonRun(replace(c, inputs=inputs, results=results), run.folder, dict(paths), run.region)


@dataclass
class _StoredRun:
    run: ComparisonRun
    owner: str | None
    created: float
    in_memory: bool
    nbytes: int


class RunStore:
    """Comparison runs of this process, each in its own folder under ``root`` (give it a folder of this
    process, see :func:`kaldn.workdirs.instance_root`, so another instance never prunes them).

    * One live run per owner (a session): saving a new run drops the owner's previous one.
    * A run stays until its owner drops it (:meth:`drop`, :meth:`drop_owner`: the session ended) or it is
      older than ``max_age_s``; nothing else removes it, so a session's files never disappear under it.
    * The arrays of at most ``memory_bytes`` (newest used first) stay in memory; older runs keep only
      their numbers and are read back from their PNGs when used again.
    """

    def __init__(self, root: str | Path, memory_bytes: int = 512 << 20, max_age_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.memory_bytes = memory_bytes
        self.max_age_s = max_age_s
        self._runs: OrderedDict[str, _StoredRun] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()

    def save(self, comparison: Comparison, owner: str | None) -> tuple[str, ComparisonRun]:
        """Write a run's files and keep it; (run id, run). Drops ``owner``'s previous run and expired ones."""
        if not comparison.ok:
            raise UserError("None of the chosen variants could run: "
                            + " ".join(r.message for r in comparison.results if r.message))
        self.prune()
        if owner:
            self.drop_owner(owner)
        self.root.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}"
        folder = self.root / run_id
        folder.mkdir()
        run = ComparisonRun(comparison, folder, save_outputs(comparison, folder))
        with self._lock:
            self._runs[run_id] = _StoredRun(run, owner, time.time(), True, _nbytes(comparison))
            self._trim()
        return run_id, run

    def get(self, run_id: str | None, owner: str | None = None) -> ComparisonRun | None:
        """The run (arrays in memory), or None when it is gone or belongs to another owner."""
        if not run_id:
            return None
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None or (stored.owner is not None and stored.owner != owner):
                return None
            self._runs.move_to_end(run_id)
            run = stored.run
            if stored.in_memory:
                return run
        try:
            full = _reloaded(run)  # outside the lock: decoding PNGs takes a while
        except (OSError, ValueError):
            log.warning("run %s could not be read back", run_id, exc_info=True)
            return None
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is not None and not stored.in_memory:
                stored.run, stored.in_memory = full, True
                self._trim(keep=run_id)
        return full

    def drop(self, run_id: str | None) -> None:
        """Forget a run and delete its folder (its session ended or moved on)."""
        with self._lock:
            stored = self._runs.pop(run_id, None) if run_id else None
        if stored is not None:
            shutil.rmtree(stored.run.folder, ignore_errors=True)

    def drop_owner(self, owner: str | None) -> None:
        with self._lock:
            ids = [k for k, v in self._runs.items() if owner and v.owner == owner]
        for run_id in ids:
            self.drop(run_id)

    def prune(self) -> None:
        """Drop runs older than ``max_age_s`` (their session's state has expired by then)."""
        now = time.time()
        with self._lock:
            ids = [k for k, v in self._runs.items() if now - v.created > self.max_age_s]
        for run_id in ids:
            self.drop(run_id)

    def memory(self) -> int:
        """Bytes of arrays held in memory."""
        with self._lock:
            return sum(v.nbytes for v in self._runs.values() if v.in_memory)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def _trim(self, keep: str | None = None) -> None:
        """Strip the arrays of the least recently used runs beyond the memory budget (never ``keep``,
        nor the newest run)."""
        total = self.memory()
        newest = next(reversed(self._runs), None)
        for run_id, stored in self._runs.items():
            if total <= self.memory_bytes:
                break
            if stored.in_memory and run_id not in (keep, newest):
                stored.run, stored.in_memory = _stripped(stored.run), False
                total -= stored.nbytes
