"""Calibrate training settings: validation PSNR against CPU time, fp32 vs bf16 autocast, EMA vs none.

    python -m benchmarks.calibrate [--model tiny-kdsconv-det-x4] [--iters 2000] [--patch 32] [--threads 1]

Trains the same model from the same seed under each setting for the same number of
iterations (validation on the held-out training images, every quarter of the run),
then times fp32 and bf16 iterations side by side, alternating in one process so a
change in machine load hits both alike. Prints one table per part; README quotes them.
The validation PSNR is deterministic for a given seed. CPU-hours are the CPU time the
process consumed (not wall time), so other load on the machine inflates them little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kaldn.models import create_model
from kaldn.train import STATE_NAME, TrainConfig, train

SETTINGS = {  # label -> (precision, ema decay)
    "fp32": ("fp32", 0.0),
    "bf16": ("bf16", 0.0),
    "fp32 + EMA": ("fp32", 0.999),
    "bf16 + EMA": ("bf16", 0.999),
}


def run_setting(label: str, args: argparse.Namespace) -> tuple[list[dict], float]:
    precision, ema = SETTINGS[label]
    out = Path(args.out) / label.replace(" + ", "-").replace(" ", "")
    # An interrupted calibration resumes; the CPU time of every part of a run adds up in cpu_seconds.txt.
    resume = (out / STATE_NAME).exists()
    config = TrainConfig(model=args.model, data=args.data, out=str(out), iters=args.iters, batch=args.batch,
                         patch=args.patch, lr=args.lr, seed=0, threads=args.threads, precision=precision, ema=ema,
                         val_every=args.iters // 4, save_every=max(1, args.iters // 20), resume=resume, force=not resume)
    cpu_file = out / "cpu_seconds.txt"
    cpu_before = float(cpu_file.read_text()) if resume and cpu_file.exists() else 0.0
    cpu_start = time.process_time()
    train(config, progress=lambda event: event["event"] == "step" and cpu_file.write_text(
        str(cpu_before + time.process_time() - cpu_start)))
    cpu_hours = (cpu_before + time.process_time() - cpu_start) / 3600
    cpu_file.write_text(str(cpu_hours * 3600))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "validation"], cpu_hours


def side_by_side_speed(args: argparse.Namespace, rounds: int = 5, steps: int = 8) -> dict[str, float]:
    """Median it/s of fp32 and bf16 iterations, timed in alternating blocks on random patches."""
    torch.manual_seed(0)
    model = create_model(args.model).to(memory_format=torch.channels_last).train()
    scale = model.config["scale"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(args.batch, 3, args.patch, args.patch).contiguous(memory_format=torch.channels_last)
    hr = torch.rand(args.batch, 3, args.patch * scale, args.patch * scale)
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds + 1):  # the first round warms up
        for precision in speeds:
            start = time.perf_counter()
            for _ in range(steps):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = F.l1_loss(model(lr).float(), hr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            speeds[precision].append(steps / (time.perf_counter() - start))
    return {p: statistics.median(s[1:]) for p, s in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-kdsconv-det-x4")
    parser.add_argument("--data", default="../shared/data/train/sun_hays80")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="runs/calibrate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"{args.model}, {args.iters} iterations, batch {args.batch}, LR patch {args.patch}, lr {args.lr}, "
          f"seed 0, {args.threads} thread(s), torch {torch.__version__}; validation: every 10th training "
          "image held out (8 images)")
    quarter = [args.iters * k // 4 for k in (1, 2, 3, 4)]
    print("\n| setting | CPU-hours | " + " | ".join(f"val PSNR @ {i}" for i in quarter) + " |")
    print("|---|---|" + "---|" * len(quarter))
    finals = {}
    for label in args.settings:
        validations, cpu_hours = run_setting(label, args)
        # differences below come from the printed (rounded) cells, so a reader can check them
        finals[label] = round(validations[-1]["val_psnr"], 3)
        cells = " | ".join(f"{v['val_psnr']:.3f}" for v in validations)
        print(f"| {label} | {cpu_hours:.3f} | {cells} |", flush=True)
    if "fp32" in finals and "bf16" in finals:
        print(f"\nfinal val PSNR bf16 - fp32: {finals['bf16'] - finals['fp32']:+.3f} dB")
    if "bf16" in finals and "bf16 + EMA" in finals:
        print(f"final val PSNR EMA - none (bf16): {finals['bf16 + EMA'] - finals['bf16']:+.3f} dB")

    speed = side_by_side_speed(args)
    print(f"\nside by side (alternating blocks, median of 5): fp32 {speed['fp32']:.2f} it/s, "
          f"bf16 {speed['bf16']:.2f} it/s, bf16 / fp32 = {speed['bf16'] / speed['fp32']:.2f}x")


if __name__ == "__main__":
    main()
