"""Publishing evaluated models: their checkpoints, metrics and model cards into the Hub-shaped bundle
(``checkpoints/``), and their tables into README. ``python -m kaldn.evaluate --ship DIR --readme FILE`` calls these
after it measures."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .cards import CARD_NAME, model_card, repo_card
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, write_json
from .models import BICUBIC
from .results import LOG_NAME, run_identity, validation_events, validation_set

__all__ = ["replace_block", "ship"]


def ship(rows: list[dict], dataset_names: list[str], scale: int, destination: Path) -> list[str]:
    """Copy seed-0 checkpoints into the Hub-shaped ``checkpoints/`` folder with their metrics and model cards."""
    shipped = []
    for row in rows:
        if row["model"] == BICUBIC or row.get("seed") not in (0, None):
            continue
        if row.get("weights_origin") == "third-party":  # the authors' weights are never shipped
            print(f"not shipped: {row['source']} holds third-party weights", file=sys.stderr)
            continue
        source = Path(row["source"])
        target = destination / row["model"]
        if (target / CONFIG_NAME).is_file():  # a rerun (another validation set) never replaces a bundled run
            bundled = json.loads((target / CONFIG_NAME).read_text()).get("training") or {}
            if run_identity(bundled.get("seed"), bundled) != run_identity(row.get("seed"), row.get("training")):
                print(f"not shipped: {target} holds another run of {row['model']} (validated on "
                      f"{validation_set(bundled) or 'nothing recorded'}); remove that folder to replace it",
                      file=sys.stderr)
                continue
        target.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            shutil.copyfile(source / WEIGHTS_NAME, target / WEIGHTS_NAME)
        config = json.loads((source / CONFIG_NAME).read_text())
        config["metrics"] = {d: row[d] for d in dataset_names}
        # The run's validation curve goes along (the Results tab draws it); the run folder holds the log.
        log = next((p for p in (source / LOG_NAME, source.parent / LOG_NAME) if p.is_file()), None)
        if log is not None:
            (target / LOG_NAME).write_text("".join(f"{json.dumps(e)}\n" for e in validation_events(log)))
        write_json(target / CONFIG_NAME, config)
        model_card(config).save(target / CARD_NAME)
        shipped.append(row["model"])
    repo_card(destination).save(destination / CARD_NAME)  # over every model now in the folder
    return shipped


def replace_block(path: Path, marker: str, content: str) -> None:
    """Replace what stands between ``<!-- marker -->`` and ``<!-- /marker -->`` in a Markdown file."""
    text = path.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"{path}: markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{content}\n{end}{tail}")
