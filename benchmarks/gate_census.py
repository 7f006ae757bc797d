"""Gate census: does the kernel attention of every shipped KDSConv model learn anything?

    python -m benchmarks.gate_census [checkpoints runs/zoo/x4 ...]

Each folder is a checkpoint, a training run, a folder of checkpoints, or a folder of training runs
(a run's ``best/`` checkpoint is used). ``--init-seeds N`` also counts dead gates in N
freshly initialised models, to tell gates born dead from gates that died in training.

Per model: how many KDSConv layers, how widely the attention a spreads across a
layer's channels (mean over layers of the standard deviation and of max - min),
the near-constant layers (a std under ``NEAR_CONSTANT_STD``: about one scale for
every kernel), and the dead layers, whose gate gives every channel the same a (all
gate ReLUs dead, so a = sigmoid(0) = 0.5: a constant 1.5x kernel scale, like
kdsconv-fixed). Last, the median per-layer spread, to compare trained gates with
untrained ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kaldn.checkpoint import load_checkpoint
from kaldn.gates import NEAR_CONSTANT_STD, gate_report, gate_state
from kaldn.layers import DEFAULT_DESCRIPTOR_NORM, DESCRIPTOR_NORMS
from kaldn.models import create_model, options_taken


def checkpoints_in(folder: Path) -> list[Path]:
    """A checkpoint; a training run (its ``best/``); or a folder of either, each once."""
    def is_checkpoint(path: Path) -> bool:
        return (path / "model.safetensors").is_file()
    for one in (folder, folder / "best"):
        if is_checkpoint(one):
            return [one]
    return [child if is_checkpoint(child) else child / "best" for child in sorted(folder.iterdir())
            if is_checkpoint(child) or is_checkpoint(child / "best")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", default=["checkpoints"])
    parser.add_argument("--init-seeds", type=int, default=0, metavar="N")
    parser.add_argument("--init-model", default="tiny-kdsconv-det-x4")
    parser.add_argument("--init-descriptor-norm", default=DEFAULT_DESCRIPTOR_NORM, choices=DESCRIPTOR_NORMS,
                        help="the descriptor of the freshly initialised models (none: raw pooled values, as the papers)")
    args = parser.parse_args()
    found = [checkpoint for folder in map(Path, args.folders) for checkpoint in checkpoints_in(folder)]

    print(f"{'model':<26} {'layers':>6} {'a std':>7} {'a range':>7} {'flat':>5} {'dead':>5}  dead layers (a)")
    trained: list[float] = []
    for folder in found:
        rows = gate_report(load_checkpoint(folder))
        if not rows:
            continue  # no KDSConv in it (conv, dsconv, ldsconv, kdsconv-fixed)
        trained += [r["a_std"] for r in rows]
        dead = [r for r in rows if gate_state(r["a_std"]) == "dead"]
        flat = sum(gate_state(r["a_std"]) == "near-constant" for r in rows)
        std = sum(r["a_std"] for r in rows) / len(rows)
        spread = sum(r["a_max"] - r["a_min"] for r in rows) / len(rows)
        names = ", ".join(f"{r['layer']} ({r['a_mean']:.3f})" for r in dead) or "-"
        label = folder.parent.name if folder.name == "best" else folder.name
        print(f"{label:<26} {len(rows):>6} {std:>7.3f} {spread:>7.3f} {flat:>5} {len(dead):>5}  {names}")
    if trained:
        print(f"\nper-layer a std over these {len(trained)} layers: median {np.median(trained):.3f}, "
              f"10th percentile {np.percentile(trained, 10):.3f}; 'flat' = near-constant, a std under {NEAR_CONSTANT_STD:g}")

    if args.init_seeds:
        stds: list[float] = []
        for seed in range(args.init_seeds):
            torch.manual_seed(seed)
            options = options_taken(args.init_model, {"descriptor_norm": args.init_descriptor_norm})
            stds += [r["a_std"] for r in gate_report(create_model(args.init_model, **options))]
        if not stds:
            raise SystemExit(f"{args.init_model} has no KDSConv layer: nothing to count at initialisation")
        dead = sum(gate_state(s) == "dead" for s in stds)
        flat = sum(gate_state(s) == "near-constant" for s in stds)
        print(f"\nat initialisation ({args.init_model}, descriptor {args.init_descriptor_norm}, "
              f"seeds 0-{args.init_seeds - 1}): "
              f"{dead} of {len(stds)} KDSConv layers dead ({100 * dead / len(stds):.1f} %), {flat} near-constant; "
              f"per-layer a std median {np.median(stds):.3f}, 10th percentile {np.percentile(stds, 10):.3f}")


if __name__ == "__main__":
    main()
