"""FDIWN (Gao et al., "Feature Distillation Interaction Weighting Network", AAAI 2022, seed 004).

Structure, from the paper and the released tensor layout (IVIPLab/FDIWN):

- a 3x3 head to 24 features; three feature shuffle weighted groups (FSWG) whose
  weights are each used twice along a wide-residual distillation connection
  (group 1 twice in a row, then 2, 3, 2, 3, with running sums; see ``forward``);
  the sum of all six group outputs goes through a 3x3 conv and a sub-pixel
  upsampler, plus a second, shallow path (3x3 conv + sub-pixel upsampler) from
  the input image;
- an FSWG holds three wide-residual distillation interaction blocks (WDIB), a
  3x3 conv, two grouped 3x3 convs over channel-shuffled concatenations, and a
  WIRW unit on its input, mixed by two learned scalars;
- a WDIB splits features into distilled and remaining halves, runs two
  interacting branches (WIRW units, WCRW units on the remaining half, mean/std
  channel coefficients, sigmoid gates from the distilled halves) and fuses
  them with a self-calibrating pair (a unit and a sigmoid-gated 1x1 conv);
- every unit is "residual weighting": scale_body * attention(body(x)) +
  scale_skip * skip(x), its body three weight-normalised convs (1x1 wide,
  ReLU, 1x1 narrow, 3x3) and its attention a shuffle attention (channel half
  gated by pooled statistics, spatial half by group norm, channel shuffle).

The released networks expect RGB in [0, 255] and carry a learned 1x1 "mean
shift" conv at both ends (initialised to the DIV2K mean, trained along with the
rest); ``FDIWN.forward`` takes and returns [0, 1] and scales by 255 itself.

The x2 and x3 networks differ from x4 in unit widths, in the tail width and in
feeding the shallow path the raw image instead of the mean-shifted one; the
``WIDTHS`` table below records each published configuration.

Weight normalisation is kept (``torch.nn.utils.parametrizations.weight_norm``,
magnitude ``original0`` = g and direction ``original1`` = v), so training works as
published and the parameter count is what the released state dicts hold, g and v
both counted: 663,848 at x4. ``kaldn.inference.prepare_model`` folds g and v into
plain weights for inference.

Global statistics (average pooling, standard deviation, group norm) make the
output depend on the whole input: a tiled forward pass differs slightly from a
whole-image one (``global_context`` below tells the evaluation to run whole images).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Published, register_architecture, require_scale
from .parts import mean_shift
from torch.nn.utils.parametrizations import weight_norm

FEATURES = 24            # 3 * 64 // 8 in the published code's terms
ATTENTION_GROUPS = 6
LEAKY_SLOPE = 0.05


@dataclass(frozen=True)
class Widths:
    """Hidden widths of the three unit kinds, the tail width, and where the shallow path starts."""
    wirw_hidden: int       # WIRW: 24 -> hidden -> 12 -> 24
    wcrw_hidden: int       # WCRW: 12 -> hidden -> 12 -> 24 (3x3 conv on the skip)
    fuse_hidden: int       # fusion unit: 48 -> hidden -> 24 -> 24 (3x3 conv on the skip)
    tail: int              # features before the sub-pixel convs
    shallow_from_shifted: bool


# The released x2/x3 networks share one configuration, x4 another.
WIDTHS = {
    2: Widths(wirw_hidden=48, wcrw_hidden=48, fuse_hidden=96, tail=64, shallow_from_shifted=False),
    3: Widths(wirw_hidden=48, wcrw_hidden=48, fuse_hidden=96, tail=64, shallow_from_shifted=False),
    4: Widths(wirw_hidden=60, wcrw_hidden=54, fuse_hidden=108, tail=32, shallow_from_shifted=True),
}


class ShuffleAttention(nn.Module):
    """Per group of channels: one half gated by its spatial mean, the other by its group norm; then shuffled."""

    def __init__(self, channels: int, groups: int = ATTENTION_GROUPS) -> None:
        super().__init__()
        if channels % (2 * groups):
            raise ValueError(f"channels ({channels}) must be a multiple of 2 * groups ({2 * groups})")
        self.groups = groups
        half = channels // (2 * groups)
        self.channel_weight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.channel_bias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.spatial_weight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.spatial_bias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.norm = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        xc, xs = x.chunk(2, dim=1)
        # Under bf16 autocast the fp32 parameters (and group norm, which autocast runs in fp32) would turn every
        # activation back to fp32, and each next conv would convert it again: ~1.2x the CPU time per iteration.
        dtype = x.dtype
        gate = torch.sigmoid(self.channel_weight * xc.mean(dim=(2, 3), keepdim=True) + self.channel_bias)
        xc = xc * gate.to(dtype)
        xs = xs * torch.sigmoid(self.spatial_weight.to(dtype) * self.norm(xs).to(dtype) + self.spatial_bias.to(dtype))
        out = torch.cat([xc, xs], dim=1).reshape(b, c, h, w)
        return channel_shuffle(out, 2)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g * k, H, W): channel j * k + i moves to i * g + j."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ResidualWeighting(nn.Module):
    """scale_body * attention(body(x)) + scale_skip * skip(x); skip is a 3x3 conv when widths differ.

    body: weight-normalised 1x1 (in -> hidden), ReLU, 1x1 (hidden -> mid), 3x3 (mid -> out).
    With in == out it is the paper's WIRW (identity skip), otherwise WCRW (conv skip).
    """

    def __init__(self, in_channels: int, hidden: int, mid: int, out_channels: int) -> None:
        super().__init__()
        self.expand = weight_norm(nn.Conv2d(in_channels, hidden, 1))
        self.reduce = weight_norm(nn.Conv2d(hidden, mid, 1))
        self.spatial = weight_norm(nn.Conv2d(mid, out_channels, 3, padding=1))
        self.attention = ShuffleAttention(out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 3, padding=1) if in_channels != out_channels else None
        self.scale_body = nn.Parameter(torch.ones(1))
        self.scale_skip = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.attention(self.spatial(self.reduce(F.relu(self.expand(x)))))
        skip = x if self.skip is None else self.skip(x)
        return self.scale_body.to(body.dtype) * body + self.scale_skip.to(skip.dtype) * skip  # dtype: see attention


class ChannelCoefficient(nn.Module):
    """Per-channel weights in (0.5, 1): mean of two squeeze-excite gates, one on spatial means, one on stds.

    Each gate is 1x1 down (C -> C/8), ReLU, 1x1 up, ReLU, sigmoid: the ReLU before the
    sigmoid is the published layout's and keeps every weight at 0.5 or more.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.mean_down = nn.Conv2d(channels, channels // reduction, 1)
        self.mean_up = nn.Conv2d(channels // reduction, channels, 1)
        self.std_down = nn.Conv2d(channels, channels // reduction, 1)
        self.std_up = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
        a = torch.sigmoid(F.relu(self.mean_up(F.relu(self.mean_down(mean)))))
        b = torch.sigmoid(F.relu(self.std_up(F.relu(self.std_down(std)))))
        return (a + b) / 2


class WDIB(nn.Module):
    """Wide-residual distillation interaction block: two interacting branches a and b, fused at the end."""

    def __init__(self, widths: Widths, features: int = FEATURES) -> None:
        super().__init__()
        half = features // 2
        self.half = half
        # 0, 1: entry units of branches a and b; 2, 3: their exit units.
        self.wirw = nn.ModuleList(ResidualWeighting(features, widths.wirw_hidden, half, features) for _ in range(4))
        self.wcrw = nn.ModuleList(ResidualWeighting(half, widths.wcrw_hidden, half, features) for _ in range(2))
        self.coef_a1, self.coef_b1 = ChannelCoefficient(features), ChannelCoefficient(features)
        self.coef_a2, self.coef_b2 = ChannelCoefficient(features), ChannelCoefficient(features)
        self.distill_b = nn.Conv2d(half, features, 3, padding=1, bias=False)
        self.distill_a = nn.Conv2d(half, features, 3, padding=1, bias=False)
        self.scale_a = nn.Parameter(torch.ones(1))
        self.scale_b = nn.Parameter(torch.ones(1))
        self.fuse_unit = ResidualWeighting(2 * features, widths.fuse_hidden, features, features)
        self.fuse_gate = nn.Conv2d(2 * features, features, 1, bias=False)
        self.attention = ShuffleAttention(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, LEAKY_SLOPE)  # noqa: E731
        distilled_a, remaining = act(self.wirw[0](x)).split(self.half, dim=1)
        a = self.wcrw[0](remaining)
        b1 = self.coef_a1(a) * a + x           # into branch b
        a1 = self.coef_b1(x) * x + a           # stays in branch a
        distilled_b, remaining = act(self.wirw[1](b1)).split(self.half, dim=1)
        b = self.wcrw[1](remaining)
        b2 = (self.coef_a2(a1) * a1 + b) * torch.sigmoid(self.distill_b(distilled_b))
        a2 = (self.coef_b2(b) * b + a1) * torch.sigmoid(self.distill_a(distilled_a))
        a_out, b_out = self.wirw[2](a2), self.wirw[3](b2)
        both = torch.cat([self.scale_a.to(a_out.dtype) * a_out, self.scale_b.to(b_out.dtype) * b_out], dim=1)
        fused = self.fuse_unit(both) + torch.sigmoid(self.fuse_gate(both)) * b_out
        return self.attention(fused + x)


class FSWG(nn.Module):
    """Feature shuffle weighted group: three WDIBs, shuffled grouped-conv fusion, a WIRW on the input."""

    def __init__(self, widths: Widths, features: int = FEATURES) -> None:
        super().__init__()
        self.wdib = nn.ModuleList(WDIB(widths, features) for _ in range(3))
        self.conv = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.shuffle_fuse1 = nn.Conv2d(2 * features, features, 3, padding=1, groups=4, bias=False)
        self.shuffle_fuse2 = nn.Conv2d(2 * features, features, 3, padding=1, groups=4, bias=False)
        self.wirw = ResidualWeighting(features, widths.wirw_hidden, features // 2, features)
        self.scale_out = nn.Parameter(torch.full((1,), 0.5))
        self.scale_skip = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.wdib[0](x)
        out2 = self.wdib[1](out1)
        out3 = self.wdib[2](out2 + self.conv(out1))
        fused = self.shuffle_fuse1(channel_shuffle(torch.cat([out1, out2], dim=1), 4))
        fused = self.shuffle_fuse2(channel_shuffle(torch.cat([fused, out3], dim=1), 4))
        skip = self.wirw(x)
        return self.scale_out.to(fused.dtype) * (fused + out3) + self.scale_skip.to(skip.dtype) * skip


class FDIWN(nn.Module):
    """FDIWN at scale 2, 3 or 4: RGB in [0, 1] -> RGB in [0, 1] (the 255 scaling is inside)."""

    # Pooled statistics over the whole input: evaluate whole images, not tiles.
    global_context = True

    def __init__(self, scale: int, widths: Widths | None = None) -> None:
        super().__init__()
        require_scale(scale)
        self.scale = scale
        self.widths = widths or WIDTHS[scale]
        # The published network works in [0, 255] and trains its mean shifts, as they were.
        self.mean_in = mean_shift(-1.0, pixel_range=255.0, trainable=True)
        self.mean_out = mean_shift(+1.0, pixel_range=255.0, trainable=True)
        self.head = nn.Conv2d(3, FEATURES, 3, padding=1)
        self.fswg = nn.ModuleList(FSWG(self.widths) for _ in range(3))
        tail = self.widths.tail
        self.tail_conv = nn.Conv2d(FEATURES, tail, 3, padding=1, bias=False)
        self.tail_up = nn.Sequential(nn.Conv2d(tail, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.shallow_conv = nn.Conv2d(3, tail, 3, padding=1)
        self.shallow_up = nn.Sequential(nn.Conv2d(tail, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 255
        shifted = self.mean_in(x)
        g1, g2, g3 = self.fswg
        y = g1(self.head(shifted))
        # Wide-residual distillation connection: groups 1, 2, 3, 2, 3 on running sums (weights shared).
        up1 = g1(y)
        d1 = y + up1
        up2 = g2(d1)
        d2 = d1 + up2
        up3 = g3(d2)
        d3 = d2 + up3
        up4 = g2(d3)
        d5 = g3(d3 + up4)
        deep = self.tail_up(self.tail_conv(y + up1 + up2 + up3 + up4 + d5))
        shallow = self.shallow_up(self.shallow_conv(shifted if self.widths.shallow_from_shifted else x))
        return self.mean_out(deep + shallow) / 255


# Released tensor names (IVIPLab/FDIWN model_best.pt) -> this module's names, as ordered rewrites.
_UNIT_PARTS = {"res_scale.scale": "scale_body", "x_scale.scale": "scale_skip", "conv.": "skip.",
               "body.0.": "expand.", "body.2.": "reduce.", "body.3.": "spatial.", "SAlayer.": "attention."}
_ATTENTION = {"cweight": "channel_weight", "cbias": "channel_bias", "sweight": "spatial_weight",
              "sbias": "spatial_bias", "gn.weight": "norm.weight", "gn.bias": "norm.bias"}
_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_COEF = {"upper_branch.1.": "mean_down.", "upper_branch.3.": "mean_up.",
         "lower_branch.0.": "std_down.", "lower_branch.2.": "std_up."}
_WDIB_PARTS = {"srb1.": "wirw.0.", "srb2.": "wirw.1.", "srb3.": "wirw.2.", "srb4.": "wirw.3.",
               "rb1.": "wcrw.0.", "rb2.": "wcrw.1.", "fuse1.": "fuse_unit."}


def _unit_rest(rest: str) -> str | None:
    """A unit's tensor (after its prefix) in this module's names."""
    for old, new in _UNIT_PARTS.items():
        if rest.startswith(old):
            tail = rest[len(old):]
            if old == "SAlayer.":
                return new + _ATTENTION[tail] if tail in _ATTENTION else None
            if old in ("res_scale.scale", "x_scale.scale"):
                return new if tail == "" else None
            for wn_old, wn_new in _WEIGHT_NORM.items():
                if tail == wn_old:
                    return new + wn_new
            return new + tail if tail in ("weight", "bias") else None
    return None


def _wdib_rest(rest: str) -> str | None:
    for old, new in _WDIB_PARTS.items():
        if rest.startswith(old):
            inner = _unit_rest(rest[len(old):])
            return new + inner if inner else None
    m = re.fullmatch(r"([AB])([12])_coffconv\.(.+)", rest)
    if m:
        for old, new in _COEF.items():
            if m.group(3).startswith(old) and m.group(3)[len(old):] in ("weight", "bias"):
                return f"coef_{m.group(1).lower()}{m.group(2)}.{new}{m.group(3)[len(old):]}"
        return None
    simple = {"conv_distilled1.weight": "distill_b.weight", "conv_distilled2.weight": "distill_a.weight",
              "scale_x1.scale": "scale_a", "scale_x2.scale": "scale_b", "fuse2.weight": "fuse_gate.weight"}
    if rest in simple:
        return simple[rest]
    if rest.startswith("SAlayer.") and rest[len("SAlayer."):] in _ATTENTION:
        return "attention." + _ATTENTION[rest[len("SAlayer."):]]
    return None


def published_key(name: str) -> str | None:
    """This module's name for a tensor of the released state dict; None for a name the layout does not have."""
    top = {"Sub_mean.weight": "mean_in.weight", "Sub_mean.bias": "mean_in.bias",
           "Add_mean.weight": "mean_out.weight", "Add_mean.bias": "mean_out.bias",
           "head.weight": "head.weight", "head.bias": "head.bias",
           "conv1.weight": "tail_conv.weight", "UP1.0.weight": "tail_up.0.weight", "UP1.0.bias": "tail_up.0.bias",
           "conv2.weight": "shallow_conv.weight", "conv2.bias": "shallow_conv.bias",
           "UP2.0.weight": "shallow_up.0.weight", "UP2.0.bias": "shallow_up.0.bias"}
    if name in top:
        return top[name]
    m = re.fullmatch(r"Li([123])\.(.+)", name)
    if not m:
        return None
    group, rest = f"fswg.{int(m.group(1)) - 1}.", m.group(2)
    m = re.fullmatch(r"MY([123])\.(.+)", rest)
    if m:
        inner = _wdib_rest(m.group(2))
        return f"{group}wdib.{int(m.group(1)) - 1}.{inner}" if inner else None
    simple = {"conv.weight": "conv.weight", "conv1.weight": "shuffle_fuse1.weight",
              "conv2.weight": "shuffle_fuse2.weight", "scale_x.scale": "scale_out", "scale_res.scale": "scale_skip"}
    if rest in simple:
        return group + simple[rest]
    if rest.startswith("rb1."):
        inner = _unit_rest(rest[len("rb1."):])
        return f"{group}wirw.{inner}" if inner else None
    return None


# One entry: models fdiwn-x2 .. fdiwn-x4. Not selected by default in the app (no bundled weights yet; the slowest peer).
register_architecture("fdiwn", lambda scale: FDIWN(scale), label="FDIWN", order=110, default=False,
                      published=Published("Gao et al., Feature Distillation Interaction Weighting Network for "
                                          "lightweight image super-resolution (AAAI 2022)",
                                          "github.com/IVIPLab/FDIWN", published_key))
