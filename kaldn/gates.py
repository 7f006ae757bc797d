"""The kernel-attention gate of every KDSConv layer, measured: how widely its attention ``a`` spreads across
channels, whether it follows the descriptors ``z``, and whether it is dead or near-constant (a fixed scale).
Training logs :func:`gate_summary` at each validation; the app's How it works tab and
``benchmarks.gate_census`` show :func:`gate_report` per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import KDSConv, pool_kernels

__all__ = ["DEAD_STD", "NEAR_CONSTANT_STD", "gate_report", "gate_state", "gate_summary", "gate_verdict"]

DEAD_STD = 1e-6  # a spread of a this small is a constant gate (a = 0.5 everywhere: all gate ReLUs off), not a learned one
# Below this spread a layer's gate is about a constant scale: a raw-determinant run (the steps in app.py's HOW_KERNELS,
# 300 iterations) spreads a by 0.0004-0.002 per layer; an untrained gate by about 0.05 (median) and a shipped trained
# one by about 0.3 (benchmarks.gate_census --init-seeds 50).
NEAR_CONSTANT_STD = 0.02


@torch.no_grad()
def gate_report(model: nn.Module) -> list[dict]:
    """Per KDSConv layer: spread of the attention a across channels and of the descriptors z."""
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, KDSConv):
            continue
        kernels = module.depthwise.weight[:, 0].float()
        raw = pool_kernels(kernels, module.kernel_pool)
        z = module.descriptor().float()
        a = module.attention().float()
        rows.append({
            "layer": name,
            "channels": int(a.numel()),
            "kernel_pool": module.kernel_pool,
            "descriptor_norm": module.descriptor_norm,
            "a_min": float(a.min()), "a_max": float(a.max()),
            "a_mean": float(a.mean()), "a_std": float(a.std(unbiased=False)),
            "raw_pooled_median_abs": float(raw.abs().median()),
            "z_min": float(z.min()), "z_max": float(z.max()), "z_std": float(z.std(unbiased=False)),
            "za_corr": _correlation(z, a),
        })
    return rows


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation; None when either side is constant (a dead gate follows nothing)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    norm = float(x.norm() * y.norm())
    return float((x * y).sum()) / norm if norm > 1e-12 else None


def gate_state(a_std: float) -> str:
    """A layer's gate from its spread of ``a``: "dead", "near-constant" (about one scale) or "varies"."""
    return "dead" if a_std < DEAD_STD else "near-constant" if a_std < NEAR_CONSTANT_STD else "varies"


def gate_verdict(row: dict) -> str:
    """What one layer's gate does (:func:`gate_state`), in words for the gate report's last column."""
    state = gate_state(row["a_std"])
    if state == "dead":
        return f"DEAD: a = {row['a_mean']:.3f} in every channel"
    if state == "near-constant":
        return f"near-constant: a = {row['a_mean']:.2f} +- {row['a_std']:.3f}, about a fixed {1 + row['a_mean']:.2f}x"
    return "varies across channels"


def gate_summary(rows: list[dict]) -> dict:
    """One line for logs: mean over layers of the per-layer spread of a."""
    if not rows:
        return {}
    return {
        "gate_layers": len(rows),
        "gate_a_std_mean": sum(r["a_std"] for r in rows) / len(rows),
        "gate_a_range_mean": sum(r["a_max"] - r["a_min"] for r in rows) / len(rows),
        "gate_raw_pooled_median_abs": sorted(r["raw_pooled_median_abs"] for r in rows)[len(rows) // 2],
    }
