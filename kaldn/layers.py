"""The convolution variants, side by side.

Every variant maps ``in_channels -> out_channels`` with a k x k receptive field
and ends in a ReLU, so the RDN backbone can swap one for another and a
comparison changes nothing but the convolution:

=================  ==========================================================
``StandardConv``    conv k x k -> ReLU                        (RDN, the reference)
``DSConv``          depthwise k x k -> ReLU -> pointwise 1x1 -> ReLU
``LinearDSConv``    depthwise k x k -> pointwise 1x1 -> ReLU  (the "hasty ReLU" removed)
``KDSConv``         LinearDSConv whose depthwise kernel W_c is re-weighted
                    W'_c = (1 + a_c) W_c by a kernel attention a computed
                    from the kernels themselves (never from the input)
``FixedScaleDSConv`` LinearDSConv with W'_c = 1.5 W_c: the control for KDSConv
=================  ==========================================================

Kernel attention (paper 000's injection into the kernel; paper 001 eqs. 3-6 give the gate):

1. kernel pooling    z_c = pool(W_c)            pool in {det, avg, max (signed: the largest weight)}
2. normalisation     z   = norm(z)              see ``DESCRIPTOR_NORMS``
3. gate              a   = sigmoid(W_I ReLU(W_D z)),  W_D: C -> C/r, W_I: C/r -> C (bias-free here;
                     paper 001's eq. 3 has biases)
4. injection         W'_c = (1 + a_c) W_c       (paper 001 scales the depthwise output instead,
                     (1 + r_c) f_c: the same but for the depthwise bias, which is not scaled here)

Because ``a`` depends only on weights, ``fuse()`` bakes W' into a plain
``LinearDSConv`` after training: same output, LinearDSConv's cost.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Claim, conv_entry, register_conv

KERNEL_POOLS = ("det", "avg", "max")

# Why normalise: trained 3x3 depthwise kernels have |det| ~ 0.01, so a raw
# determinant feeds the gate ~0 and a ~ sigmoid(0) = 0.5 everywhere; the
# "attention" collapses to a constant 1.5x scale (DESIGN.md, "Measured here").
DESCRIPTOR_NORMS = ("none", "standardize", "unit-kernel")
DEFAULT_DESCRIPTOR_NORM = "standardize"

# A gate that sees almost nothing (raw determinants, or every gate ReLU off) outputs sigmoid(0) = 0.5, so the
# control scales by 1.5.
FIXED_KERNEL_SCALE = 1.5


def kernel_determinant(kernels: torch.Tensor) -> torch.Tensor:
    """Determinant of each k x k kernel; ``kernels`` has shape (C, k, k).

    3x3 uses the rule of Sarrus (as written after paper 001's eq. 2), other sizes ``torch.linalg.det``.
    """
    if kernels.shape[-2:] == (3, 3):
        a, b, c = kernels[:, 0, 0], kernels[:, 0, 1], kernels[:, 0, 2]
        d, e, f = kernels[:, 1, 0], kernels[:, 1, 1], kernels[:, 1, 2]
        g, h, i = kernels[:, 2, 0], kernels[:, 2, 1], kernels[:, 2, 2]
        return a * e * i + b * f * g + c * d * h - c * e * g - b * d * i - a * f * h
    return torch.linalg.det(kernels)


def pool_kernels(kernels: torch.Tensor, kernel_pool: str) -> torch.Tensor:
    """Pool each depthwise kernel (C, k, k) to one number: shape (C,)."""
    if kernel_pool == "det":
        return kernel_determinant(kernels)
    if kernel_pool == "avg":
        return kernels.mean(dim=(-2, -1))
    if kernel_pool == "max":
        return kernels.amax(dim=(-2, -1))
    raise ValueError(f"kernel_pool must be one of {KERNEL_POOLS}, got {kernel_pool!r}")


def kernel_descriptor(kernels: torch.Tensor, kernel_pool: str, descriptor_norm: str) -> torch.Tensor:
    """Pooled, normalised descriptor z (C,) of depthwise kernels (C, k, k)."""
    if descriptor_norm == "unit-kernel":
        # Pool the kernel scaled to unit Frobenius norm: scale-free shape.
        kernels = kernels / kernels.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]
    z = pool_kernels(kernels, kernel_pool)
    if descriptor_norm == "standardize":
        # Standardise across channels: the gate sees which kernels stand out.
        z = (z - z.mean()) / (z.std(unbiased=False) + 1e-8)
    elif descriptor_norm not in ("none", "unit-kernel"):
        raise ValueError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}, got {descriptor_norm!r}")
    return z


class StandardConv(nn.Module):
    """conv k x k -> ReLU: the standard RDN layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class DSConv(nn.Module):
    """depthwise k x k -> ReLU -> pointwise 1x1 -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size,
                                   padding=kernel_size // 2, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(F.relu(self.depthwise(x))))  # the first ReLU is the "hasty" one


class LinearDSConv(DSConv):
    """depthwise k x k -> pointwise 1x1 -> ReLU: DSConv minus the hasty ReLU.

    Same parameters as DSConv (it inherits them); only ``forward`` differs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


class KDSConv(LinearDSConv):
    """LinearDSConv with kernel attention injected into the depthwise kernel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 kernel_pool: str = "det", reduction: int = 32,
                 descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        if kernel_pool not in KERNEL_POOLS:
            raise ValueError(f"kernel_pool must be one of {KERNEL_POOLS}, got {kernel_pool!r}")
        if descriptor_norm not in DESCRIPTOR_NORMS:
            raise ValueError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}, got {descriptor_norm!r}")
        self.kernel_pool = kernel_pool
        self.descriptor_norm = descriptor_norm
        hidden = max(1, in_channels // reduction)
        # Bias-free gate: with r = 32 this is exactly paper 001's Table IV surplus.
        self.gate_down = nn.Linear(in_channels, hidden, bias=False)  # W_D
        self.gate_up = nn.Linear(hidden, in_channels, bias=False)    # W_I

    def descriptor(self) -> torch.Tensor:
        """z: one pooled, normalised number per depthwise kernel."""
        return kernel_descriptor(self.depthwise.weight[:, 0], self.kernel_pool, self.descriptor_norm)

    def attention(self) -> torch.Tensor:
        """a in (0, 1), one value per channel; the kernel is scaled by 1 + a."""
        return torch.sigmoid(self.gate_up(F.relu(self.gate_down(self.descriptor()))))

    def injected_kernel(self) -> torch.Tensor:
        return self.depthwise.weight * (1 + self.attention())[:, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.injected_kernel(), self.depthwise.bias,
                     padding=self.depthwise.padding, groups=self.depthwise.groups)
        return F.relu(self.pointwise(x))

    @torch.no_grad()
    def fuse(self) -> LinearDSConv:
        """A LinearDSConv with W' baked in: same output, no attention parameters."""
        return _linear_with_kernel(self, self.injected_kernel())


class FixedScaleDSConv(LinearDSConv):
    """KDSConv's control: the attention replaced by the constant 1 + a = 1.5.

    Shows what a learned attention adds over a plain re-scaling of the kernel
    (which only changes how fast the depthwise weights move in training).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 scale: float = FIXED_KERNEL_SCALE) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.depthwise.weight * self.scale, self.depthwise.bias,
                     padding=self.depthwise.padding, groups=self.depthwise.groups)
        return F.relu(self.pointwise(x))

    @torch.no_grad()
    def fuse(self) -> LinearDSConv:
        return _linear_with_kernel(self, self.depthwise.weight * self.scale)


def _linear_with_kernel(source: LinearDSConv, depthwise_kernel: torch.Tensor) -> LinearDSConv:
    in_channels, out_channels = source.depthwise.in_channels, source.pointwise.out_channels
    fused = LinearDSConv(in_channels, out_channels, source.depthwise.kernel_size[0])
    fused.to(device=depthwise_kernel.device, dtype=depthwise_kernel.dtype)
    fused.depthwise.weight.copy_(depthwise_kernel)
    fused.depthwise.bias.copy_(source.depthwise.bias)
    fused.pointwise.load_state_dict(source.pointwise.state_dict())
    return fused


def fuse(model: nn.Module) -> nn.Module:
    """Replace every KDSConv / FixedScaleDSConv in ``model`` by its fused LinearDSConv (in place)."""
    for name, child in model.named_children():
        if isinstance(child, (KDSConv, FixedScaleDSConv)):
            setattr(model, name, child.fuse())
        else:
            fuse(child)
    return model


# The variants, registered once: model names, the app's choices, the evaluation claims, the benchmarks and
# the tests all read this list (kaldn/registry.py). Order is the display order.
ATTENTION_OPTIONS = ("reduction", "descriptor_norm")

register_conv("dsconv", DSConv, label="DSConv", order=10, depthwise=True)
register_conv("ldsconv", LinearDSConv, label="Linear DSConv", order=20, depthwise=True,
              claims=(Claim("dsconv", "linear DSConv beats DSConv"),))
register_conv("kdsconv-det", functools.partial(KDSConv, kernel_pool="det"), label="KDSConv (det)", order=30,
              options=ATTENTION_OPTIONS, depthwise=True, kernel_pool="det",
              claims=(Claim("dsconv", "KDSConv (det) beats DSConv"),  # paper 000's headline
                      Claim("ldsconv", "KDSConv (det) beats linear DSConv"),
                      Claim("kdsconv-fixed", "learned attention beats the fixed 1.5x scale"),
                      # The seed papers' peers, trained here under the same recipe (README "Peers").
                      Claim("scnet-t", "KDSConv (det) beats SCNet-T at equal training budget"),
                      Claim("lesrcnn", "KDSConv (det) beats LESRCNN at equal training budget"),
                      Claim("fdiwn", "KDSConv (det) beats FDIWN at equal training budget")))
register_conv("kdsconv-avg", functools.partial(KDSConv, kernel_pool="avg"), label="KDSConv (avg)", order=40,
              options=ATTENTION_OPTIONS, depthwise=True, kernel_pool="avg")
register_conv("kdsconv-max", functools.partial(KDSConv, kernel_pool="max"), label="KDSConv (max)", order=50,
              options=ATTENTION_OPTIONS, depthwise=True, kernel_pool="max")
register_conv("kdsconv-fixed", FixedScaleDSConv, label="KDSConv fixed 1.5x (control)", order=60, depthwise=True,
              # A rescale that fuses away: what KDSConv could gain from its larger start alone.
              claims=(Claim("ldsconv", "the fixed 1.5x scale beats linear DSConv"),))
# The standard-conv RDN, the upper reference of paper 001 Table I: offered, not selected by default.
register_conv("conv", StandardConv, label="Standard conv (RDN)", order=70, default=False,
              claims=(Claim("kdsconv-det", "standard conv (about 4x the fused parameters) beats KDSConv"),))


def make_conv(conv: str, in_channels: int, out_channels: int, *, reduction: int = 32,
              descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM) -> nn.Module:
    """Build the registered layer named ``conv``; the attention options only reach the variants that take them."""
    entry = conv_entry(conv)
    options = {"reduction": reduction, "descriptor_norm": descriptor_norm}
    return entry.build(in_channels, out_channels, **{k: v for k, v in options.items() if k in entry.options})
