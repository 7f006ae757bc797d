"""Results tables: the zoo table the app shows, and the Markdown tables and claims ``kaldn.evaluate`` writes.

One formatter for a metric cell (:func:`format_metrics`) and one for a training budget
(:func:`format_budget`), so the app, the README tables and the model cards show the same text.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CONFIG_NAME, CheckpointError, read_config
from .data import DATASETS
from .hub import bundled_dir
from .models import check_scale, count_parameters, create_model, parse_model_name, variants

log = logging.getLogger("kaldn.results")

__all__ = ["PUBLISHED_X4", "ZOO_DATASETS", "claims", "format_budget", "format_metrics", "markdown_table",
           "zoo_table"]

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
    """The papers' claims (each variant's registered :class:`~kaldn.registry.Claim`), checked on these rows:
    margins next to the seed spread."""
    by_conv: dict[str, dict[int, dict]] = {}  # variant key -> seed -> row
    for row in rows:
        if row["model"] != "bicubic":
            key = parse_model_name(row["model"]).variant
            by_conv.setdefault(key, {})[row.get("seed") or 0] = row
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

        for better, worse, claim in [(v.key, c.other, c.text) for v in variants() for c in v.claims]:
            seeds = common_seeds(better, worse)
            if not seeds:
                continue
            margin = mean_psnr(better, seeds) - mean_psnr(worse, seeds)
            verdict = "yes" if margin > 0 else "no"
            if spread is not None and abs(margin) <= spread:
                verdict += ", but within the seed spread"
            seed_text = f"seed {min(seeds)}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, sorted(seeds)))}"
            lines.append(f"  - {claim}: {verdict} ({margin:+.3f} dB, {seed_text})")
        pools = {v.kernel_pool: v.key for v in variants() if v.kernel_pool and v.key in by_conv}
        seeds = common_seeds(*pools.values()) if len(pools) > 1 else set()
        if seeds:
            values = {p: mean_psnr(key, seeds) for p, key in pools.items()}
            ranked = sorted(values, key=values.get, reverse=True)
            lines.append("  - pooling ranking: " + " > ".join(f"{p} ({values[p]:.3f})" for p in ranked)
                         + (f" (seed {min(seeds)})" if len(seeds) == 1 else ""))
    return "\n".join(lines)


# --- the model zoo, as the app shows it -------------------------------------------------------------------

ZOO_DATASETS = tuple(DATASETS)


@functools.lru_cache(maxsize=None)
def _parameter_count(name: str) -> int:
    # A model's size follows from its name: build each once, not on every table refresh.
    return count_parameters(create_model(name))


def zoo_table(folder: str | Path | None = None, scale: Any = None) -> tuple[list[str], list[list[Any]]]:
    """The shipped models' measured numbers, read from their ``config.json`` (no weights loaded).

    The numbers are those ``python -m kaldn.evaluate --ship`` wrote (DESIGN.md protocol), next to
    each model's size and training budget, so the app shows what README's results tables show.
    ``scale``: one of the scales, or None / ``"all"`` for every scale.
    """
    scale = None if scale in (None, "", "all") else check_scale(scale)
    folder = Path(folder) if folder is not None else bundled_dir()
    headers = ["Model", "Scale", "Variant", "Params",
               *[f"{d} PSNR / SSIM" for d in ZOO_DATASETS], "Training budget"]
    labels = {v.key: v.label for v in variants()}
    rows = []
    for config_path in sorted(folder.glob(f"*/{CONFIG_NAME}")):
        try:
            config = read_config(config_path)
            spec = parse_model_name(config["model"])
        except (CheckpointError, ValueError) as exc:
            log.warning("zoo table: skipping %s (%s)", config_path.parent.name, exc)
            continue
        if scale is not None and spec.scale != scale:
            continue
        metrics = config.get("metrics") or {}
        rows.append([config["model"], spec.scale, labels.get(spec.variant, spec.variant), _parameter_count(spec.name),
                     *[format_metrics(metrics.get(d)) for d in ZOO_DATASETS],
                     format_budget(config.get("training"), with_seed=True)])
    order = {v.key: i for i, v in enumerate(variants())}
    rows.sort(key=lambda r: (r[1], order.get(parse_model_name(r[0]).variant, len(order))))
    return headers, rows
