"""Training speed of each variant of a backbone (or any named models) on this CPU or a GPU, to plan budgets.

    python -m benchmarks.train_speed [--backbone tiny] [--scale 4] [--batch 16] [--patch 48] [--threads 2]
        [--iters 20] [--device cpu] [--precision fp32 [bf16]]
    python -m benchmarks.train_speed --models lesrcnn-x4 fdiwn-x4 scnet-t-x4 --patch 32 --threads 1 \
        --precision fp32 bf16 --cpu-time

Times full training iterations (forward, L1, backward, Adam step; channels_last,
and bf16 under autocast as kaldn.train runs it) on random patches, after a few
warm-up iterations.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from kaldn.models import count_parameters, create_model
from kaldn.registry import conv_entries
from kaldn.train import PatchSampler, weight_average

CONVS = [c.name for c in conv_entries()]  # every registered conv variant, in display order
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def iterations_per_second(name: str, batch: int, patch: int, iters: int, warmup: int = 3,
                          device: str = "cpu", precision: str = "fp32", clock=time.perf_counter,
                          ema: float | None = None) -> tuple[float, int]:
    """Training iterations per second of ``name`` (as kaldn.train runs them) and its parameter count.

    With ``ema`` (a decay, 0 for none) every step also does what a run's step does around the model: patches
    cropped by kaldn.train's sampler from random images, and the weight average, which cost a GPU more than a
    small model's compute; without it, one fixed random batch (the model's own cost)."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = create_model(name).to(device).to(memory_format=torch.channels_last).train()
    scale = model.config["scale"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    hr = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    sampler = average = None
    if ema is not None:
        images = np.random.default_rng(0).integers(0, 256, (4, patch * 3, patch * 3, 3), dtype=np.uint8)
        sampler = PatchSampler([(np.repeat(np.repeat(im, scale, 0), scale, 1), im) for im in images], scale, patch, 0,
                               device)
        average = weight_average(model, ema) if ema else None
    amp = PRECISIONS[precision]
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = clock()
        if sampler is not None:
            lr, hr = sampler.sample(batch)
            lr, hr = lr.to(device).contiguous(memory_format=torch.channels_last), hr.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.l1_loss(model(lr).float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
    _sync(device)
    return iters / (clock() - start), count_parameters(model)


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
    parser.add_argument("--models", nargs="*", help="model names (e.g. fdiwn-x4); replaces --backbone/--convs/--scale")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of the process (robust on a busy machine with --threads 1)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    names = args.models or [f"{args.backbone}-{conv}-x{args.scale}" for conv in args.convs]
    print(f"batch {args.batch}, LR patch {args.patch}, {args.threads} threads, {args.device}, "
          f"{args.iters} timed iterations, torch {torch.__version__}{', CPU time' if args.cpu_time else ''}")
    print(f"{'model':<26}{'precision':>10}{'params':>9}{'it/s':>8}{'s / it':>8}{'s / 1000 it':>13}")
    for name in names:
        for precision in args.precision:
            speed, params = iterations_per_second(name, args.batch, args.patch, args.iters, device=args.device,
                                                  precision=precision, clock=clock)
            print(f"{name:<26}{precision:>10}{params:>9,}{speed:>8.2f}{1 / speed:>8.2f}{1000 / speed:>13.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
