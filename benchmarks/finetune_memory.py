"""What one training step keeps for the backward pass, per backbone: why Fine-tune takes only the shipped sizes.

    OMP_NUM_THREADS=1 python -m benchmarks.finetune_memory [--convs dsconv kdsconv-det ...] [--scale 4]

Sums the bytes of every tensor autograd saves during the forward pass of one 48x48 LR patch (through
``torch.autograd.graph.saved_tensors_hooks``; a tensor saved twice counts twice, so an upper bound), and scales
it to the Fine-tune tab's default cap of 16 such patches a step (``KALDN_FINETUNE_MAX_BATCH_PIXELS``).
"""

from __future__ import annotations

import argparse

import torch

from kaldn.models import BACKBONES, ModelSpec, count_parameters, create_model, variant
from kaldn.registry import conv_entries
from kaldn.settings import AppSettings


def saved_bytes(name: str, patch: int = 48) -> int:
    """Bytes autograd saves for backward in one forward pass of ``name`` on one ``patch`` x ``patch`` LR patch."""
    model, total = create_model(name), 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.rand(1, 3, patch, patch))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--convs", nargs="+", default=[c.name for c in conv_entries()], help="default: every one")
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    patches = AppSettings().finetune_max_batch_pixels // 48 ** 2
    print(f"| model | params | saved for backward, one 48x48 patch | at the cap ({patches} patches) |\n|---|---|---|---|")
    for backbone in BACKBONES:
        for conv in args.convs:
            name = ModelSpec(variant(conv).arch, args.scale, backbone, conv).name
            per_patch = saved_bytes(name)
            print(f"| {name} | {count_parameters(create_model(name)):,} | {per_patch / 2 ** 20:.0f} MiB | "
                  f"{per_patch * patches / 2 ** 30:.1f} GiB |")


if __name__ == "__main__":
    main()
