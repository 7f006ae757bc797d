"""Where unfinished training runs stand: iteration, speed, hours left, the validation curve, and
optionally the protocol PSNR of the best checkpoint so far.

    python -m benchmarks.progress                 # every resumable run under runs/zoo and training/in-progress
    python -m benchmarks.progress runs/zoo/x4/small-kdsconv-det-x4-s0 --datasets set5
    python -m benchmarks.progress runs/zoo/x4/small-kdsconv-det-x4-s0 --ema-vs-raw

A run is a ``kaldn.train`` output folder with a resumable state. Speed is the median of the
last 50 logged it/s values, so it is the speed under whatever load the machine had then;
hours left = iterations left / that speed. The slope is validation PSNR gained per 1,000
iterations between the last two validations: the learning rate still halves at 50/70/85/95 %
of a run, which usually adds more, so read it as a trend, not a forecast. Loss spikes (a logged
training loss over 3x the median of the 100 before it) are listed: a spike can set the weights
back for a thousand iterations or more, which the validation curve then shows as a dip.

Each run is also set beside the runs it is compared with by a registered claim (``KDSConv (det) beats
linear DSConv``), where the other side trained under the same budget: another run here, or a bundled
checkpoint's shipped log. The margin is read at every iteration both sides validated at. Held-out validation
PSNR on a few images, so a trend to watch, not the claim's verdict: that is checked on the test sets once
the run ships (``kaldn.evaluate``).

``--ema-vs-raw`` answers whether a run's weight average pays: a state trained with ``--ema`` holds
both the raw weights and their average at the same iteration, and both are validated on the run's
own validation set (what training would log for each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from kaldn.checkpoint import CONFIG_NAME, CheckpointError, load_checkpoint, read_config
from kaldn.data import DATASETS, dataset_folder, load_pairs
from kaldn.evaluate import evaluate_model
from kaldn.models import ModelSpec, model_label, parse_model_name, variants
from kaldn.results import (LOG_NAME, comparable_budget, format_device, format_metrics, format_precision, log_events,
                           validation_curves, validation_psnrs)
from kaldn.train import STATE_NAME, data_sources, load_validation, saved_state, validate

ROOTS = ("runs/zoo", "training/in-progress")  # live runs first: a committed copy of the same run is older
SPEED_WINDOW = 50
SPIKE_FACTOR, SPIKE_WINDOW = 3.0, 100
PRECURSOR_STEPS = 5  # logged steps (every 10th iteration) before a spike whose gradient norms are reported


def loss_spikes(steps: list[dict], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW) -> list[tuple[int, float, float]]:
    """(iteration, loss, loss / running median) for each logged loss over ``factor`` x the median of the
    ``window`` logged before it; a resumed run's re-logged iterations count once (the later entry)."""
    by_iteration = {int(s["iteration"]): float(s["loss"]) for s in steps if s.get("loss") is not None}
    losses = sorted(by_iteration.items())
    spikes = []
    for i, (iteration, loss) in enumerate(losses):
        before = [value for _, value in losses[max(0, i - window):i]]
        if len(before) >= 10 and loss > factor * (median := statistics.median(before)):
            spikes.append((iteration, loss, loss / median))
    return spikes


def _logged_norms(steps: list[dict]) -> dict[int, float]:
    """Iteration -> logged gradient norm, once per iteration (a resumed run logs some twice)."""
    return {int(s["iteration"]): float(s["grad_norm"]) for s in steps if s.get("grad_norm")}


def gradient_at_spikes(steps: list[dict], spikes: list[tuple[int, float, float]], window: int = SPIKE_WINDOW,
                       lookback: int = PRECURSOR_STEPS) -> list[tuple[int, float, float]]:
    """(iteration, gradient norm / its running median at the spike, the largest such ratio over the ``lookback``
    logged steps before it) for the first spike of each burst, where the log has gradient norms: how sudden the
    blow-up was, and what a clipping threshold would have had to be to touch the steps leading into it."""
    norms = sorted(_logged_norms(steps).items())
    index = {iteration: i for i, (iteration, _) in enumerate(norms)}
    spiked = {iteration for iteration, _, _ in spikes}
    out = []
    for iteration, _, _ in spikes:
        i = index.get(iteration)
        if i is None or i < 10 + lookback or spiked & {it for it, _ in norms[i - lookback:i]}:
            continue  # too little history, or the tail of the spike just before it
        median = statistics.median(value for _, value in norms[max(0, i - lookback - window):i - lookback])
        before = max(value for _, value in norms[i - lookback:i])
        out.append((iteration, norms[i][1] / median, before / median))
    return out


def gradient_norms(steps: list[dict]) -> dict | None:
    """The logged gradient norms' median, 99th percentile and largest (with its iteration): the scale a
    ``--clip-grad`` threshold is chosen on; None for a log without them."""
    norms = _logged_norms(steps)
    if len(norms) < 2:
        return None
    values = sorted(norms.values())
    top = max(norms, key=norms.get)
    return {"count": len(values), "median": statistics.median(values),
            # inclusive: never beyond the largest logged value (the default extrapolates for short logs)
            "p99": statistics.quantiles(values, n=100, method="inclusive")[98], "max": norms[top], "max_at": top}


def find_runs(roots: tuple[str | Path, ...] = ROOTS) -> list[Path]:
    """Folders ``ROOT/x<scale>/<run>`` holding a resumable state; a run name found under two roots is taken
    from the first."""
    found: dict[Path, Path] = {}
    for root in roots:
        for state in sorted(Path(root).glob(f"x*/*/{STATE_NAME}")):
            found.setdefault(state.parent.relative_to(root), state.parent)  # x4/<run>: the same run in each root
    return list(found.values())


def run_progress(folder: str | Path) -> dict:
    """What a run's log and checkpoint configs say: target and done iterations, speed, hours left, validations."""
    folder = Path(folder)
    steps = log_events(folder / LOG_NAME, "step")
    config = next((read_config(folder / sub / CONFIG_NAME) for sub in ("last", "best")
                   if (folder / sub / CONFIG_NAME).is_file()), {})
    training = config.get("training") or {}
    validations = validation_psnrs(folder / LOG_NAME)
    done = max([int(s["iteration"]) for s in steps] + [it for it, _ in validations], default=0)
    speeds = [float(s["it_per_s"]) for s in steps[-SPEED_WINDOW:] if s.get("it_per_s")]
    speed = statistics.median(speeds) if speeds else None
    state = saved_state(folder)
    # Before its first validation a run has no checkpoint to say its target; its state's settings do.
    target = training.get("iterations") or ((state or {}).get("config") or {}).get("iters")
    slope = None
    if len(validations) >= 2:
        (i0, p0), (i1, p1) = validations[-2:]
        slope = 1000 * (p1 - p0) / (i1 - i0) if i1 > i0 else None
    return {"run": str(folder), "model": config.get("model", folder.name), "scale": config.get("scale"),
            "training": training, "target": target, "done": done, **_state_summary(state), "it_per_s": speed,
            "hours_left": (target - done) / speed / 3600 if target and speed else None,
            "validations": validations, "slope_per_1000": slope, "spikes": (spikes := loss_spikes(steps)),
            "spike_gradients": gradient_at_spikes(steps, spikes), "gradient_norms": gradient_norms(steps),
            "best": str(folder / "best") if (folder / "best" / CONFIG_NAME).is_file() else None}


def _state_summary(meta: dict | None) -> dict:
    """The iteration a resume starts from (the log may run past it: a run saves every few hundred) and the
    precisions and devices the state was trained in (``meta``: its saved metadata, None where unreadable)."""
    try:
        return {"resumes_at": int(meta["iteration"]), "precision": format_precision(meta),
                "device": format_device(meta) if len(meta.get("devices") or []) > 1 else ""}  # only if it moved
    except (KeyError, TypeError, ValueError):  # missing or damaged: nothing to say
        return {"resumes_at": None, "precision": "", "device": ""}


def ema_vs_raw(folder: str | Path) -> dict | None:
    """Validation PSNR of the state's raw weights and of their EMA, at the state's iteration; None for a run
    without ``--ema``. The validation set is rebuilt from the run's recorded settings, as training built it."""
    folder = Path(folder)
    with safe_open(str(folder / STATE_NAME), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("model.", "ema.module."))}
    if not any(k.startswith("ema.") for k in tensors):
        return None
    training = read_config(folder / "best" / CONFIG_NAME)["training"]
    settings = meta["config"]
    model = load_checkpoint(folder / "best")
    _, held = data_sources(training["data"], settings["val"], settings["val_holdout"])
    pairs = load_validation(held, model.config["scale"])
    scores = {}
    for name, prefix in (("raw", "model."), ("ema", "ema.module.")):
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        scores[name] = validate(model, pairs, model.config["scale"], torch.device("cpu"))["val_psnr"]
    return {"iteration": meta["iteration"], "ema_decay": settings["ema"], "images": len(pairs), **scores}


def bundled_curves(folder: str | Path | None = None) -> list[dict]:
    """The bundled checkpoints as curves to compare with: ``{"run", "model", "training", "validations"}``;
    a folder without a readable config, a recorded budget or a validation log is left out."""
    curves = []
    for model_dir, validations in validation_curves(folder):
        try:
            config = read_config(model_dir / CONFIG_NAME)
        except CheckpointError:
            continue
        if validations and isinstance(config.get("training"), dict) and config["training"]:
            curves.append({"run": f"{model_dir.parent.name}/{model_dir.name}",
                           "model": config.get("model", model_dir.name),
                           "training": config["training"], "validations": validations})
    return curves


def _counterpart(spec: ModelSpec, key: str) -> str | None:
    """The model a claim sets against ``spec``: variant ``key`` at the same scale, on the same backbone (a
    peer's rival on the family's default one); None for a variant no longer registered."""
    other = next((v for v in variants() if v.key == key), None)
    if other is None:
        return None
    if other.backbone is None:
        return ModelSpec(other.arch, spec.scale).name
    return ModelSpec(other.arch, spec.scale, spec.backbone or other.backbone, key).name


def claims_so_far(progress: dict, curves: list[dict]) -> list[str]:
    """For each registered claim the run is a side of, the margin (better side minus worse) on the validation
    curves so far, against the first of ``curves`` that is the other side under the same budget."""
    try:
        spec = parse_model_name(progress["model"])
    except ValueError:
        return []
    if not progress.get("training"):  # no recorded budget: nothing to be equal to
        return []
    budget = comparable_budget(progress["training"])
    mine = dict(progress["validations"])
    lines = []
    for better, worse, text in [(v.key, c.other, c.text) for v in variants() for c in v.claims]:
        if spec.variant not in (better, worse):
            continue
        other_name = _counterpart(spec, worse if spec.variant == better else better)
        other = next((c for c in curves if other_name and c["model"] == other_name and c.get("training")
                      and comparable_budget(c["training"]) == budget), None)
        if other is None:
            continue
        theirs = dict(other["validations"])
        common = sorted(set(mine) & set(theirs))
        if not common:
            continue
        sign = 1 if spec.variant == better else -1
        margins = [(it, sign * (mine[it] - theirs[it])) for it in common]
        last_it, last = margins[-1]
        earlier = ", ".join(f"{m:+.3f} @ {it:,}" for it, m in margins[:-1])
        lines.append(f"  {text}? so far {last:+.3f} dB at {last_it:,}" + (f" ({earlier})" if earlier else "")
                     + f", against {model_label(other_name)} ({other['run']})")
    return lines


def describe(progress: dict) -> str:
    target = f" of {progress['target']:,}" if progress["target"] else ""
    finished = bool(progress["target"]) and progress["done"] >= progress["target"]
    resumes = progress["resumes_at"]
    state = f" (its state resumes at {resumes:,})" if resumes is not None and resumes != progress["done"] else ""
    lines = [f"{progress['model']} ({progress['run']}): iteration {progress['done']:,}{target}"
             + (" (finished)" if finished else state)]
    if progress["it_per_s"] is not None and not finished:
        left = f", {progress['hours_left']:.1f} h left at that speed" if progress["hours_left"] is not None else ""
        lines.append(f"  speed {progress['it_per_s']:.2f} it/s (median of the last {SPEED_WINDOW} logged){left}")
    if progress.get("precision"):
        lines.append(f"  precision: {progress['precision']}")
    if progress.get("device"):
        lines.append(f"  device: {progress['device']}")
    if progress["validations"]:
        curve = ", ".join(f"{psnr:.3f} @ {it:,}" for it, psnr in progress["validations"])
        lines.append(f"  validation PSNR (dB): {curve}")
    if progress["slope_per_1000"] is not None:
        lines.append(f"  last slope: {progress['slope_per_1000']:+.3f} dB per 1,000 iterations")
    if progress.get("spikes"):
        listed = ", ".join(f"{it:,} ({loss:.3f}, {ratio:.0f}x)" for it, loss, ratio in progress["spikes"])
        lines.append(f"  loss spikes (over {SPIKE_FACTOR:g}x the running median): {listed}")
    if progress.get("spike_gradients"):
        listed = ", ".join(f"{it:,} ({at:,.0f}x; up to {before:.1f}x in the {PRECURSOR_STEPS} logged steps before)"
                           for it, at, before in progress["spike_gradients"])
        lines.append(f"  gradient norm at those spikes, over its running median: {listed}")
    if progress.get("gradient_norms"):
        g = progress["gradient_norms"]
        lines.append(f"  gradient norm over the {g['count']:,} logged steps: median {g['median']:.4f}, "
                     f"99th percentile {g['p99']:.4f}, largest {g['max']:.3f} at {g['max_at']:,}")
    if progress.get("so_far"):
        lines.append("  claims on the validation curves so far (better side minus worse, same budget):")
        lines += ["  " + line for line in progress["so_far"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders (default: every resumable run under "
                                                f"{' and '.join(ROOTS)})")
    parser.add_argument("--datasets", nargs="*", default=[], help=f"also evaluate each run's best checkpoint on "
                                                                  f"these ({', '.join(DATASETS)})")
    parser.add_argument("--ema-vs-raw", action="store_true",
                        help="validate the state's raw weights beside their EMA (runs trained with --ema)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [Path(r) for r in args.runs] or find_runs()
    if not runs:
        print(f"no resumable runs under {' or '.join(ROOTS)}")
        return 0
    missing = [folder for folder in runs if not folder.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a folder", file=sys.stderr)
        return 2
    progresses = [run_progress(folder) for folder in runs]
    live = []
    for folder in find_runs():
        if folder in runs:  # read above (the default: every run found)
            continue
        try:
            live.append(run_progress(folder))
        except CheckpointError as exc:  # another run's damaged config does not stop this report
            print(f"note: {folder} left out of the comparisons: {exc}", file=sys.stderr)
    # Runs named here and live ones first (a committed state of the same run is older), then what shipped.
    curves = progresses + live + bundled_curves()
    pairs: dict[int, dict[str, list]] = {}  # scale -> the datasets' image pairs, loaded once
    for folder, progress in zip(runs, progresses):
        progress["so_far"] = claims_so_far(progress, curves)
        print(describe(progress))
        if args.datasets and progress["best"] and progress["scale"]:
            scale = int(progress["scale"])
            if scale not in pairs:
                pairs[scale] = {name: load_pairs(dataset_folder(name), scale) for name in args.datasets}
            datasets = pairs[scale]
            row = evaluate_model(progress["best"], datasets, scale, timing=False)
            at = (row.get("training") or {}).get("iterations_done")
            at = "unrecorded" if at is None else f"{at:,}"
            print(f"  best checkpoint (iteration {at}): "
                  + ", ".join(f"{d} {format_metrics(row[d])}" for d in datasets))
        if args.ema_vs_raw and (folder / STATE_NAME).is_file() and (folder / "best" / CONFIG_NAME).is_file():
            pair = ema_vs_raw(folder)
            print("  no EMA in this run" if pair is None else
                  f"  at iteration {pair['iteration']:,}, validation PSNR on {pair['images']} images: raw weights "
                  f"{pair['raw']:.3f} dB, EMA {pair['ema_decay']:g} {pair['ema']:.3f} dB "
                  f"({pair['ema'] - pair['raw']:+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
