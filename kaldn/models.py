"""One model factory over the registry: ``create_model("tiny-kdsconv-det-x4")``.

Names (DESIGN.md) are ``{backbone}-{conv}-x{scale}`` for a family (RDN: backbones ``tiny``, ``small``,
``paper``; convs as registered in ``kaldn/layers.py``) and ``{arch}-x{scale}`` for a single network.
Importing this module registers every built-in architecture, so every query here sees all of them.

A *variant* is what the app offers and the tables compare: a conv variant (on the family's default
backbone, ``tiny``) or a single network; :func:`variants` lists them in display order.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .archs import fdiwn, lesrcnn, scnet  # noqa: F401  (importing an architecture's module registers it)
from .archs.rdn import BACKBONES, DEFAULT_BACKBONE
from .errors import UserError, quoted
from .registry import Architecture, Claim, architecture, architectures, conv_entries, conv_entry

__all__ = ["BACKBONES", "BICUBIC", "DEFAULT_BACKBONE", "ModelSpec", "Variant", "check_scale", "count_parameters", "create_model",
           "is_featured", "model_label", "model_names", "multiply_adds", "on_other_backbone", "options_taken",
           "parse_model_name", "scales", "variant", "variant_of", "variants"]

BICUBIC = "bicubic"  # the baseline beside every model: a name in choices and results rows, not a model


@dataclass(frozen=True)
class ModelSpec:
    """What a model name says: the architecture, the scale and, for a family, backbone and conv."""

    arch: str
    scale: int
    backbone: str | None = None
    conv: str | None = None

    @property
    def name(self) -> str:
        if self.backbone is None:
            return f"{self.arch}-x{self.scale}"
        return f"{self.backbone}-{self.conv}-x{self.scale}"

    @property
    def variant(self) -> str:
        """The key of its variant: the conv for a family, the architecture otherwise."""
        return self.conv if self.conv is not None else self.arch


def _specs(arch: Architecture) -> list[ModelSpec]:
    if not arch.family:
        return [ModelSpec(arch.name, s) for s in arch.scales]
    return [ModelSpec(arch.name, s, b, c.name) for b in arch.backbones for c in conv_entries() for s in arch.scales]


def model_names(backbones: tuple[str, ...] | None = None) -> list[str]:
    """Every model name, in registry order; ``backbones`` limits them to those family backbones."""
    names = []
    for arch in architectures():
        if backbones is not None and not arch.family:
            continue
        names += [s.name for s in _specs(arch) if backbones is None or s.backbone in backbones]
    return names


def parse_model_name(name: str) -> ModelSpec:
    """Split a model name into architecture, scale and (for a family) backbone and conv; ValueError otherwise."""
    for arch in architectures():
        for spec in _specs(arch):
            if spec.name == name:
                return spec
    names = model_names()
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close[:-1])}{' or ' if len(close) > 1 else ''}{close[-1]}?" if close else ""
    raise ValueError(f"unknown model {quoted(name)}{hint} (kaldn.model_names() lists all {len(names)}, "
                     f"such as {names[0]})")


def scales() -> tuple[int, ...]:
    """Every scale some architecture is registered for, ascending."""
    return tuple(sorted({s for arch in architectures() for s in arch.scales}))


def check_scale(scale: Any) -> int:
    """``scale`` as an int if it is one of the registered scales, else a :class:`UserError` saying which are."""
    valid = scales()
    message = f"The scale must be one of {', '.join(map(str, valid))}, got {quoted(scale)}."
    try:
        value = int(scale)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise UserError(message) from None
    if value not in valid or float(scale) != value:
        raise UserError(message)
    return value


def options_taken(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``options`` that model ``name``'s architecture takes (RDN: ``descriptor_norm``; a peer: none), for
    :func:`create_model`: a setting that applies to some models only (a CLI flag, a config field) is passed so."""
    taken = architecture(parse_model_name(name).arch).options
    return {k: v for k, v in options.items() if k in taken}


def changed_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options a model's ``config`` records that differ from its architecture's defaults (an uploaded SCNet-T
    with the PixelShuffle upsampler: ``{"upsampler": "pixelshuffle"}``), so lists can tell it from the default."""
    defaults = architecture(parse_model_name(config["model"]).arch).options
    return {k: config[k] for k, default in defaults.items() if k in config and config[k] != default}


def create_model(name: str, **options: Any) -> nn.Module:
    """Build an untrained model by name. ``model.config`` records how (name, architecture, scale, options).

    ``options`` are the architecture's (``descriptor_norm`` for RDN); one it does not take is an error.
    """
    spec = parse_model_name(name)
    arch = architecture(spec.arch)
    unknown = sorted(set(options) - set(arch.options))
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(unknown)}"
                         + (f" (options: {', '.join(arch.options)})" if arch.options else ""))
    settings = {**arch.options, **options}
    if arch.family:
        model = arch.build(scale=spec.scale, conv=spec.conv, **arch.backbones[spec.backbone], **settings)
        model.config = {"model": name, "arch": arch.name, "backbone": spec.backbone, "conv": spec.conv,
                        "scale": spec.scale, **settings}
    else:
        model = arch.build(scale=spec.scale, **settings)
        model.config = {"model": name, "arch": arch.name, "scale": spec.scale, **settings}
    return model


# --- variants: what the app offers and the tables compare -------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A conv variant of the family, or a single network; ``model_name(scale)`` names its model."""

    key: str
    label: str
    order: int
    default: bool                       # selected by default in the app
    arch: str
    scales: tuple[int, ...]
    backbone: str | None = None         # a conv variant: the family's default backbone
    depthwise: bool = False             # has depthwise kernels to inspect
    kernel_pool: str | None = None      # attention computed from each kernel's det / avg / max
    claims: tuple[Claim, ...] = ()

    def model_name(self, scale: int) -> str:
        return ModelSpec(self.arch, scale, self.backbone, self.key if self.backbone else None).name


def variants() -> list[Variant]:
    """Every variant in display order: the family's conv variants (on its default backbone), then the networks."""
    out = []
    for arch in architectures():
        if arch.family:
            out += [Variant(c.name, c.label, c.order, c.default, arch.name, arch.scales, arch.default_backbone,
                            c.depthwise, c.kernel_pool, c.claims) for c in conv_entries()]
        else:
            out.append(Variant(arch.name, arch.label, arch.order, arch.default, arch.name, arch.scales))
    return sorted(out, key=lambda v: v.order)


def variant_of(name: str) -> Variant | None:
    """The variant model ``name`` is of, on any backbone (``tiny-ldsconv-x2`` and ``small-ldsconv-x2`` ->
    ``ldsconv``); None for a name that is not a model."""
    try:
        spec = parse_model_name(name)
    except ValueError:
        return None
    return next((v for v in variants() if v.key == spec.variant and v.arch == spec.arch), None)


def on_other_backbone(name: str) -> bool:
    """Whether ``name`` is a family model on a backbone other than the one the app's variants use (the app
    lists such models by name, ``small-kdsconv-det-x4``, beside the variants)."""
    try:
        spec = parse_model_name(name)
    except ValueError:
        return False
    return spec.backbone is not None and spec.backbone != architecture(spec.arch).default_backbone


def is_featured(name: str) -> bool:
    """Whether ``name`` is a model on another backbone that its family features (selected by default when shipped)."""
    if not on_other_backbone(name):
        return False
    spec = parse_model_name(name)
    return f"{spec.backbone}-{spec.conv}" in architecture(spec.arch).featured


def model_label(name: str) -> str:
    """What the app and the plots call model ``name``: its variant's label, plus its backbone when that is not
    the one the variants use, so a ``small`` and a ``tiny`` KDSConv never share a label or a colour
    (``tiny-kdsconv-det-x4`` -> "KDSConv (det)", ``small-kdsconv-det-x4`` -> "KDSConv (det), small")."""
    spec = parse_model_name(name)
    if spec.backbone is None:
        return architecture(spec.arch).label
    label = conv_entry(spec.conv).label
    return label if spec.backbone == architecture(spec.arch).default_backbone else f"{label}, {spec.backbone}"


def variant(key: str) -> Variant:
    """The variant with this key (a conv name such as ``kdsconv-det``, or an architecture name)."""
    for v in variants():
        if v.key == key:
            return v
    raise ValueError(f"unknown variant {quoted(key)}; valid: {', '.join(v.key for v in variants())}")


# --- measuring a model ------------------------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: nn.Module, height: int, width: int) -> int:
    """Multiply-adds of one forward pass on a (1, 3, height, width) input, counted over conv and linear layers.

    Count a fused model (``kaldn.inference.prepare_model``): KDSConv's attention is
    weight-only, so fused it costs what LinearDSConv costs. The bicubic skip
    (16 taps per output value) is left out: it is not a learned layer.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    p = next(model.parameters())
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=p.device, dtype=p.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total
