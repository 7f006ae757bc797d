"""Evaluate checkpoints by the DESIGN.md protocol and write a JSON and a Markdown table.

    python -m kaldn.evaluate --models tiny-ldsconv-x4 runs/zoo/x4/tiny-dsconv-x4-s1/best \
        --datasets set5 set14 bsd68 --scale 4 --out results/x4

Protocol: HR cropped to a multiple of the scale, LR by MATLAB ``imresize``, the
model's output rounded to 8 bits, PSNR/SSIM on the Y channel with ``scale``
pixels cropped from every border. Bicubic (``imresize`` up) is a row; the
published numbers (trained on DIV2K) are rows too, marked as such.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, write_json
from .hub import load_model
from .inference import prepare_model, upscale
from .metrics import psnr_y, ssim_y
from .models import count_parameters, multiply_adds, parse_model_name
from .resize import imresize
from .train import load_pairs as load_image_pairs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"set5": "bench/set5", "set14": "bench/set14", "bsd68": "val/bsd68"}

# DESIGN.md: published x4 PSNR / SSIM on Set5, Set14 (models trained on DIV2K).
PUBLISHED_X4 = {
    "bicubic": ((28.42, 0.8104), (26.00, 0.7027)),
    "KALDN": ((31.91, 0.8913), (28.43, 0.7778)),
    "KALDN-tiny": ((31.86, 0.8904), (28.39, 0.7766)),
    "ALD-RDN": ((32.18, 0.8954), (28.62, 0.7837)),
    "DW-RDN": ((32.10, 0.8937), (28.59, 0.7812)),
    "LESRCNN": ((31.88, 0.8903), (28.44, 0.7772)),
    "FDIWN": ((32.23, 0.8955), (28.66, 0.7829)),
}


def dataset_folder(name: str) -> Path:
    """A dataset name from ``DATASETS`` (under ../shared/data) or any folder of HR images."""
    if name in DATASETS:
        return SHARED_DATA / DATASETS[name]
    return Path(name)


def load_pairs(folder: Path, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) 8-bit pairs by the protocol: the same loader training validates with."""
    return load_image_pairs(folder, scale, 1, "evaluation")


def score(outputs: list[np.ndarray], pairs, scale: int) -> dict:
    psnrs = [psnr_y(out, hr, scale) for out, (hr, _) in zip(outputs, pairs)]
    ssims = [ssim_y(out, hr, scale) for out, (hr, _) in zip(outputs, pairs)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


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


def evaluate_model(spec: str, datasets: dict[str, list], scale: int, timing: bool = True) -> dict:
    model = load_model(spec)
    if model.config["scale"] != scale:
        raise ValueError(f"{spec} is a x{model.config['scale']} model, not x{scale}")
    fast = prepare_model(model, device="cpu")
    row = {"model": model.config["model"], "source": spec, "params": count_parameters(model),
           "multiply_adds_256": multiply_adds(fast, 256, 256),
           "training": model.config.get("training"), "seed": (model.config.get("training") or {}).get("seed"),
           "descriptor_norm": model.config.get("descriptor_norm") if "kdsconv-" in model.config.get("conv", "") else None,
           "weights_origin": (model.config.get("weights") or {}).get("origin")}
    # Models with pooled statistics (FDIWN) see the whole image, as published numbers are measured: a tile changes them.
    tile = None if getattr(model, "global_context", False) else 256
    for name, pairs in datasets.items():
        row[name] = score([upscale(lr, fast, tile=tile) for _, lr in pairs], pairs, scale)
    if timing:
        row["cpu_ms_256"] = cpu_milliseconds(fast)
    return row


def bicubic_row(datasets: dict[str, list], scale: int) -> dict:
    row = {"model": "bicubic", "source": "imresize", "params": 0}
    for name, pairs in datasets.items():
        row[name] = score([imresize(lr, scale=scale) for _, lr in pairs], pairs, scale)
    return row


def format_metrics(cell: dict | None) -> str:
    """One PSNR / SSIM cell, as every table and card shows it."""
    return f"{cell['psnr']:.2f} / {cell['ssim']:.4f}" if cell else "-"


def format_budget(training: dict | None, with_seed: bool = False) -> str:
    """A checkpoint's training budget in one line (its ``config.json`` "training" entry)."""
    if not training or "iterations_done" not in training:
        return "-"
    seed = f"seed {training['seed']}, " if with_seed else ""
    return (f"{training['iterations_done']} it, batch {training['batch']}, patch {training['patch']}, "
            f"{seed}{training['wall_time_s'] / 60:.0f} min on {training['device']}")


def markdown_table(rows: list[dict], dataset_names: list[str], scale: int) -> str:
    head = ["model", "seed", *[f"{d} x{scale}" for d in dataset_names], "params", "MACs (256x256)",
            "CPU ms (256x256)", "training budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([
            row["model"], "-" if row.get("seed") is None else str(row["seed"]),
            *[format_metrics(row.get(d)) for d in dataset_names],
            f"{row['params']:,}" if row.get("params") else "-",
            f"{row['multiply_adds_256'] / 1e9:.2f} G" if row.get("multiply_adds_256") else "-",
            f"{row['cpu_ms_256']:.0f}" if row.get("cpu_ms_256") else "-", format_budget(row.get("training"))]) + " |")
    if scale == 4:
        lines.append("")
        lines.append("Published (trained on DIV2K for hundreds of thousands of iterations; not comparable budgets):")
        lines.append("")
        lines.append("| model | set5 x4 | set14 x4 |")
        lines.append("|---|---|---|")
        for name, (s5, s14) in PUBLISHED_X4.items():
            lines.append(f"| {name} (published) | {s5[0]:.2f} / {s5[1]:.4f} | {s14[0]:.2f} / {s14[1]:.4f} |")
    else:
        lines.append("")
        lines.append(f"No published rows: the source papers report x4 only, so there is nothing to set x{scale} against.")
    return "\n".join(lines)


def claims(rows: list[dict], dataset_names: list[str]) -> str:
    """The paper's claims, checked on these rows: margins next to the seed spread."""
    by_conv: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row["model"] != "bicubic":
            conv = parse_model_name(row["model"]).conv
            by_conv.setdefault(conv, {})[row.get("seed") or 0] = row
    lines = []
    for d in dataset_names:
        spreads = [abs(runs[0][d]["psnr"] - runs[1][d]["psnr"]) for runs in by_conv.values() if 0 in runs and 1 in runs]
        spread = max(spreads) if spreads else None
        spread_text = f"largest seed-to-seed spread {spread:.3f} dB" if spread is not None else (
            "no second seed, so the seed-to-seed noise is unmeasured here: read small margins as ties")
        lines.append(f"- **{d}** ({spread_text}):")

        def mean_psnr(conv: str, seeds: set[int]) -> float:
            return float(np.mean([by_conv[conv][seed][d]["psnr"] for seed in seeds]))

        def common_seeds(*convs: str) -> set[int]:
            # Compare like with like: only the seeds every side was trained with.
            return set.intersection(*(set(by_conv.get(c, {})) for c in convs))

        for better, worse, claim in (("ldsconv", "dsconv", "linear DSConv beats DSConv"),
                                     ("kdsconv-det", "ldsconv", "KDSConv (det) beats linear DSConv"),
                                     ("kdsconv-det", "kdsconv-fixed", "learned attention beats the fixed 1.5x scale"),
                                     ("conv", "kdsconv-det", "standard conv (4x the parameters) beats KDSConv")):
            seeds = common_seeds(better, worse)
            if not seeds:
                continue
            margin = mean_psnr(better, seeds) - mean_psnr(worse, seeds)
            verdict = "yes" if margin > 0 else "no"
            if spread is not None and abs(margin) <= spread:
                verdict += ", but within the seed spread"
            seed_text = f"seed {min(seeds)}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, sorted(seeds)))}"
            lines.append(f"  - {claim}: {verdict} ({margin:+.3f} dB, {seed_text})")
        pools = [p for p in ("det", "avg", "max") if f"kdsconv-{p}" in by_conv]
        seeds = common_seeds(*(f"kdsconv-{p}" for p in pools)) if len(pools) > 1 else set()
        if seeds:
            values = {p: mean_psnr(f"kdsconv-{p}", seeds) for p in pools}
            ranked = sorted(values, key=values.get, reverse=True)
            lines.append("  - pooling ranking: " + " > ".join(f"{p} ({values[p]:.3f})" for p in ranked)
                         + (f" (seed {min(seeds)})" if len(seeds) == 1 else ""))
    return "\n".join(lines)


def _model_index_results(metrics: dict[str, dict], scale: int) -> str:
    """The ``results`` list of one model-index entry (Hub card YAML), one item per dataset."""
    return "\n".join(
        f"      - task: {{type: image-super-resolution}}\n"
        f"        dataset: {{name: {d}, type: {d}}}\n"
        f"        metrics:\n"
        f"          - {{type: psnr, value: {m['psnr']:.2f}, name: PSNR (Y, x{scale})}}\n"
        f"          - {{type: ssim, value: {m['ssim']:.4f}, name: SSIM (Y, x{scale})}}"
        for d, m in metrics.items())


def model_card(row: dict, dataset_names: list[str], scale: int) -> str:
    """A Hugging Face model card (YAML metadata + text) with the measured numbers."""
    name = row["model"]
    spec = parse_model_name(name)
    results = _model_index_results({d: row[d] for d in dataset_names}, scale)
    budget = row["training"]
    return f"""---
license: mit
library_name: kaldn
pipeline_tag: image-to-image
tags: [super-resolution, depthwise-convolution, kdsconv, kaldn, safetensors]
model-index:
  - name: {name}
    results:
{results}
---

# {name}

Part of the kaldn model zoo: RDN backbone `{spec.backbone}` with the `{spec.conv}`
convolution inside every residual dense block, x{scale}. Weights trained by the kaldn project
(`python -m benchmarks.train_zoo`), loaded with `kaldn.hub.load_model("{name}")`.

Training budget: {budget['iterations_done']} iterations, batch {budget['batch']}, LR patch {budget['patch']},
Adam lr {budget['lr']} halved at {budget['lr_halve_at']} of the run, L1, seed {budget['seed']},
{budget['train_images']} Sun-Hays images, {budget['wall_time_s'] / 60:.0f} min on {budget['device']}
({budget['threads']} thread). Far below the papers' DIV2K budget: compare with the other zoo models, not
with published numbers.

Evaluation (DESIGN.md protocol, `python -m kaldn.evaluate`), PSNR dB / SSIM on Y:
""" + "\n".join(f"- {d}: {format_metrics(row[d])}" for d in dataset_names) + "\n"


def ship(rows: list[dict], dataset_names: list[str], scale: int, destination: Path) -> list[str]:
    """Copy seed-0 checkpoints into the Hub-shaped ``checkpoints/`` folder with model cards."""
    shipped = []
    for row in rows:
        if row["model"] == "bicubic" or row.get("seed") not in (0, None):
            continue
        if row.get("weights_origin") == "third-party":  # the authors' weights are never shipped
            print(f"not shipped: {row['source']} holds third-party weights", file=sys.stderr)
            continue
        source = Path(row["source"])
        target = destination / row["model"]
        if source.resolve() != target.resolve():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / WEIGHTS_NAME, target / WEIGHTS_NAME)
            config = json.loads((source / CONFIG_NAME).read_text())
            config["metrics"] = {d: row[d] for d in dataset_names}
            write_json(target / CONFIG_NAME, config)
        (target / "README.md").write_text(model_card(row, dataset_names, scale))
        shipped.append(row["model"])
    write_repo_card(destination)
    return shipped


def write_repo_card(destination: Path) -> None:
    """The Hub repository's own card: every shipped model's measured metrics in one model-index."""
    entries, lines = [], []
    for config_path in sorted(destination.glob(f"*/{CONFIG_NAME}")):
        config = json.loads(config_path.read_text())
        metrics = config.get("metrics") or {}
        results = _model_index_results(metrics, config["scale"])
        entries.append(f"  - name: {config['model']}\n    results:\n{results}")
        lines.append(f"| `{config['model']}` | " + " | ".join(f"{d}: {format_metrics(m)}" for d, m in metrics.items()) + " |")
    card = ("---\nlicense: mit\nlibrary_name: kaldn\npipeline_tag: image-to-image\n"
            "tags: [super-resolution, depthwise-convolution, kdsconv, kaldn, safetensors]\n"
            "model-index:\n" + "\n".join(entries) + "\n---\n\n"
            "# kaldn model zoo\n\nOne subfolder per model: `model.safetensors`, `config.json` (architecture, "
            "training budget, measured metrics) and a model card. Load with `kaldn.hub.load_model(NAME)`; "
            "numbers are Y-channel PSNR dB / SSIM by the protocol in the kaldn README, made by "
            "`python -m kaldn.evaluate`. Trained on a small CPU budget: compare the models with each other, "
            "not with published DIV2K-trained numbers.\n\n| model | metrics |\n|---|---|\n" + "\n".join(lines) + "\n")
    (destination / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaldn.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model names or checkpoint folders")
    parser.add_argument("--datasets", nargs="+", default=["set5", "set14", "bsd68"],
                        help=f"{', '.join(DATASETS)} (under ../shared/data) or folders of HR images")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--ship", metavar="DIR", help="copy seed-0 checkpoints with model cards into DIR")
    parser.add_argument("--readme", metavar="FILE",
                        help="replace the block between <!-- results:xS --> and <!-- /results:xS --> in FILE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    datasets = {}
    for name in args.datasets:
        folder = dataset_folder(name)
        if not folder.is_dir():
            print(f"error: dataset {name}: {folder} is not a folder", file=sys.stderr)
            return 2
        datasets[name] = load_pairs(folder, args.scale)
    rows = [bicubic_row(datasets, args.scale)]
    for spec in args.models:
        rows.append(evaluate_model(spec, datasets, args.scale, timing=not args.no_timing))
        print(f"{rows[-1]['model']} (seed {rows[-1]['seed']}): "
              + ", ".join(f"{d} {format_metrics(rows[-1][d])}" for d in datasets), flush=True)
    names = list(datasets)
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
                                              "command": "python -m kaldn.evaluate " + " ".join(argv or sys.argv[1:])})
        out.with_suffix(".md").write_text(table + "\n\nClaims under equal budgets:\n\n" + claim_text + "\n")
    if args.ship:
        print("shipped:", ", ".join(ship(rows, names, args.scale, Path(args.ship))))
    if args.readme:
        command = "python -m kaldn.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
        replace_block(Path(args.readme), f"results:x{args.scale}",
                      f"Made by `{command}`:\n\n{table}\n\nClaims under equal budgets:\n\n{claim_text}")
    return 0


def replace_block(path: Path, marker: str, content: str) -> None:
    """Replace what stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in a Markdown file."""
    text = path.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"{path}: markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{content}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
