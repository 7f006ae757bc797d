"""Evaluate checkpoints by the DESIGN.md protocol and write a JSON and a Markdown table.

    python -m kaldn.evaluate --models tiny-ldsconv-x4 runs/zoo/x4/tiny-dsconv-x4-s1/best \
        --datasets set5 set14 bsd68 --scale 4 --out results/x4
    python -m kaldn.evaluate --models runs/zoo/x4/scnet-t-x4-s0/best --datasets set5 set14 bsd68 \
        --scale 4 --out results/x4 --append      # add rows to results/x4.json; tables over all rows

Protocol: HR cropped to a multiple of the scale, LR by MATLAB ``imresize``, the
model's output rounded to 8 bits, PSNR/SSIM on the Y channel with ``scale``
pixels cropped from every border. Bicubic (``imresize`` up) is a row; the
published numbers (trained on DIV2K) are rows too, marked as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, write_json
from .data import DATASETS, dataset_folder, load_pairs
from .hub import ModelNotFoundError, add_source_option, load_model
from .inference import TILE_SIZE, prepare_model, upscale
from .metrics import mean_scores
from .models import BICUBIC, count_parameters, multiply_adds, scales
from .release import replace_block, ship
from .resize import imresize
from .results import GLANCE_NOTE, claims, claims_table, format_metrics, markdown_grid, markdown_table, row_key
from .settings import DEFAULT_MODEL_SOURCE

__all__ = ["DATASETS", "bicubic_row", "claims", "dataset_folder", "evaluate_model", "load_pairs", "main",
           "markdown_table"]


def cpu_milliseconds(model: nn.Module, size: int = 256, repeats: int = 5) -> float:
    """Median wall time of one forward pass on a size x size input (the fast, fused path)."""
    x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def timing_machine() -> str:
    """What timed a row, in words: the CPU's name, the vector kernels torch chose on it and the threads. CPU ms
    from machines with other kernels (AVX2, AVX512) or thread counts are not one column."""
    name = None
    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), None)
    except OSError:  # not Linux
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"  # e.g. ARM: no "model name"
    threads = torch.get_num_threads()
    return f"{name}, {torch.backends.cpu.get_cpu_capability()} kernels, {threads} thread{'s' * (threads != 1)}"


def evaluate_model(spec: str, datasets: dict[str, list], scale: int, timing: bool = True,
                   model: nn.Module | None = None, source: str = DEFAULT_MODEL_SOURCE) -> dict:
    """One results row: ``spec``'s model (or ``model``, loaded from ``spec`` already) on every dataset."""
    model = load_model(spec, source) if model is None else model
    _check_model_scale(spec, model, scale)
    fast = prepare_model(model, device="cpu")
    row = {"model": model.config["model"], "source": spec, "params": count_parameters(model),
           "multiply_adds_256": multiply_adds(fast, 256, 256),
           "training": model.config.get("training"), "seed": (model.config.get("training") or {}).get("seed"),
           "descriptor_norm": model.config.get("descriptor_norm")
           if "kdsconv-" in (model.config.get("conv") or "") else None,
           "weights_origin": (model.config.get("weights") or {}).get("origin")}
    # Models with pooled statistics (FDIWN) see the whole image, as published numbers are measured: a tile changes them.
    tile = None if getattr(model, "global_context", False) else TILE_SIZE
    for name, pairs in datasets.items():
        row[name] = mean_scores([upscale(lr, fast, tile=tile) for _, lr in pairs], [hr for hr, _ in pairs], scale)
    if timing:
        row["cpu_ms_256"] = cpu_milliseconds(fast)
        row["cpu_timed_on"] = timing_machine()
    return row


def _check_model_scale(spec: str, model: nn.Module, scale: int) -> None:
    if model.config["scale"] != scale:
        raise ValueError(f"{spec} is a x{model.config['scale']} model, not x{scale}")


def bicubic_row(datasets: dict[str, list], scale: int) -> dict:
    row = {"model": BICUBIC, "source": "imresize", "params": 0}
    for name, pairs in datasets.items():
        row[name] = mean_scores([imresize(lr, scale=scale) for _, lr in pairs], [hr for hr, _ in pairs], scale)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaldn.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help="model names or checkpoint folders")
    add_source_option(parser, what="a model name in --models")
    parser.add_argument("--datasets", nargs="+", default=["set5", "set14", "bsd68"],
                        help=f"{', '.join(DATASETS)} (under ../shared/data) or folders of HR images")
    parser.add_argument("--scale", type=int, default=4, choices=scales())
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--ship", metavar="DIR", help="copy seed-0 checkpoints with model cards into DIR")
    parser.add_argument("--readme", metavar="FILE",
                        help="replace the block between <!-- results:xS --> and <!-- /results:xS --> in FILE")
    parser.add_argument("--append", action="store_true",
                        help="keep OUT.json's rows (a row of the same model, seed and validation set is replaced "
                             "by the new one) and write the tables and claims over all of them; without --models: "
                             "only rewrite")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m kaldn.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    previous: dict | None = None
    if args.append:
        if not args.out or not Path(args.out).with_suffix(".json").is_file():
            print("error: --append needs --out naming an existing results file (OUT.json)", file=sys.stderr)
            return 2
        previous = json.loads(Path(args.out).with_suffix(".json").read_text())
        if previous.get("scale") != args.scale:
            print(f"error: {args.out}.json holds x{previous.get('scale')} results, not x{args.scale}", file=sys.stderr)
            return 2
        if args.models and list(previous.get("datasets", [])) != list(args.datasets):
            print(f"error: {args.out}.json was measured on {' '.join(previous.get('datasets', []))}: pass the same "
                  "--datasets", file=sys.stderr)
            return 2
    elif not args.models:
        print("error: give --models (or --append to rewrite the tables of an existing results file)", file=sys.stderr)
        return 2

    models = {}
    for spec in args.models:  # every model loads before any measuring: a typo must not cost the rows before it
        try:
            models[spec] = load_model(spec, args.source)
            _check_model_scale(spec, models[spec], args.scale)
        except (ModelNotFoundError, CheckpointError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    datasets = {}
    for name in args.datasets if args.models else []:  # a rewrite measures nothing
        folder = dataset_folder(name)
        if not folder.is_dir():
            print(f"error: dataset {name}: {folder} is not a folder", file=sys.stderr)
            return 2
        datasets[name] = load_pairs(folder, args.scale)
    rows = [bicubic_row(datasets, args.scale)] if args.models else []
    for spec in args.models:
        rows.append(evaluate_model(spec, datasets, args.scale, timing=not args.no_timing, model=models[spec]))
        print(f"{rows[-1]['model']} (seed {rows[-1]['seed']}): "
              + ", ".join(f"{d} {format_metrics(rows[-1][d])}" for d in datasets), flush=True)
    names = list(datasets)
    evaluated, commands = list(rows), [command]
    if previous is not None:
        new = {row_key(r) for r in rows if r["model"] != BICUBIC}
        kept = [r for r in previous["rows"] if row_key(r) not in new]
        has_bicubic = any(r["model"] == BICUBIC for r in kept)
        rows = kept + [r for r in rows if r["model"] != BICUBIC or not has_bicubic]
        names = list(previous["datasets"])
        commands = list(previous.get("commands") or [previous["command"]]) + ([command] if args.models else [])
    table = markdown_table(rows, names, args.scale)
    claim_text = claims(rows, names)
    print()
    print(table)
    print()
    print(claim_text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out.with_suffix(".json"), {"scale": args.scale, "datasets": names, "rows": rows,
                                              "command": commands[0], "commands": commands})
        out.with_suffix(".md").write_text(table + "\n\nClaims under equal budgets:\n\n" + claim_text + "\n")
    if args.ship:
        print("shipped:", ", ".join(ship(evaluated, names, args.scale, Path(args.ship))))  # this run's rows only
    if args.readme:
        made_by = ", then ".join(f"`{c}`" for c in commands)
        glance_md = markdown_grid(*claims_table(rows, names))
        replace_block(Path(args.readme), f"results:x{args.scale}",
                      f"Made by {made_by}:\n\n{table}\n\nClaims under equal budgets, at a glance ({GLANCE_NOTE}):"
                      f"\n\n{glance_md}\n\nIn full:\n\n{claim_text}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
