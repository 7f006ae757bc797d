"""Training speed of each variant of a backbone on this CPU (or a GPU), to plan the model-zoo budget.

    python -m benchmarks.train_speed [--backbone tiny] [--scale 4] [--batch 16] [--patch 48] [--threads 2]
        [--iters 20] [--device cpu] [--precision fp32]

Times full training iterations (forward, L1, backward, Adam step; channels_last,
as kaldn.train runs them) on random patches, after a few warm-up iterations.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kaldn.models import count_parameters, create_model
from kaldn.registry import conv_entries

CONVS = [c.name for c in conv_entries()]  # every registered conv variant, in display order


def iterations_per_second(name: str, batch: int, patch: int, iters: int, warmup: int = 3,
                          device: str = "cpu", precision: str = "fp32") -> tuple[float, int]:
    """Training iterations per second of ``name`` (as kaldn.train runs them) and its parameter count."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = create_model(name).to(device).to(memory_format=torch.channels_last).train()
    scale = model.config["scale"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    hr = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.l1_loss(model(lr).float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return iters / (time.perf_counter() - start), count_parameters(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--convs", nargs="*", default=CONVS)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.backbone} x{args.scale}, batch {args.batch}, LR patch {args.patch}, {args.threads} threads, "
          f"{args.device} {args.precision}, {args.iters} timed iterations, torch {torch.__version__}")
    print(f"{'model':<26}{'params':>9}{'it/s':>8}{'s / 1000 it':>13}")
    for conv in args.convs:
        name = f"{args.backbone}-{conv}-x{args.scale}"
        speed, params = iterations_per_second(name, args.batch, args.patch, args.iters,
                                              device=args.device, precision=args.precision)
        print(f"{name:<26}{params:>9,}{speed:>8.2f}{1000 / speed:>13.0f}")


if __name__ == "__main__":
    main()
