"""Train the model zoo under one budget: every model, same iterations, patch, batch, data and seed.

    python -m benchmarks.train_zoo --scale 4 --iters 6000 --workers 2
    python -m benchmarks.train_zoo --scale 2 3 --iters 4000 --second-seed   # one queue, two scales
    python -m benchmarks.train_zoo --backbone small --convs kdsconv-det --second-seed \
        --iters 30000 --patch 48 --precision auto --ema 0.999 --workers 1   # the long `small` run
    python -m benchmarks.train_zoo --device cuda --budget-minutes 40 --backbone paper \
        --convs dsconv ldsconv kdsconv-det --second-seed --patch 48 --precision bf16 --ema 0.999  # one GPU
    python -m benchmarks.train_zoo --models scnet-t-x4 lesrcnn-x4 fdiwn-x4 --second-seed   # peers, x4 recipe

With ``--budget-minutes`` the iteration count is not given but measured: each model's
training speed is probed on the device first, and every model gets the same number of
iterations, sized so the whole queue fits the budget (each run also stops at its share
of the budget, counted over every sitting, and the first sitting at the budget's end,
start-ups included, so a slower-than-probed run cannot overrun it). The plan is kept in
``OUT/<queue>-<device>-plan.json`` with the settings it was made for: a re-run with the
same settings resumes under it without probing again; other settings are refused.

``--stop-after-minutes M`` ends the command after about M minutes wherever the queue is
(each run saves its state; no run starts in the last tenth, at most a minute) so a budget larger than one
sitting trains over several: re-run the same command to continue.

Runs ``kaldn.train`` once per (model, seed) in ``--workers`` parallel processes of
one thread each (measured here: two 1-thread runs train ~1.3x more iterations per
second in total than one 2-thread run). Every run resumes where it stopped, so
the command can be re-run after an interruption. Results land in
``runs/zoo/x{scale}/{model}-s{seed}/``; ``python -m kaldn.evaluate --ship`` then
evaluates them and copies the seed-0 weights into ``checkpoints/``. Without
``--val`` each run validates on the training images it holds out (every tenth).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.train_speed import iterations_per_second
from kaldn.models import parse_model_name
from kaldn.registry import conv_entries
from kaldn.train import STATE_NAME, resolve_precision, saved_state

CONVS = [c.name for c in conv_entries()]  # every registered conv variant, in display order
# A budget choice, not a list of variants: the four the claims compare most closely get a second seed.
SECOND_SEED = ["ldsconv", "kdsconv-det", "dsconv", "kdsconv-fixed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny", help="tiny, small or paper")
    parser.add_argument("--scale", type=int, nargs="+", default=[4], help="one queue over all scales given")
    parser.add_argument("--iters", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--convs", nargs="*", default=CONVS)
    parser.add_argument("--models", nargs="*",
                        help="full model names (e.g. the peers: scnet-t-x4) instead of --backbone/--convs/--scale")
    parser.add_argument("--second-seed", nargs="*", default=SECOND_SEED,
                        help="convs trained again with seed 1 (default: %(default)s; the flag with no names: no seed-1 run)")
    parser.add_argument("--data", default="../shared/data/train/sun_hays80")
    parser.add_argument("--val", help="validation folder (default: every 10th training image, held out)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0: off)")
    parser.add_argument("--clip-grad", type=float, default=0.0, help="largest gradient L2 norm of a step (0: off)")
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--out", default="runs/zoo")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: one run at a time on the GPU)")
    parser.add_argument("--budget-minutes", type=float, help="size --iters so the whole queue fits this wall time")
    parser.add_argument("--stop-after-minutes", type=float,
                        help="end this sitting after about M minutes (states saved); re-run to continue")
    args = parser.parse_args()
    began = time.time()

    if args.models:
        second = set(args.second_seed) & set(args.models)
        jobs = [(name, 0) for name in args.models] + [(name, 1) for name in args.models if name in second]
    else:
        jobs = [(f"{args.backbone}-{conv}-x{scale}", seed) for scale in args.scale
                for conv, seed in [(conv, 0) for conv in args.convs] + [(conv, 1) for conv in args.second_seed]]
    for name, _ in jobs:
        parse_model_name(name)  # an unknown name fails here, before any run starts
    threads = 1 if args.device == "cpu" else 4
    workers = args.workers if args.device == "cpu" else 1
    time_budget = None
    deadlines = [began + 60 * args.stop_after_minutes] if args.stop_after_minutes is not None else []
    if args.budget_minutes:
        # 80 % of each share trains; the rest covers start-up, data loading and validation.
        share = args.budget_minutes * 60 * workers / len(jobs)
        time_budget = share
        # A re-run (after an interruption, or the next sitting) resumes with the iterations planned first, and
        # only for the queue it was planned for.
        queue = "-".join(args.models) if args.models else args.backbone
        plan = Path(args.out) / f"{queue}-{args.device}-plan.json"
        settings = {"jobs": [list(job) for job in jobs], "budget_minutes": args.budget_minutes, "workers": workers,
                    **{k: getattr(args, k) for k in ("batch", "patch", "lr", "precision", "ema", "clip_grad", "data",
                                                     "val", "val_every")}}
        if plan.exists():
            planned = json.loads(plan.read_text())
            if planned.get("settings", settings) != settings:
                differ = ", ".join(f"{k} {planned['settings'].get(k)!r} -> {settings.get(k)!r}"
                                   for k in settings if planned["settings"].get(k) != settings.get(k))
                parser.error(f"{plan} was planned for other settings ({differ}); give another --out, or delete it "
                             "to plan again")
            args.iters = planned["iters"]
        else:
            deadlines.append(began + 60 * args.budget_minutes)  # the probe and every start-up count in it
            speeds, probe_precision = {}, resolve_precision(args.precision, torch.device(args.device))
            torch.set_num_threads(threads)
            for name, _ in jobs:
                if name not in speeds:
                    speeds[name] = iterations_per_second(name, args.batch, args.patch, 10, device=args.device,
                                                         precision=probe_precision, ema=args.ema)[0]
                    print(f"{name}: {speeds[name]:.2f} it/s on {args.device} ({probe_precision})", flush=True)
            args.iters = max(10, int(min(speeds.values()) * share * 0.8) // 10 * 10)
            plan.parent.mkdir(parents=True, exist_ok=True)
            plan.write_text(json.dumps({"iters": args.iters, "speeds": speeds, "settings": settings}))
            if args.device == "cuda":
                torch.cuda.empty_cache()  # the probes' memory goes back to the runs
        print(f"{len(jobs)} runs x {args.iters} iterations, {share / 60:.1f} min each at most", flush=True)
    stop_at = min(deadlines) if deadlines else None
    # No run starts this close to the end: its start-up alone would eat what is left.
    start_margin = min(60.0, (stop_at - began) / 10) if stop_at is not None else 0.0

    def folder(name: str, seed: int) -> Path:
        return Path(args.out) / f"x{parse_model_name(name).scale}" / f"{name}-s{seed}"

    def share_left(state: dict | None) -> float | None:
        """Seconds of its share a run has not used, over every sitting (None: no budget)."""
        return None if time_budget is None else time_budget - (state or {}).get("wall_time_s", 0.0)

    def run(job: tuple[str, int]) -> tuple[str, int, str, str]:
        """(name, seed, what happened, what is left: "finished", "continues", "share used" or "failed")."""
        name, seed = job
        out = folder(name, seed)
        state = saved_state(out)
        if state and state["iteration"] >= args.iters and state.get("config", {}).get("iters") == args.iters:
            return name, seed, "finished before", "finished"  # no start-up spent on it
        left = share_left(state)
        if left is not None and left <= 0:
            return name, seed, f"its share of the budget is used, at iteration {state['iteration']}", "share used"
        if stop_at is not None and time.time() > stop_at - start_margin:
            return name, seed, "not started, out of time", "continues"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kaldn.train", "--model", name, "--data", args.data,
               *(["--val", args.val] if args.val else []),
               "--iters", str(args.iters), "--batch", str(args.batch), "--patch", str(args.patch),
               "--lr", str(args.lr), "--seed", str(seed), "--val-every", str(args.val_every),
               "--precision", args.precision, "--ema", str(args.ema), "--device", args.device,
               "--threads", str(threads), "--save-every", "200", "--out", str(out),
               *(["--clip-grad", str(args.clip_grad)] if args.clip_grad else []),
               *(["--resume"] if (out / STATE_NAME).exists() else []),  # a damaged state: train says so
               *(["--time-budget", str(left)] if left is not None else []),
               *(["--stop-at", str(stop_at)] if stop_at is not None else [])]
        start = time.time()
        with open(out / "stdout.log", "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        state = saved_state(out)
        at = state["iteration"] if state else 0
        outcome = f"exit {code}, {(time.time() - start) / 60:.1f} min, at iteration {at}"
        if code != 0:
            return name, seed, f"{outcome} (see {out / 'stdout.log'})", "failed"
        left = share_left(state)
        return name, seed, outcome, ("finished" if at >= args.iters else
                                     "share used" if left is not None and left <= 0 else "continues")

    left_over: dict[str, int] = {}
    with ThreadPoolExecutor(workers) as pool:
        for name, seed, outcome, kind in pool.map(run, jobs):
            print(f"{name} seed {seed}: {outcome}", flush=True)
            left_over[kind] = left_over.get(kind, 0) + 1
    if left_over.get("continues"):
        print(f"{left_over['continues']} of {len(jobs)} runs can go on: the same command continues them", flush=True)
    if left_over.get("share used"):
        print(f"{left_over['share used']} of {len(jobs)} runs used their share of the budget before the end of their "
              "schedule: slower than probed (their checkpoints are where they stopped)", flush=True)
    if left_over.get("failed"):
        print(f"{left_over['failed']} of {len(jobs)} runs failed (their stdout.log says why)", flush=True)
        sys.exit(1)

if __name__ == "__main__":
    main()
