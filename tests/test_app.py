"""The app: ``kaldn.compare`` (all the logic, no UI) and the Gradio app driven through ``gradio_client``.

The end-to-end comparison at x4 uses the bundled ``checkpoints/tiny-*-x4`` models; the check that every
trained variant beats bicubic skips (saying why) when none are bundled. Everything else runs on
throwaway, untrained checkpoints written to a temporary folder (``KALDN_CHECKPOINTS``), never into
``checkpoints/``.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaldn import compare as C
from kaldn.images import ImageError, load_image, save_png
from kaldn.metrics import evaluate_pair
from kaldn.resize import imresize

from app_server import X4_CONVS, running_app, write_throwaway_checkpoints

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory) -> Path:
    names = [f"tiny-{c}-x4" for c in X4_CONVS] + [f"tiny-{c}-x2" for c in ("dsconv", "ldsconv", "kdsconv-det")]
    return write_throwaway_checkpoints(tmp_path_factory.mktemp("ckpts"), names)


@pytest.fixture
def use_throwaway(throwaway, monkeypatch) -> Path:
    monkeypatch.setenv("KALDN_CHECKPOINTS", str(throwaway))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return throwaway


def rng_image(h: int, w: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    # Smooth-ish content (noise upsampled) so SSIM/PSNR are meaningful.
    small = rng.integers(0, hi + 1, size=(h // 4 + 2, w // 4 + 2, channels)).astype(np.float64)
    big = imresize(small, output_shape=(h, w))
    return np.clip(np.round(big), 0, hi).astype(dtype)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --- kaldn.compare: inputs ------------------------------------------------------------------------------

def test_hr_mode_crops_to_scale_and_makes_lr_with_imresize():
    hr = rng_image(50, 43)
    inputs = C.prepare_inputs(hr, 4, "hr")
    assert inputs.gt.shape == (48, 40, 3)
    assert inputs.lr.shape == (12, 10, 3)
    np.testing.assert_array_equal(inputs.gt, hr[:48, :40])
    np.testing.assert_array_equal(inputs.lr, imresize(hr[:48, :40], scale=1 / 4, output_shape=(12, 10)))
    assert any("cropped from 43x50 to 40x48" in n for n in inputs.notes)


def test_lr_mode_with_matching_ground_truth():
    lr, gt = rng_image(16, 20), rng_image(48, 60, seed=1)
    inputs = C.prepare_inputs(lr, 3, "lr", ground_truth=gt)
    assert inputs.gt is gt or np.array_equal(inputs.gt, gt)
    assert inputs.output_shape == (48, 60)
    no_gt = C.prepare_inputs(lr, 3, "lr")
    assert no_gt.gt is None and "no PSNR/SSIM" in no_gt.notes[0]


def test_ground_truth_size_mismatch_is_a_clear_message():
    lr = rng_image(16, 16)
    with pytest.raises(C.CompareError, match=r"ground truth is 64x60.*must be exactly 64x64"):
        C.prepare_inputs(lr, 4, "lr", ground_truth=rng_image(60, 64))
    with pytest.raises(C.CompareError, match="It matches x2: choose scale 2"):
        C.prepare_inputs(lr, 4, "lr", ground_truth=rng_image(32, 32))
    with pytest.raises(C.CompareError, match="Crop it to 48x48"):
        C.prepare_inputs(lr, 3, "lr", ground_truth=rng_image(50, 49))


@pytest.mark.parametrize("source, message", [
    (b"this is not an image", "not an image"),
    (b"", "empty"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (png_bytes(np.zeros((4, 4, 3), np.uint8)), "too small"),
])
def test_bad_inputs_raise_user_messages(source, message):
    with pytest.raises(ValueError, match=message):
        C.prepare_inputs(source, 4, "hr")


def test_too_many_pixels_and_bad_parameters():
    big = rng_image(64, 64)
    with pytest.raises(ImageError, match="too large"):
        C.prepare_inputs(big, 2, "hr", max_pixels=1000)
    with pytest.raises(ImageError, match="output would be 256x256"):
        C.prepare_inputs(big, 4, "lr", max_output_pixels=50_000)
    with pytest.raises(C.CompareError, match="scale must be one of 2, 3, 4"):
        C.prepare_inputs(big, 5, "hr")
    with pytest.raises(C.CompareError, match="Upload an image first"):
        C.prepare_inputs(None, 4, "hr")
    inputs = C.prepare_inputs(big, 2, "hr")
    with pytest.raises(C.CompareError, match="Unknown variant 'sharpen'"):
        C.run_comparison(inputs, ["bicubic", "sharpen"])
    with pytest.raises(C.CompareError, match="at least one variant"):
        C.run_comparison(inputs, [])


def test_alpha_grayscale_and_16_bit_inputs_are_handled():
    rgba = rng_image(32, 32, channels=4)
    inputs = C.prepare_inputs(rgba, 2, "hr")
    assert any("alpha" in n for n in inputs.notes)
    out = C.run_comparison(inputs, ["bicubic"]).results[0]
    assert out.image.shape == (32, 32, 4) and out.psnr is not None

    gray16 = rng_image(32, 32, channels=1, dtype=np.uint16)[..., 0]
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="PNG")
    inputs = C.prepare_inputs(buf.getvalue(), 2, "hr")
    assert inputs.lr.dtype == np.uint16
    assert any("16 bits" in n for n in inputs.notes) and any("grayscale" in n for n in inputs.notes)
    res = C.run_comparison(inputs, ["bicubic"]).results[0]
    assert res.image.dtype == np.uint16 and 0 < res.psnr < 100


# --- kaldn.compare: running, crops, files ---------------------------------------------------------------

def test_unavailable_variant_is_reported_not_raised(use_throwaway):
    inputs = C.prepare_inputs(rng_image(48, 48), 3, "hr")  # no x3 checkpoints at all
    comparison = C.run_comparison(inputs, ["bicubic", "dsconv", "tiny-ldsconv-x2"], device="cpu")
    status = {r.key: r for r in comparison.results}
    assert status["bicubic"].status == "ok"
    assert status["dsconv"].status == "unavailable" and "tiny-dsconv-x3" in status["dsconv"].message
    assert status["tiny-ldsconv-x2"].status == "unavailable" and "x2 model" in status["tiny-ldsconv-x2"].message
    headers, rows = C.metrics_table(comparison)
    assert [r[0] for r in rows] == ["Bicubic", "DSConv", "tiny-ldsconv-x2"]
    assert rows[1][headers.index("PSNR (dB)")] is None


def test_comparison_outputs_metrics_and_lossless_files(use_throwaway, tmp_path):
    inputs = C.prepare_inputs(load_image(EXAMPLE), 4, "hr")
    cache = C.ModelCache()
    calls = []
    comparison = C.run_comparison(inputs, ["bicubic", "ldsconv", "kdsconv-det"], device="cuda", cache=cache,
                                  progress=lambda f, d: calls.append(f))
    assert calls and calls[-1] == pytest.approx(1.0) and all(0 <= f <= 1 for f in calls)
    if not torch.cuda.is_available():
        assert any("CUDA" in n for n in comparison.notes)
    for r in comparison.results:
        assert r.status == "ok" and r.image.shape == (256, 256, 3)
        assert r.psnr == pytest.approx(evaluate_pair(r.image, inputs.gt, 4)["psnr"])
    kds = comparison.result("kdsconv-det")
    assert kds.params > kds.params_inference == comparison.result("ldsconv").params  # the gate folds away
    assert cache.prepared("tiny-ldsconv-x4", torch.device("cpu")) is cache.prepared("tiny-ldsconv-x4", "cpu")

    paths = C.save_outputs(comparison, tmp_path)
    for key in ("bicubic", "ldsconv", "kdsconv-det"):
        np.testing.assert_array_equal(load_image(paths[key]), comparison.result(key).image)
    np.testing.assert_array_equal(load_image(paths["gt"]), inputs.gt)
    assert paths["metrics"].read_text().startswith("Variant,Model,PSNR (dB)")


def test_zoom_crops_show_the_same_region_everywhere():
    inputs = C.prepare_inputs(load_image(EXAMPLE), 4, "hr")
    comparison = C.run_comparison(inputs, ["bicubic"])
    crops, (x0, y0, w, h) = C.zoom_crops(comparison, center=(101, 57), size=40, display=160)
    assert x0 % 4 == 0 and y0 % 4 == 0 and w == h == 40
    assert abs(x0 + w / 2 - 101) <= 4 and abs(y0 + h / 2 - 57) <= 4
    factor = 160 // 40
    assert [c[1].split(" ·")[0] for c in crops] == ["LR input (nearest x4)", "Bicubic", "Ground truth"]
    for img, _ in crops:
        assert img.shape == (w * factor, h * factor, 3)
    gt_crop = inputs.gt[y0:y0 + h, x0:x0 + w]
    np.testing.assert_array_equal(crops[-1][0][::factor, ::factor], gt_crop)
    np.testing.assert_array_equal(crops[0][0][::factor * 4, ::factor * 4],
                                  inputs.lr[y0 // 4:(y0 + h) // 4, x0 // 4:(x0 + w) // 4])
    # Clicks at or beyond the edges stay inside the image.
    assert C.clamp_region((0, 0), 64, (256, 256), 4)[:2] == (0, 0)
    assert C.clamp_region((1000, 1000), 64, (256, 256), 4) == (192, 192, 64, 64)
    assert C.clamp_region(None, 1000, (40, 36), 4) == (0, 0, 36, 40)
    picker = C.draw_region(inputs.gt, (x0, y0, w, h))
    assert picker.shape == inputs.gt.shape and not np.array_equal(picker, inputs.gt)


def test_slider_pairs():
    comparison = C.run_comparison(C.prepare_inputs(rng_image(32, 32), 2, "hr"), ["bicubic"])
    keys = [k for _, k in C.pair_choices(comparison)]
    assert keys == ["bicubic", "gt", "lr"]
    a, b = C.pair_images(comparison, "bicubic", "lr")
    assert a.shape == b.shape == (32, 32, 3)
    assert C.default_pair(comparison) == ("bicubic", "gt")
    with pytest.raises(C.CompareError):
        C.pair_images(comparison, "dsconv", "gt")


# --- kaldn.compare: the hasty ReLU and the kernels -------------------------------------------------------

def test_hasty_relu_statistic_is_a_fraction(use_throwaway):
    lr = C.prepare_inputs(load_image(EXAMPLE), 2, "hr").lr
    report = C.hasty_relu_report(lr, 2, C.ModelCache())
    assert set(report["stats"]) == {"dsconv", "ldsconv"} and not report["missing"]
    ds, lin = report["stats"]["dsconv"], report["stats"]["ldsconv"]
    assert ds["relu_after_depthwise"] and not lin["relu_after_depthwise"]
    for st in (ds, lin):
        assert 0.0 <= st["zeroed_fraction"] <= 1.0 and 0.0 <= st["zeroed_energy"] <= 1.0
        assert len(st["layers"]) == 16  # tiny: 4 blocks x 4 layers
        assert all(0 <= layer["zeroed_fraction"] <= 1 for layer in st["layers"])
        assert st["map"].shape == lr.shape[:2] and st["map"].min() >= 0 and st["map"].max() <= 1
    assert "DSConv" in report["summary"] and len(report["maps"]) == 3
    missing = C.hasty_relu_report(lr, 3, C.ModelCache())
    assert not missing["stats"] and len(missing["missing"]) == 2


def test_depthwise_stats_match_a_direct_computation(use_throwaway):
    """For DSConv, the share of zeros after its ReLU is exactly what the statistic reports."""
    model = C.ModelCache().raw("tiny-dsconv-x2")
    lr = rng_image(24, 24)
    seen = []
    layer = model.blocks[0].layers[0]
    handle = layer.depthwise.register_forward_hook(lambda m, i, o: seen.append(float((o < 0).float().mean())))
    try:
        stats = C.depthwise_stats(model, lr)
    finally:
        handle.remove()
    assert stats["layers"][0]["zeroed_fraction"] == pytest.approx(seen[0], abs=1e-6)


def test_kernel_table_and_heat_map(use_throwaway):
    model = C.ModelCache().raw("tiny-kdsconv-det-x4")
    layers = C.kernel_layers(model)
    assert layers[0] == "blocks.0.layers.0" and len(layers) == 16
    table = C.kernel_table(model, layers[1])
    c = table["kernels"].shape[0]
    assert table["kernels"].shape == (c, 3, 3) and c == 64
    layer = model.blocks[0].layers[1]
    np.testing.assert_allclose(table["scale"], 1 + layer.attention().numpy(), rtol=1e-6)
    assert np.all((table["scale"] > 1) & (table["scale"] < 2))
    np.testing.assert_allclose(table["avg"], layer.depthwise.weight[:, 0].mean(dim=(1, 2)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(table["det"], [np.linalg.det(k) for k in table["kernels"].astype(np.float64)],
                               atol=1e-6)
    grid = C.render_kernel_grid(table)
    assert grid.ndim == 3 and grid.dtype == np.uint8 and grid.shape[1] > 500
    assert len(C.kernel_rows(table)) == c
    fixed = C.kernel_table(C.ModelCache().raw("tiny-kdsconv-fixed-x4"), "blocks.0.layers.0")
    assert np.all(fixed["scale"] == 1.5)
    headers, rows = C.gate_rows(model)
    assert len(rows) == 16 and headers[0] == "Layer"
    with pytest.raises(C.CompareError):
        C.kernel_table(model, "upsample")


def test_zoo_table_lists_measured_numbers_and_budgets(tmp_path):
    from kaldn.checkpoint import save_checkpoint
    from kaldn.models import count_parameters, create_model
    budget = {"iterations_done": 4000, "batch": 16, "patch": 32, "seed": 0, "wall_time_s": 600.0, "device": "cpu"}
    for name, psnr in (("tiny-kdsconv-det-x2", 33.5), ("tiny-dsconv-x2", 33.25), ("tiny-ldsconv-x4", 30.45)):
        save_checkpoint(tmp_path / name, create_model(name),
                        {"metrics": {"set5": {"psnr": psnr, "ssim": 0.9}}, "training": budget})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    headers, rows = C.zoo_table(tmp_path)
    by_model = {r[0]: dict(zip(headers, r)) for r in rows}
    assert [r[0] for r in rows] == ["tiny-dsconv-x2", "tiny-kdsconv-det-x2", "tiny-ldsconv-x4"]  # scale, then variant
    row = by_model["tiny-kdsconv-det-x2"]
    assert row["set5 PSNR / SSIM"] == "33.50 / 0.9000" and row["set14 PSNR / SSIM"] == "-"
    assert row["Params"] == count_parameters(create_model("tiny-kdsconv-det-x2"))
    assert row["Training budget"] == "4000 it, batch 16, patch 32, seed 0, 10 min on cpu"
    assert [r[0] for r in C.zoo_table(tmp_path, scale=4)[1]] == ["tiny-ldsconv-x4"]


def test_finetune_data_preparation(tmp_path):
    good = tmp_path / "good.png"
    save_png(rng_image(100, 120), good)
    small = tmp_path / "small.png"
    save_png(rng_image(40, 40), small)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    count, notes, patch = C.prepare_finetune_data([good, small, junk], 2, 32, tmp_path / "data")
    assert count == 2 and patch == 20  # patch shrunk to fit the 40-pixel image at x2
    assert any("junk.png" in n for n in notes)
    with pytest.raises(C.CompareError, match="No usable training image"):
        C.prepare_finetune_data([junk], 2, 32, tmp_path / "data2")


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


def compare(client, image, scale=4, variants=("bicubic",), mode="hr", gt=None, device="auto", crop=64):
    from gradio_client import handle_file
    return client.predict(mode, handle_file(str(image)), handle_file(str(gt)) if gt else None, scale,
                          list(variants), device, crop, api_name="/compare")


def table_rows(table: dict) -> dict[str, dict]:
    return {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}


def test_every_event_has_an_api_name(served):
    demo_fns = served["app"].build_demo().fns.values()
    names = [fn.api_name for fn in demo_fns]
    assert all(names), names
    for expected in ("compare", "zoom", "select_region", "slider_pair", "finetune", "cancel_finetune",
                     "kernel_model", "kernels", "hasty_relu", "refresh_models", "zoo"):
        assert expected in names


def test_upscale_example_x4_with_every_variant(served, client):
    status, slider, left, right, picker, gallery, table, files, cx, cy = \
        compare(client, EXAMPLE, 4, ["bicubic", *X4_CONVS])
    rows = table_rows(table)
    assert set(rows) == {"Bicubic", *(C.LABELS[c] for c in X4_CONVS)}
    by_name = {Path(f).name: f for f in files}
    hr = load_image(EXAMPLE)
    bicubic_psnr = rows["Bicubic"]["PSNR (dB)"]
    ran = []
    for conv in X4_CONVS:
        row = rows[C.LABELS[conv]]
        name = f"tiny-{conv}-x4.png"
        if row["PSNR (dB)"] is None:  # no checkpoint for it: reported, not crashed
            assert "No checkpoint" in row["Note"] and name not in by_name
            continue
        ran.append(conv)
        out = load_image(by_name[name])
        assert out.shape == (256, 256, 3)
        # The table is computed on the server's arrays; the PNG download is the same array.
        assert evaluate_pair(out, hr, 4)["psnr"] == pytest.approx(row["PSNR (dB)"], abs=1e-3)
    assert load_image(by_name["bicubic-x4.png"]).shape == (256, 256, 3)
    assert ran, "no model variant ran"
    assert Path(slider[0]).is_file() and Path(slider[1]).is_file()
    assert len(gallery) == 2 + 1 + len(ran)  # LR, bicubic, models, ground truth
    assert cx == 128 and cy == 128

    if not served["real"]:
        pytest.skip("no bundled checkpoints/tiny-*-x4 yet: sizes checked on throwaway models; "
                    "the beats-bicubic check needs the trained ones")
    for conv in ran:
        psnr = rows[C.LABELS[conv]]["PSNR (dB)"]
        assert psnr > bicubic_psnr, f"{conv}: {psnr:.3f} dB does not beat bicubic {bicubic_psnr:.3f} dB"


@pytest.mark.parametrize("scale", [2, 3])
def test_upscale_example_at_x2_and_x3_beats_bicubic(served, client, scale):
    from kaldn.hub import bundled_dir
    shipped = sorted(c for c in X4_CONVS if (bundled_dir() / f"tiny-{c}-x{scale}" / "model.safetensors").is_file())
    if not served["real"] or not shipped:
        pytest.skip(f"no bundled tiny x{scale} checkpoints")
    status, *_, table, files, cx, cy = compare(client, EXAMPLE, scale, ["bicubic", *shipped])
    rows = table_rows(table)
    side = 256 // scale * scale  # HR is cropped to a multiple of the scale
    by_name = {Path(f).name: f for f in files}
    for conv in shipped:
        assert load_image(by_name[f"tiny-{conv}-x{scale}.png"]).shape == (side, side, 3)
        psnr = rows[C.LABELS[conv]]["PSNR (dB)"]
        assert psnr > rows["Bicubic"]["PSNR (dB)"], f"{conv} x{scale}: {psnr:.3f} dB does not beat bicubic"


def test_zoom_slider_and_lr_mode_through_the_api(client, tmp_path):
    compare(client, EXAMPLE, 4, ["bicubic", "ldsconv"])
    picker, gallery, cx, cy = client.predict(200, 40, 32, api_name="/zoom")
    assert (cx, cy) == (200, 40) and len(gallery) >= 3
    assert Image.open(gallery[-1]["image"]).size == (256, 256)  # 32-pixel crop, enlarged x8
    left, right = client.predict("bicubic", "gt", api_name="/slider_pair")
    assert Image.open(left).size == Image.open(right).size == (256, 256)

    lr = tmp_path / "lr.png"
    save_png(C.prepare_inputs(load_image(EXAMPLE), 4, "hr").lr, lr)
    status, *_, table, files, _, _ = compare(client, lr, 4, ["bicubic"], mode="lr", gt=EXAMPLE)
    assert table_rows(table)["Bicubic"]["PSNR (dB)"] > 20
    status, *_, table, files, _, _ = compare(client, lr, 4, ["bicubic"], mode="lr")
    assert table_rows(table)["Bicubic"]["PSNR (dB)"] is None and "no ground truth" in status


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
        monkeypatch.setattr(served["app"], "MAX_PIXELS", 10_000)
    else:
        path, expected = EXAMPLE, "at least one variant"
        kwargs = {"variants": []}
    with pytest.raises(AppError, match=expected):
        compare(client, path, 4, **{"variants": ["bicubic"], **kwargs})
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
    assert rows and all(name.endswith("-x4") for name in rows)
    if served["real"]:  # shipped checkpoints carry their measured numbers
        assert set(rows) == set(served["real"])
        assert all(row["set5 PSNR / SSIM"] != "-" for row in rows.values())
    assert len(table_rows(client.predict("all", api_name="/zoo"))) >= len(rows)


def test_how_it_works_endpoints(served, client):
    from gradio_client.exceptions import AppError
    models = served["real"] or [f"tiny-{c}-x4" for c in X4_CONVS]
    kds = next((m for m in models if m.startswith("tiny-kdsconv-") and "fixed" not in m), None)
    if kds is not None:
        layer, grid, kernel_rows, gate = client.predict(kds, None, api_name="/kernel_model")
        assert layer["value"] == "blocks.0.layers.2" and len(layer["choices"]) == 16
        assert Image.open(grid).size[0] > 500
        assert len(kernel_rows["data"]) == 96 and kernel_rows["headers"][-1] == "1 + a"
        assert all(1 < row[-1] < 2 for row in kernel_rows["data"])
        assert len(gate["data"]) == 16
        grid, rows = client.predict(kds, "blocks.3.layers.3", api_name="/kernels")
        assert len(rows["data"]) == 128
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict("paper-kdsconv-det-x4", None, api_name="/kernel_model")  # a name never shipped

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
    entry = served["app"].REGISTRY.items()[-1]
    variants, _, _ = client.predict(4, ["bicubic"], base, None, api_name="/refresh_models")
    assert entry.key in [c[1] for c in variants["choices"]]
    table = compare(client, EXAMPLE, 4, ["bicubic", entry.key])[6]
    assert table_rows(table)[entry.label]["PSNR (dB)"] is not None
    with pytest.raises(AppError, match="greater than maximum"):
        client.predict(None, True, base, 10**6, 2e-4, 2, 16, api_name="/finetune")
    with pytest.raises(AppError, match="learning rate must be between"):
        client.predict(None, True, base, 10, 1.0, 2, 16, api_name="/finetune")
