"""LESRCNN (Tian et al., "Lightweight image super-resolution with enhanced CNN", seed 003).

Three blocks, as the seed's slides describe them:

- IEEB (information extraction and enhancement): a 3x3 head conv, then eight
  pairs of (3x3 conv + ReLU, 1x1 conv), each pair added to the running sum with
  a ReLU after the sum (post-activation residuals). All convs here have no bias.
- RB (reconstruction): one sub-pixel upsampler (conv + PixelShuffle; two x2
  steps at x4), shared: it upsamples both the IEEB output and the ReLU'd head
  features, and O_RB = ReLU(S(O_1) + S(O_17)).
- IRB (information refinement): four 3x3 conv + ReLU layers and a 3x3 conv to
  RGB at the high resolution.

The released network works on RGB in [0, 1] with a DIV2K mean shift inside
(a fixed 1x1 conv subtracting (0.4488, 0.4371, 0.4040) first and adding it back
last). Those two frozen layers stay in the module, as in the released state
dicts, so the parameter count is what the released files hold: 774,040 at x4,
of which 24 (the two 3x3 identities and their biases) are frozen.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Published, register_architecture, require_scale
from .parts import mean_shift, subpixel_upsampler


class IEEBPair(nn.Module):
    """One enhancement step: h -> ReLU(h + conv1x1(ReLU(conv3x3(h))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(features, features, 1, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h + self.conv1(F.relu(self.conv3(h))))


class LESRCNN(nn.Module):
    """LESRCNN at scale 2, 3 or 4: RGB in [0, 1] -> RGB in [0, 1]."""

    def __init__(self, scale: int, features: int = 64, pairs: int = 8, refine_layers: int = 4) -> None:
        super().__init__()
        require_scale(scale)
        self.scale = scale
        self.mean_in = mean_shift(-1.0)
        self.mean_out = mean_shift(+1.0)
        self.head = nn.Conv2d(3, features, 3, padding=1, bias=False)
        self.ieeb = nn.ModuleList(IEEBPair(features) for _ in range(pairs))
        self.upsample = subpixel_upsampler(features, scale)
        refine: list[nn.Module] = []
        for _ in range(refine_layers):
            refine += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.ReLU()]
        self.irb = nn.Sequential(*refine)
        self.tail = nn.Conv2d(features, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = F.relu(self.head(self.mean_in(x)))
        h = head
        for pair in self.ieeb:
            h = pair(h)
        # RB: the same upsampler serves the deep (IEEB) and the shallow (head) features.
        h = F.relu(self.upsample(h) + self.upsample(head))
        return self.mean_out(self.tail(self.irb(h)))


# Released tensor names (hellloxiaotian/LESRCNN, x2/x3/x4 .pth) -> this module's names.
def published_key(name: str, pairs: int = 8) -> str | None:
    """This module's name for a tensor of the released state dict; None for a name the layout does not have."""
    fixed = {"sub_mean.shifter.weight": "mean_in.weight", "sub_mean.shifter.bias": "mean_in.bias",
             "add_mean.shifter.weight": "mean_out.weight", "add_mean.shifter.bias": "mean_out.bias",
             "conv1.0.weight": "head.weight", "conv18.0.weight": "tail.weight"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"conv(\d+)\.0\.weight", name)
    if m and 2 <= int(m.group(1)) <= 2 * pairs + 1:
        # conv2k is the 3x3 of pair k-1, conv(2k+1) its 1x1 (conv2..conv17 for eight pairs).
        i = int(m.group(1))
        return f"ieeb.{(i - 2) // 2}.{'conv3' if i % 2 == 0 else 'conv1'}.weight"
    m = re.fullmatch(r"conv17_([1-9])\.0\.weight", name)
    if m:
        return f"irb.{2 * (int(m.group(1)) - 1)}.weight"
    m = re.fullmatch(r"upsample\.up\.body\.(\d+)\.(weight|bias)", name)
    if m:
        return f"upsample.{m.group(1)}.{m.group(2)}"
    return None


# One entry: models lesrcnn-x2 .. lesrcnn-x4. Not selected by default in the app: several times the CPU time of a tiny model.
register_architecture("lesrcnn", lambda scale: LESRCNN(scale), label="LESRCNN", order=100, default=False,
                      published=Published("Tian et al., Lightweight image super-resolution with enhanced CNN (KBS 2020)",
                                          "github.com/hellloxiaotian/LESRCNN", published_key))
