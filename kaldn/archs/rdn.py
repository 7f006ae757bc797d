"""RDN (Zhang et al., CVPR 2018) with the convolution inside each residual dense block as a parameter.

Paper 001 builds RDN, DW-RDN and ALD-RDN by replacing the 3x3 convs inside each
RDB and nothing else; ``conv`` here is that replacement: a factory of the dense layer's convolution
(:data:`ConvFactory`; :func:`build_rdn` makes it from a conv variant registered in ``kaldn/layers.py``).
Everything outside the RDBs stays a standard conv.

Registered as the family ``rdn``: models ``{backbone}-{conv}-x{scale}`` over the presets in
``BACKBONES`` and every registered conv variant.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DEFAULT_DESCRIPTOR_NORM, DESCRIPTOR_NORMS, make_conv
from ..registry import register_architecture, require_scale
from .parts import subpixel_upsampler


# The convolution of a dense layer: (channels in, channels out) -> a layer. Paper 001's variants differ here only.
ConvFactory = Callable[[int, int], nn.Module]


class ResidualDenseBlock(nn.Module):
    """C densely connected layers, 1x1 local feature fusion, local residual."""

    def __init__(self, conv: ConvFactory, num_features: int, growth: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(conv(num_features + c * growth, growth) for c in range(num_layers))
        self.fusion = nn.Conv2d(num_features + num_layers * growth, num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fusion(torch.cat(features, dim=1))


class RDN(nn.Module):
    """Shallow features -> D RDBs -> global feature fusion -> sub-pixel upsampling.

    ``upsampler="rdn"`` is RDN's own (conv to G0*s^2, PixelShuffle, x4 as two x2
    steps, then conv to RGB); ``"light"`` is one conv to 3*s^2 and PixelShuffle
    (ESPCN style), cheap enough for the CPU-sized ``tiny`` preset.
    ``bicubic_skip`` adds the bicubically upsampled input so the network learns
    only the residual (measured here: +0.46 dB at a 12-minute CPU budget, together
    with Adam at 1e-3; DESIGN.md). That
    skip uses torch's bicubic, not ``imresize``: it is part of the network.
    """

    def __init__(self, conv: ConvFactory, scale: int = 4, num_features: int = 64, growth: int = 64,
                 num_blocks: int = 16, num_layers: int = 8, upsampler: str = "rdn",
                 bicubic_skip: bool = False) -> None:
        super().__init__()
        require_scale(scale)
        self.scale = scale
        self.bicubic_skip = bicubic_skip
        g0 = num_features
        self.shallow1 = nn.Conv2d(3, g0, 3, padding=1)
        self.shallow2 = nn.Conv2d(g0, g0, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualDenseBlock(conv, g0, growth, num_layers) for _ in range(num_blocks))
        self.global_fusion = nn.Sequential(nn.Conv2d(num_blocks * g0, g0, 1), nn.Conv2d(g0, g0, 3, padding=1))
        if upsampler == "light":
            self.upsample = nn.Sequential(nn.Conv2d(g0, 3 * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))
        elif upsampler == "rdn":
            self.upsample = nn.Sequential(*subpixel_upsampler(g0, scale), nn.Conv2d(g0, 3, 3, padding=1))
        else:
            raise ValueError(f"upsampler must be 'rdn' or 'light', got {upsampler!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) RGB in [0, 1] -> (N, 3, sH, sW)."""
        f_minus1 = self.shallow1(x)
        f = self.shallow2(f_minus1)
        block_outputs = []
        for block in self.blocks:
            f = block(f)
            block_outputs.append(f)
        f = self.global_fusion(torch.cat(block_outputs, dim=1)) + f_minus1
        out = self.upsample(f)
        if self.bicubic_skip:
            out = out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


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
DEFAULT_BACKBONE = "tiny"  # the app's models and the shipped zoo


def build_rdn(scale: int, conv: str, descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM, *, reduction: int,
              **preset: Any) -> RDN:
    """The RDN of a registered conv variant (``conv``: its name) with the attention options it takes; ``reduction``
    and the rest come from a :data:`BACKBONES` preset."""
    if descriptor_norm not in DESCRIPTOR_NORMS:
        raise ValueError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}, got {descriptor_norm!r}")
    layer = functools.partial(make_conv, conv, reduction=reduction, descriptor_norm=descriptor_norm)
    return RDN(conv=layer, scale=scale, **preset)


# The long-trained small KDSConv is the app's showcase: ticked beside the tiny variants wherever it is shipped.
register_architecture("rdn", build_rdn, label="RDN", order=0, options={"descriptor_norm": DEFAULT_DESCRIPTOR_NORM},
                      backbones=BACKBONES, default_backbone=DEFAULT_BACKBONE, featured=("small-kdsconv-det",))
