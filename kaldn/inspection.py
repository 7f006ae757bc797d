"""Model inspection, for teaching: what the kernel attention learned, and what the hasty ReLU throws away.

* the **gate report** as a table and a note (:func:`gate_rows`, :func:`gate_note`; measured in
  :mod:`kaldn.gates`): per KDSConv layer, how widely the attention ``a`` spreads across channels, and whether
  it follows the kernels' descriptor ``z``; a dead gate (every gate ReLU off) gives every channel a = 0.5
  exactly, and the raw-determinant collapse of DESIGN.md spreads a by about 0.001, both about a fixed 1.5x
  scale;
* **kernel tables** (:func:`kernel_table`, :func:`render_kernel_grid`): a layer's depthwise kernels with
  each one's det / avg / max pooled value and its scale ``1 + a``;
* the **hasty ReLU** (:func:`depthwise_stats`, :func:`hasty_relu_report`): the share of depthwise outputs
  that DSConv's ReLU zeroes, against what linear DSConv keeps, on an image.
"""

from __future__ import annotations

import copy

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from .cache import MODEL_ERRORS, ModelCache
from .display import centre_crop, diverging, enlarge_nearest, font, render_heatmap, render_image, to_display
from .errors import UserError
from .gates import NEAR_CONSTANT_STD, gate_report, gate_state, gate_verdict
from .images import image_to_tensor
from .layers import KERNEL_POOLS, DSConv, FixedScaleDSConv, KDSConv, pool_kernels
from .models import BACKBONES, count_parameters, create_model, parse_model_name, variant, variant_of

if TYPE_CHECKING:
    from .comparison import Comparison

__all__ = ["GATE_HEADERS", "HASTY_HEADERS", "HASTY_LAYER_HEADERS", "HASTY_PAIR", "KERNEL_HEADERS", "Z_A_HEADERS",
           "HastyReluReport", "KernelView", "depthwise_savings", "depthwise_stats", "gate_note", "gate_rows",
           "gate_sizes", "hasty_outcome", "hasty_relu_report", "inspection_choices", "kernel_layers", "kernel_rows",
           "kernel_table", "kernel_view", "render_kernel_grid"]


# --- what depthwise separation saves ----------------------------------------------------------------------

def depthwise_savings(backbone: str = "tiny", scale: int = 4) -> dict:
    """How many times fewer weights a DSConv has than the 3x3 convolution it replaces, on ``backbone``: per
    dense layer of C channels in and G (the growth rate) out, 9 C G against C (9 + G), so 9 G / (9 + G) whatever
    C (biases aside); and for the whole model, whose convolutions outside the dense layers stay standard."""
    growth = int(BACKBONES[backbone]["growth"])
    conv = count_parameters(create_model(f"{backbone}-conv-x{scale}"))
    dsconv = count_parameters(create_model(f"{backbone}-dsconv-x{scale}"))
    return {"growth": growth, "per_layer": 9 * growth / (9 + growth), "conv_params": conv,
            "dsconv_params": dsconv, "model_ratio": conv / dsconv}


def gate_sizes(backbone: str = "tiny") -> dict:
    """The attention gate's reduction r per backbone, as prose ("32 (paper) or 8 (tiny, small)"), and its hidden
    units in ``backbone``'s first dense layer (C = the block's feature channels in, C / r hidden)."""
    by_reduction: dict[int, list[str]] = {}
    for name, preset in BACKBONES.items():
        by_reduction.setdefault(int(preset["reduction"]), []).append(name)
    channels = int(BACKBONES[backbone]["num_features"])
    return {"reductions": " or ".join(f"{r} ({', '.join(names)})" for r, names in by_reduction.items()),
            "first_channels": channels, "first_hidden": channels // int(BACKBONES[backbone]["reduction"])}


# --- the hasty ReLU --------------------------------------------------------------------------------------

HASTY_PAIR = ("dsconv", "ldsconv")  # the variants with and without the ReLU after the depthwise conv


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
    crop, (x0, y0) = centre_crop(rgb, max_side)
    x = image_to_tensor(crop)
    # Hooks go on a private copy: the caller's model may be shared (the app's cache), and a hook left on it,
    # or copied from it while this runs, would reach other users' runs.
    model = copy.deepcopy(model)
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
            raise UserError("This model has no depthwise-separable layers.")
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

HASTY_HEADERS = ["Variant", "Model", "ReLU after depthwise", "Negative values (%)", "Negative energy (%)"]
HASTY_LAYER_HEADERS = ["Variant", "Layer", "Channels", "Negative values (%)", "Negative energy (%)"]


@dataclass
class HastyReluReport:
    summary: str                                 # Markdown
    maps: list[tuple[np.ndarray, str]]           # (image, caption): the LR region, then one map per model
    rows: list[list[Any]]                        # HASTY_HEADERS, one row per model
    per_layer: list[list[Any]]                   # HASTY_LAYER_HEADERS
    stats: dict[str, dict] = field(default_factory=dict)   # variant key -> depthwise_stats
    missing: list[str] = field(default_factory=list)       # models without a checkpoint


def hasty_relu_report(lr: np.ndarray, scale: int, cache: ModelCache | None = None,
                      convs: Sequence[str] = HASTY_PAIR, where: str | None = None) -> HastyReluReport:
    """:func:`depthwise_stats` of the DSConv and linear DSConv models at ``scale`` on ``lr``.

    ``where`` (e.g. "the example astronaut.png") heads the summary. Models without a checkpoint are listed
    in ``missing``; a :class:`UserError` when none of them has one.
    """
    cache = cache or ModelCache()
    stats, missing = {}, []
    for conv in convs:
        name = variant(conv).model_name(scale)
        try:
            model = cache.raw(name)
        except MODEL_ERRORS as exc:
            # The exception's own text may hold a server path: not shown.
            missing.append(f"{name} (no checkpoint)" if isinstance(exc, FileNotFoundError)
                           else f"{name} (its checkpoint cannot be read)")
            continue
        stats[conv] = depthwise_stats(model, lr)
    if not stats:
        raise UserError(f"No DSConv / linear DSConv checkpoint at x{scale}: " + ", ".join(missing))
    labels = {conv: variant(conv).label for conv in stats}
    rows, per_layer, maps = [], [], []
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
        mean = float(np.mean(st["map"]))
        rows.append([labels[conv], st["model"], "yes: zeroed" if relu else "no: kept",
                     round(100 * st["zeroed_fraction"], 2), round(100 * st["zeroed_energy"], 2)])
        for layer in st["layers"]:
            per_layer.append([labels[conv], layer["layer"], layer["channels"],
                              round(100 * layer["zeroed_fraction"], 2), round(100 * layer["zeroed_energy"], 2)])
        verb = "zeroed by the ReLU" if relu else "negative, kept"
        maps.append((render_heatmap(st["map"], f"{labels[conv]}: {verb}, mean {100 * mean:.1f}%", lo, hi),
                     f"{labels[conv]}: {100 * st['zeroed_fraction']:.1f}% of values, "
                     f"{100 * st['zeroed_energy']:.1f}% of energy"))
    lines = [f"At x{scale}, on {where}:"] if where else []
    for conv, st in stats.items():
        if st["relu_after_depthwise"]:
            lines.append(f"**{labels[conv]}** (ReLU right after the depthwise conv) zeroes "
                         f"**{100 * st['zeroed_fraction']:.1f}%** of its depthwise outputs on this image, "
                         f"**{100 * st['zeroed_energy']:.1f}%** of their energy, before the pointwise conv can "
                         "combine them.")
        else:
            lines.append(f"**{labels[conv]}** has no ReLU there: the **{100 * st['zeroed_fraction']:.1f}%** "
                         f"negative depthwise outputs (**{100 * st['zeroed_energy']:.1f}%** of the energy) reach "
                         "the pointwise conv intact.")
    lines.append(f"Measured on the LR input ({w}x{h} pixels from ({x0}, {y0})), all depthwise layers of each "
                 "model. The maps show, per LR pixel, the share of channels (over all layers) whose depthwise "
                 f"output is negative. Their colours span **{100 * lo:.1f}% (dark) to {100 * hi:.1f}% (light)**, "
                 "not 0 to 100%, so that small differences show: a dark pixel is still about "
                 f"{100 * lo:.0f}% negative.")
    if missing:
        lines.append("Not available: " + ", ".join(missing) + ".")
    return HastyReluReport("\n\n".join(lines), maps, rows, per_layer, stats, missing)


def hasty_outcome(comparison: Comparison) -> str:
    """What the ReLU's absence did on this image, when the comparison it came from scored both models."""
    scored = [r for r in map(comparison.result, HASTY_PAIR) if r is not None and r.psnr is not None]
    if len(scored) < 2:
        return ""
    (ds, lin) = scored
    return (f"\n\n**On this image** (your last comparison, against its ground truth): {ds.label} "
            f"{ds.psnr:.2f} dB, {lin.label} {lin.psnr:.2f} dB ({lin.psnr - ds.psnr:+.2f} dB without the ReLU; one "
            "image and one training run each: how much another seed alone moves PSNR, a set's mean at this scale, is "
            "on the Results tab).")


# --- kernels and kernel attention -------------------------------------------------------------------------

def kernel_layers(model: nn.Module) -> list[str]:
    """Names of the layers with depthwise kernels, in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, DSConv)]


@torch.no_grad()
def kernel_table(model: nn.Module, layer: str) -> dict:
    """A layer's depthwise kernels with each kernel's pooled values (every one of KERNEL_POOLS) and its scale 1 + a.

    For KDSConv, ``z`` is the descriptor the gate sees (the layer's own pooling,
    normalised) and ``a`` the attention; for the fixed control 1 + a = 1.5; for
    DSConv/linear DSConv there is no attention (scale 1).
    """
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], DSConv):
        raise UserError(f"{layer!r} is not a depthwise layer of this model; choose one of: "
                           f"{', '.join(kernel_layers(model)[:8])} ...")
    m = modules[layer]
    kernels = m.depthwise.weight[:, 0].detach().float().cpu()
    out = {
        "layer": layer,
        "kind": type(m).__name__,
        "kernels": kernels.numpy(),
        **{pool: pool_kernels(kernels, pool).numpy() for pool in KERNEL_POOLS},
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


Z_A_HEADERS = ["z (gate input)", "a"]  # the descriptor the gate sees, and the attention it gives
KERNEL_HEADERS = ["Channel", *KERNEL_POOLS, *Z_A_HEADERS, "1 + a"]


def kernel_rows(table: dict) -> list[list[Any]]:
    rows = []
    for c in range(len(table["kernels"])):
        rows.append([c, *(float(f"{table[pool][c]:.3g}") for pool in KERNEL_POOLS),  # 3 digits: dets are ~0.01
                     None if table["z"] is None else round(float(table["z"][c]), 3),
                     None if table["a"] is None else round(float(table["a"][c]), 4),
                     round(float(table["scale"][c]), 4)])
    return rows


def render_kernel_grid(table: dict, columns: int = 16, cell: int = 18) -> np.ndarray:
    """The layer's stored depthwise kernels W as small heat maps (blue < 0 < red, one colour scale for the layer),
    each labelled with its channel and 1 + a (the model applies (1 + a) W); the frame's darkness is a on a fixed
    0..1 scale, so a near-constant gate looks near-constant; uint8 RGB image."""
    kernels = table["kernels"]
    scales = table["scale"]
    c, k, _ = kernels.shape
    limit = float(np.abs(kernels).max()) or 1.0
    small = font(10)
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
    draw.text((pad, 4), title, fill="black", font=font(12))
    draw.text((pad, 19), f"stored W (applied: (1 + a) W); blue < 0 < red, full colour at |w| = {limit:.3g}; "
                         "below: channel #, then 1 + a; frame white at 1 + a = 1, black at 2", fill=(60, 60, 60),
              font=small)
    colours = diverging(kernels, limit)
    # The frame of each kernel is darker the more attention it gets, on one fixed scale for every layer and model.
    for i in range(c):
        r, col = divmod(i, columns)
        x = pad + col * (tile_w + pad)
        y = header + pad + r * (tile_h + pad)
        tile = enlarge_nearest(colours[i], cell)
        ox = x + (tile_w - tile.shape[1]) // 2
        canvas.paste(Image.fromarray(tile), (ox, y))
        t = min(max(float(scales[i]) - 1.0, 0.0), 1.0)
        frame = tuple(int(round(255 * (1 - t))) for _ in range(3))
        draw.rectangle([ox - 1, y - 1, ox + tile.shape[1], y + tile.shape[0]], outline=frame, width=1)
        draw.text((x + 1, y + k * cell + 2), f"#{i}", fill=(90, 90, 90), font=small)
        draw.text((x + 1, y + k * cell + 13), f"{float(scales[i]):.3f}", fill="black", font=small)
    return np.asarray(canvas)


GATE_HEADERS = ["Layer", "Channels", "Pooling", "Descriptor", "a min", "a max", "a mean", "a std",
                "median |pooled|", "corr(z, a)", "Gate"]


def gate_rows(model: nn.Module) -> tuple[list[str], list[list[Any]]]:
    """:func:`gate_report` as a table (empty for models without KDSConv); the last column is :func:`gate_verdict`.
    ``corr(z, a)``: do kernels with a larger descriptor get more attention (+1), less (-1), or is it no simple
    order (near 0)?"""
    report = gate_report(model)
    rows = [[r["layer"], r["channels"], r["kernel_pool"], r["descriptor_norm"], round(r["a_min"], 4),
             round(r["a_max"], 4), round(r["a_mean"], 4), round(r["a_std"], 4),
             float(f"{r['raw_pooled_median_abs']:.3g}"), None if r["za_corr"] is None else round(r["za_corr"], 2),
             gate_verdict(r)]
            for r in report]
    return GATE_HEADERS, rows


def gate_note(model: nn.Module, name: str) -> str:
    """One Markdown line above the gate report: why it is empty, or how many of its layers have a dead gate."""
    rows = gate_report(model)
    if not rows:
        kind = "a fixed 1.5x kernel scale" if any(isinstance(m, FixedScaleDSConv) for m in model.modules()) \
            else "no kernel attention"
        return (f"**{name} has no gate to report:** it has {kind} (only KDSConv layers compute an attention `a` "
                "from their kernels). Choose a KDSConv model to see its gates.")
    dead = [r for r in rows if gate_state(r["a_std"]) == "dead"]
    flat = [r for r in rows if gate_state(r["a_std"]) == "near-constant"]
    if not dead and not flat:
        return (f"**{name}:** every one of its {len(rows)} gates spreads `a` across channels (smallest `a std` "
                f"{min(r['a_std'] for r in rows):.4f}; an untrained gate's is about 0.05): no dead or "
                "near-constant gate.")
    parts = []
    if dead:
        parts.append(f"**{len(dead)} of {len(rows)} gates are dead** (every gate ReLU off, so `a` = sigmoid(0) = 0.5 "
                     "in every channel: a constant 1.5x scale, like the fixed control): "
                     + ", ".join(r["layer"] for r in dead) + ".")
    if flat:
        parts.append(f"**{len(flat)} of {len(rows)} gates are near-constant** (`a std` under {NEAR_CONSTANT_STD:g}: "
                     "about one scale for every kernel, as when raw determinants, all near 0, feed the gate): "
                     + ", ".join(r["layer"] for r in flat) + ".")
    return f"**{name}:** " + " ".join(parts)


@dataclass
class KernelView:
    """What the app shows for one model: its depthwise layers, one layer's kernels and the gate report."""

    layers: list[str]
    layer: str
    grid: np.ndarray
    kernel_rows: list[list[Any]]                 # KERNEL_HEADERS
    gate_headers: list[str]
    gate_rows: list[list[Any]]
    gate_note: str = ""                          # Markdown: why the report is empty, or its dead / near-constant gates


def kernel_view(cache: ModelCache, ref: str, layer: str | None = None, label: str | None = None) -> KernelView:
    """The kernels of ``layer`` (default: the third depthwise layer) of model ``ref`` and its gate report.
    Messages name the model by ``label`` (default ``ref``; a session model's ``ref`` is a server folder)."""
    label = label or ref
    try:
        model = cache.raw(ref)
    except MODEL_ERRORS as exc:
        why = "it is no longer available" if isinstance(exc, FileNotFoundError) else "its checkpoint cannot be read"
        raise UserError(f"Cannot load {label}: {why}.") from None
    layers = kernel_layers(model)
    if not layers:
        raise UserError(f"{label} has no depthwise layers to show.")
    layer = layer if layer in layers else layers[min(2, len(layers) - 1)]
    table = kernel_table(model, layer)
    gate_headers, gate = gate_rows(model)
    return KernelView(layers, layer, render_kernel_grid(table), kernel_rows(table), gate_headers, gate,
                      gate_note(model, label))  # an upload's note names the upload, not its base model


def inspection_choices(available: Sequence[str]) -> list[tuple[str, str]]:
    """(label, model) choices among ``available`` models with depthwise kernels: the kernel-attention ones
    first (x4 first, then in variant order), then the others in the order given."""
    shown = [(name, v) for name in available if (v := variant_of(name)) is not None and v.depthwise]
    attention = sorted(((n, v) for n, v in shown if v.kernel_pool),
                       key=lambda nv: (-(parse_model_name(nv[0]).scale == 4), nv[1].order, nv[0]))
    rest = [(n, v) for n, v in shown if not v.kernel_pool]
    return [(n, n) for n, _ in attention + rest]
