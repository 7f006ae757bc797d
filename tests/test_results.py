"""The results tables (kaldn.results) and the model cards (kaldn.cards)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from kaldn.cards import model_card, repo_card, write_cards
from kaldn.checkpoint import save_checkpoint
from kaldn.hub import bundled_dir
from kaldn.models import count_parameters, create_model
from kaldn.results import zoo_table


def test_zoo_table_lists_measured_numbers_and_budgets(tmp_path):
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "seed": 0, "wall_time_s": 600.0, "device": "cpu"}
    for name, psnr in (("tiny-kdsconv-det-x2", 33.5), ("tiny-dsconv-x2", 33.25), ("tiny-ldsconv-x4", 30.45)):
        save_checkpoint(tmp_path / name, create_model(name),
                        {"metrics": {"set5": {"psnr": psnr, "ssim": 0.9}}, "training": budget})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    headers, rows = zoo_table(tmp_path)
    by_model = {r[0]: dict(zip(headers, r)) for r in rows}
    assert [r[0] for r in rows] == ["tiny-dsconv-x2", "tiny-kdsconv-det-x2", "tiny-ldsconv-x4"]  # scale, then variant
    row = by_model["tiny-kdsconv-det-x2"]
    assert row["set5 PSNR / SSIM"] == "33.50 / 0.9000" and row["set14 PSNR / SSIM"] == "-"
    assert row["Params"] == count_parameters(create_model("tiny-kdsconv-det-x2"))
    assert row["Training budget"] == "4000 it, batch 16, patch 32, seed 0, 10 min on cpu"
    assert [r[0] for r in zoo_table(tmp_path, scale=4)[1]] == ["tiny-ldsconv-x4"]
    assert zoo_table(tmp_path, scale="all") == (headers, rows)
    with pytest.raises(ValueError, match="scale must be one of"):
        zoo_table(tmp_path, scale=5)


def _config(name: str, metrics: dict) -> dict:
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "lr": 0.001, "lr_halve_at": [0.5, 0.7],
              "seed": 0, "train_images": 80, "wall_time_s": 780.0, "device": "cpu", "threads": 1}
    spec = {"model": name, "backbone": "tiny", "conv": "kdsconv-det", "scale": 2}
    return {**spec, "training": budget, "metrics": metrics}


def test_model_card_metadata_carries_the_measured_numbers(tmp_path):
    metrics = {"set5": {"psnr": 36.44512, "ssim": 0.953456}, "set14": {"psnr": 32.1, "ssim": 0.9}}
    card = model_card(_config("tiny-kdsconv-det-x2", metrics))
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")  # what the Hub reads
    assert loaded.data.library_name == "kaldn" and loaded.data.model_name == "tiny-kdsconv-det-x2"
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values == {("set5", "psnr"): 36.45, ("set5", "ssim"): 0.9535, ("set14", "psnr"): 32.1,
                      ("set14", "ssim"): 0.9}
    assert "- set5: 36.45 / 0.9535" in loaded.text and "4000 iterations, batch 16" in loaded.text


def test_write_cards_rebuilds_every_card_and_the_repo_card(tmp_path):
    for name, psnr in (("tiny-kdsconv-det-x2", 36.4), ("tiny-dsconv-x2", 36.3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(_config(name, {"set5": {"psnr": psnr, "ssim": 0.9}})))
    assert write_cards(tmp_path) == ["tiny-dsconv-x2", "tiny-kdsconv-det-x2"]
    repo = ModelCard.load(tmp_path / "README.md")
    assert repo.data.library_name == "kaldn" and "| `tiny-dsconv-x2` | 36.30 / 0.9000 |" in repo.text


SHIPPED = sorted(p.parent.name for p in bundled_dir().glob("*/config.json"))


@pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")
def test_shipped_cards_are_what_the_configs_give():
    """The cards in checkpoints/ are rebuilt from the configs (``python -m kaldn.cards``), not edited by hand."""
    root = bundled_dir()
    for name in SHIPPED:
        config = json.loads((root / name / "config.json").read_text())
        assert (root / name / "README.md").read_text() == str(model_card(config)), name
    assert (root / "README.md").read_text() == str(repo_card(root))
