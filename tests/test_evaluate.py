"""Evaluation: the CLI, the claims logic, and the shipped checkpoints against their own numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kaldn.checkpoint import save_checkpoint
from kaldn.data import dataset_folder, load_pairs
from kaldn.evaluate import bicubic_row, evaluate_model, main
from kaldn.hub import available_models, bundled_dir, load_model
from kaldn.models import create_model, variant
from kaldn.results import claims, claims_table


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    images = tmp_path / "hr"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", create_model("tiny-ldsconv-x2"))
    code = main(["--models", str(tmp_path / "ckpt"), "--datasets", str(images), "--scale", "2",
                 "--out", str(tmp_path / "results"), "--no-timing"])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in data["rows"]] == ["bicubic", "tiny-ldsconv-x2"]
    assert data["rows"][1]["params"] > 0 and 0 < data["rows"][1][str(images)]["ssim"] <= 1
    table = (tmp_path / "results.md").read_text()
    assert "| bicubic |" in table and "tiny-ldsconv-x2" in table
    assert "(published)" not in table and "x4 Set5 / Set14 only" in table  # published rows are x4 only
    # A model of the wrong scale, or a mistyped name, is refused with a message before anything is measured
    # (a traceback after the earlier models' rows before).
    capsys.readouterr()
    assert main(["--models", str(tmp_path / "ckpt"), "--datasets", str(images), "--scale", "4", "--no-timing"]) == 2
    assert "x2 model, not x4" in capsys.readouterr().err
    assert main(["--models", str(tmp_path / "ckpt"), "tiny-ldsconv-xx2", "--datasets", str(images), "--scale", "2",
                 "--out", str(tmp_path / "typo"), "--no-timing"]) == 2
    err = capsys.readouterr()
    assert "unknown model 'tiny-ldsconv-xx2'; did you mean tiny-ldsconv-x2" in err.err and "tiny-ldsconv-x2" not in err.out
    assert not (tmp_path / "typo.json").exists()

    # --append: a second model joins the rows (bicubic once), the same model again replaces its row, and a
    # README block lists every command that made the table.
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "other", create_model("tiny-dsconv-x2"))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:x2 -->\nold\n<!-- /results:x2 -->\nend\n")
    common = ["--datasets", str(images), "--scale", "2", "--out", str(tmp_path / "results"), "--no-timing",
              "--append", "--readme", str(readme)]
    assert main(["--models", str(tmp_path / "other"), str(tmp_path / "ckpt"), *common]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in data["rows"]] == ["bicubic", "tiny-dsconv-x2", "tiny-ldsconv-x2"]
    assert len(data["commands"]) == 2 and "--append" in data["commands"][1]
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert ", then `python -m kaldn.evaluate --models" in text and "| tiny-dsconv-x2 |" in text
    assert "| linear DSConv beats DSConv | - |" in text and "In full:" in text  # the claims at a glance, then all
    # The same model rerun with another validation set joins the rows instead of replacing its first run.
    save_checkpoint(tmp_path / "rerun", create_model("tiny-dsconv-x2"),
                    {"training": {"seed": 0, "iterations": 1, "iterations_done": 1, "batch": 2, "patch": 12,
                                  "wall_time_s": 1.0, "device": "cpu",
                                  "val": "x: every 10th image held out (2 images)", "val_images": 2}})
    assert main(["--models", str(tmp_path / "rerun"), *common]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["bicubic", "tiny-dsconv-x2", "tiny-ldsconv-x2", "tiny-dsconv-x2"]
    data["rows"] = rows
    assert main(["--datasets", "set5", "--scale", "2", "--out", str(tmp_path / "results"), "--append"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == data["rows"]  # a rewrite keeps them
    assert main(["--datasets", str(images), "--scale", "4", "--out", str(tmp_path / "results"), "--append"]) == 2
    assert main(["--models", str(tmp_path / "ckpt"), "--datasets", "set5", "--scale", "2",
                 "--out", str(tmp_path / "results"), "--append"]) == 2  # other datasets than the rows'

    # --ship copies the weights, and the validation events of the run's log for the Results tab's curves.
    (tmp_path / "ckpt" / "log.jsonl").write_text('{"event": "step", "iteration": 10}\n'
                                                 '{"event": "validation", "iteration": 10, "val_psnr": 30.0}\n{"ev')
    assert main(["--models", str(tmp_path / "ckpt"), "--datasets", str(images), "--scale", "2", "--no-timing",
                 "--ship", str(tmp_path / "shipped")]) == 0
    shipped = tmp_path / "shipped" / "tiny-ldsconv-x2"
    assert (shipped / "model.safetensors").is_file() and "metrics" in json.loads((shipped / "config.json").read_text())
    assert (shipped / "log.jsonl").read_text() == '{"event": "validation", "iteration": 10, "val_psnr": 30.0}\n'
    # A rerun validated on other images is a results row, never a replacement for the bundled run.
    before = (shipped / "model.safetensors").read_bytes()
    save_checkpoint(tmp_path / "rerun-ldsconv", create_model("tiny-ldsconv-x2"),
                    {"training": {**json.loads((tmp_path / "rerun" / "config.json").read_text())["training"]}})
    assert main(["--models", str(tmp_path / "rerun-ldsconv"), "--datasets", str(images), "--scale", "2",
                 "--no-timing", "--ship", str(tmp_path / "shipped")]) == 0
    assert (shipped / "model.safetensors").read_bytes() == before
    assert "not shipped" in capsys.readouterr().err


def test_timed_rows_name_their_machine_and_a_mixed_table_says_so(tmp_path):
    from kaldn.evaluate import timing_machine
    from kaldn.results import markdown_table, timing_note
    images = tmp_path / "hr"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(images / "a.png")
    row = evaluate_model("tiny-ldsconv-x2", {"hr": load_pairs(images, 2)}, 2)
    assert row["cpu_ms_256"] > 0 and row["cpu_timed_on"] == timing_machine()
    assert torch.backends.cpu.get_cpu_capability() in row["cpu_timed_on"]  # the kernels, which set the speed
    old = {**row, "model": "tiny-dsconv-x2", "cpu_timed_on": None}  # a row from before the machine was recorded
    assert timing_note([row]) == f"CPU ms timed on {row['cpu_timed_on']}."
    assert "not recorded" in timing_note([old]) and timing_note([{**row, "cpu_ms_256": None}]) == ""
    mixed = timing_note([row, old])
    assert mixed.startswith("CPU ms come from more than one machine") and "not recorded: tiny-dsconv-x2" in mixed
    assert mixed in markdown_table([row, old], ["hr"], 2)


def _row(model, seed, psnr):
    return {"model": model, "seed": seed, "set5": {"psnr": psnr, "ssim": 0.8}}


def test_claims_compare_margins_with_seed_spread():
    rows = [_row("tiny-dsconv-x4", 0, 30.00), _row("tiny-dsconv-x4", 1, 30.10),
            _row("tiny-ldsconv-x4", 0, 30.30), _row("tiny-ldsconv-x4", 1, 30.34),
            _row("tiny-kdsconv-det-x4", 0, 30.36), _row("tiny-kdsconv-det-x4", 1, 30.30),
            _row("tiny-kdsconv-avg-x4", 0, 30.20), _row("tiny-kdsconv-max-x4", 0, 30.40),
            _row("tiny-kdsconv-fixed-x4", 0, 30.50)]
    text = claims(rows, ["set5"])
    assert "largest seed-to-seed spread 0.100 dB" in text
    assert "linear DSConv beats DSConv: yes (+0.270 dB, mean of seeds 0, 1)" in text
    assert ("KDSConv (det) beats linear DSConv: tie (+0.010 dB, inside the 0.100 dB seed spread; mean of seeds 0, 1)"
            in text)
    # Only seed 0 has a fixed-scale run: the comparison uses seed 0 alone (30.36 vs 30.50).
    assert "learned attention beats the fixed 1.5x scale: no (-0.140 dB, seed 0)" in text
    assert "pooling ranking: max (30.400) > det (30.360) > avg (30.200) (seed 0)\n" in text + "\n"
    assert "the fixed 1.5x scale beats linear DSConv: yes (+0.200 dB, seed 0)" in text  # 30.50 vs seed 0's 30.30
    close = [r for r in rows if "avg" not in r["model"] and "max" not in r["model"]] + \
        [_row("tiny-kdsconv-avg-x4", 0, 30.30), _row("tiny-kdsconv-max-x4", 0, 30.40)]
    assert ("pooling: tie, no ranking (max 30.400, det 30.360, avg 30.300; seed 0; all inside the 0.100 dB seed spread)"
            in claims(close, ["set5"]))  # 0.100 dB from first to last: a tie, so no ">" is printed
    # With one seed per model the noise is unknown, and the text says so.
    assert "no second seed" in claims([r for r in rows if r["seed"] == 0], ["set5"])
    # At a glance: the same verdicts, one cell per test set; a ranking only where it is not a tie.
    headers, glance = claims_table(rows, ["set5"])
    by_claim = {row[0]: row[1:] for row in glance}
    assert headers == ["Claim", "Budget", "set5 (seed spread 0.100 dB)"]
    assert by_claim["KDSConv (det) beats linear DSConv"] == ["-", "tie, +0.010 dB"]
    assert by_claim["linear DSConv beats DSConv"] == ["-", "yes, +0.270 dB"]
    assert by_claim["pooling"] == ["-", "max > det > avg"] and claims_table(close, ["set5"])[1][-1][-1] == "tie"
    one_seed = [r for r in rows if r["seed"] == 0]
    headers, glance = claims_table(one_seed, ["set5"])
    assert headers[-1] == "set5 (one seed: no spread)"  # no margin is judged: the cells give the margin alone
    assert {row[0]: row[-1] for row in glance}["linear DSConv beats DSConv"] == "+0.300 dB"
    # Two budgets whose labels coincide (they differ in learning rate only) keep a row each.
    def at_lr(model, psnr, lr):
        return {**_row(model, 0, psnr), "training": {"iterations": 10, "batch": 2, "patch": 8, "lr": lr}}
    two = [at_lr("tiny-dsconv-x4", 30.0, 1e-3), at_lr("tiny-ldsconv-x4", 30.2, 1e-3),
           at_lr("tiny-dsconv-x4", 30.5, 5e-4), at_lr("tiny-ldsconv-x4", 30.1, 5e-4)]
    assert sorted(row[-1] for row in claims_table(two, ["set5"])[1]) == ["+0.200 dB", "-0.400 dB"]  # one seed each


def test_claims_compare_only_rows_trained_under_the_same_budget():
    def trained(model, psnr, iterations, patch):
        return {**_row(model, 0, psnr), "training": {"iterations": iterations, "batch": 16, "patch": patch}}
    rows = [trained("tiny-kdsconv-det-x4", 30.60, 6000, 32), trained("lesrcnn-x4", 30.70, 6000, 32),
            trained("small-ldsconv-x4", 31.40, 30000, 48), trained("tiny-ldsconv-x4", 30.50, 6000, 32)]
    text = claims(rows, ["set5"])
    assert "KDSConv (det) beats LESRCNN at equal training budget [6000 it, batch 16, patch 32]: no (-0.100 dB" in text
    assert "KDSConv (det) beats linear DSConv [6000 it, batch 16, patch 32]: yes (+0.100 dB" in text
    assert "-0.800 dB" not in text  # the longer-trained small model is compared with nothing of another budget
    # ... but a run that continued in fp32 on another machine is still of the same budget (bf16 ~ fp32).
    rows[-1]["training"].update(precision="mixed", precisions=[[0, "bf16"], [800, "fp32"]])
    rows[0]["training"]["precision"] = "bf16"
    assert "KDSConv (det) beats linear DSConv [6000 it, batch 16, patch 32]: yes (+0.100 dB" in claims(rows, ["set5"])


def test_a_rerun_on_held_out_images_sits_beside_the_first_run_and_is_compared_only_with_its_kind():
    from kaldn.results import row_key

    def trained(model, psnr, val, images):
        return {**_row(model, 0, psnr), "training": {"iterations": 6000, "batch": 16, "patch": 32, "val": val,
                                                     "val_images": images}}
    held_out = "../shared/data/train/sun_hays80: every 10th image held out (8 images)"
    first, rerun = trained("tiny-kdsconv-det-x4", 30.62, "../shared/data/val/bsd68", 68), \
        trained("tiny-kdsconv-det-x4", 30.50, held_out, 8)
    peer = trained("scnet-t-x4", 30.55, held_out, 8)
    assert row_key(first) != row_key(rerun)  # so --append keeps both rows
    text = claims([first, rerun, peer], ["set5"])
    # the peer trained on 72 images and chose its checkpoint on 8 of the others: compared with the rerun only
    assert ("KDSConv (det) beats SCNet-T at equal training budget [6000 it, batch 16, patch 32; validated on 8 "
            "held-out training images]: no (-0.050 dB, seed 0)") in text
    assert "+0.070 dB" not in text


SHIPPED = [name for name in available_models() if (bundled_dir() / name / "config.json").exists()
           and "metrics" in json.loads((bundled_dir() / name / "config.json").read_text())]


FULLY_CHECKED = variant("kdsconv-det").model_name(4)  # on the app's default backbone


@pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints with measured metrics")
def test_shipped_checkpoints_reproduce_their_numbers(shared_data):
    datasets_needed = {d for name in SHIPPED
                       for d in json.loads((bundled_dir() / name / "config.json").read_text())["metrics"]}
    pairs, bicubic_set5 = {}, {}
    for name in SHIPPED:
        config = json.loads((bundled_dir() / name / "config.json").read_text())
        scale = config["scale"]
        for dataset in sorted(datasets_needed):
            if (dataset, scale) not in pairs and (dataset == "set5" or name == FULLY_CHECKED):
                pairs[dataset, scale] = load_pairs(dataset_folder(dataset), scale)
        # Every model on Set5 (a wrong or stale weight file shows there already); the full set of
        # datasets for the app's default model keeps the loaders and the big sets honest at a bearable cost.
        checked = config["metrics"] if name == FULLY_CHECKED else {"set5": config["metrics"]["set5"]}
        row = evaluate_model(name, {d: pairs[d, scale] for d in checked}, scale, timing=False)
        for dataset, expected in checked.items():
            assert abs(row[dataset]["psnr"] - expected["psnr"]) < 0.01, (name, dataset)
            assert abs(row[dataset]["ssim"] - expected["ssim"]) < 1e-4, (name, dataset)
        if scale not in bicubic_set5:
            bicubic_set5[scale] = bicubic_row({"set5": pairs["set5", scale]}, scale)["set5"]["psnr"]
        assert row["set5"]["psnr"] > bicubic_set5[scale] + 0.5, name  # every shipped model beats bicubic clearly


@pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")
def test_shipped_checkpoints_are_hub_shaped():
    root = bundled_dir()
    card = (root / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: kaldn" in card
    for name in SHIPPED:
        files = {p.name for p in (root / name).iterdir()}
        assert {"model.safetensors", "config.json", "README.md"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
        model = load_model(name, source="bundled")
        assert model.config["model"] == name and model.config["training"]["iterations_done"] > 0


def test_replace_block(tmp_path):
    from kaldn.release import replace_block
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:x4 -->\nold\n<!-- /results:x4 -->\nend\n")
    replace_block(readme, "results:x4", "new table")
    assert readme.read_text() == "intro\n<!-- results:x4 -->\nnew table\n<!-- /results:x4 -->\nend\n"
    with pytest.raises(ValueError, match="markers"):
        replace_block(readme, "results:x2", "x")
