"""Fine-tuning jobs (kaldn.finetune), driven without the app."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaldn.checkpoint import read_config
from kaldn.errors import BusyError, UserError
from kaldn.finetune import (FineTuneManager, FineTuneSettings, base_choices, default_base,
                            prepare_finetune_data)
from kaldn.images import save_png
from kaldn.session_models import SessionModels

from app_server import rng_image


def test_finetune_data_preparation(tmp_path):
    good = tmp_path / "good.png"
    save_png(rng_image(100, 120), good)
    small = tmp_path / "small.png"
    save_png(rng_image(40, 40), small)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    big = tmp_path / "big.png"
    save_png(rng_image(300, 700), big)
    count, notes, patch = prepare_finetune_data([good, small, junk, big], 2, 32, tmp_path / "data",
                                                val_folder=tmp_path / "val")
    assert count == 3 and patch == 20  # patch shrunk to fit the 40-pixel image at x2
    # validation sees whole small images and the centre of a large one (at most 128 LR pixels a side at x2)
    sizes = sorted(Image.open(p).size for p in (tmp_path / "val").iterdir())
    assert sizes == [(40, 40), (120, 100), (256, 256)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "val" / "002.png")),
                          np.asarray(Image.open(tmp_path / "data" / "002.png"))[22:278, 222:478])
    assert any("junk.png" in n for n in notes)
    with pytest.raises(UserError, match="No usable training image"):
        prepare_finetune_data([junk], 2, 32, tmp_path / "data2")




def test_settings_from_form_values():
    s = FineTuneSettings.from_form("tiny-ldsconv-x2", "20", 2e-4, 2.0, "16")
    assert (s.iters, s.lr, s.batch, s.patch) == (20, 2e-4, 2, 16)
    with pytest.raises(UserError, match="Choose a base model"):
        FineTuneSettings.from_form(None, 20, 2e-4, 2, 16)
    with pytest.raises(UserError, match="must be numbers"):
        FineTuneSettings.from_form("tiny-ldsconv-x2", None, 2e-4, 2, 16)


def test_a_job_streams_updates_refuses_a_second_one_and_registers_its_model(use_throwaway, tmp_path):
    images = []
    for i in range(2):
        save_png(rng_image(64, 64, seed=i), tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs", max_iters=50)
    settings = FineTuneSettings("tiny-ldsconv-x2", iters=20, lr=2e-4, batch=2, patch=16, device="cpu")
    with pytest.raises(UserError, match="between 1 and 50"):
        manager.start(images, FineTuneSettings("tiny-ldsconv-x2", iters=51, lr=2e-4))
    updates = manager.run(images, settings, owner="a", min_interval=0.0)
    first = next(updates)
    assert "Training on 2 image(s)" in first.status and first.iteration == 0 and manager.busy
    with pytest.raises(BusyError):
        manager.start(images, settings)
    assert manager.cancel(owner="b") is False  # not the owner
    *_, last = updates
    assert "**Finished** after 20 iterations" in last.status and last.entry is not None
    assert "Compare and How-it-works model lists" in last.status  # a depthwise model: both tabs list it
    assert last.iteration == 20 and last.loss_curve()["iteration"][-1] == 20
    assert last.psnr_curve()["iteration"][0] == 0  # the base model, measured first
    assert {p.split("/")[-1] for p in last.downloads} == {"model.safetensors", "config.json"}
    assert_no_server_path(last.downloads, tmp_path)
    assert read_config(last.entry.path / "config.json")["training"]["data"] == \
        "2 uploaded image(s), fine-tuned in the kaldn app"
    assert manager.registry.items() == [last.entry] and not manager.busy
    assert last.entry.label == "Fine-tuned #1 (Linear DSConv x2, 20 it)"
    bases = base_choices(["tiny-ldsconv-x2", "tiny-kdsconv-det-x4", "small-ldsconv-x4"], manager.registry)
    assert bases == [("Linear DSConv x2 (tiny-ldsconv-x2)", "tiny-ldsconv-x2"),
                     ("KDSConv (det) x4 (tiny-kdsconv-det-x4)", "tiny-kdsconv-det-x4"),
                     ("Linear DSConv x4 (small-ldsconv-x4)", "small-ldsconv-x4"),  # any backbone, named
                     (last.entry.label, last.entry.key)]  # by key: no server path reaches the page
    assert default_base(bases) == "tiny-kdsconv-det-x4"

    # Closing the stream early (the user went away) stops the job. Its own fine-tuned model as the base: the
    # owner may, nobody else may; a server path is not a model name.
    for base, owner in ((last.entry.key, "b"), (str(last.entry.path), "a")):
        with pytest.raises(UserError, match="Unknown base model"):
            manager.start(images, FineTuneSettings(base, iters=50, lr=2e-4, batch=2, patch=16), owner=owner)
    updates = manager.run(images, FineTuneSettings(last.entry.key, iters=50, lr=2e-4, batch=2, patch=48,
                                                   device="cpu"), owner="a", min_interval=0.0)
    header = next(updates).status.split("\n")[0]
    # named as the user knows it (not its key or folder), with the patch it really trains at (48 does not fit
    # the 32x32 LR images)
    assert header.startswith(f"Fine-tuning **{last.entry.label}**") and str(tmp_path) not in header
    assert "patch 48" not in header and re.search(r"patch (\d+)\)", header)[1] == "32"
    updates.close()
    assert not manager.busy
    # From its own model: the download names that base as the user knows it, not by its folder.
    *_, again = manager.run(images, FineTuneSettings(last.entry.key, iters=2, lr=2e-4, batch=2, patch=16,
                                                     device="cpu"), owner="a", min_interval=0.0)
    assert_no_server_path(again.downloads, tmp_path)
    assert read_config(again.entry.path / "config.json")["training"]["init"] == last.entry.label


@pytest.mark.parametrize("source, asks_hub", [("bundled", False), ("auto", True)])
def test_a_base_loads_from_the_apps_model_source(use_throwaway, tmp_path, monkeypatch, source, asks_hub):
    """The app serves the bundled weights by default: the base a job trains from (and measures first) is the
    model Compare shows, never a Hub copy of the same name unless the owner chose the Hub."""
    import kaldn.hub as hub
    asked = []

    def no_hub(name, *args):
        asked.append(name)
        raise hub._HubUnavailable("offline", "no Hub in this test")
    monkeypatch.setattr(hub, "_load_from_hub", no_hub)
    save_png(rng_image(64, 64, seed=0), tmp_path / "a.png")
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs", max_iters=50, model_source=source)
    *_, last = manager.run([tmp_path / "a.png"], FineTuneSettings("tiny-ldsconv-x2", iters=2, lr=2e-4, batch=2,
                                                                  patch=16, device="cpu"), min_interval=0.0)
    assert last.entry is not None  # trained either way: auto falls back to the bundled copy
    assert asked == (["tiny-ldsconv-x2"] * 2 if asks_hub else [])  # the measured base, then the trained one


def assert_no_server_path(downloads: list[str], root: Path) -> None:
    """A fine-tuned model's files (config and safetensors header) name no server folder."""
    from safetensors import safe_open
    config, weights = sorted(downloads)
    with safe_open(weights, framework="pt") as f:
        header = json.dumps(f.metadata())
    for text in (Path(config).read_text(), header):
        assert str(root) not in text and tempfile.gettempdir() + "/" not in text, text[:300]


def test_a_full_server_refuses_before_training_and_a_job_it_cannot_keep_leaves_nothing(use_throwaway, tmp_path):
    images = []
    for i in range(2):
        save_png(rng_image(64, 64, seed=i), tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    registry = SessionModels(cap=8, total_cap=1)
    registry.add(tmp_path / "other", "tiny-ldsconv-x2", owner="someone")  # the server is now full
    manager = FineTuneManager(registry, root=tmp_path / "jobs", max_iters=50)
    settings = FineTuneSettings("tiny-ldsconv-x2", iters=5, lr=2e-4, batch=2, patch=16, device="cpu")
    with pytest.raises(BusyError, match="as many session models"):
        manager.start(images, settings, owner="a")
    assert not manager.busy and list((tmp_path / "jobs").glob("*")) == []
    # It filled up while the job trained: refused at the end, and the job's folder (the user's images, the
    # checkpoints) is removed, not left behind.
    registry.total_cap = 2
    updates = manager.run(images, settings, owner="a", min_interval=0.0)
    next(updates)
    registry.add(tmp_path / "another", "tiny-ldsconv-x2", owner="someone else")
    with pytest.raises(BusyError):
        list(updates)
    assert not manager.busy and list((tmp_path / "jobs").glob("*")) == []


def test_a_diverged_training_tells_the_user_what_to_change(use_throwaway, tmp_path, monkeypatch):
    # Not "an internal error": a learning rate inside the allowed range can still be too high for some images.
    import kaldn.finetune as finetune
    from kaldn.train import TrainingDiverged

    def diverging(config, progress=None, stop=None):
        raise TrainingDiverged(7)
    monkeypatch.setattr(finetune, "train", diverging)
    save_png(rng_image(64, 64, seed=0), tmp_path / "a.png")
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs", max_iters=50)
    with pytest.raises(UserError, match="Fine-tuning failed: The training diverged: .* by iteration 7. "
                                        "Try a lower learning rate"):
        list(manager.run([tmp_path / "a.png"], FineTuneSettings("tiny-ldsconv-x2", iters=20, lr=1e-2, batch=2,
                                                                patch=16, device="cpu"), min_interval=0.0))
    assert not manager.busy and manager.registry.items() == []


def test_jobs_are_taken_in_turns_when_others_waited(use_throwaway, tmp_path):
    images = []
    for i in range(2):
        save_png(rng_image(64, 64, seed=i), tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs", max_iters=50, time_budget_s=300, turn_s=60)
    settings = FineTuneSettings("tiny-ldsconv-x2", iters=5, lr=2e-4, batch=2, patch=16, device="cpu")
    # Alone, an owner may run one job after another.
    list(manager.run(images, settings, owner="a", min_interval=0.0))
    list(manager.run(images, settings, owner="a", min_interval=0.0))
    # Someone else is refused while a's job runs (told when it stops at the latest) ...
    updates = manager.run(images, settings, owner="a", min_interval=0.0, client="8.8.4.4")
    next(updates)
    with pytest.raises(BusyError, match=r"stops in about \d+ s"):
        manager.start(images, settings, owner="b")
    list(updates)
    # ... so a waits its turn, and b goes first; a fresh session from a's address waits too.
    for owner in ("a", "a-fresh-session"):
        with pytest.raises(BusyError, match=r"your next one can start in \d+ s"):
            manager.start(images, settings, owner=owner, client="8.8.4.4")
    *_, last = manager.run(images, settings, owner="b", min_interval=0.0)
    assert last.entry is not None
    list(manager.run(images, settings, owner="b", min_interval=0.0))  # nobody waited for b: no turn to wait


def test_an_abandoned_job_leaves_nothing_even_if_its_thread_wrote_after_the_cleanup(tmp_path):
    """The follower gave up waiting for a stopping thread and deleted the folder; training then saved into it
    again: the thread's end deletes it once more."""
    from kaldn.finetune import FineTuneJob
    manager = FineTuneManager(SessionModels(), root=tmp_path / "jobs")
    job = FineTuneJob(FineTuneSettings("tiny-ldsconv-x2", iters=10, lr=2e-4), tmp_path / "job", owner="a")
    (job.out / "last").mkdir(parents=True)  # written after the follower's cleanup
    manager._lock.acquire()
    job.abandoned = True
    manager._ended(job)
    assert not job.folder.exists() and not manager.busy
    kept = FineTuneJob(FineTuneSettings("tiny-ldsconv-x2", iters=10, lr=2e-4), tmp_path / "kept", owner="a")
    kept.out.mkdir(parents=True)
    manager._lock.acquire()
    manager._ended(kept)
    assert kept.out.exists()  # a job someone follows keeps its files for registering


def test_a_base_larger_than_the_shipped_sizes_is_refused_before_training(use_throwaway, tmp_path):
    """An uploaded paper-size model passed every other check, and at the batch-pixel cap autograd keeps 9-18 GiB a
    step for it (tiny's 0.4-0.7): one job could take the server's memory. Only the shipped sizes are fine-tuned,
    and the list offers no other."""
    from kaldn.hub import available_models
    save_png(rng_image(64, 64), tmp_path / "a.png")
    registry = SessionModels()
    big = registry.add(tmp_path / "big", "paper-ldsconv-x2", owner="a", kind="Uploaded")
    fits = registry.add(tmp_path / "fits", "tiny-ldsconv-x2", owner="a", kind="Uploaded")
    manager = FineTuneManager(registry, root=tmp_path / "jobs", max_iters=50)
    for base in (big.key, "paper-ldsconv-x2"):
        with pytest.raises(UserError, match=r"fine-tunes the sizes it ships \(tiny\)"):
            manager.start([tmp_path / "a.png"], FineTuneSettings(base, iters=2, lr=2e-4, batch=2, patch=16,
                                                                 device="cpu"), owner="a")
    assert not manager.busy and not any((tmp_path / "jobs").glob("*"))
    keys = [value for _, value in base_choices(available_models(), registry.for_owner("a"))]
    assert fits.key in keys and big.key not in keys
