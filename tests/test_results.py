"""The results tables (kaldn.results) and the model cards (kaldn.cards)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from kaldn.cards import model_card, repo_card, write_cards
from kaldn.checkpoint import save_checkpoint
from kaldn.hub import bundled_dir
from kaldn.models import count_parameters, create_model
from kaldn.results import PUBLISHED_X4, featured_budget, format_budget, format_count, psnr_cost_points, training_curves, zoo_table


def test_zoo_table_lists_measured_numbers_and_budgets(tmp_path):
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "seed": 0, "wall_time_s": 600.0, "device": "cpu"}
    for name, psnr in (("tiny-kdsconv-det-x2", 33.5), ("tiny-dsconv-x2", 33.25), ("tiny-ldsconv-x4", 30.45)):
        save_checkpoint(tmp_path / name, create_model(name),
                        {"metrics": {"set5": {"psnr": psnr, "ssim": 0.9}}, "training": budget})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    no_results = tmp_path / "no-results"  # no results/x{s}.json: every row from its config
    headers, rows = zoo_table(tmp_path, results_dir=no_results)
    by_model = {r[0]: dict(zip(headers, r)) for r in rows}
    assert [r[0] for r in rows] == ["tiny-dsconv-x2", "tiny-kdsconv-det-x2", "tiny-ldsconv-x4"]  # scale, then variant
    row = by_model["tiny-kdsconv-det-x2"]
    assert row["set5 PSNR / SSIM"] == "33.50 / 0.9000" and row["set14 PSNR / SSIM"] == "-"
    assert row["Params"] == format_count(count_parameters(create_model("tiny-kdsconv-det-x2")))
    assert row["Training budget"] == "4000 it, batch 16, patch 32, 10 min on cpu" and row["Seed"] == "0"
    assert format_budget({**budget, "val": "../shared/data/val/bsd68"}).endswith("; validated on bsd68")
    held_out = {**budget, "val": "data: every 10th image held out (8 images)", "val_images": 8}
    assert format_budget(held_out).endswith("; validated on 8 held-out training images")
    # A long run whose validation chose an earlier checkpoint: its budget is the run's, and says where it chose.
    early = {**budget, "iterations": 30000, "iterations_done": 12000}
    assert format_budget(early).startswith("30000 it (checkpoint from 12000, 10 min in), batch 16, patch 32, on cpu")
    assert format_budget({**budget, "iterations": 4000}) == row["Training budget"]
    assert row["Weights"] == "bundled"
    assert [r[0] for r in zoo_table(tmp_path, scale=4, results_dir=no_results)[1]] == ["tiny-ldsconv-x4"]
    assert zoo_table(tmp_path, scale="all", results_dir=no_results) == (headers, rows)
    with pytest.raises(ValueError, match="scale must be one of"):
        zoo_table(tmp_path, scale=5)


def test_zoo_table_from_evaluate_results_has_bicubic_second_seeds_fused_counts_and_costs(tmp_path):
    ckpts, results = tmp_path / "ckpts", tmp_path / "results"
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "seed": 0, "wall_time_s": 600.0, "device": "cpu"}
    save_checkpoint(ckpts / "tiny-kdsconv-det-x4", create_model("tiny-kdsconv-det-x4"), {"training": budget})
    cell = {"psnr": 30.5, "ssim": 0.86}
    rows = [{"model": "bicubic", "params": 0, "set5": {"psnr": 28.43, "ssim": 0.81}},
            {"model": "tiny-kdsconv-det-x4", "seed": 0, "params": 142992, "multiply_adds_256": 7220494336,
             "cpu_ms_256": 1357.4, "training": budget, "set5": cell},
            {"model": "tiny-kdsconv-det-x4", "seed": 1, "params": 142992, "multiply_adds_256": 7220494336,
             "cpu_ms_256": 323.0, "training": {**budget, "seed": 1}, "set5": cell},
            {"model": "tiny-kdsconv-det-x4", "seed": 0, "set5": cell,  # a rerun that chose on held-out images
             "training": {**budget, "val": "data: every 10th image held out (8 images)", "val_images": 8}}]
    results.mkdir()
    (results / "x4.json").write_text(json.dumps({"scale": 4, "datasets": ["set5"], "rows": rows}))
    headers, table = zoo_table(ckpts, scale=4, results_dir=results)
    got = [dict(zip(headers, r)) for r in table]
    assert [(r["Model"], r["Seed"]) for r in got] == [("bicubic", "-"), ("tiny-kdsconv-det-x4", "0"),
                                                      ("tiny-kdsconv-det-x4", "0"), ("tiny-kdsconv-det-x4", "1")]
    assert [r["Weights"] for r in got[1:3]] == ["bundled", "not shipped (results only)"]  # the same seed, rerun
    got = [got[0], got[1], got[3]]
    assert got[0]["set5 PSNR / SSIM"] == "28.43 / 0.8100" and got[0]["Params"] == "0"
    kds = got[1]
    fused = format_count(count_parameters(create_model("tiny-ldsconv-x4")))  # fused KDSConv = linear DSConv
    assert kds["Params"] == "142,992" and kds["Params (fused)"] == fused != kds["Params"]
    assert kds["MACs (256²)"] == "7.22 G" and kds["CPU ms (256²)"] == "1,357"
    assert kds["Weights"] == "bundled" and got[2]["Weights"].startswith("not shipped")


def test_zoo_table_keeps_the_bundled_run_beside_a_rerun_of_the_same_model(tmp_path):
    ckpts, results = tmp_path / "ckpts", tmp_path / "results"
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "seed": 0, "wall_time_s": 600.0, "device": "cpu",
              "val": "../shared/data/val/bsd68"}
    save_checkpoint(ckpts / "tiny-kdsconv-det-x4", create_model("tiny-kdsconv-det-x4"),
                    {"training": budget, "metrics": {"set5": {"psnr": 30.62, "ssim": 0.86}}})
    rerun = {"model": "tiny-kdsconv-det-x4", "seed": 0, "set5": {"psnr": 30.59, "ssim": 0.86},
             "training": {**budget, "val": "data: every 10th image held out (8 images)", "val_images": 8}}
    results.mkdir()
    (results / "x4.json").write_text(json.dumps({"scale": 4, "datasets": ["set5"], "rows": [rerun]}))
    headers, table = zoo_table(ckpts, scale=4, results_dir=results)
    got = sorted((r[headers.index("Weights")], r[headers.index("Training budget")].rsplit("; ", 1)[1]) for r in table)
    assert got == [("bundled", "validated on bsd68"), ("not shipped (results only)",
                                                        "validated on 8 held-out training images")]


def test_training_curves_read_the_log_beside_a_checkpoint(tmp_path):
    for name in ("tiny-dsconv-x4", "tiny-ldsconv-x4", "tiny-ldsconv-x2"):
        save_checkpoint(tmp_path / name, create_model(name), {})
    events = [{"event": "step", "iteration": 10, "loss": 0.1},
              {"event": "validation", "iteration": 200, "val_psnr": 27.5, "wall_time_s": 60.0},
              {"event": "validation", "iteration": 100, "val_psnr": 26.0, "wall_time_s": 30.0}]
    lines = [json.dumps(e) for e in events] + ['{"event": "validation", "iter']  # an interrupted last line
    (tmp_path / "tiny-dsconv-x4" / "log.jsonl").write_text("\n".join(lines))
    points, missing = training_curves(tmp_path, scale=4)
    assert [(p["model"], p["iteration"], p["val_psnr"]) for p in points] == [
        ("tiny-dsconv-x4", 100, 26.0), ("tiny-dsconv-x4", 200, 27.5)]
    assert points[0]["variant"] == "DSConv" and missing == ["tiny-ldsconv-x4"]
    assert training_curves(tmp_path)[1] == ["tiny-ldsconv-x2", "tiny-ldsconv-x4"]


def test_psnr_cost_points_mark_the_published_rows(tmp_path):
    rows = [{"model": "bicubic", "params": 0, "set5": {"psnr": 28.43, "ssim": 0.81}},
            {"model": "tiny-dsconv-x4", "seed": 1, "params": 112272, "cpu_ms_256": 300.0,
             "set5": {"psnr": 30.4, "ssim": 0.86}},
            {"model": "small-dsconv-x4", "seed": 0, "set5": {"psnr": 30.9, "ssim": 0.87}},
            {"model": "tiny-dsconv-x4", "seed": 0, "params": 112272, "cpu_ms_256": 520.0,
             "set5": {"psnr": 30.3, "ssim": 0.86}},
            {"model": "scnet-t-x4", "seed": 0, "set5": {"psnr": 30.5, "ssim": 0.86},
             "training": {"val": "data: every 10th image held out (8 images)", "val_images": 8}}]
    (tmp_path / "x4.json").write_text(json.dumps({"scale": 4, "datasets": ["set5"], "rows": rows}))
    points = psnr_cost_points(4, "set5", tmp_path)
    ours = [p for p in points if p["source"] == "this project"]
    published = [p for p in points if p["source"] == "published"]
    assert [p["model"] for p in ours] == ["bicubic", "tiny-dsconv-x4 (seed 1)", "small-dsconv-x4 (seed 0)",
                                          "tiny-dsconv-x4 (seed 0)", "scnet-t-x4 (seed 0, held-out validation)"]
    # one network, one time: both seeds show the least measured (a timing disturbed by load is not kept)
    assert ours[1]["cpu_ms"] == ours[3]["cpu_ms"] == 300.0 and ours[2]["cpu_ms"] is None
    # one colour per model kind: a small and a tiny DSConv are told apart, a peer is named by its architecture
    assert [p["label"] for p in ours] == ["bicubic", "DSConv", "DSConv, small", "DSConv", "SCNet-T"]
    assert len(published) == len(PUBLISHED_X4) and all(p["params"] is None for p in published)
    assert {p["model"]: p["psnr"] for p in published}["KALDN (published)"] == PUBLISHED_X4["KALDN"][0][0]
    assert [p["model"] for p in published if p["cpu_ms"]] == ["LESRCNN (published)", "FDIWN (published)"]
    # ... on one machine: a row timed on another keeps its own machine's time.
    rows.append({**rows[1], "seed": 2, "cpu_ms_256": 450.0, "cpu_timed_on": "another CPU, AVX2 kernels, 2 threads"})
    (tmp_path / "x4.json").write_text(json.dumps({"scale": 4, "datasets": ["set5"], "rows": rows}))
    times = {p["model"]: p["cpu_ms"] for p in psnr_cost_points(4, "set5", tmp_path)}
    assert times["tiny-dsconv-x4 (seed 2)"] == 450.0 and times["tiny-dsconv-x4 (seed 0)"] == 300.0
    (tmp_path / "x2.json").write_text(json.dumps({"scale": 2, "datasets": ["set5"], "rows": rows[:1]}))
    assert [p["source"] for p in psnr_cost_points(2, "set5", tmp_path)] == ["this project"]  # x4 only published


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
    assert "autocast" not in loaded.text and "chosen on" not in loaded.text  # not recorded, not claimed
    fp32 = _config("tiny-kdsconv-det-x2", metrics)
    fp32["training"]["precision"] = "fp32"
    assert "(1 thread, fp32)" in str(model_card(fp32))
    assert "EMA" not in loaded.text and "descriptor_norm" not in loaded.text  # neither recorded
    shown = str(model_card({**fp32, "descriptor_norm": "standardize",
                            "training": {**fp32["training"], "ema": 0.999}}))
    assert "(1 thread, fp32, EMA of the weights (decay 0.999))" in shown
    assert "normalised (`descriptor_norm: standardize`)" in shown and "raw pooled value" in shown
    peer = _config("scnet-t-x4", metrics)
    peer["training"].update(precision="bf16", val="data: every 10th image held out (8 images)", val_images=8)
    text = str(model_card({**peer, "scale": 4}))
    assert "SCNet-T architecture" in text and "trained from scratch" in text
    assert "bf16 autocast" in text and "checkpoint chosen on 8 held-out training images" in text


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


def test_featured_budget_reads_the_bundled_featured_model_and_its_tiny_sibling(tmp_path, caplog):
    def save(name: str, training: dict) -> None:
        save_checkpoint(tmp_path / name, create_model(name), {"training": training})

    assert featured_budget(tmp_path) is None  # nothing featured bundled: the app says nothing about it
    save("small-kdsconv-det-x4", {"iterations": 30000, "iterations_done": 0, "patch": 48, "ema": 0.999})
    assert featured_budget(tmp_path) is None  # a config no sentence can be made from is skipped, with a warning
    assert "small-kdsconv-det-x4" in caplog.text
    save("small-kdsconv-det-x4", {"iterations": 30000, "iterations_done": 9000, "patch": 48, "ema": 0.999})
    assert featured_budget(tmp_path)["times_base"] is None  # no tiny sibling to compare the iterations with
    save("tiny-kdsconv-det-x4", {"iterations_done": 6000, "patch": 32})
    save("small-ldsconv-x4", {"iterations": 30000, "iterations_done": 11000, "patch": 48})  # not featured
    budget = featured_budget(tmp_path)
    assert budget["model"] == "small-kdsconv-det-x4"
    assert (budget["iterations"], budget["iterations_done"], budget["times_base"]) == (30000, 9000, 1.5)
    assert (budget["num_features"], budget["num_blocks"], budget["patch"], budget["ema"]) == (48, 6, 48, 0.999)
    assert budget["same_backbone"] == ["small-ldsconv-x4"]  # what the small row can be compared with
    bundled = featured_budget()  # the app's sentence about the bundled default model
    training = json.loads((bundled_dir() / bundled["model"] / "config.json").read_text())["training"]
    assert (bundled["iterations"], bundled["iterations_done"]) == (training["iterations"], training["iterations_done"])
