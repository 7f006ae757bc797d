"""The user's inputs and the comparison (kaldn.inputs, kaldn.comparison, kaldn.display), without a browser.

Models come from throwaway, untrained checkpoints written to a temporary folder (``KALDN_CHECKPOINTS``),
never into ``checkpoints/``; bicubic needs none.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaldn.cache import ModelCache
from kaldn.choices import default_variants, variant_choices
from kaldn.comparison import (check_device, default_pair, metrics_table, pair_choices, pair_images, run_comparison,
                              save_outputs, zoom_crops)
from kaldn.runs import ComparisonRun, RunStore
from kaldn.display import clamp_region, draw_region
from kaldn.errors import UserError
from kaldn.images import ImageError, load_image
from kaldn.inputs import image_source, measurement_input, prepare_inputs
from kaldn.metrics import evaluate_pair
from kaldn.models import variants
from kaldn.resize import imresize

from app_server import png_bytes, rng_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


# --- inputs -----------------------------------------------------------------------------------------------

def test_hr_mode_crops_to_scale_and_makes_lr_with_imresize():
    hr = rng_image(50, 43)
    inputs = prepare_inputs(hr, 4, "hr")
    assert inputs.gt.shape == (48, 40, 3)
    assert inputs.lr.shape == (12, 10, 3)
    np.testing.assert_array_equal(inputs.gt, hr[:48, :40])
    np.testing.assert_array_equal(inputs.lr, imresize(hr[:48, :40], scale=1 / 4, output_shape=(12, 10)))
    assert any("cropped from 43x50 to 40x48" in n for n in inputs.notes)


def test_lr_mode_with_matching_ground_truth():
    lr, gt = rng_image(16, 20), rng_image(48, 60, seed=1)
    inputs = prepare_inputs(lr, 3, "lr", ground_truth=gt)
    assert inputs.gt is gt or np.array_equal(inputs.gt, gt)
    assert inputs.output_shape == (48, 60)
    no_gt = prepare_inputs(lr, 3, "lr")
    assert no_gt.gt is None and "no PSNR/SSIM" in no_gt.notes[0]


def test_ground_truth_size_mismatch_is_a_clear_message():
    lr = rng_image(16, 16)
    with pytest.raises(UserError, match=r"ground truth is 64x60.*must be exactly 64x64"):
        prepare_inputs(lr, 4, "lr", ground_truth=rng_image(60, 64))
    with pytest.raises(UserError, match="It matches x2: choose scale 2"):
        prepare_inputs(lr, 4, "lr", ground_truth=rng_image(32, 32))
    with pytest.raises(UserError, match="Crop it to 48x48"):
        prepare_inputs(lr, 3, "lr", ground_truth=rng_image(50, 49))


@pytest.mark.parametrize("source, message", [
    (b"this is not an image", "not an image"),
    (b"", "empty"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (png_bytes(np.zeros((4, 4, 3), np.uint8)), "too small"),
])
def test_bad_inputs_raise_user_messages(source, message):
    with pytest.raises(ValueError, match=message):
        prepare_inputs(source, 4, "hr")


def test_too_many_pixels_and_bad_parameters():
    big = rng_image(64, 64)
    with pytest.raises(ImageError, match="too large"):
        prepare_inputs(big, 2, "hr", max_pixels=1000)
    with pytest.raises(ImageError, match="output would be 256x256"):
        prepare_inputs(big, 4, "lr", max_output_pixels=50_000)
    with pytest.raises(UserError, match="scale must be one of 2, 3, 4"):
        prepare_inputs(big, 5, "hr")
    with pytest.raises(UserError, match="Upload an image first"):
        prepare_inputs(None, 4, "hr")
    inputs = prepare_inputs(big, 2, "hr")
    with pytest.raises(UserError, match="Unknown variant 'sharpen'"):
        run_comparison(inputs, ["bicubic", "sharpen"])
    with pytest.raises(UserError, match="at least one variant"):
        run_comparison(inputs, [])


def test_alpha_grayscale_and_16_bit_inputs_are_handled():
    rgba = rng_image(32, 32, channels=4)
    inputs = prepare_inputs(rgba, 2, "hr")
    assert any("alpha" in n for n in inputs.notes)
    out = run_comparison(inputs, ["bicubic"]).results[0]
    assert out.image.shape == (32, 32, 4) and out.psnr is not None

    gray16 = rng_image(32, 32, channels=1, dtype=np.uint16)[..., 0]
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="PNG")
    inputs = prepare_inputs(buf.getvalue(), 2, "hr")
    assert inputs.lr.dtype == np.uint16
    assert any("16 bits" in n for n in inputs.notes) and any("grayscale" in n for n in inputs.notes)
    res = run_comparison(inputs, ["bicubic"]).results[0]
    assert res.image.dtype == np.uint16 and 0 < res.psnr < 100


def test_uploads_are_read_from_paths_and_payloads_are_refused(tmp_path):
    image = rng_image(40, 40)
    path = tmp_path / "up.png"
    path.write_bytes(png_bytes(image))
    assert image_source(None) is None and image_source("") is None
    assert image_source(path) == str(path)
    for upload in (path, str(path), path.read_bytes()):
        np.testing.assert_array_equal(prepare_inputs(upload, 2, "hr").gt, image)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    for payload in ({"path": str(path)}, {"url": url}):  # one way in: the app's checked upload path
        with pytest.raises(UserError, match="not a payload"):
            prepare_inputs(payload, 2, "hr")


def test_measurement_input_prefers_the_last_comparison_then_the_upload_then_the_example(tmp_path):
    last = prepare_inputs(rng_image(48, 48), 2, "hr")
    lr, where = measurement_input(2, last, None, "hr", EXAMPLE)
    assert lr is last.lr and "last comparison" in where
    upload = tmp_path / "up.png"
    upload.write_bytes(png_bytes(rng_image(64, 64, seed=3)))
    lr, where = measurement_input(4, last, str(upload), "hr", EXAMPLE)  # the last one is x2: not reused
    assert lr.shape == (16, 16, 3) and "image on the Compare tab" in where
    # A new upload since the last comparison (same scale): the upload is measured, not the old image; the
    # upload that was compared (in the same mode) reuses that comparison's input.
    compared = prepare_inputs(str(upload), 2, "hr")
    assert compared.source == str(upload)
    lr, where = measurement_input(2, last, str(upload), "hr", EXAMPLE)
    assert lr.shape == (32, 32, 3) and "image on the Compare tab" in where
    assert measurement_input(2, compared, str(upload), "hr", EXAMPLE)[0] is compared.lr
    assert measurement_input(2, compared, str(upload), "lr", EXAMPLE)[0].shape == (64, 64, 3)
    # An upload that cannot be used: the last comparison's input (else the example) is measured, and said why.
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    lr, where = measurement_input(2, compared, str(junk), "hr", EXAMPLE)
    assert lr is compared.lr and "cannot be used" in where and "not an image" in where
    assert where.endswith(")") and ".)" not in where  # one sentence around the reason, whatever it ends with
    lr, where = measurement_input(4, compared, str(junk), "hr", EXAMPLE)
    assert lr.shape == (64, 64, 3) and where.startswith("the example astronaut.png (the image on the Compare")
    with pytest.raises(UserError, match="Upload an image"):
        measurement_input(4, None, str(junk))
    lr, where = measurement_input("3", None, None, "hr", EXAMPLE)
    assert lr.shape == (85, 85, 3) and "astronaut.png" in where
    with pytest.raises(UserError, match="Upload an image"):
        measurement_input(4)
    with pytest.raises(UserError, match="scale must be one of 2, 3, 4"):
        measurement_input(5, last)


# --- running, crops, files --------------------------------------------------------------------------------

def test_unavailable_variant_is_reported_not_raised(use_throwaway):
    inputs = prepare_inputs(rng_image(48, 48), 3, "hr")  # no x3 checkpoints at all
    comparison = run_comparison(inputs, ["bicubic", "dsconv", "tiny-ldsconv-x2"], device="cpu")
    status = {r.key: r for r in comparison.results}
    assert status["bicubic"].status == "ok"
    assert status["dsconv"].status == "unavailable" and "tiny-dsconv-x3" in status["dsconv"].message
    assert status["tiny-ldsconv-x2"].status == "unavailable" and "x2 model" in status["tiny-ldsconv-x2"].message
    headers, rows = metrics_table(comparison)
    assert [r[0] for r in rows] == ["Bicubic", "DSConv", "Linear DSConv"]  # by model name: the same label
    assert comparison.warnings == [f"{r.label}: {r.message}" for r in comparison.results[1:]]
    assert "Not run: DSConv" in comparison.status_markdown()
    assert rows[1][headers.index("PSNR (dB)")] is None


def test_the_status_sets_the_equal_budget_blocks_apart_from_other_models(use_throwaway):
    inputs = prepare_inputs(rng_image(48, 48), 2, "hr")
    both = run_comparison(inputs, ["bicubic", "dsconv", "ldsconv", "tiny-ldsconv-x2"], device="cpu")
    psnr = {r.key: r.psnr for r in both.results}
    # The same model asked for twice (by variant and by name) is run and counted once.
    span = abs(psnr["dsconv"] - psnr["ldsconv"])
    assert f"The 2 blocks in the tiny backbone span {span:.2f} dB on this image" in both.status_markdown()
    alone = run_comparison(inputs, ["bicubic", "dsconv", "tiny-ldsconv-x2"], device="cpu")
    assert "blocks in the tiny backbone" not in alone.status_markdown()  # one block: no span to speak of


def test_a_model_that_pools_over_its_whole_input_is_said_to_have_run_in_tiles():
    """FDIWN's statistics span its input, so tiles change its output (README "Peers"): the comparison says when
    it tiled one, since the Model zoo measures whole images."""
    class WholeImage(torch.nn.Module):
        global_context = True
        config = {"scale": 2, "model": "fdiwn-x2"}

        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(()))  # upscale reads the device and dtype off a parameter

        def forward(self, x):
            return self.gain * torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    model = WholeImage()
    cache = type("Cache", (), {"raw": lambda self, ref: model, "prepared": lambda self, ref, dev: model})()
    big, small = prepare_inputs(rng_image(96, 96), 2, "hr"), prepare_inputs(rng_image(48, 48), 2, "hr")
    tiled = run_comparison(big, ["bicubic", "fdiwn-x2"], device="cpu", cache=cache, tile=32)
    assert tiled.result("fdiwn-x2").status == "ok"
    assert any("ran in 32-pixel tiles" in n for n in tiled.notes) and not tiled.warnings  # a note, not a pop-up
    assert not any("tiles" in n for n in run_comparison(small, ["bicubic", "fdiwn-x2"], device="cpu", cache=cache,
                                                         tile=32).notes)  # 24x24: one whole-image pass


def test_comparison_outputs_metrics_and_lossless_files(use_throwaway, tmp_path):
    inputs = prepare_inputs(load_image(EXAMPLE), 4, "hr")
    cache = ModelCache()
    calls = []
    comparison = run_comparison(inputs, ["bicubic", "ldsconv", "kdsconv-det"], device="cuda", cache=cache,
                                  progress=lambda f, d: calls.append(f))
    assert calls and calls[-1] == pytest.approx(1.0) and all(0 <= f <= 1 for f in calls)
    if not torch.cuda.is_available():
        assert any("CUDA" in n for n in comparison.notes) and any("CUDA" in w for w in comparison.warnings)
    for r in comparison.results:
        assert r.status == "ok" and r.image.shape == (256, 256, 3)
        assert r.psnr == pytest.approx(evaluate_pair(r.image, inputs.gt, 4)["psnr"])
    kds = comparison.result("kdsconv-det")
    assert kds.params > kds.params_inference == comparison.result("ldsconv").params  # the gate folds away
    assert cache.prepared("tiny-ldsconv-x4", torch.device("cpu")) is cache.prepared("tiny-ldsconv-x4", "cpu")

    paths = save_outputs(comparison, tmp_path)
    for key in ("bicubic", "ldsconv", "kdsconv-det"):
        np.testing.assert_array_equal(load_image(paths[key]), comparison.result(key).image)
    np.testing.assert_array_equal(load_image(paths["gt"]), inputs.gt)
    assert paths["metrics"].read_text().startswith("Variant,Model,PSNR (dB)")


def test_zoom_crops_show_the_same_region_everywhere():
    inputs = prepare_inputs(load_image(EXAMPLE), 4, "hr")
    comparison = run_comparison(inputs, ["bicubic"])
    crops, (x0, y0, w, h) = zoom_crops(comparison, center=(101, 57), size=40, display=160)
    assert x0 % 4 == 0 and y0 % 4 == 0 and w == h == 40
    assert abs(x0 + w / 2 - 101) <= 4 and abs(y0 + h / 2 - 57) <= 4
    factor = 160 // 40
    assert [c[1].split(",")[0] for c in crops] == ["LR input (nearest x4)", "Bicubic", "Ground truth"]
    for img, _ in crops:
        assert img.shape == (w * factor, h * factor, 3)
    gt_crop = inputs.gt[y0:y0 + h, x0:x0 + w]
    np.testing.assert_array_equal(crops[-1][0][::factor, ::factor], gt_crop)
    np.testing.assert_array_equal(crops[0][0][::factor * 4, ::factor * 4],
                                  inputs.lr[y0 // 4:(y0 + h) // 4, x0 // 4:(x0 + w) // 4])
    # Clicks at or beyond the edges stay inside the image.
    assert clamp_region((0, 0), 64, (256, 256), 4)[:2] == (0, 0)
    assert clamp_region((1000, 1000), 64, (256, 256), 4) == (192, 192, 64, 64)
    assert clamp_region(None, 1000, (40, 36), 4) == (0, 0, 36, 40)
    picker = draw_region(inputs.gt, (x0, y0, w, h))
    assert picker.shape == inputs.gt.shape and not np.array_equal(picker, inputs.gt)


def test_the_picker_of_a_large_output_is_reduced_and_a_click_maps_back_to_output_pixels(tmp_path):
    """Each view draws and encodes the picker again: a large output's is reduced to PICKER_SIDE, and a click
    on it zooms where it points in the output."""
    from kaldn.display import PICKER_SIDE, picker_factor
    assert picker_factor((1024, 600)) == 1 and picker_factor((2048, 2048)) == 2 and picker_factor((600, 1025)) == 2
    comparison = run_comparison(prepare_inputs(rng_image(1200, 400), 4, "hr"), ["bicubic"])
    _, run = RunStore(tmp_path / "runs").save(comparison, owner="a")
    view = run.zoom_at_click([100, 300], 64)
    assert max(view.picker.shape[:2]) <= PICKER_SIDE and view.picker.shape[:2] == (600, 200)
    x0, y0, w, h = clamp_region((201, 601), 64, (1200, 400), 4)  # picker pixel (100, 300) spans output 200-201
    assert view.center == (x0 + w // 2, y0 + h // 2) and run.region == (x0, y0, w, h)
    for bad in (None, [1], ["x", 2], [float("nan"), 3]):
        with pytest.raises(UserError):
            run.zoom_at_click(bad, 64)


def test_slider_pairs():
    comparison = run_comparison(prepare_inputs(rng_image(32, 32), 2, "hr"), ["bicubic"])
    keys = [k for _, k in pair_choices(comparison)]
    assert keys == ["bicubic", "gt", "lr"]
    a, b = pair_images(comparison, "bicubic", "lr")
    assert a.shape == b.shape == (32, 32, 3)
    assert default_pair(comparison) == ("bicubic", "gt")
    with pytest.raises(UserError):
        pair_images(comparison, "dsconv", "gt")


def test_choices_follow_the_registry_and_the_shipped_checkpoints():
    available = ["tiny-dsconv-x2", "tiny-kdsconv-det-x2", "tiny-conv-x2"]
    choices = dict((key, label) for label, key in variant_choices(2, available))
    assert list(choices) == ["bicubic", *(v.key for v in variants())]  # the registry's display order
    assert choices["dsconv"] == "DSConv" and choices["ldsconv"] == "Linear DSConv (no x2 checkpoint)"
    # The standard conv is shipped but not selected by default; unshipped variants are not selected either.
    assert default_variants(2, available) == ["bicubic", "dsconv", "kdsconv-det"]


def test_a_model_on_another_backbone_is_offered_by_name_beside_the_variants(tmp_path, monkeypatch):
    from kaldn.choices import runnable_selection
    from app_server import write_throwaway_checkpoints
    available = ["small-dsconv-x2", "small-kdsconv-det-x4", "small-conv-x4", "tiny-dsconv-x4", "tiny-kdsconv-det-x4"]
    choices = dict((key, label) for label, key in variant_choices(4, available))
    # After the variants (the tiny backbone), the other backbone's models by name, in variant order and scale.
    assert list(choices)[-3:] == ["small-dsconv-x2", "small-kdsconv-det-x4", "small-conv-x4"]
    assert choices["small-kdsconv-det-x4"] == "KDSConv (det), small"
    assert choices["small-dsconv-x2"] == "DSConv, small (x2 only)"
    # The family's featured model (the long-trained small KDSConv) is ticked where shipped, after the variants;
    # the other backbone's other models are offered, not ticked; each is runnable at its own scale only.
    assert default_variants(4, available) == ["bicubic", "dsconv", "kdsconv-det", "small-kdsconv-det-x4"]
    assert default_variants(2, available) == ["bicubic"]  # small-dsconv-x2 is not featured; no tiny x2 shipped
    assert default_variants(4, [n for n in available if n != "small-kdsconv-det-x4"]) == ["bicubic", "dsconv",
                                                                                          "kdsconv-det"]
    assert runnable_selection(["small-dsconv-x2", "small-kdsconv-det-x4"], 4, available) == ["small-kdsconv-det-x4"]
    # It runs under its own label, beside the tiny variant of the same conv.
    write_throwaway_checkpoints(tmp_path, ["small-kdsconv-det-x4", "tiny-kdsconv-det-x4"])
    monkeypatch.setenv("KALDN_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    comparison = run_comparison(prepare_inputs(rng_image(32, 32), 4, "hr"), ["kdsconv-det", "small-kdsconv-det-x4"],
                                device="cpu")
    assert [(r.label, r.status, r.model) for r in comparison.results] == [
        ("KDSConv (det)", "ok", "tiny-kdsconv-det-x4"), ("KDSConv (det), small", "ok", "small-kdsconv-det-x4")]
    assert comparison.results[1].params > comparison.results[0].params


def test_a_request_is_checked_and_capped_before_anything_is_resolved(tmp_path, monkeypatch):
    from kaldn.choices import requested_keys
    for bad in ("dsconv", [1, 2], [["dsconv"]], {"dsconv": 1}):
        with pytest.raises(UserError, match="list of names"):
            requested_keys(bad, 4)
    with pytest.raises(UserError, match="at least one"):
        requested_keys([], 4)
    assert requested_keys([" dsconv", "dsconv ", "bicubic"], 4) == ["dsconv", "bicubic"]
    # The cap counts what can run at the scale asked: bicubic, the variants, other backbones' models there.
    monkeypatch.setenv("KALDN_CHECKPOINTS", str(tmp_path))
    (tmp_path / "small-dsconv-x2").mkdir()
    cap_x4 = 1 + len(variants())
    assert len(requested_keys([f"k{i}" for i in range(cap_x4)], 4)) == cap_x4
    with pytest.raises(UserError, match=f"At most {cap_x4} variants"):
        requested_keys([f"k{i}" for i in range(cap_x4 + 1)], 4)
    from app_server import write_throwaway_checkpoints
    write_throwaway_checkpoints(tmp_path, ["small-dsconv-x2"])
    assert len(requested_keys([f"k{i}" for i in range(cap_x4 + 1)], 2)) == cap_x4 + 1
    with pytest.raises(UserError, match=f"At most {cap_x4} variants"):
        requested_keys([f"k{i}" for i in range(cap_x4 + 1)], 4)


def test_a_saved_run_serves_the_slider_crops_and_downloads(tmp_path):
    comparison = run_comparison(prepare_inputs(rng_image(40, 40), 2, "hr"), ["bicubic"])
    store = RunStore(tmp_path / "runs")
    _, run = store.save(comparison, owner="a")
    assert {Path(p).name for p in run.downloads()} == {"bicubic-x2.png", "lr-input.png", "ground-truth.png",
                                                      "metrics.csv"}
    left, right = run.slider("bicubic", "lr")
    assert Image.open(left).size == Image.open(right).size == (40, 40)
    assert "lr-nearest-x2.png" not in {Path(p).name for p in run.downloads()}
    with pytest.raises(UserError, match="Not part of this comparison: dsconv"):
        run.slider("dsconv", "gt")
    for pair in ((None, None), (["gt"], "lr"), ("gt", {"a": 1})):  # what a Dropdown's own check lets through
        with pytest.raises(UserError, match="Choose two images"):
            run.slider(*pair)
    view = run.zoom((30, 10), 16)
    assert run.region == (22, 2, 16, 16) and view.center == (30, 10) and len(view.crops) == 3
    for _ in range(3):  # a session's new run replaces its last one; other sessions' runs stay
        store.save(comparison, owner="a")
    store.save(comparison, owner="b")
    assert len(list((tmp_path / "runs").iterdir())) == 2 and not run.folder.exists()
    nothing = run_comparison(prepare_inputs(rng_image(40, 40), 3, "hr"), ["tiny-dsconv-x2"])
    with pytest.raises(UserError, match="None of the chosen variants could run"):
        store.save(nothing, owner="a")


def test_a_run_whose_files_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch):
    import kaldn.runs
    comparison = run_comparison(prepare_inputs(rng_image(40, 40), 2, "hr"), ["bicubic"])
    store = RunStore(tmp_path / "runs")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(kaldn.runs, "save_outputs", disk_full)
    with pytest.raises(OSError):
        store.save(comparison, owner="a")
    assert list((tmp_path / "runs").iterdir()) == []


# --- where the outputs differ: maps, default zoom, captions, scale switches ---------------------------------

def _synthetic_run(tmp_path, with_gt: bool = True) -> tuple[ComparisonRun, np.ndarray]:
    """Bicubic and two made-up 'models' on a 64x64 image: A is the ground truth, B is wrong only in a 12x12
    patch at x 40..51, y 8..19 (so the pair differs there and nowhere else), bicubic only at x 8..19, y 40..51."""
    from kaldn.comparison import Comparison, VariantResult
    from kaldn.inputs import Inputs
    gt = rng_image(64, 64, seed=3)
    a = gt.copy()
    b = gt.copy()
    b[8:20, 40:52] = np.clip(b[8:20, 40:52].astype(int) + 30, 0, 255).astype(np.uint8)
    bicubic = gt.copy()  # wrong only in its own patch at x 8..19, y 40..51
    bicubic[40:52, 8:20] = np.clip(bicubic[40:52, 8:20].astype(int) - 30, 0, 255).astype(np.uint8)
    inputs = Inputs(lr=gt[::4, ::4].copy(), gt=gt if with_gt else None, scale=4, mode="hr")
    results = [VariantResult("bicubic", "Bicubic", None, bicubic),
               VariantResult("ldsconv", "Linear DSConv", "m-a", a),
               VariantResult("kdsconv-det", "KDSConv (det)", "m-b", b)]
    if with_gt:
        for r in results:
            m = evaluate_pair(r.image, gt, 4)
            r.psnr, r.ssim = m["psnr"], m["ssim"]
    return RunStore(tmp_path / "runs").save(Comparison(inputs, results, "cpu"), owner=None)[1], gt


def test_the_default_zoom_is_where_the_chosen_pair_differs_most(tmp_path):
    run, _ = _synthetic_run(tmp_path)
    run.slider("ldsconv", "kdsconv-det")
    view = run.zoom(None, 16)
    x0, y0, w, h = run.region
    assert x0 <= 40 and x0 + w >= 52 - 4 and y0 <= 8 + 4 and y0 + h >= 20 - 4, run.region  # on the patch
    assert view.center != (32, 32)
    # Without a pair of two outputs (the LR input chosen): where the best model (A) gains most over bicubic,
    # which is bicubic's own patch.
    run.slider("lr", "ldsconv")
    run.zoom(None, 16)
    x0, y0, w, h = run.region
    assert x0 <= 8 + 4 and x0 + w >= 20 - 4 and y0 <= 40 + 4 and y0 + h >= 52 - 4, run.region


def test_error_and_pair_views_know_the_answer(tmp_path):
    run, gt = _synthetic_run(tmp_path)
    grid, note = run.error_view(columns=2)
    assert "one scale" in note and grid.ndim == 3 and grid.dtype == np.uint8
    # 64x64 maps enlarged x4 to 256, two per row, two rows, each with a caption band, then one colour bar.
    assert grid.shape[1] >= 2 * 256 and grid.shape[0] > 2 * 256 + 40
    from kaldn.maps import error_maps
    maps = error_maps({r.label: r.image for r in run.comparison.ok}, gt, border=4)  # the same shared scale
    tile = grid[6 + 20:6 + 20 + 256, 6 + 256 + 6:6 + 256 + 6 + 256]  # row 0, column 1: Linear DSConv = exact
    np.testing.assert_array_equal(tile, maps.tile("Linear DSConv"))
    pair_img, summary = run.pair_view("ldsconv", "kdsconv-det")
    assert pair_img is not None and "Linear DSConv is closer" in summary
    assert run.pair_difference("ldsconv", "kdsconv-det").b_wins == 0.0  # B is never the closer one
    same, message = run.pair_view("ldsconv", "ldsconv")
    assert same is None and "same image" in message
    no_gt, _ = _synthetic_run(tmp_path / "nogt", with_gt=False)
    errors, note = no_gt.error_view()
    assert errors is None and note.startswith("No ground truth")
    _, summary = no_gt.pair_view("ldsconv", "kdsconv-det")
    assert summary.startswith("No ground truth") and f"{30 * 219 / 255:.1f} at most" in summary  # +30 RGB = +25.8 Y


def test_zoomed_crops_carry_their_caption_above_the_pixels(tmp_path):
    run, gt = _synthetic_run(tmp_path)
    view = run.zoom((32, 32), 16)
    labelled = view.labelled()
    for (crop, _), shown in zip(view.crops, labelled):
        assert shown.shape[0] == shown.shape[1] > crop.shape[0]  # square: a gallery thumbnail shows all of it
        margin = (shown.shape[1] - crop.shape[1]) // 2
        np.testing.assert_array_equal(shown[-crop.shape[0]:, margin:margin + crop.shape[1]], crop[..., :3])


def test_the_slider_lr_image_is_the_nearest_neighbour_enlargement(tmp_path):
    comparison = run_comparison(prepare_inputs(rng_image(40, 40), 4, "hr"), ["bicubic"])
    _, run = RunStore(tmp_path / "runs").save(comparison, owner=None)
    _, lr_path = run.slider("bicubic", "lr")
    shown = load_image(lr_path)
    assert shown.shape == (40, 40, 3)  # the output size, not the 10x10 LR file the browser would smooth
    np.testing.assert_array_equal(shown, np.repeat(np.repeat(comparison.inputs.lr, 4, axis=0), 4, axis=1))


def test_a_scale_switch_keeps_only_what_can_run_and_messages_name_each_variant_once():
    from kaldn.choices import runnable_selection
    from kaldn.session_models import SessionModels
    available = ["tiny-dsconv-x2", "tiny-dsconv-x4", "tiny-ldsconv-x4"]
    registry = SessionModels()
    assert runnable_selection(["bicubic", "dsconv", "ldsconv"], 2, available, registry) == ["bicubic", "dsconv"]
    assert runnable_selection(["ldsconv"], 2, available, registry) == default_variants(2, available)
    # A client's payload that is not a list of keys (it only carries ticks across) falls back, it does not crash.
    assert runnable_selection(["bicubic", ["dsconv"], {"a": 1}, 7], 2, available, registry) == ["bicubic"]
    assert runnable_selection(5, 2, available, registry) == default_variants(2, available)
    comparison = run_comparison(prepare_inputs(rng_image(32, 32), 3, "hr"), ["bicubic", "dsconv", "tiny-ldsconv-x2"])
    for warning in comparison.warnings:
        label, message = warning.split(": ", 1)
        assert label not in message, warning


def test_what_the_loader_changes_reaches_the_notes_once():
    rgb16 = rng_image(32, 32, dtype=np.uint16)
    path_buf = io.BytesIO()
    # A 16-bit RGB PNG (Pillow cannot write one): written by the library's own 16-bit writer.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        from kaldn.images import save_png
        save_png(rgb16, Path(tmp) / "rgb16.png")
        notes = prepare_inputs(Path(tmp) / "rgb16.png", 2, "hr").notes
    assert any("16 bits per channel" in n and "8 bits" in n for n in notes), notes

    frames = [Image.fromarray(rng_image(32, 32, seed=s)) for s in range(3)]
    frames[0].save(path_buf, format="GIF", save_all=True, append_images=frames[1:])
    notes = prepare_inputs(path_buf.getvalue(), 2, "hr").notes
    assert any("3 frames" in n and "first frame" in n for n in notes), notes

    cmyk = io.BytesIO()
    Image.fromarray(rng_image(32, 32)).convert("CMYK").save(cmyk, format="JPEG")
    notes = prepare_inputs(cmyk.getvalue(), 2, "hr").notes
    assert any("CMYK" in n for n in notes), notes

    gray16 = io.BytesIO()
    Image.fromarray(rng_image(32, 32, channels=1, dtype=np.uint16)[..., 0]).save(gray16, format="PNG")
    notes = prepare_inputs(gray16.getvalue(), 2, "hr").notes
    assert sum("grayscale" in n for n in notes) == 1 and sum("16 bits" in n or "16-bit" in n for n in notes) == 2


def test_large_error_maps_shrink_for_the_overview_without_losing_a_hotspot():
    from kaldn.display import map_tile as _tile
    from kaldn.maps import ErrorMaps, colourize_error
    image = np.zeros((1100, 1030, 3), np.uint8)
    image[777, 333] = 255  # one bright (large-error) pixel
    tile = _tile(image)
    assert max(tile.shape[:2]) <= 512 and tile.max() == 255
    assert _tile(np.zeros((64, 64, 3), np.uint8)).shape == (256, 256, 3)  # small ones enlarged
    # Errors are reduced before they are coloured: a block of 5 and 7.5 grey levels (limit 10) shows the colour
    # of 7.5, a colour of the ramp, not the channel-wise largest of two colours (the ramp's blue falls there).
    errors = np.zeros((1024, 1024))
    errors[0, 0], errors[0, 1] = 5.0, 7.5
    tile = ErrorMaps({"A": errors}, {"A": 0.0}, 10.0, 0).tile("A")
    assert tile.shape == (512, 512, 3)
    np.testing.assert_array_equal(tile[0, 0], colourize_error(np.array([7.5]), 10.0)[0])
    assert not (_tile(colourize_error(errors, 10.0))[0, 0] == tile[0, 0]).all()  # colouring first is off the ramp


def test_a_ground_truth_larger_than_any_scale_allows_is_refused_from_its_header():
    """In LR mode the ground truth must be the LR size x scale; one that claims more pixels than the largest
    scale could need is refused before a pixel is decoded (a small file may claim a huge size)."""
    from test_images import _png_header_only
    lr = rng_image(16, 16)
    with pytest.raises(UserError, match="ground truth is 2000x2000.*must be exactly 64x64"):  # not "damaged"
        prepare_inputs(lr, 4, "lr", _png_header_only(2000, 2000), max_pixels=4096 * 4096)
    # A real ground truth at another scale still gets the helpful message.
    with pytest.raises(UserError, match="choose scale 4"):
        prepare_inputs(lr, 2, "lr", rng_image(64, 64), max_pixels=4096 * 4096)


def test_a_rotated_ground_truth_refused_from_its_header_is_named_upright(tmp_path):
    """A phone photo is stored sideways with an EXIF orientation tag; the header check names the size the
    user sees (upright), as the decoded image would be."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200x50, shown 50x200
    Image.new("RGB", (200, 50)).save(tmp_path / "phone.jpg", exif=exif)
    with pytest.raises(UserError, match="ground truth is 50x200"):
        prepare_inputs(rng_image(8, 8), 4, "lr", tmp_path / "phone.jpg", max_pixels=4096 * 4096)


def test_zoom_refuses_sizes_and_centres_that_are_not_finite_numbers_in_range(tmp_path):
    run, _ = _synthetic_run(tmp_path)
    assert run.zoom((10, 10), None).picker is not None  # None: the default size
    for size, message in [(float("nan"), "must be a number"), ("big", "must be a number"),
                          (float("inf"), "must be a number"), (8, "from 16 to 256"), (1e9, "from 16 to 256")]:
        with pytest.raises(UserError, match=message):
            run.zoom((10, 10), size)
    for centre in [(float("nan"), 3), (3, float("-inf")), ("x", 3), (None, 3), (10**400, 0)]:  # too big a float
        with pytest.raises(UserError, match="must be a number"):
            run.zoom(centre, 64)
    from kaldn.models import check_scale
    for scale in [float("inf"), float("nan"), "4.5", 10**30]:
        with pytest.raises(UserError, match="scale must be one of"):
            check_scale(scale)


def test_the_mismatch_message_suggests_only_a_scale_that_could_run():
    lr = rng_image(16, 16)
    with pytest.raises(UserError, match="choose scale 4"):
        prepare_inputs(lr, 2, "lr", rng_image(64, 64))
    with pytest.raises(UserError) as refused:  # x4 would make a 64x64 output, over this server's 40x40
        prepare_inputs(lr, 2, "lr", rng_image(64, 64), max_output_pixels=40 * 40)
    assert "choose scale" not in str(refused.value) and "must be exactly 32x32" in str(refused.value)


def test_the_crop_hint_offers_hr_mode_only_when_hr_mode_would_take_the_image():
    lr, gt = rng_image(16, 16), rng_image(33, 33)  # x2 wants 32x32: a crop away
    with pytest.raises(UserError, match=r"Crop it to 32x32 \(bottom/right\), or upload it alone in HR mode"):
        prepare_inputs(lr, 2, "lr", gt)
    with pytest.raises(UserError) as refused:  # 33x33 is over this server's output cap: HR mode would refuse it
        prepare_inputs(lr, 2, "lr", gt, max_output_pixels=32 * 32)
    assert "Crop it to 32x32 (bottom/right)." in str(refused.value) and "HR mode" not in str(refused.value)


def test_a_comparison_over_its_work_limit_is_refused_before_anything_runs(use_throwaway):
    from kaldn.comparison import check_work, multiply_adds_per_pixel, resolve_variants
    from kaldn.inputs import check_inputs

    # per LR pixel, whatever the size: a 32x32 count scaled is a 40x56 count
    from kaldn.inference import prepare_model
    from kaldn.models import create_model, multiply_adds
    fast = prepare_model(create_model("tiny-conv-x4").eval(), "cpu")
    assert multiply_adds_per_pixel("tiny-conv-x4") * 40 * 56 == multiply_adds(fast, 40, 56)
    resolved = resolve_variants(["bicubic", "conv", "ldsconv", "tiny-ldsconv-x4"], 4)
    assert [r.key for r in resolved] == ["bicubic", "conv", "ldsconv"]  # a key and its model name run once
    per_pixel = multiply_adds_per_pixel("tiny-conv-x4") + multiply_adds_per_pixel("tiny-ldsconv-x4")
    need = per_pixel * 64 * 64
    assert check_work(resolved, (64, 64), need) == need  # exactly at the limit: allowed; bicubic costs nothing
    with pytest.raises(UserError, match="heaviest: Standard conv"):
        check_work(resolved, (64, 64), need - 1)
    # Tiled, every tile reads 24 pixels beyond its edges: a 300x300 input in 256-pixel tiles runs
    # (256 + 24)^2 + 2 x (256 + 24) x (44 + 24) + (44 + 24)^2 pixels.
    assert check_work(resolved, (300, 300), None) == per_pixel * (280 * 280 + 2 * 280 * 68 + 68 * 68)
    inputs = prepare_inputs(rng_image(256, 256), 4, "hr")
    assert check_inputs(rng_image(256, 258), 4, "hr").lr_size == inputs.lr.shape[:2]
    with pytest.raises(UserError, match="KALDN_APP_MAX_COMPARE_GMACS"):
        run_comparison(inputs, ["bicubic", "conv"], max_multiply_adds=10**6,
                       progress=lambda *_: pytest.fail("nothing may run"))


@pytest.mark.parametrize("device", [["cuda"], 3, "tpu", "x" * 10_000])
def test_a_device_that_is_not_auto_cpu_or_cuda_is_refused_with_a_message(device) -> None:
    with pytest.raises(UserError, match="device must be auto, cpu or cuda") as refused:
        check_device(device)
    assert len(str(refused.value)) < 200  # a client's megabyte is not echoed back
    assert check_device(None) == check_device("") == "auto" and check_device("CUDA") == "cuda"
