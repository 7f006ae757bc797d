"""One model factory: ``create_model("tiny-kdsconv-det-x4")``.

Names are ``{backbone}-{conv}-x{scale}`` (DESIGN.md), e.g. ``tiny-ldsconv-x2``,
or ``{arch}-x{scale}`` for the seed papers' peers (``PEERS``), e.g. ``fdiwn-x4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .archs.fdiwn import FDIWN
from .archs.lesrcnn import LESRCNN
from .archs.scnet import SCNet
from .layers import CONVS, DEFAULT_DESCRIPTOR_NORM, DESCRIPTOR_NORMS
from .rdn import RDN

# paper: RDN of paper 001 Table I. tiny: sized for 2 CPU cores (DESIGN.md's
# calibration net, ~100K parameters with depthwise convs, ~0.2 s for a 256x256 x4).
BACKBONES: dict[str, dict] = {
    "paper": dict(num_features=64, growth=64, num_blocks=16, num_layers=8, upsampler="rdn",
                  bicubic_skip=False, reduction=32),
    # r = 8 rather than 32: with 32-128 channels, r = 32 would leave a 1-4 unit gate.
    "tiny": dict(num_features=32, growth=32, num_blocks=4, num_layers=4, upsampler="light",
                 bicubic_skip=True, reduction=8),
    # Between the two: 389K parameters with KDSConv (DESIGN.md's 40-minute calibration size),
    # for long CPU runs; per iteration it keeps pace with tiny and keeps improving after it flattens.
    "small": dict(num_features=48, growth=32, num_blocks=6, num_layers=5, upsampler="light",
                  bicubic_skip=True, reduction=8),
}
SCALES = (2, 3, 4)

# The seed papers' peers (kaldn/archs): arch name -> builder(scale). Names are "{arch}-x{scale}";
# their ModelSpec has backbone PEER and conv = arch. One entry each: the registry port is a line per peer.
PEER = "peer"
PEERS: dict[str, Callable[[int], nn.Module]] = {
    "lesrcnn": lambda scale: LESRCNN(scale),
    "fdiwn": lambda scale: FDIWN(scale),
    "scnet-t": lambda scale: SCNet(scale),
}


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    conv: str
    scale: int

    @property
    def name(self) -> str:
        if self.backbone == PEER:
            return f"{self.conv}-x{self.scale}"
        return f"{self.backbone}-{self.conv}-x{self.scale}"


def model_names(backbones: tuple[str, ...] = (*BACKBONES, PEER)) -> list[str]:
    """Every model name of ``backbones`` (``PEER`` for the seed papers' peers)."""
    return [ModelSpec(b, c, s).name for b in backbones for c in (PEERS if b == PEER else CONVS) for s in SCALES]


def parse_model_name(name: str) -> ModelSpec:
    """Split a model name into backbone, conv and scale; ValueError listing valid names otherwise."""
    for backbone in (*BACKBONES, PEER):
        for conv in PEERS if backbone == PEER else CONVS:
            for scale in SCALES:
                if name == ModelSpec(backbone, conv, scale).name:
                    return ModelSpec(backbone, conv, scale)
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")


def create_model(name: str, descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM) -> nn.Module:
    """Build an untrained model by name. ``model.config`` records how, for checkpoints.

    ``descriptor_norm`` concerns KDSConv only; a peer ignores it.
    """
    spec = parse_model_name(name)
    if descriptor_norm not in DESCRIPTOR_NORMS:
        raise ValueError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}, got {descriptor_norm!r}")
    if spec.backbone == PEER:
        model = PEERS[spec.conv](spec.scale)
        model.config = {"model": name, "arch": spec.conv, "scale": spec.scale}
        return model
    model = RDN(conv=spec.conv, scale=spec.scale, descriptor_norm=descriptor_norm, **BACKBONES[spec.backbone])
    model.config = {"model": name, "backbone": spec.backbone, "conv": spec.conv, "scale": spec.scale,
                    "descriptor_norm": descriptor_norm}
    return model


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
