"""Training speed of each tiny variant (or any named models) on this CPU, to plan the model-zoo budget.

    python -m benchmarks.train_speed [--scale 4] [--batch 16] [--patch 48] [--threads 2] [--iters 20]
    python -m benchmarks.train_speed --models lesrcnn-x4 fdiwn-x4 scnet-t-x4 --patch 32 --threads 1 \
        --precision fp32 bf16

Times full training iterations (forward, L1, backward, Adam step; channels_last,
and bf16 under autocast as kaldn.train runs it) on random patches, after a few
warm-up iterations.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kaldn.models import count_parameters, create_model

CONVS = ["conv", "dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max", "kdsconv-fixed"]


def iterations_per_second(name: str, batch: int, patch: int, iters: int, warmup: int = 3,
                          precision: str = "fp32", clock=time.perf_counter) -> tuple[float, int]:
    torch.manual_seed(0)
    model = create_model(name).to(memory_format=torch.channels_last).train()
    scale = model.config["scale"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, patch, patch).contiguous(memory_format=torch.channels_last)
    hr = torch.rand(batch, 3, patch * scale, patch * scale)
    for i in range(warmup + iters):
        if i == warmup:
            start = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.l1_loss(model(lr).float(), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return iters / (clock() - start), count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--convs", nargs="*", default=CONVS)
    parser.add_argument("--models", nargs="*", help="model names (e.g. fdiwn-x4); replaces --convs/--scale")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of the process (robust on a busy machine with --threads 1)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    names = args.models or [f"tiny-{conv}-x{args.scale}" for conv in args.convs]
    print(f"batch {args.batch}, LR patch {args.patch}, {args.threads} threads, "
          f"{args.iters} timed iterations, torch {torch.__version__}{', CPU time' if args.cpu_time else ''}")
    print(f"{'model':<26}{'precision':>10}{'params':>9}{'it/s':>8}{'s / it':>8}{'s / 1000 it':>13}")
    for name in names:
        for precision in args.precision:
            speed, params = iterations_per_second(name, args.batch, args.patch, args.iters, precision=precision,
                                                  clock=clock)
            print(f"{name:<26}{precision:>10}{params:>9,}{speed:>8.2f}{1 / speed:>8.2f}{1000 / speed:>13.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
