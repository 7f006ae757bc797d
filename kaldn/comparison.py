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
* What the variant keys are, and how a request is checked: :mod:`kaldn.choices`. How the app keeps a
  run (files, views, memory budget): :mod:`kaldn.runs`.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .cache import MODEL_ERRORS, ModelCache
from .choices import BICUBIC, ResolvedVariant, requested_keys, resolve_variant, variant_label
from .display import clamp_region, crop_region, enlarge_nearest, to_display
from .errors import UserError, quoted
from .images import save_png
from .inference import TILE_SIZE, prepare_model, resolve_device, tiled_pixels, upscale
from .inputs import Inputs
from .metrics import evaluate_pair
from .models import count_parameters, create_model, multiply_adds, variants
from .registry import architecture
from .resize import imresize
from .session_models import SessionModels

log = logging.getLogger("kaldn.comparison")

__all__ = ["GROUND_TRUTH", "LR_INPUT", "METRIC_HEADERS", "Comparison", "VariantResult", "default_pair",
           "check_work", "metrics_table", "multiply_adds_per_pixel", "pair_choices", "pair_image", "pair_images",
           "resolve_variants", "run_comparison", "save_outputs", "zoom_crops"]

GROUND_TRUTH = "Ground truth"
LR_INPUT = "LR input"

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
        backbone_of = _block_backbones()
        blocks = [r for r in scored if r.key in backbone_of]
        if len(blocks) > 1:  # the equal-budget block comparison, apart from larger models and fine-tunes
            top = max(blocks, key=lambda r: r.psnr)
            span = top.psnr - min(r.psnr for r in blocks)
            lines.append(f"The {len(blocks)} blocks in the {backbone_of[top.key]} backbone span {span:.2f} dB on this "
                         f"image (best: **{top.label}**, {top.psnr:.2f} dB): one image and one training run each; "
                         "how much a rerun alone moves PSNR is on the Results tab.")
        unavailable = [f"{r.label} ({r.message})" for r in self.results if r.status != "ok"]
        if unavailable:
            lines.append("Not run: " + "; ".join(unavailable))
        return "\n\n".join(f"- {line}" for line in lines)


def _block_backbones() -> dict[str, str]:
    """Each conv variant (a family's block on its default backbone: one training budget per scale) -> that backbone."""
    return {v.key: str(architecture(v.arch).default_backbone) for v in variants() if architecture(v.arch).family}


def check_device(device: Any) -> str:
    """A client's device choice: "auto", "cpu" or "cuda" (None is "auto"); a UserError otherwise."""
    if device is None or device == "":
        return "auto"
    if not isinstance(device, str) or device.lower() not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {quoted(device)}")
    return device.lower()


def _resolve_device(device: str, warnings: list[str]) -> torch.device:
    device = check_device(device)
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


@functools.lru_cache(maxsize=None)  # one entry per registered model name: a bounded set
def multiply_adds_per_pixel(model: str) -> int:
    """Multiply-adds per LR pixel of model ``model`` (fused, as it runs): exact for any input size, since every
    layer's cost grows with the pixel count."""
    return multiply_adds(prepare_model(create_model(model).eval(), "cpu"), 32, 32) // (32 * 32)


def resolve_variants(variants: Sequence[str], scale: int, registry: SessionModels | None = None
                     ) -> list[ResolvedVariant]:
    """A client's variant list, checked and resolved; two names for one model (a key and its model name) run
    once."""
    resolved, seen = [], set()
    for var in (resolve_variant(v, scale, registry) for v in requested_keys(variants or [], scale, registry)):
        if (var.ref or var.key) not in seen:
            seen.add(var.ref or var.key)
            resolved.append(var)
    return resolved


def check_work(resolved: Sequence[ResolvedVariant], lr_size: tuple[int, int], limit: int | None,
               tile: int | None = TILE_SIZE) -> int:
    """The multiply-adds these variants need on an LR input of ``lr_size`` (height, width), tiles' overlaps
    included; a :class:`UserError` over ``limit`` (one comparison holds the compute slot: its time must stay
    bounded whatever is chosen or uploaded)."""
    pixels = tiled_pixels(*lr_size, tile)  # with upscale's overlap
    costs = [(var.label, multiply_adds_per_pixel(var.model) * pixels) for var in resolved
             if var.key != BICUBIC and not var.unavailable and var.model]
    total = sum(c for _, c in costs)
    if limit is not None and total > limit:
        heaviest = ", ".join(f"{label} {c / 1e9:,.0f} G" for label, c in sorted(costs, key=lambda lc: -lc[1])[:3])
        raise UserError(f"These models need {total / 1e9:,.0f} G multiply-adds on this {lr_size[1]}x{lr_size[0]} "
                        f"LR input (heaviest: {heaviest}); one comparison on this server may take "
                        f"{limit / 1e9:,.0f} G (KALDN_APP_MAX_COMPARE_GMACS). Choose fewer or lighter models, or a "
                        "smaller image.")
    return total


def run_comparison(inputs: Inputs, variants: Sequence[str], device: str = "auto",
                   cache: ModelCache | None = None, registry: SessionModels | None = None,
                   progress: Callable[[float, str], None] | None = None, tile: int = TILE_SIZE,
                   max_multiply_adds: int | None = None) -> Comparison:
    """Upscale ``inputs.lr`` with every variant; metrics against ``inputs.gt`` when there is one.

    A variant without a checkpoint at this scale (or whose checkpoint is broken)
    gives a result with ``status="unavailable"``/``"error"`` and a message rather
    than an exception. Times cover the upscaling only (the model is loaded, fused
    and moved to the device before the clock starts). More than ``max_multiply_adds`` in all is refused
    before anything runs (:func:`check_work`).
    """
    resolved = admitted_variants(variants, inputs.scale, inputs.lr.shape[:2], registry, max_multiply_adds, tile)
    return compare_resolved(inputs, resolved, device, cache, progress, tile)


def admitted_variants(variants: Sequence[str], scale: int, lr_size: tuple[int, int],
                      registry: SessionModels | None = None, max_multiply_adds: int | None = None,
                      tile: int | None = TILE_SIZE) -> list[ResolvedVariant]:
    """A client's variant list resolved (:func:`resolve_variants`) and its work on an LR input of ``lr_size``
    admitted (:func:`check_work`): what :func:`compare_resolved` may run."""
    resolved = resolve_variants(variants, scale, registry)
    check_work(resolved, lr_size, max_multiply_adds, tile)
    return resolved


def compare_resolved(inputs: Inputs, resolved: Sequence[ResolvedVariant], device: str = "auto",
                     cache: ModelCache | None = None, progress: Callable[[float, str], None] | None = None,
                     tile: int = TILE_SIZE) -> Comparison:
    """The compute of :func:`run_comparison`, on variants already resolved and admitted (:func:`check_work`).
    It reads no session state, and its arguments (``progress`` aside) and result pickle, so a host may run it
    in another process: ZeroGPU's ``@spaces.GPU`` runs it in a forked worker."""
    lr, gt, scale = inputs.lr, inputs.gt, inputs.scale
    cache = cache or ModelCache()
    device_warnings: list[str] = []
    dev = _resolve_device(device, device_warnings)
    results: list[VariantResult] = []
    tiled_notes: list[str] = []
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
            if getattr(raw, "global_context", False) and max(lr.shape[:2]) > tile:
                tiled_notes.append(f"{var.label} ran in {tile}-pixel tiles (memory stays bounded); it pools "
                                   "statistics over its whole input, so its output differs slightly from a "
                                   "whole-image run, as the Model zoo's numbers are measured.")
        if res.image is not None and gt is not None:
            metrics = evaluate_pair(res.image[..., :3], gt[..., :3], scale)
            res.psnr, res.ssim = metrics["psnr"], metrics["ssim"]
        results.append(res)
        report(i, 1.0, f"{var.label}: done")
    return Comparison(inputs, results, _device_name(dev), device_warnings + tiled_notes, device_warnings)


def _upscale(lr: np.ndarray, model: nn.Module, tile: int, progress: Callable[[int, int], None]) -> np.ndarray:
    return upscale(lr, model, tile=tile, progress=progress)


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
