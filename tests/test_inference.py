"""Tiled inference on CPU: seams, layouts, dtypes, the fast path."""

import numpy as np
import pytest
import torch

from kaldn.inference import prepare_model, resolve_device, upscale
from kaldn.layers import KDSConv
from kaldn.models import create_model
from kaldn.resize import imresize


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return prepare_model(create_model("tiny-kdsconv-det-x2"), device="cpu")


def _image(h, w, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 80 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]
    return np.clip(base + rng.normal(0, 20, (h, w, channels)), 0, 255).astype(np.uint8)


def test_tiled_equals_whole_image(model):
    image = _image(150, 200)  # 4 x 3 tiles of 48
    whole = upscale(image, model, tile=None)
    tiled = upscale(image, model, tile=48, overlap=24)
    assert whole.shape == tiled.shape == (300, 400, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    # Without overlap the seams show: the check above can fail.
    seamed = upscale(image, model, tile=48, overlap=0)
    assert np.abs(whole.astype(int) - seamed.astype(int)).max() > 1


def test_receptive_radius_is_measured_from_the_network(model):
    from benchmarks.tiling import receptive_radius
    # RDN: two shallow 3x3 convs, one per dense layer (tiny: 4 x 4), global fusion's 3x3, the upsampler's.
    assert receptive_radius(model) == 2 + 4 * 4 + 1 + 1
    assert receptive_radius(prepare_model(create_model("small-ldsconv-x2"), "cpu")) == 2 + 6 * 5 + 1 + 1

    class Global(torch.nn.Module):  # statistics of the whole input reach every output pixel
        config = {"scale": 2}

        def forward(self, x):
            return torch.nn.functional.interpolate(x - x.mean(), scale_factor=2)
    assert receptive_radius(Global()) is None


def test_progress_reports_every_tile(model):
    calls = []
    upscale(_image(100, 100), model, tile=40, overlap=8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 9) for i in range(1, 10)]


def test_alpha_is_kept_and_upscaled_separately(model):
    rgba = np.concatenate([_image(30, 40), _image(30, 40, 1, seed=1)], axis=2)
    out = upscale(rgba, model)
    assert out.shape == (60, 80, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 3], imresize(rgba[..., 3], scale=2))
    np.testing.assert_array_equal(out[..., :3], upscale(rgba[..., :3], model))


def test_grayscale_and_16_bit(model):
    gray = _image(20, 24)[..., 0]
    out = upscale(gray, model)
    assert out.shape == (40, 48) and out.dtype == np.uint8
    deep = _image(20, 24).astype(np.uint16) * 257
    out16 = upscale(deep, model)
    assert out16.dtype == np.uint16 and out16.shape == (40, 48, 3)
    out8 = upscale((deep // 257).astype(np.uint8), model)
    assert np.abs(out16 / 257.0 - out8).max() <= 1.0


def test_prepare_model_fuses_and_matches():
    torch.manual_seed(1)
    model = create_model("tiny-kdsconv-avg-x3").eval()
    fast = prepare_model(model, device="cpu")
    assert any(isinstance(m, KDSConv) for m in model.modules())
    assert not any(isinstance(m, KDSConv) for m in fast.modules())
    assert fast.config["fused"] is True and fast.config["scale"] == 3
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-5, atol=1e-5)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="needs CUDA"):
            prepare_model(create_model("tiny-ldsconv-x2"), device="cpu", precision="fp16")
    for device in ("gpu", "mps", 3.5):  # not torch's list of a dozen backends: what this project runs on
        with pytest.raises(ValueError, match=r"auto, cpu or cuda\[:N\]"):
            resolve_device(device)
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        prepare_model(create_model("tiny-ldsconv-x2"), device="cpu", precision="fp8")


@pytest.mark.parametrize("image, kwargs, message", [
    (np.zeros((3, 20, 20), np.float32), {}, r"got shape \(3, 20, 20\) \(channels first"),
    (np.zeros((20, 20, 8), np.float32), {}, r"got shape \(20, 20, 8\)"),
    (np.zeros((0, 0, 3), np.uint8), {}, "empty image"),
    ([[0, 1], [2, 3]], {}, "numpy image array .* got list"),
    (np.zeros((8, 8, 3), np.int32), {}, "got int32"),
    (np.full((8, 8, 3), 200.0, np.float32), {}, r"float with values 200\.\.200; float images must lie in \[0, 1\]"),
    (np.dstack([np.zeros((8, 8, 3)), np.full((8, 8), 255.0)]), {}, r"values 0\.\.255"),  # alpha counts too
    (np.zeros((8, 8, 3), np.uint8), {"tile": 0}, "tile must be a positive"),
    (np.zeros((8, 8, 3), np.uint8), {"tile": -1}, "tile must be a positive"),
    (np.zeros((8, 8, 3), np.uint8), {"overlap": -4}, "overlap must be"),
])
def test_bad_inputs_are_refused_by_name(model, image, kwargs, message):
    # Before: a negative tile returned uninitialised memory, a CHW array came back as a 6x80x3 "image".
    with pytest.raises(ValueError, match=message):
        upscale(image, model, **kwargs)


def test_single_channel_image_is_grayscale(model):
    image = _image(20, 24, channels=1)
    out = upscale(image, model)
    np.testing.assert_array_equal(out, upscale(image[:, :, 0], model))
    assert out.shape == (40, 48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = create_model("tiny-kdsconv-det-x4")
    image = _image(64, 80)
    cpu = upscale(image, prepare_model(model, "cpu"))
    gpu = upscale(image, prepare_model(model, "cuda"))
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 1
