"""SCNet-T (Wu et al., "Fully 1x1 Convolutional Network for Lightweight Image Super-Resolution", seed 002).

Every learned layer is a 1x1 convolution; spatial context comes only from a
parameter-free *spatial shift*: the channels are cut into eight equal groups and
each group is moved by one pixel in one of the eight neighbour directions (zero
fill at the border). Modified-SRResNet layout, as the authors release it:

- 1x1 head (3 -> 64), LeakyReLU 0.1;
- 16 residual blocks x + conv1x1(ReLU(shift(conv1x1(x))));
- upsampling: one x2/x3 step, or two x2 steps at x4, each
  bilinear resize -> 1x1 -> LeakyReLU 0.02 -> shift -> 1x1 ("MLP" upsampler,
  the default of the released training configuration) or
  1x1 -> LeakyReLU 0.02 -> shift -> 1x1 to C*s^2 -> PixelShuffle ("pixelshuffle"),
  each step followed by LeakyReLU 0.1;
- 1x1 (64 -> 64), LeakyReLU 0.1, 1x1 (64 -> 3), plus the bilinearly upsampled input.

SCNet-T is the smallest configuration: 64 features, 16 blocks ("D64B16").
Input and output are RGB in [0, 1] with no mean shift, as released.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Published, register_architecture, require_scale
from .parts import upsampling_steps

# (dy, dx) read offsets of the eight channel groups: group g at (y, x) takes its input from (y + dy, x + dx).
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1), (1, -1), (-1, 1), (-1, -1))
UPSAMPLERS = ("mlp", "pixelshuffle")


def _shifted(x: torch.Tensor, shifts: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Group i of the channels at (y, x) takes x's value at (y + dy_i, x + dx_i); zero where that is outside."""
    out = torch.zeros_like(x)
    g, h, w = x.shape[1] // len(shifts), x.shape[2], x.shape[3]
    for i, (dy, dx) in enumerate(shifts):
        rows_out, rows_in = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
        cols_out, cols_in = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        out[:, i * g:(i + 1) * g, rows_out, cols_out] = x[:, i * g:(i + 1) * g, rows_in, cols_in]
    return out


class _SpatialShift(torch.autograd.Function):
    """The shift and its adjoint (the opposite shift), so the backward pass is one copy too: autograd through
    eight slices of a padded tensor zero-filled and copied a full-size tensor per slice (40 % of an iteration)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - autograd signature
        return _shifted(x, SHIFTS)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _shifted(grad, tuple((-dy, -dx) for dy, dx in SHIFTS))


def spatial_shift(x: torch.Tensor) -> torch.Tensor:
    """Move each eighth of the channels one pixel in its own direction, filling with zeros (no parameters)."""
    c = x.shape[1]
    if c % len(SHIFTS):
        raise ValueError(f"spatial shift needs a multiple of {len(SHIFTS)} channels, got {c}")
    return _SpatialShift.apply(x)


class ShiftBlock(nn.Module):
    """x + conv1x1(ReLU(shift(conv1x1(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 1)
        self.conv2 = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(spatial_shift(self.conv1(x))))


class ShiftUpsample(nn.Module):
    """One upsampling step of factor ``factor``, all 1x1 convs plus a shift (see module docstring)."""

    def __init__(self, features: int, factor: int, mode: str) -> None:
        super().__init__()
        if mode not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {mode!r}")
        self.factor, self.mode = factor, mode
        self.conv1 = nn.Conv2d(features, features, 1)
        self.conv2 = nn.Conv2d(features, features * (factor * factor if mode == "pixelshuffle" else 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mlp":
            x = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        x = self.conv2(spatial_shift(F.leaky_relu(self.conv1(x), 0.02)))
        return F.pixel_shuffle(x, self.factor) if self.mode == "pixelshuffle" else x


class SCNet(nn.Module):
    """SCNet at scale 2, 3 or 4 (defaults: SCNet-T, 64 features, 16 blocks): RGB [0, 1] -> RGB [0, 1]."""

    def __init__(self, scale: int, features: int = 64, blocks: int = 16, upsampler: str = "mlp") -> None:
        super().__init__()
        require_scale(scale)
        self.scale = scale
        self.head = nn.Conv2d(3, features, 1)
        self.body = nn.Sequential(*(ShiftBlock(features) for _ in range(blocks)))
        self.upsample = nn.ModuleList(ShiftUpsample(features, f, upsampler) for f in upsampling_steps(scale))
        self.hr_conv = nn.Conv2d(features, features, 1)
        self.tail = nn.Conv2d(features, 3, 1)
        # PyTorch's default initialisation, not the released training's Kaiming x 0.1 on every conv: that one
        # shrinks the signal ~10x per layer (~1e-7 through the whole net), the gradients fall below Adam's eps
        # and the net stays at its bilinear skip for thousands of iterations (measured here: validation PSNR
        # 25.757 dB at both 1,000 and 2,000 iterations of the zoo recipe). Its 300k-iteration schedule
        # outgrows that; a 6,000-iteration budget does not. Loading released weights is unaffected.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(F.leaky_relu(self.head(x), 0.1))
        for step in self.upsample:
            out = F.leaky_relu(step(out), 0.1)
        out = self.tail(F.leaky_relu(self.hr_conv(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def published_key(name: str) -> str | None:
    """This module's name for a tensor of the authors' BasicSR state dict (``params``); None if not in the layout.

    No released SCNet weights are at hand here, so this mapping is checked only against the published
    code's layout (``conv_first``, ``body.N.conv1/2``, ``upconvN.up_layer.K``, ``conv_hr``, ``conv_last``),
    for both upsamplers.
    """
    fixed = {"conv_first": "head", "conv_hr": "hr_conv", "conv_last": "tail"}
    m = re.fullmatch(r"(conv_first|conv_hr|conv_last)\.(weight|bias)", name)
    if m:
        return f"{fixed[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"body\.(\d+)\.(conv[12])\.(weight|bias)", name)
    if m:
        return name
    # up_layer indices: MLP (Upsample, conv, act, shift, conv) -> 1, 4; PixelShuffle (conv, act, shift, conv) -> 0, 3.
    m = re.fullmatch(r"upconv([12])\.up_layer\.([0134])\.(weight|bias)", name)
    if m:
        conv = {"0": "conv1", "1": "conv1", "3": "conv2", "4": "conv2"}[m.group(2)]
        return f"upsample.{int(m.group(1)) - 1}.{conv}.{m.group(3)}"
    return None


def published_options(names: Iterable[str]) -> dict[str, str]:
    """The upsampler a release was trained with, read from its tensor names: the PixelShuffle one's convs are
    ``up_layer.0`` and ``.3`` (nothing comes before them), the MLP one's ``.1`` and ``.4`` (after its bilinear
    resize). ValueError for a file with both."""
    layer = re.compile(r"upconv[12]\.up_layer\.([0134])\.(weight|bias)")
    found = {m.group(1) for name in names if (m := layer.fullmatch(name))}
    if found & {"0", "3"} and found & {"1", "4"}:
        raise ValueError("its upsampling layers mix the PixelShuffle (up_layer.0, .3) and MLP (up_layer.1, .4) "
                         "layouts")
    return {"upsampler": "pixelshuffle" if found & {"0", "3"} else "mlp"}


# One entry: models scnet-t-x2 .. scnet-t-x4, MLP upsampler unless a checkpoint records the PixelShuffle one
# (the authors release x4 weights of both). Not selected by default in the app: several times the CPU time of a
# tiny model.
register_architecture("scnet-t", lambda scale, upsampler="mlp": SCNet(scale, upsampler=upsampler), label="SCNet-T",
                      order=120, default=False, options={"upsampler": "mlp"},
                      published=Published("Wu et al., Fully 1x1 convolutional network for lightweight image "
                                          "super-resolution (MIR 2024)", "github.com/Aitical/SCNet", published_key,
                                          published_options))
