"""Parts several architectures share: the DIV2K mean shift of the EDSR lineage, the sub-pixel upsampler and its
x4-as-two-x2 steps."""

from __future__ import annotations

import torch
from torch import nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # RGB mean of DIV2K's training images, in [0, 1]


def mean_shift(sign: float, pixel_range: float = 1.0, trainable: bool = False) -> nn.Conv2d:
    """A 1x1 conv adding ``sign`` x the DIV2K mean (in ``pixel_range`` units) per channel. A conv, not a constant,
    because the released state dicts hold its weights; frozen unless the published network trained it."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.copy_(sign * torch.tensor([pixel_range * m for m in DIV2K_MEAN]))
    conv.requires_grad_(trainable)
    return conv


def upsampling_steps(scale: int) -> list[int]:
    """x4 as two x2 steps, x2 and x3 in one."""
    return [2, 2] if scale == 4 else [scale]


def subpixel_upsampler(features: int, scale: int) -> nn.Sequential:
    """Conv to features * s^2 then PixelShuffle(s) per step (with bias, no activation)."""
    modules: list[nn.Module] = []
    for s in upsampling_steps(scale):
        modules += [nn.Conv2d(features, features * s * s, 3, padding=1), nn.PixelShuffle(s)]
    return nn.Sequential(*modules)
