"""Model cards for the Hugging Face Hub, built with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` /
``EvalResult`` from each checkpoint's ``config.json`` (training budget and measured metrics).

Each model's card carries its own ``model-index`` (one ``EvalResult`` per dataset and metric); the
repository card lists every model in a table (``ModelCardData`` holds the results of one model, so
the per-model cards are where the Hub finds them).

    python -m kaldn.cards checkpoints     # rebuild every card of a checkpoints folder from its configs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoint import CONFIG_NAME
from .models import parse_model_name, variant_of
from .registry import architecture
from .results import format_device, format_metrics, format_precision, markdown_grid, run_iterations, validation_set

CARD_NAME = "README.md"
TAGS = ["super-resolution", "depthwise-convolution", "kdsconv", "kaldn", "safetensors"]
TASK = "image-super-resolution"


def _card_data(**kwargs: Any) -> ModelCardData:
    return ModelCardData(license="mit", library_name="kaldn", pipeline_tag="image-to-image", tags=list(TAGS),
                         **kwargs)


def eval_results(metrics: dict[str, dict], scale: int) -> list[EvalResult]:
    """PSNR and SSIM (Y channel) per dataset, rounded as every table shows them."""
    results = []
    for dataset, m in metrics.items():
        for metric, digits in (("psnr", 2), ("ssim", 4)):
            results.append(EvalResult(task_type=TASK, dataset_type=dataset, dataset_name=dataset, metric_type=metric,
                                      metric_value=round(float(m[metric]), digits),
                                      metric_name=f"{metric.upper()} (Y, x{scale})"))
    return results


def _describe(config: dict[str, Any]) -> str:
    spec = parse_model_name(config["model"])
    if spec.backbone is not None:
        gated = getattr(variant_of(config["model"]), "kernel_pool", None)  # a learned gate reads the descriptors
        norm = config.get("descriptor_norm") if gated else None
        # Where it departs from the papers, which feed the raw pooled value to a gate with biases.
        gate = (f" Its kernel descriptors are normalised (`descriptor_norm: {norm}`) before a bias-free gate;\n"
                "the papers feed the raw pooled value to a gate with biases." if norm and norm != "none" else "")
        return (f"{architecture(spec.arch).label} backbone `{spec.backbone}` with the `{spec.conv}`\n"
                f"convolution inside every residual dense block, x{spec.scale}.{gate}")
    return (f"the {architecture(spec.arch).label} architecture of its paper, x{spec.scale}, implemented by this\n"
            "project (the authors' weights are not used: these were trained from scratch).")


def model_card(config: dict[str, Any]) -> ModelCard:
    """A model's card: metadata with its measured results, and its architecture, budget and numbers in words."""
    name, scale = config["model"], config["scale"]
    metrics = config.get("metrics") or {}
    data = _card_data(model_name=name, eval_results=eval_results(metrics, scale) or None)
    lines = [f"# {name}", "",
             f"Part of the kaldn model zoo: {_describe(config)} Weights trained by the kaldn project",
             f"(`python -m benchmarks.train_zoo`), loaded with `kaldn.hub.load_model(\"{name}\")`.", ""]
    budget = config.get("training")
    if budget and "iterations_done" in budget:
        planned, done = run_iterations(budget)
        how = ", ".join(filter(None, [
            # A run that moved names its threads in its device history.
            "" if budget.get("devices") else f"{budget['threads']} thread{'' if budget['threads'] == 1 else 's'}",
            format_precision(budget),
            f"EMA of the weights (decay {budget['ema']})" if budget.get("ema") else "",
            f"gradients clipped at L2 norm {budget['clip_grad']:g}" if budget.get("clip_grad") else ""]))
        chosen = f" (this checkpoint from iteration {done}, chosen on validation)" if done < planned else ""
        lines += [f"Training budget: {planned} iterations{chosen}, batch {budget['batch']}, "
                  f"LR patch {budget['patch']},",
                  f"Adam lr {budget['lr']} halved at {budget['lr_halve_at']} of the run, L1, seed {budget['seed']},",
                  f"{budget['train_images']} Sun-Hays images, {budget['wall_time_s'] / 60:.0f} min on "
                  f"{format_device(budget)}",
                  (f"({how})" if how else "")
                  + (f"; checkpoint chosen on {validation_set(budget)}." if validation_set(budget) else "."),
                  "Far below the papers' DIV2K budget: compare with the other zoo models, not with published "
                  "numbers.", ""]
    if metrics:
        lines += ["Evaluation (DESIGN.md protocol, `python -m kaldn.evaluate`), PSNR dB / SSIM on Y:"]
        lines += [f"- {d}: {format_metrics(m)}" for d, m in metrics.items()]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def repo_card(folder: str | Path) -> ModelCard:
    """The repository's card: every model of ``folder`` with its metrics, one row each."""
    configs = [json.loads(p.read_text()) for p in sorted(Path(folder).glob(f"*/{CONFIG_NAME}"))]
    datasets = list(dict.fromkeys(d for c in configs for d in c.get("metrics") or {}))
    table = markdown_grid(["model", *datasets], [[f"`{c['model']}`", *(format_metrics((c.get("metrics") or {}).get(d))
                                                                 for d in datasets)] for c in configs])
    body = ("# kaldn model zoo\n\nOne subfolder per model: `model.safetensors`, `config.json` (architecture, "
            "training budget, measured metrics) and a model card with its results. Load with "
            "`kaldn.hub.load_model(NAME)`; numbers are Y-channel PSNR dB / SSIM by the protocol in the kaldn "
            "README, made by `python -m kaldn.evaluate`. Trained on a small CPU budget: compare the models with "
            "each other, not with published DIV2K-trained numbers.\n\n"
            f"{table}\n")
    return ModelCard(f"---\n{_card_data().to_yaml()}\n---\n\n{body}")


def write_cards(folder: str | Path, models: Sequence[str] | None = None) -> list[str]:
    """(Re)write the card of every model in ``folder`` (or only ``models``) and the repository card."""
    folder = Path(folder)
    written = []
    for config_path in sorted(folder.glob(f"*/{CONFIG_NAME}")):
        config = json.loads(config_path.read_text())
        if models is not None and config["model"] not in models:
            continue
        model_card(config).save(config_path.parent / CARD_NAME)
        written.append(config["model"])
    repo_card(folder).save(folder / CARD_NAME)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kaldn cards", description="Rebuild the model cards of a checkpoints "
                                     "folder from each model's config.json.")
    parser.add_argument("folder", nargs="?", default="checkpoints")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: {args.folder}: no such folder", file=sys.stderr)
        return 2
    names = write_cards(args.folder)
    print(f"wrote {len(names)} model cards and the repository card in {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
