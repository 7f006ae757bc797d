"""The Gradio app driven through ``gradio_client``: every tab's endpoints, bad inputs, fine-tuning.

The end-to-end comparisons use the bundled ``checkpoints/tiny-*`` models when there are any (then every
trained variant must beat bicubic); otherwise throwaway, untrained checkpoints written to a temporary
folder (``KALDN_CHECKPOINTS``), never into ``checkpoints/``. The logic behind each endpoint is tested
without a browser in ``test_comparison.py``, ``test_inspection.py``, ``test_results.py`` and
``test_finetune.py``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaldn.choices import other_backbone_models
from kaldn.hub import available_models
from kaldn.images import load_image, save_png
from kaldn.inputs import prepare_inputs
from kaldn.metrics import evaluate_pair
from kaldn.models import variant

from app_server import DEFAULT_VARIANTS, rng_image, running_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


# --- the Gradio app through gradio_client ---------------------------------------------------------------

@pytest.fixture(scope="module")
def served(throwaway, tmp_path_factory):
    """The app on 127.0.0.1:<free port>. Bundled tiny x4 checkpoints when there are any, else throwaway ones."""
    pytest.importorskip("gradio_client")
    with running_app(throwaway) as server:
        yield server


@pytest.fixture
def client(served):
    from gradio_client import Client
    return Client(served["url"], verbose=False)


def compare_all(client, image, scale=4, variants=("bicubic",), mode="hr", gt=None, device="auto", crop=64):
    """Every output of /compare: (status, slider, left, right, picker, gallery, table, files, cx, cy,
    pair map, pair note, error maps, error note)."""
    from gradio_client import handle_file
    return client.predict(mode, handle_file(str(image)), handle_file(str(gt)) if gt else None, scale,
                          list(variants), device, crop, api_name="/compare")


def compare(client, image, scale=4, variants=("bicubic",), mode="hr", gt=None, device="auto", crop=64):
    """The first ten outputs of /compare (up to the zoom centre)."""
    return compare_all(client, image, scale, variants, mode, gt, device, crop)[:10]


def table_rows(table: dict) -> dict[str, dict]:
    return {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}


API_NAMES = {"set_mode", "variant_choices", "check_compare", "compare", "check_compare_example", "compare_example",
             "check_upload", "status_after_change", "load_example", "slider_pair",
             "select_region", "zoom", "zoo", "results", "finetune", "cancel_finetune", "refresh_after_finetune",
             "refresh_models", "add_checkpoint", "refresh_after_checkpoint",
             "kernel_model", "kernels", "hasty_relu", "open_how_it_works", "end_session"}


def test_every_event_has_its_api_name(served):
    """Exactly these endpoints (``load_example`` is gr.Examples' own): a new event must be named on purpose."""
    demo = served["app"].build_demo()
    names = [fn.api_name for fn in demo.fns.values()]
    assert sorted(names) == sorted(API_NAMES)
    assert demo.analytics_enabled is False  # no usage reports to Gradio's servers, whatever the environment says


def served_models(served) -> list[str]:
    """The x4 models the app serves: the bundled ones, or the throwaway ones of every default variant."""
    return served["real"] or [variant(v).model_name(4) for v in DEFAULT_VARIANTS]


def test_upscale_example_x4_with_every_variant(served, client):
    models = served_models(served)
    if served["real"]:  # the zoo ships every conv variant at x4: a missing one is a failure, not a skip
        zoo = [variant(v).model_name(4) for v in DEFAULT_VARIANTS if variant(v).backbone is not None]
        assert set(zoo) <= set(models), f"checkpoints/ lacks {sorted(set(zoo) - set(models))}"
    status, slider, left, right, picker, gallery, table, files, cx, cy = \
        compare(client, EXAMPLE, 4, ["bicubic", *DEFAULT_VARIANTS])
    rows = table_rows(table)
    assert set(rows) == {"Bicubic", *(variant(v).label for v in DEFAULT_VARIANTS)}
    by_name = {Path(f).name: f for f in files}
    hr = load_image(EXAMPLE)
    bicubic_psnr = rows["Bicubic"]["PSNR (dB)"]
    ran = [v for v in DEFAULT_VARIANTS if variant(v).model_name(4) in models]
    for v in DEFAULT_VARIANTS:
        row, name = rows[variant(v).label], f"{variant(v).model_name(4)}.png"
        if v not in ran:  # not served (a variant without weights): reported, not crashed
            assert row["PSNR (dB)"] is None and "no checkpoint" in row["Note"] and name not in by_name
            continue
        out = load_image(by_name[name])
        assert out.shape == (256, 256, 3)
        # The table is computed on the server's arrays; the PNG download is the same array.
        assert evaluate_pair(out, hr, 4)["psnr"] == pytest.approx(row["PSNR (dB)"], abs=1e-3)
    assert load_image(by_name["bicubic-x4.png"]).shape == (256, 256, 3)
    assert ran, "no model variant ran"
    assert Path(slider[0]).is_file() and Path(slider[1]).is_file()
    assert len(gallery) == 2 + 1 + len(ran)  # LR, bicubic, models, ground truth
    # The first zoom is where the slider's pair (bicubic, best model) differs most, not the centre
    # (kaldn.maps.hotspot; tested on known images in test_comparison.py).
    assert 0 < cx < 256 and 0 < cy < 256

    if not served["real"]:
        pytest.skip("no bundled checkpoints/tiny-*-x4 yet: sizes checked on throwaway models; "
                    "the beats-bicubic check needs the trained ones")
    for v in ran:
        psnr = rows[variant(v).label]["PSNR (dB)"]
        assert psnr > bicubic_psnr, f"{v}: {psnr:.3f} dB does not beat bicubic {bicubic_psnr:.3f} dB"


@pytest.mark.parametrize("scale", [2, 3])
def test_upscale_example_at_x2_and_x3_beats_bicubic(served, client, scale):
    from kaldn.hub import bundled_dir
    shipped = [v for v in DEFAULT_VARIANTS
               if (bundled_dir() / variant(v).model_name(scale) / "model.safetensors").is_file()]
    if not served["real"] or not shipped:
        pytest.skip(f"no bundled tiny x{scale} checkpoints")
    status, *_, table, files, cx, cy = compare(client, EXAMPLE, scale, ["bicubic", *shipped])
    rows = table_rows(table)
    side = 256 // scale * scale  # HR is cropped to a multiple of the scale
    by_name = {Path(f).name: f for f in files}
    for v in shipped:
        assert load_image(by_name[f"{variant(v).model_name(scale)}.png"]).shape == (side, side, 3)
        psnr = rows[variant(v).label]["PSNR (dB)"]
        assert psnr > rows["Bicubic"]["PSNR (dB)"], f"{v} x{scale}: {psnr:.3f} dB does not beat bicubic"


def test_zoom_slider_and_lr_mode_through_the_api(client, tmp_path):
    client.predict(200, 40, 32, api_name="/zoom")  # before any comparison: nothing to zoom, and no error either
    compare(client, EXAMPLE, 4, ["bicubic", "ldsconv"])
    picker, gallery, cx, cy = client.predict(200, 40, 32, api_name="/zoom")
    assert (cx, cy) == (200, 40) and len(gallery) >= 3
    crop = Image.open(gallery[-1]["image"])
    assert crop.size[0] == crop.size[1] > 256  # 32-pixel crop, enlarged x8, its caption above it (square)
    (left, right), pair_map, pair_note = client.predict("bicubic", "gt", api_name="/slider_pair")
    assert Image.open(left).size == Image.open(right).size == (256, 256)
    assert pair_map is not None and "closer" in pair_note

    lr = tmp_path / "lr.png"
    save_png(prepare_inputs(load_image(EXAMPLE), 4, "hr").lr, lr)
    status, *_, table, files, _, _ = compare(client, lr, 4, ["bicubic"], mode="lr", gt=EXAMPLE)
    assert table_rows(table)["Bicubic"]["PSNR (dB)"] > 20
    status, *_, table, files, _, _, pair_map, pair_note, errors, errors_note = \
        compare_all(client, lr, 4, ["bicubic"], mode="lr")
    assert table_rows(table)["Bicubic"]["PSNR (dB)"] is None and "no ground truth" in status
    # Without a ground truth: no error maps, and the page says why; the pair map is |A - B|.
    assert errors is None and "No ground truth" in errors_note
    assert pair_map is not None and pair_note.startswith("No ground truth")


def test_error_maps_and_pair_map_through_the_api(served, client):
    status, slider, left, right, picker, gallery, table, files, cx, cy, pair_map, pair_note, errors, errors_note = \
        compare_all(client, EXAMPLE, 4, ["bicubic", "ldsconv", "kdsconv-det"])
    ran = [row for row in table["data"] if row[2] is not None]
    width, height = Image.open(errors).size  # every output's map (256x256 here) in rows of 4, one colour bar
    assert width >= min(len(ran), 4) * 256 and height > -(-len(ran) // 4) * 256
    assert "one scale" in errors_note and "grey levels" in errors_note
    assert Image.open(pair_map).size[1] > 256 and "closer to the ground truth" in pair_note and "dB" in pair_note


def _in_a_forked_process(fn):
    """What ZeroGPU's ``@spaces.GPU`` does to a handler: arguments and result are pickled across, and it runs in
    a forked process, so whatever it changes in the server's memory is lost (its progress goes through spaces)."""
    import multiprocessing
    import pickle

    def call(*args, **kwargs):
        pickle.dumps((args, kwargs))
        kwargs.pop("progress")
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)

        def child():
            send.send_bytes(pickle.dumps(fn(*args, **kwargs)))

        process = ctx.Process(target=child)
        process.start()
        try:
            assert receive.poll(120), "the forked compute did not answer (a thread pool that did not survive the fork?)"
            return pickle.loads(receive.recv_bytes())
        finally:
            process.kill()
            process.join()
    return call


def test_a_comparison_works_when_its_compute_runs_in_another_process(served, client, monkeypatch):
    """ZeroGPU: only the compute runs in the GPU worker; the run is kept and the job slot given back by the
    server itself, so the views work after it and the next comparison is admitted."""
    app = served["app"]
    monkeypatch.setattr(app, "upscale_on_device", _in_a_forked_process(app.upscale_on_device))
    for _ in range(2):  # the second is admitted: the first gave its slot back
        status, *_, table, files, cx, cy = compare(client, EXAMPLE, 4, ["bicubic", "ldsconv"])
        rows = table_rows(table)
        # The model row ran its PyTorch work in the fork (a load failure would leave its PSNR empty).
        assert rows["Bicubic"]["PSNR (dB)"] > 20 and rows["Linear DSConv"]["PSNR (dB)"] > 20 and len(rows) == 2
    picker, gallery, cx, cy = client.predict(200, 40, 32, api_name="/zoom")  # the run is the server's
    assert (cx, cy) == (200, 40) and len(gallery) >= 3


@pytest.mark.parametrize("case", ["not_an_image", "empty_file", "gt_mismatch", "huge", "no_variant"])
def test_bad_input_shows_a_message_and_the_app_keeps_serving(served, client, tmp_path, case, monkeypatch):
    from gradio_client.exceptions import AppError
    kwargs: dict = {}
    if case == "not_an_image":
        path, expected = tmp_path / "notes.png", "not an image"
        path.write_text("hello, I am text")
    elif case == "empty_file":
        path, expected = tmp_path / "empty.png", "empty"
        path.write_bytes(b"")
    elif case == "gt_mismatch":
        path, expected = tmp_path / "lr.png", "must be exactly 128x128"
        save_png(rng_image(32, 32), path)
        kwargs = {"mode": "lr", "gt": EXAMPLE}
    elif case == "huge":
        path, expected = EXAMPLE, "too large"
        monkeypatch.setattr(served["app"], "SETTINGS", replace(served["app"].SETTINGS, max_pixels=10_000))
    else:
        path, expected = EXAMPLE, "at least one variant"
        kwargs = {"variants": []}
    with pytest.raises(AppError, match=expected) as refused:
        compare(client, path, 4, **{"variants": ["bicubic"], **kwargs})
    assert str(refused.value).startswith("Cannot run this: ")  # the title reaches the user in the message
    monkeypatch.undo()
    table = compare(client, EXAMPLE, 2, ["bicubic"])[6]  # still serving
    assert table_rows(table)["Bicubic"]["PSNR (dB)"] > 20


def test_alpha_and_16_bit_uploads_through_the_api(client, tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng_image(64, 64, channels=4)).save(rgba)
    status, *_, files, _, _ = compare(client, rgba, 2, ["bicubic"])
    assert "alpha" in status
    out = next(f for f in files if Path(f).name == "bicubic-x2.png")
    assert Image.open(out).mode == "RGBA"

    gray16 = tmp_path / "gray16.png"
    Image.fromarray(rng_image(64, 64, channels=1, dtype=np.uint16)[..., 0]).save(gray16)
    status, *_, files, _, _ = compare(client, gray16, 2, ["bicubic"])
    assert "16 bits" in status and "grayscale" in status
    out = Path(next(f for f in files if Path(f).name == "bicubic-x2.png")).read_bytes()
    assert out[24] == 16  # IHDR bit depth: the download keeps 16 bits


def test_zoo_tab_through_the_api(served, client):
    table = client.predict("4", api_name="/zoo")
    rows = table_rows(table)
    assert rows and all(name.endswith("-x4") or name == "bicubic" for name in rows)
    if served["real"]:  # shipped checkpoints carry their measured numbers
        # ... and every bundled model of another backbone (the `small` zoo), as Compare offers them by name
        assert set(rows) == {"bicubic", *served["real"], *other_backbone_models(available_models(), 4)}
        assert all(row["set5 PSNR / SSIM"] != "-" for row in rows.values())
        assert any(row[3] == "1" for row in table["data"])  # second seeds are listed
        assert all("," in row["Params"] for name, row in rows.items() if name != "bicubic")  # 112,272
    assert len(client.predict("all", api_name="/zoo")["data"]) >= len(table["data"])


def test_results_view_through_the_api(served, client):
    claims_md, glance, curves, curves_md, by_cpu, by_params, cost_md = client.predict(4, api_name="/results")
    assert "log.jsonl" in curves_md and "Published" in cost_md
    assert "CPU ms" in cost_md  # which machine timed the plotted CPU ms (results/x4.json rows are timed)
    assert glance["headers"][:2] == ["Claim", "Budget"]
    cpu_sources = {row[2] for row in by_cpu["value"]["data"]}
    assert "published" in cpu_sources  # the released LESRCNN / FDIWN, marked apart from this project's models
    assert {row[2] for row in by_params["value"]["data"]} <= {"this project"}
    if served["real"]:
        assert "seed-to-seed spread" in claims_md and "KDSConv (det) beats linear DSConv" in claims_md
        glanced = {row[0]: row[2:] for row in glance["data"]}  # one verdict per test set, as in the full list
        assert all(cell.split(",")[0] in {"yes", "no", "tie"} for cell in glanced["KDSConv (det) beats linear DSConv"])
        assert "this project" in cpu_sources and len(by_params["value"]["data"]) >= len(served["real"])


def test_how_it_works_endpoints(served, client):
    from gradio_client.exceptions import AppError
    models = served_models(served)
    kds = next((m for m in models if m.startswith("tiny-kdsconv-") and "fixed" not in m), None)
    if kds is not None:
        layer, grid, kernel_rows, za, gate, gate_note = client.predict(kds, None, api_name="/kernel_model")
        # The scatter: one (z, a) point per kernel of the layer, as in the per-kernel table.
        assert za["columns"] == ["z (gate input)", "a"] and len(za["data"]) == 96
        assert [[r[4], r[5]] for r in kernel_rows["data"]] == za["data"]
        assert gate["headers"][-1] == "Gate" and "gate" in gate_note
        assert layer["value"] == "blocks.0.layers.2" and len(layer["choices"]) == 16
        assert Image.open(grid).size[0] > 500
        assert len(kernel_rows["data"]) == 96 and kernel_rows["headers"][-1] == "1 + a"
        assert all(1 < row[-1] < 2 for row in kernel_rows["data"])
        assert len(gate["data"]) == 16
        grid, rows, za = client.predict(kds, "blocks.3.layers.3", api_name="/kernels")
        assert len(rows["data"]) == 128 and len(za["data"]) == 128
        if "tiny-ldsconv-x4" in models:
            _, _, no_gate = client.predict("tiny-ldsconv-x4", "blocks.0.layers.0", api_name="/kernels")
            assert no_gate["data"] == []  # no attention, no points
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict("paper-kdsconv-det-x4", None, api_name="/kernel_model")  # a name never shipped
    if kds is not None:  # a list of a valid name passes the Dropdown's own check: a message, not a crash
        with pytest.raises(AppError, match="Unknown model"):
            client.predict([kds], None, api_name="/kernel_model")

    with pytest.raises(AppError, match="scale must be"):
        client.predict("hr", None, None, 5, api_name="/hasty_relu")
    if not {"tiny-dsconv-x4", "tiny-ldsconv-x4"} & set(models):
        with pytest.raises(AppError, match="No DSConv / linear DSConv checkpoint"):
            client.predict("hr", None, None, 4, api_name="/hasty_relu")
        return
    summary, maps, whole, per_layer = client.predict("hr", None, None, 4, api_name="/hasty_relu")
    assert "DSConv" in summary and len(maps) >= 2
    assert len(whole["data"]) == len({"tiny-dsconv-x4", "tiny-ldsconv-x4"} & set(models))
    for row in whole["data"]:
        assert 0 <= row[3] <= 100 and 0 <= row[4] <= 100
    assert len(per_layer["data"]) == 16 * len(whole["data"])


def test_finetune_busy_cancel_and_new_model_in_compare(served, client):
    """A short fine-tune: a second job is refused as busy, cancel stops it, the model joins Compare."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    base = "tiny-ldsconv-x4" if "tiny-ldsconv-x4" in (served["real"] or ["tiny-ldsconv-x4"]) else served["real"][0]
    max_iters = served["app"].FINETUNE.max_iters
    job = client.submit(None, True, base, max_iters, 2e-4, 2, 16, api_name="/finetune")
    other = Client(served["url"], verbose=False)
    deadline = time.time() + 120
    while not served["app"].FINETUNE.busy and time.time() < deadline:
        time.sleep(0.2)
    assert served["app"].FINETUNE.busy
    with pytest.raises(AppError, match="Another fine-tuning job is running"):
        other.predict(None, True, base, 10, 2e-4, 2, 16, api_name="/finetune")
    other.predict(api_name="/cancel_finetune")  # not the owner: ignored
    time.sleep(3)
    assert served["app"].FINETUNE.busy
    client.predict(api_name="/cancel_finetune")
    status, loss, psnr, downloads = job.result(timeout=180)
    assert "Cancelled" in status
    assert {Path(f).name for f in downloads} == {"model.safetensors", "config.json"}
    assert not served["app"].FINETUNE.busy
    entry = served["app"].SESSION_MODELS.items()[-1]
    variants, _, _ = client.predict(4, ["bicubic"], base, None, api_name="/refresh_models")
    assert entry.key in [c[1] for c in variants["choices"]]
    table = compare(client, EXAMPLE, 4, ["bicubic", entry.key])[6]
    assert table_rows(table)[entry.label]["PSNR (dB)"] is not None
    # Out of the slider's range: refused before queueing (Gradio checks the range in the validator's
    # preprocessing), which gradio_client reports as an HTTP 400 of the queue.
    from httpx import HTTPStatusError
    with pytest.raises((AppError, HTTPStatusError), match="greater than maximum|400 Bad Request"):
        client.predict(None, True, base, 10**6, 2e-4, 2, 16, api_name="/finetune")
    with pytest.raises(AppError, match="learning rate must be between"):
        client.predict(None, True, base, 10, 1.0, 2, 16, api_name="/finetune")


def test_uploads_are_checked_at_once_and_bad_runs_stop_before_running(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    bad = tmp_path / "notes.png"
    bad.write_text("hello, I am text")
    status = client.predict("hr", handle_file(str(bad)), None, 4, api_name="/check_upload")
    assert "cannot be used" in status and "not an image" in status
    assert client.predict("hr", handle_file(str(EXAMPLE)), None, 4, api_name="/check_upload").startswith("- Ready")
    # After a comparison, another upload is ready, and the page says the results shown are the earlier image's.
    compare(client, EXAMPLE, 4, ["bicubic"])
    assert "still those of your last comparison" not in client.predict("hr", handle_file(str(EXAMPLE)), None, 4,
                                                                        api_name="/check_upload")
    other = tmp_path / "other.png"
    save_png(rng_image(96, 96), other)
    assert "still those of your last comparison" in client.predict("hr", handle_file(str(other)), None, 4,
                                                                    api_name="/check_upload")
    # A new scale or mode: the last verdict no longer holds, and the status does not repeat it.
    after = client.predict(handle_file(str(bad)), 2, "lr", api_name="/status_after_change")
    assert "checked again for x2 (LR mode)" in after and "cannot be used" not in after
    with pytest.raises(AppError, match="not an image"):
        client.predict("hr", handle_file(str(bad)), None, 4, ["bicubic"], "auto", 64, api_name="/check_compare")
    with pytest.raises(AppError, match="None of the chosen variants can run"):
        client.predict("hr", handle_file(str(EXAMPLE)), None, 3, ["tiny-dsconv-x2"], "auto", 64,
                       api_name="/check_compare")


def test_a_one_point_validation_curve_gets_a_readable_range():
    """A cancelled fine-tune with one validation point: the axis spans a range around it (not 30.479298 / 0)."""
    from types import SimpleNamespace
    import app
    update = SimpleNamespace(total=200, loss_curve=lambda: {"iteration": [10], "loss": [0.03]},
                             psnr_curve=lambda: {"iteration": [0], "PSNR (dB)": [30.479298]})
    loss, psnr = app.curves(update)
    assert psnr.y_lim == [30.229, 30.729] and psnr.x_lim == [0, 200]
    assert loss.y_lim[0] < 0.03 < loss.y_lim[1]


def test_how_it_works_states_the_papers_margins_beside_this_projects_numbers(tmp_path, monkeypatch):
    """The teaching text derives its numbers: the weight saving from the registry's models, and the project's
    claims from the results file (none: it says how to make them)."""
    import app
    blocks = app.how_blocks()
    assert "**7.0x** at this tiny model's G = 32" in blocks and "**3.8x** fewer (112,272 against 427,152" in blocks
    assert "r = 32 (paper) or 8 (tiny, small)" in blocks and "C = 32, has 4 hidden units" in blocks
    evidence = app.how_evidence()
    assert "+0.07 dB" in evidence and "KDSConv (det) beats DSConv" in evidence and "seed-to-seed spread" in evidence
    monkeypatch.setattr(app, "load_results", lambda scale, results_dir=None: None)
    assert "python -m kaldn.evaluate --scale 4" in app.how_evidence()


def test_work_that_writes_files_is_refused_while_the_disk_is_short(monkeypatch):
    """Views save images into Gradio's cache and jobs write runs: both stop before the disk is full."""
    from dataclasses import replace as _replace
    import gradio as gr
    import app
    from kaldn import admission
    monkeypatch.setattr(app, "SETTINGS", _replace(app.SETTINGS, min_free_disk=1 << 30))
    monkeypatch.setattr(admission, "_free_bytes", lambda path: (1 << 30) - 1)
    with pytest.raises(gr.Error, match="short of disk space"):
        app.zoom(None, 10, 10, 32)
    with pytest.raises(gr.Error, match="short of disk space"):
        app.admit(None, "a comparison")


def test_the_examples_counted_against_the_image_limit_are_named():
    """Ticked examples count toward the fine-tune image limit: a refusal says so, and what to do."""
    import gradio as gr
    import app
    files = ["a.png"] * (app.FINETUNE.max_images - 1)
    with pytest.raises(gr.Error, match="and the 3 examples make .*untick the examples"):
        next(app.finetune(files, True, "tiny-ldsconv-x2", 10, 2e-4, 2, 16))
