"""Gate report: is the kernel attention of a KDSConv model learning anything?

A gate stuck at one value (a = 0.5 everywhere, the raw-determinant failure in
DESIGN.md) has a standard deviation across channels near zero.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import KDSConv, pool_kernels


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
        })
    return rows


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
