"""Results tables: the zoo table the app shows, and the Markdown tables and claims ``kaldn.evaluate`` writes.

One formatter for a metric cell (:func:`format_metrics`) and one for a training budget
(:func:`format_budget`), so the app, the README tables and the model cards show the same text.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CONFIG_NAME, CheckpointError, read_config
from .data import DATASETS
from .hub import bundled_dir
from .layers import fuse
from .models import (BACKBONES, BICUBIC, DEFAULT_BACKBONE, ModelSpec, check_scale, count_parameters, create_model,
                     is_featured, model_label, parse_model_name, scales, variants)

log = logging.getLogger("kaldn.results")

__all__ = ["LOG_NAME", "PUBLISHED_SOURCE", "PUBLISHED_X4", "RELEASED_X4_CPU", "RESULTS_DIR", "ZOO_DATASETS",
           "claims", "claims_table", "comparable_budget", "featured_budget", "format_budget", "format_count",
           "format_metrics", "format_precision", "load_results", "markdown_grid", "markdown_table", "timing_note",
           "held_out", "log_events", "psnr_cost_points", "row_key", "run_identity", "run_iterations", "training_curves",
           "validation_curves", "validation_events", "validation_psnrs", "validation_set", "zoo_table"]

LOG_NAME = "log.jsonl"  # a training log (kaldn.train), shipped beside a checkpoint to draw its curve
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # python -m kaldn.evaluate writes x{s}.json here

PUBLISHED_SOURCE = ("DESIGN.md, 'Published x4 references on Set5 / Set14' (papers 000/001 and the peers' "
                    "papers; trained on DIV2K)")
# DESIGN.md: published x4 PSNR / SSIM on Set5, Set14 (models trained on DIV2K). No parameter counts are listed:
# paper 001's Table IV counts single blocks, and LESRCNN's 516K names no scale and is below its released weights.
PUBLISHED_X4 = {
    "bicubic": ((28.42, 0.8104), (26.00, 0.7027)),
    "KALDN": ((31.91, 0.8913), (28.43, 0.7778)),
    "KALDN-tiny": ((31.86, 0.8904), (28.39, 0.7766)),
    "ALD-RDN": ((32.18, 0.8954), (28.62, 0.7837)),
    "DW-RDN": ((32.10, 0.8937), (28.59, 0.7812)),
    "LESRCNN": ((31.88, 0.8903), (28.44, 0.7772)),
    "FDIWN": ((32.23, 0.8955), (28.66, 0.7829)),
}


# DESIGN.md, "Where the shipped models stand": the released LESRCNN and FDIWN measured by an independent harness
# on this project's CPU, 256x256 input, 2 threads (seconds -> ms).
RELEASED_X4_CPU = {"LESRCNN": 3200.0, "FDIWN": 2400.0}


def format_count(n: float | int | None) -> str:
    """A count with thousands separators (112,272); '-' when unknown."""
    return "-" if n is None else f"{int(round(n)):,}"


def format_metrics(cell: dict | None) -> str:
    """One PSNR / SSIM cell, as every table and card shows it."""
    return f"{cell['psnr']:.2f} / {cell['ssim']:.4f}" if cell else "-"


def run_iterations(training: dict) -> tuple[int, int]:
    """(iterations the run trained for, the iteration of this checkpoint): a run's budget is what it trained
    for, and validation may have chosen an earlier checkpoint of it."""
    done = training["iterations_done"]
    return training.get("iterations") or done, done


def featured_budget(folder: str | Path | None = None) -> dict | None:
    """The bundled featured model (the app's default, on a larger backbone) in numbers for prose: its name,
    backbone preset (:data:`~kaldn.models.BACKBONES`), run length, chosen checkpoint, LR patch and weight average,
    how many times the iterations of the same block on the default backbone its checkpoint had, and the other
    bundled models on its backbone at its scale (``same_backbone``). None when no featured model is bundled, so
    the text says nothing rather than something stale."""
    folder = Path(folder) if folder is not None else bundled_dir()
    for config_path in sorted(folder.glob(f"*/{CONFIG_NAME}")):
        try:
            if not is_featured(config_path.parent.name):
                continue
            config = read_config(config_path)
            spec = parse_model_name(config["model"])
            iterations, done = run_iterations(config["training"])
            if not all(isinstance(n, int) and n > 0 for n in (iterations, done)):
                raise ValueError(f"iterations {iterations!r}, checkpoint at {done!r}")
        except (CheckpointError, ValueError, KeyError, TypeError) as exc:
            log.warning("featured model %s: %s", config_path.parent.name, exc)
            continue
        # Bundled models on the same backbone and scale: what this one can be compared with at its budget.
        peers = sorted(p.parent.name for p in folder.glob(f"{spec.backbone}-*-x{spec.scale}/{CONFIG_NAME}")
                       if p.parent.name != config["model"])
        return {"model": config["model"], **BACKBONES[spec.backbone], "iterations": iterations,
                "iterations_done": done, "patch": config["training"].get("patch"),
                "ema": config["training"].get("ema"), "times_base": _times_base(folder, spec, done),
                "same_backbone": peers}
    return None


def _times_base(folder: Path, spec: ModelSpec, done: int) -> float | None:
    """How many times the iterations of the same block's bundled model on the default backbone; None without one."""
    try:
        base_done = run_iterations(read_config(folder / f"{DEFAULT_BACKBONE}-{spec.conv}-x{spec.scale}" /
                                               CONFIG_NAME)["training"])[1]
    except (CheckpointError, KeyError, TypeError):
        return None
    return done / base_done if isinstance(base_done, int) and base_done > 0 else None


def format_precision(training: dict) -> str:
    """The precision a run trained in ("bf16 autocast"), and where it changed when it was resumed on a machine
    with another ("bf16 autocast, then fp32 from iteration 1,000"); "" for runs from before it was recorded."""
    def named(precision: str | None) -> str:
        return {None: "unrecorded precision", "fp32": "fp32"}.get(precision, f"{precision} autocast")
    if training.get("precisions"):
        return ", then ".join(f"{named(p)} from iteration {start:,}" if start else named(p)
                              for start, p in training["precisions"])
    return named(training["precision"]) if training.get("precision") else ""


def format_device(training: dict) -> str:
    """Where a run trained ("cpu"), and where it moved when it was resumed elsewhere ("cpu (1 thread), then
    NVIDIA H100 80GB HBM3 from iteration 24,600"); a run that never moved records only its device."""
    if training.get("devices"):
        return ", then ".join(f"{name or 'an unrecorded device'}" + (f" from iteration {start:,}" if start else "")
                              for start, name in training["devices"])
    return str(training["device"])


def format_budget(training: dict | None, with_seed: bool = False) -> str:
    """A checkpoint's training budget in one line (its ``config.json`` "training" entry)."""
    if not training or "iterations_done" not in training:
        return "-"
    seed = f"seed {training['seed']}, " if with_seed else ""
    planned, done = run_iterations(training)
    chosen = f" (checkpoint from {done}, {training['wall_time_s'] / 60:.0f} min in)" if done < planned else ""
    minutes = "" if chosen else f"{training['wall_time_s'] / 60:.0f} min "
    clip = f"gradients clipped at {training['clip_grad']:g}, " if training.get("clip_grad") else ""
    return (f"{planned} it{chosen}, batch {training['batch']}, patch {training['patch']}, "
            f"{clip}{seed}{minutes}on {format_device(training)}{_validation(training)}")


def validation_set(training: dict | None) -> str:
    """Which images chose the checkpoint: a test set (the first zoo's ``bsd68``), ``"N held-out training
    images"``, or "" where the run recorded none."""
    val = str((training or {}).get("val") or "")
    if not val:
        return ""
    if held_out(training):
        return f"{training.get('val_images', 'some')} held-out training images"
    return Path(val).name


def held_out(training: dict | None) -> bool:
    """Whether a run chose its checkpoint on training images it held out (``kaldn.train``'s default since the
    held-out split) rather than on a test set."""
    return "held out" in str((training or {}).get("val") or "")


def _validation(training: dict) -> str:
    return f"; validated on {validation_set(training)}" if validation_set(training) else ""


def row_key(row: dict) -> tuple:
    """What one results row stands for: a model, its seed and the images that chose its checkpoint (a rerun on
    held-out images sits beside a first run that chose on BSD68; it does not replace it)."""
    return row["model"], *run_identity(row.get("seed"), row.get("training"))


def run_identity(seed: int | None, training: dict | None) -> tuple[int, str]:
    """Which run of a model a results row or a bundled checkpoint is: its seed (unrecorded = 0) and its
    validation set."""
    return seed or 0, validation_set(training)


def markdown_grid(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, its separator and one line per row."""
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                     + ["| " + " | ".join(cells) + " |" for cells in rows])


def markdown_table(rows: list[dict], dataset_names: list[str], scale: int) -> str:
    head = ["model", "seed", *[f"{d} x{scale}" for d in dataset_names], "params", "MACs (256x256)",
            "CPU ms (256x256)", "training budget"]
    lines = [markdown_grid(head, [[
        row["model"], "-" if row.get("seed") is None else str(row["seed"]),
        *[format_metrics(row.get(d)) for d in dataset_names],
        f"{row['params']:,}" if row.get("params") else "-",
        f"{row['multiply_adds_256'] / 1e9:.2f} G" if row.get("multiply_adds_256") else "-",
        f"{row['cpu_ms_256']:.0f}" if row.get("cpu_ms_256") else "-", format_budget(row.get("training"))]
        for row in rows])]
    lines += ["", note] if (note := timing_note(rows)) else []
    if scale == 4:
        lines.append("")
        lines.append("Published (trained on DIV2K on the papers' full schedules, e.g. 300 epochs in paper 001; not comparable budgets):")
        lines.append("")
        lines.append(markdown_grid(["model", "set5 x4", "set14 x4"], [
            [f"{name} (published)", f"{s5[0]:.2f} / {s5[1]:.4f}", f"{s14[0]:.2f} / {s14[1]:.4f}"]
            for name, (s5, s14) in PUBLISHED_X4.items()]))
    else:
        lines.append("")
        lines.append("No published rows: the published references used here (DESIGN.md) are x4 Set5 / Set14 only "
                     "(LESRCNN's paper also reports x2 / x3, on Urban100, not evaluated here).")
    return "\n".join(lines)


def timing_note(rows: list[dict]) -> str:
    """Which machines timed a table's CPU ms column ("" where nothing was timed): rows timed apart can only be
    compared where the machine is the same."""
    machines: dict[str | None, list[str]] = {}
    for row in rows:
        if row.get("cpu_ms_256"):
            machines.setdefault(row.get("cpu_timed_on"), []).append(row["model"])
    if not machines:
        return ""
    if list(machines) == [None]:
        return "CPU ms: the machine that timed these rows was not recorded (`kaldn.evaluate` records it since)."
    if len(machines) == 1:
        return f"CPU ms timed on {next(iter(machines))}."
    return ("CPU ms come from more than one machine; compare them only within one: "
            + "; ".join(f"{machine or 'not recorded'}: {', '.join(dict.fromkeys(models))}"
                        for machine, models in machines.items()) + ".")


def comparable_budget(training: dict | None) -> tuple:
    """What makes two runs' training comparable (a checkpoint config's "training" entry): iterations, batch,
    LR patch, schedule, the training images (by folder name, wherever the data sat) and the validation set
    (held-out images are not trained on), the weight average, gradient clipping and the starting weights. Not
    the seed, nor the precision: bf16 autocast reaches fp32's validation PSNR (``benchmarks.calibrate``: within
    0.01 dB), and a run resumed on a CPU without native bf16 continues in fp32 (``kaldn.train`` records where)."""
    t = training if isinstance(training, dict) else {}
    schedule = tuple(t.get(k) if not isinstance(t.get(k), list) else tuple(t[k])
                     for k in ("iterations", "batch", "patch", "lr", "lr_halve_at"))
    data = Path(str(t["data"])).name if t.get("data") else None
    return schedule + (data, validation_set(t), t.get("ema") or None, str(t["init"]) if t.get("init") else None,
                       t.get("clip_grad") or None)


def claims(rows: list[dict], dataset_names: list[str]) -> str:
    """The papers' claims (each variant's registered :class:`~kaldn.registry.Claim`), checked on these rows:
    margins next to the seed spread. Only rows trained under the same budget are compared (a ``small``
    model trained longer is not evidence about a variant)."""
    lines = []
    for d, spread, verdicts in _verdicts(rows, dataset_names):
        spread_text = f"largest seed-to-seed spread {spread:.3f} dB" if spread is not None else (
            "no second seed, so the seed-to-seed noise is unmeasured here: read small margins as ties")
        lines.append(f"- **{d}** ({spread_text}):")
        lines += [f"  - {v.get('heading', v['claim'])}{v['budget'] and ' ' + v['budget']}: {v['line']}"
                  for v in verdicts]
    return "\n".join(lines)


GLANCE_NOTE = ("a tie is a margin inside the largest seed-to-seed spread measured on that test set, in any "
               "budget; where no second seed was trained at all, no verdict: the margin alone, or the ranking")


def claims_table(rows: list[dict], dataset_names: list[str]) -> tuple[list[str], list[list[str]]]:
    """The same verdicts at a glance: one row per claim (and budget), one column per dataset, each cell the
    verdict and its margin ("tie, +0.032"), so a claim that holds on one set and not another shows."""
    table: dict[tuple[str, tuple], dict[str, str]] = {}  # keyed on the whole budget: labels can coincide
    labels: dict[tuple, str] = {}
    headers = ["Claim", "Budget"]
    for d, spread, verdicts in _verdicts(rows, dataset_names):
        # Where no second seed was trained, nothing says how big a margin must be: the header warns.
        headers.append(f"{d} (seed spread {spread:.3f} dB)" if spread is not None else f"{d} (one seed: no spread)")
        for v in verdicts:
            table.setdefault((v["claim"], v["group"]), {})[d] = v["short"]
            labels[v["group"]] = v["budget"].strip("[]") or "-"
    return headers, [[claim, labels[group], *[cells.get(d, "-") for d in dataset_names]]
                     for (claim, group), cells in table.items()]


def _verdicts(rows: list[dict], dataset_names: list[str]) -> list[tuple[str, float | None, list[dict]]]:
    """Per dataset: (name, largest seed-to-seed spread or None, the verdict of every claim in every budget)."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}  # budget -> variant key -> seed -> row
    for row in rows:
        if row["model"] != BICUBIC:
            key = parse_model_name(row["model"]).variant
            budget = comparable_budget(row.get("training"))
            groups.setdefault(budget, {}).setdefault(key, {})[row.get("seed") or 0] = row
    several = len(groups) > 1
    out = []
    for d in dataset_names:
        spreads = [abs(runs[0][d]["psnr"] - runs[1][d]["psnr"])
                   for by_conv in groups.values() for runs in by_conv.values() if 0 in runs and 1 in runs]
        spread = max(spreads) if spreads else None
        out.append((d, spread, [{**v, "group": group} for group, by_conv in groups.items()
                                for v in _group_claims(by_conv, d, spread, several)]))
    return out


def _group_claims(by_conv: dict[str, dict[int, dict]], d: str, spread: float | None, label_budget: bool
                  ) -> list[dict]:
    """The verdicts of one budget group on dataset ``d``: claim, budget label, the full line and a short cell."""
    def mean_psnr(conv: str, seeds: set[int]) -> float:
        return float(np.mean([by_conv[conv][seed][d]["psnr"] for seed in seeds]))

    def common_seeds(*convs: str) -> set[int]:
        # Compare like with like: only the seeds every side was trained with.
        return set.intersection(*(set(by_conv.get(c, {})) for c in convs))

    def seed_text(seeds: set[int]) -> str:
        return f"seed {min(seeds)}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, sorted(seeds)))}"

    budget = ""
    if label_budget:
        t = next(iter(next(iter(by_conv.values())).values())).get("training") or {}
        clip = f", clipped at {t['clip_grad']:g}" if t.get("clip_grad") else ""
        budget = f"[{t.get('iterations')} it, batch {t.get('batch')}, patch {t.get('patch')}{clip}{_validation(t)}]"
    verdicts = []
    for better, worse, claim in [(v.key, c.other, c.text) for v in variants() for c in v.claims]:
        seeds = common_seeds(better, worse)
        if not seeds:
            continue
        margin = mean_psnr(better, seeds) - mean_psnr(worse, seeds)
        # A margin a rerun alone can produce is a tie, said first: a reader who stops at the verdict is not misled.
        if spread is not None and abs(margin) <= spread:
            word, line = "tie", (f"tie ({margin:+.3f} dB, inside the {spread:.3f} dB seed spread; "
                                 f"{seed_text(seeds)})")
        else:
            word = "yes" if margin > 0 else "no"
            line = f"{word} ({margin:+.3f} dB, {seed_text(seeds)})"
        # At a glance a bare "yes" would read as settled; with no spread to judge by, the cell is the margin alone.
        short = f"{margin:+.3f} dB" if spread is None else f"{word}, {margin:+.3f} dB"
        verdicts.append({"claim": claim, "budget": budget, "line": line, "short": short})
    pools = {v.kernel_pool: v.key for v in variants() if v.kernel_pool and v.key in by_conv}
    seeds = common_seeds(*pools.values()) if len(pools) > 1 else set()
    if seeds:
        values = {p: mean_psnr(key, seeds) for p, key in pools.items()}
        ranked = sorted(values, key=values.get, reverse=True)
        if spread is not None and values[ranked[0]] - values[ranked[-1]] <= spread:
            line = (f"tie, no ranking ({', '.join(f'{p} {values[p]:.3f}' for p in ranked)}; {seed_text(seeds)}; "
                    f"all inside the {spread:.3f} dB seed spread)")
            verdicts.append({"claim": "pooling", "budget": budget, "line": line, "short": "tie"})
        else:
            order = " > ".join(ranked)
            line = " > ".join(f"{p} ({values[p]:.3f})" for p in ranked) + f" ({seed_text(seeds)})"
            verdicts.append({"claim": "pooling", "heading": "pooling ranking", "budget": budget, "line": line,
                             "short": order})
    return verdicts


# --- the model zoo, as the app shows it -------------------------------------------------------------------

ZOO_DATASETS = tuple(DATASETS)


@functools.lru_cache(maxsize=None)
def _parameter_counts(name: str) -> tuple[int, int]:
    # A model's size follows from its name: build each once (trained, then fused), not on every refresh.
    model = create_model(name)
    trained = count_parameters(model)
    return trained, count_parameters(fuse(model))


def load_results(scale: int, results_dir: str | Path | None = None) -> dict | None:
    """``results/x{scale}.json`` as ``python -m kaldn.evaluate`` wrote it (rows with seeds, params, MACs, CPU ms),
    or None when there is none."""
    path = Path(results_dir if results_dir is not None else RESULTS_DIR) / f"x{check_scale(scale)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# "(256²)": narrow columns break "(256x256)" mid-number; the tab's text says it is one 256x256 input.
ZOO_HEADERS = ["Model", "Scale", "Variant", "Seed", "Params", "Params (fused)", "MACs (256²)",
               "CPU ms (256²)", *[f"{d} PSNR / SSIM" for d in ZOO_DATASETS], "Training budget", "Weights"]


def _zoo_row(row: dict, scale: int, shipped_seed: dict) -> list[Any]:
    name = row["model"]
    if name == BICUBIC:
        return [name, scale, "bicubic (MATLAB imresize)", "-", "0", "0", "-", "-",
                *[format_metrics(row.get(d)) for d in ZOO_DATASETS], "none (no learned weights)", "-"]
    spec = parse_model_name(name)
    trained, fused = _parameter_counts(spec.name)
    seed = row.get("seed")
    shipped = shipped_seed.get(name)
    weights = ("bundled" if shipped is not None and shipped == run_identity(seed, row.get("training"))
               else "not shipped (results only)")
    macs = row.get("multiply_adds_256")
    return [name, spec.scale, model_label(name), "-" if seed is None else str(seed),
            format_count(row.get("params") or trained), format_count(fused),
            f"{macs / 1e9:.2f} G" if macs else "-",
            format_count(row["cpu_ms_256"]) if row.get("cpu_ms_256") else "-",
            *[format_metrics(row.get(d)) for d in ZOO_DATASETS], format_budget(row.get("training")), weights]


def zoo_table(folder: str | Path | None = None, scale: Any = None, results_dir: str | Path | None = None
              ) -> tuple[list[str], list[list[Any]]]:
    """Every evaluated model of the zoo, bicubic and second seeds included, as the app shows it.

    Rows come from ``results/x{s}.json`` (``python -m kaldn.evaluate``: the DESIGN.md protocol, params, MACs and
    the median CPU time for a 256x256 input); a shipped checkpoint without such a row is read from its
    ``config.json`` (no weights loaded). Numbers are formatted for reading (112,272); "Weights" says whether the
    row's weights are bundled. ``scale``: one of the scales, or None / ``"all"``.
    """
    scale = None if scale in (None, "", "all") else check_scale(scale)
    folder = Path(folder) if folder is not None else bundled_dir()
    shipped_seed: dict[str, tuple[int, str]] = {}  # model -> (seed, validation set) of its bundled weights
    configs: dict[str, dict] = {}
    for config_path in sorted(folder.glob(f"*/{CONFIG_NAME}")):
        try:
            config = read_config(config_path)
            parse_model_name(config["model"])
        except (CheckpointError, ValueError, KeyError) as exc:
            log.warning("zoo table: skipping %s (%s)", config_path.parent.name, exc)
            continue
        configs[config["model"]] = config
        training = config.get("training") or {}
        shipped_seed[config["model"]] = run_identity(training.get("seed"), training)
    order = {v.key: i for i, v in enumerate(variants())}
    rows: list[list[Any]] = []
    for s in ([scale] if scale is not None else list(scales())):
        results = load_results(s, results_dir)
        listed = []
        for row in (results or {}).get("rows", []):
            try:
                rows.append(_zoo_row(row, s, shipped_seed))
                listed.append((row["model"], *run_identity(row.get("seed"), row.get("training"))))
            except (ValueError, KeyError) as exc:
                log.warning("zoo table: skipping a row of x%s.json (%s)", s, exc)
        for name, config in configs.items():
            if parse_model_name(name).scale == s and (name, *shipped_seed[name]) not in listed:
                row = {"model": name, "seed": (config.get("training") or {}).get("seed"),
                       "training": config.get("training"), **(config.get("metrics") or {})}
                rows.append(_zoo_row(row, s, shipped_seed))

    def key(r: list[Any]) -> tuple:
        variant_order = -1 if r[0] == BICUBIC else order.get(parse_model_name(r[0]).variant, len(order))
        return (r[1], 0 if r[3] in ("-", "0") else int(r[3]), variant_order)
    rows.sort(key=key)
    return ZOO_HEADERS, rows


# --- the results view: curves and cost plots ----------------------------------------------------------------

def log_events(log: str | Path, kind: str) -> list[dict]:
    """The events of one kind ("step", "validation") of a ``kaldn.train`` log; none for a missing file. A
    damaged line (a partial last line of an interrupted run) is skipped."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == kind:
            events.append(event)
    return events


def validation_events(log: str | Path) -> list[dict]:
    """The "validation" events (with ``val_psnr``) of a ``kaldn.train`` log."""
    return [e for e in log_events(log, "validation") if "val_psnr" in e]


def validation_psnrs(log: str | Path) -> list[tuple[int, float]]:
    """A ``kaldn.train`` log's validation PSNR as (iteration, PSNR), by iteration."""
    return sorted((int(e["iteration"]), float(e["val_psnr"])) for e in validation_events(log))


def validation_curves(folder: str | Path | None = None) -> list[tuple[Path, list[tuple[int, float]]]]:
    """Every checkpoint folder under ``folder`` (default: the bundled ones) with its validation PSNR by
    iteration, sorted by iteration; empty for a folder without a readable log. A missing ``folder`` has none."""
    folder = Path(folder) if folder is not None else bundled_dir()
    return [(config.parent, validation_psnrs(config.parent / LOG_NAME))
            for config in sorted(folder.glob(f"*/{CONFIG_NAME}")) if config.is_file()]


def training_curves(folder: str | Path | None = None, scale: Any = None) -> tuple[list[dict], list[str]]:
    """Validation PSNR over training iterations of every bundled model with a ``log.jsonl`` beside it.

    Returns (points, missing): points are ``{"model", "variant", "iteration", "val_psnr"}`` dicts (the
    ``"validation"`` events ``kaldn.train`` logs), ``missing`` the models without a readable log. A damaged
    line is skipped, not fatal.
    """
    scale = None if scale in (None, "", "all") else check_scale(scale)
    points: list[dict] = []
    missing: list[str] = []
    for model_dir, validations in validation_curves(folder):
        try:
            spec = parse_model_name(model_dir.name)
        except ValueError:
            continue
        if scale is not None and spec.scale != scale:
            continue
        if not validations:
            missing.append(spec.name)
        points += [{"model": spec.name, "variant": model_label(spec.name), "iteration": it, "val_psnr": psnr}
                   for it, psnr in validations]
    return points, missing


def psnr_cost_points(scale: int = 4, dataset: str = "set5", results_dir: str | Path | None = None
                     ) -> list[dict]:
    """PSNR on ``dataset`` against CPU ms (256x256) and parameters for every evaluated model, plus the
    published rows (x4 Set5/Set14 only) marked ``"source": "published"``.

    Each point: ``{"model", "label", "source", "psnr", "cpu_ms", "params"}``; ``cpu_ms``/``params`` are None
    where unknown (bicubic has no CPU time here; the references used here give no whole-model parameter counts; the CPU times
    of the released LESRCNN and FDIWN are DESIGN.md's independent measurement). Every row of one model gets the
    least CPU time measured for it on the machine that timed that row (``cpu_timed_on``; rows from before it was
    recorded count as one machine): a faster machine's time is not lent to another's row.
    """
    scale = check_scale(scale)
    points = []
    rows = (load_results(scale, results_dir) or {}).get("rows", [])
    # A network's time is one number: each run's timing picks up whatever else the machine was doing (a
    # seed's rerun measured 628 ms beside its first run's 357), so every row of a model shows the least.
    fastest: dict[tuple[str, str | None], float] = {}
    for row in rows:
        if row.get("cpu_ms_256") is not None:
            key = (row["model"], row.get("cpu_timed_on"))
            fastest[key] = min(fastest.get(key, math.inf), float(row["cpu_ms_256"]))
    for row in rows:
        if not row.get(dataset):
            continue
        name = row["model"]
        if name == BICUBIC:
            label, seed = BICUBIC, None
        else:
            label, seed = model_label(name), row.get("seed")
        # A rerun that chose its checkpoint on held-out images is named apart from a first run of the same seed.
        held_out_label = ", held-out validation" if held_out(row.get("training")) else ""
        points.append({"model": name if seed is None else f"{name} (seed {seed}{held_out_label})", "label": label,
                       "source": "this project", "psnr": float(row[dataset]["psnr"]),
                       "cpu_ms": fastest.get((name, row.get("cpu_timed_on"))), "params": row.get("params")})
    index = {"set5": 0, "set14": 1}.get(dataset)
    if scale == 4 and index is not None:
        for name, cells in PUBLISHED_X4.items():
            points.append({"model": f"{name} (published)", "label": f"{name} (published)", "source": "published",
                           "psnr": cells[index][0], "cpu_ms": RELEASED_X4_CPU.get(name), "params": None})
    return points
