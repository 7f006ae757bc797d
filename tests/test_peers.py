"""The seed papers' peers (LESRCNN, FDIWN, SCNet-T): names, sizes, checkpoints, inference, training, conversion.

Tests marked by the ``peers`` fixture use the authors' released weights in ../shared/peers (never part of the
repository) and skip where that folder is absent.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from kaldn.archs import lesrcnn
from kaldn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from kaldn.convert import ConversionError, convert, main as convert_main, read_torch_state
from kaldn.evaluate import main as evaluate_main
from kaldn.hub import _verify_folder, load_model
from kaldn.inference import prepare_model, upscale
from kaldn.images import load_image
from kaldn.models import count_parameters, create_model, model_names, parse_model_name
from kaldn.registry import architectures

PEERS = [a.name for a in architectures() if not a.family]  # the seed papers' peers
from kaldn.train import TrainConfig, train
from synthetic import write_images

PEERS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "peers"
PEER_FILES = {"lesrcnn": "lesrcnn/lesrcnn_x{s}.pth", "fdiwn": "fdiwn/fdiwn_x{s}.pt"}
README_ROWS = {"lesrcnn": "LESRCNN", "fdiwn": "FDIWN"}

# The published parameter counts (the released state dicts' tensors, weight norm's g and v both counted)
# and SCNet-T's count from its layer list (64 features, 16 blocks, MLP upsampler).
PARAMS = {"lesrcnn": {2: 626_328, 3: 810_968, 4: 774_040}, "fdiwn": {2: 629_176, 3: 646_486, 4: 663_848},
          "scnet-t": {2: 146_051, 3: 146_051, 4: 154_371}}


@pytest.fixture(scope="module")
def peers() -> Path:
    """The authors' released weights at ../shared/peers; skip where absent."""
    if not PEERS_DIR.is_dir():
        pytest.skip(f"peer weights folder {PEERS_DIR} not present")
    return PEERS_DIR.resolve()


def published_numbers(peers: Path, arch: str, dataset: str, scale: int) -> tuple[float, float]:
    """PSNR / SSIM of ``arch`` on ``dataset`` x``scale`` as ../shared/peers/README.md reports them."""
    lines = [line for line in (peers / "README.md").read_text().splitlines() if line.startswith("|")]
    header_line = next(line for line in lines if f"| {dataset} x{scale} |" in line)
    header = [cell.strip() for cell in header_line.strip("|").split("|")]
    column = header.index(f"{dataset} x{scale}")
    row = next(line for line in lines if line.startswith(f"| {README_ROWS[arch]} "))
    cell = [c.strip() for c in row.strip("|").split("|")][column]
    psnr, ssim = re.match(r"([\d.]+) / ([\d.]+)", cell).groups()
    return float(psnr), float(ssim)


def lesrcnn_published_layout(scale: int) -> dict[str, torch.Tensor]:
    """A state dict under the released LESRCNN names, built from this project's module (random weights)."""
    names = ["sub_mean.shifter.weight", "sub_mean.shifter.bias", "add_mean.shifter.weight",
             "add_mean.shifter.bias", *(f"conv{i}.0.weight" for i in range(1, 19)),
             *(f"conv17_{i}.0.weight" for i in range(1, 5)),
             *(f"upsample.up.body.{i}.{p}" for i in ((0, 2) if scale == 4 else (0,)) for p in ("weight", "bias"))]
    torch.manual_seed(scale)
    ours = create_model(f"lesrcnn-x{scale}").state_dict()
    published = {name: ours[lesrcnn.published_key(name)].clone() for name in names}
    assert len(published) == len(ours)  # every tensor of the module has a published name
    return published


# --- names, sizes, the model interface ---------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(PEERS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_peer_builds_by_name_with_its_parameter_count(arch, scale):
    name = f"{arch}-x{scale}"
    assert name in model_names() and parse_model_name(name).name == name
    model = create_model(name).eval()
    options = {"upsampler": "mlp"} if arch == "scnet-t" else {}  # the one option a peer takes
    assert model.config == {"model": name, "arch": arch, "scale": scale, **options}
    assert count_parameters(model) == PARAMS[arch][scale]
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 13, 11))
    assert out.shape == (1, 3, 13 * scale, 11 * scale)


@pytest.mark.parametrize("arch", list(PEER_FILES))
def test_parameter_counts_equal_the_released_state_dicts(peers, arch):
    for scale in (2, 3, 4):
        state = torch.load(peers / PEER_FILES[arch].format(s=scale), map_location="cpu", weights_only=True)
        assert count_parameters(create_model(f"{arch}-x{scale}")) == sum(t.numel() for t in state.values())


def test_unknown_peer_names_are_refused():
    with pytest.raises(ValueError, match="unknown model 'fdiwn-x5'"):
        create_model("fdiwn-x5")
    with pytest.raises(ValueError, match="unknown model 'scnet-x4'"):
        create_model("scnet-x4")


@pytest.mark.parametrize("arch", list(PEERS))
def test_checkpoint_prepare_and_tiles(tmp_path, arch):
    torch.manual_seed(0)
    model = create_model(f"{arch}-x2").eval()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.rand(1, 3, 24, 20)
    fast = prepare_model(loaded, device="cpu")
    with torch.inference_mode():
        reference = model(x)
        assert torch.equal(loaded(x), reference)
        # Untrained FDIWN works at 255 scale through a long chain: float rounding reaches ~4e-4 there.
        tolerance = 1e-3 if arch == "fdiwn" else 1e-5
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), reference, atol=tolerance)
    # prepare_model folds weight norm in its copy only: the model it came from still trains as published.
    assert count_parameters(loaded) == PARAMS[arch][2]
    image = np.random.default_rng(0).random((40, 36, 3), dtype=np.float32)
    whole = upscale(image, fast, tile=None)
    tiled = upscale(image, fast, tile=16, overlap=24)
    if getattr(model, "global_context", False):
        # Pooled statistics see each tile, not the image: tiles differ, so evaluation runs whole images.
        assert tiled.shape == whole.shape and not np.allclose(tiled, whole, atol=1e-5)
    else:
        np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_fdiwn_keeps_weight_norm_and_prepare_folds_it():
    model = create_model("fdiwn-x4")
    names = model.state_dict().keys()
    assert "fswg.0.wirw.expand.parametrizations.weight.original0" in names  # g
    assert "fswg.0.wirw.expand.parametrizations.weight.original1" in names  # v
    fast = prepare_model(model, device="cpu")
    g = sum(v.numel() for k, v in model.state_dict().items() if k.endswith("original0"))
    assert count_parameters(fast) == count_parameters(model) - g
    assert all("parametrizations" not in k for k in fast.state_dict())


@pytest.mark.parametrize("arch", list(PEERS))
def test_peers_train_like_rdn(tmp_path, arch):
    data = write_images(tmp_path / "data", count=2, size=48)
    result = train(TrainConfig(model=f"{arch}-x2", data=str(data), val=str(data), out=str(tmp_path / "run"),
                               iters=2, batch=2, patch=12, threads=1, seed=0, val_every=2, log_every=1,
                               precision="bf16", ema=0.9))
    assert result.status == "finished"
    model = load_checkpoint(tmp_path / "run" / "best")
    assert model.config["model"] == f"{arch}-x2" and model.config["training"]["iterations_done"] == 2
    torch.manual_seed(0)  # train() builds its model right after seeding: the same initial weights
    before = create_model(f"{arch}-x2").state_dict()
    after = model.state_dict()
    assert after.keys() == before.keys()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert "head.weight" in moved
    if arch == "lesrcnn":  # its mean shift is frozen, as published
        assert not moved & {"mean_in.weight", "mean_in.bias", "mean_out.weight", "mean_out.bias"}


# --- the converter -----------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs os.mkdir: a file carrying code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_carrying_code_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_best.pt"
    torch.save({"conv1.0.weight": torch.zeros(1), "x": _Payload(str(marker))}, path)
    with pytest.raises(ConversionError, match="refused: not a plain PyTorch tensor file"):
        convert(path, tmp_path / "out", arch="lesrcnn", scale=4)
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The CLI says so in one line.
    assert convert_main(["--arch", "lesrcnn", "--scale", "4", str(path), str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # A plain pickle that is not torch's format at all is refused the same way.
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(ConversionError, match="refused"):
        read_torch_state(tmp_path / "plain.pkl")
    assert not marker.exists()
    # So is a file that is no pickle at all.
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ConversionError, match="refused"):
        read_torch_state(tmp_path / "noise.pth")


def test_published_layout_converts_and_loads(tmp_path):
    state = lesrcnn_published_layout(4)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    out = convert(tmp_path / "wrapped.pth", tmp_path / "out", arch="lesrcnn", scale=4)
    model = load_model(out)
    assert model.config["model"] == "lesrcnn-x4" and model.config["weights"]["origin"] == "third-party"
    assert torch.equal(model.head.weight, state["conv1.0.weight"])
    assert torch.equal(model.ieeb[1].conv1.weight, state["conv5.0.weight"])
    assert torch.equal(model.irb[6].weight, state["conv17_4.0.weight"])
    card = (out / "README.md").read_text()
    assert "not the kaldn project's" in card and "wrapped.pth" in card
    # Third-party weights never leave: the Hub upload check refuses the folder.
    with pytest.raises(CheckpointError, match="third-party weights"):
        _verify_folder(tmp_path)


def test_wrong_architecture_scale_and_shape_are_each_refused(tmp_path):
    state = lesrcnn_published_layout(4)
    torch.save(state, tmp_path / "lesrcnn_x4.pth")
    with pytest.raises(ConversionError, match=r"does not fit fdiwn-x4 \(unexpected tensors: sub_mean\.shifter"):
        convert(tmp_path / "lesrcnn_x4.pth", tmp_path / "a", arch="fdiwn", scale=4)
    with pytest.raises(ConversionError, match=r"does not fit lesrcnn-x2 .*unexpected tensors: upsample\.up\.body\.2"):
        convert(tmp_path / "lesrcnn_x4.pth", tmp_path / "b", arch="lesrcnn", scale=2)
    bad = dict(state, **{"conv5.0.weight": torch.zeros(64, 64, 3, 3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"wrong shape: conv5\.0\.weight \(64, 64, 3, 3\) "
                                              r"\(expected \(64, 64, 1, 1\)\)"):
        convert(tmp_path / "bad.pth", tmp_path / "c", arch="lesrcnn", scale=4)
    missing = {k: v for k, v in state.items() if k != "conv18.0.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match=r"missing tensors: tail\.weight"):
        convert(tmp_path / "missing.pth", tmp_path / "d", arch="lesrcnn", scale=4)
    assert not any((tmp_path / d).exists() for d in "abcd")
    # kaldn's own LESRCNN saved with torch.save: the same names were listed as both missing and unexpected.
    torch.save(create_model("lesrcnn-x4").state_dict(), tmp_path / "own.pth")
    with pytest.raises(ConversionError, match="already carry kaldn's names for lesrcnn-x4, so it is not the authors'"):
        convert(tmp_path / "own.pth", tmp_path / "e", arch="lesrcnn", scale=4)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConversionError, match="a-file: exists and is not a folder"):
        convert(tmp_path / "lesrcnn_x4.pth", tmp_path / "a-file", arch="lesrcnn", scale=4)


def _scnet_published_layout(model: torch.nn.Module, pixelshuffle: bool) -> dict[str, torch.Tensor]:
    """A model's tensors under the names the SCNet authors' BasicSR code gives them."""
    fixed = {"head": "conv_first", "hr_conv": "conv_hr", "tail": "conv_last"}
    out = {}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if parts[0] in fixed:
            key = ".".join([fixed[parts[0]], *parts[1:]])
        elif parts[0] == "upsample":
            index = {"conv1": 0, "conv2": 3}[parts[2]] + (0 if pixelshuffle else 1)
            key = f"upconv{int(parts[1]) + 1}.up_layer.{index}.{parts[3]}"
        out[key] = tensor.clone()
    return out


@pytest.mark.parametrize("upsampler", ["pixelshuffle", "mlp"])
def test_scnet_release_converts_with_the_upsampler_its_layout_says(tmp_path, upsampler):
    # The authors release SCNet-T x4 with both upsamplers (SCNet-T-x4.pth and ..._D64B16_PS.pth).
    torch.manual_seed(0)
    original = create_model("scnet-t-x4", upsampler=upsampler).eval()
    torch.save({"params": _scnet_published_layout(original, upsampler == "pixelshuffle")}, tmp_path / "scnet.pth")
    out = convert(tmp_path / "scnet.pth", tmp_path / "out", arch="scnet-t", scale=4)
    model = load_model(out).eval()
    assert model.config["upsampler"] == upsampler and json.loads((out / "config.json").read_text())["upsampler"] == upsampler
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), original(x))
    with pytest.raises(ConversionError, match=f"read as upsampler {upsampler}, from its tensor names"):
        convert(tmp_path / "scnet.pth", tmp_path / "x2", arch="scnet-t", scale=2)  # two steps where x2 has one
    # PixelShuffle's last upsampling conv is 16x the MLP one's at x4 (64 * 2 * 2 outputs per step): not the same model.
    assert (count_parameters(model) > count_parameters(create_model("scnet-t-x4"))) == (upsampler == "pixelshuffle")


def test_an_option_a_file_records_is_kept_and_a_bad_one_refused(tmp_path):
    torch.manual_seed(2)
    model = create_model("tiny-kdsconv-det-x2", descriptor_norm="none").eval()
    folder = save_checkpoint(tmp_path / "ckpt", model)
    out = convert(folder / "model.safetensors", tmp_path / "out")
    assert load_model(out).config["descriptor_norm"] == "none"  # not the default: the model trained with it
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(load_model(out)(x), model(x))
    # Asked for another norm than the file records: refused, not silently another model.
    with pytest.raises(ConversionError, match="records descriptor_norm none, not standardize"):
        convert(folder / "model.safetensors", tmp_path / "other", descriptor_norm="standardize")
    tensors = load_file(str(save_checkpoint(tmp_path / "scnet", create_model("scnet-t-x2")) / "model.safetensors"))
    for i, (config, message) in enumerate([
            ('{"model": "scnet-t-x2", "upsampler": "bicubic"}', "upsampler must be one of"),
            (json.dumps({"model": "scnet-t-x2", "upsampler": "x" * 10_000}), "upsampler is not a short name"),
            ('{"model": "scnet-t-x2", "upsampler": [[["mlp"]]]}', "upsampler is not a short name"),
            ('{"model": "scnet-t-x3", "upsampler": "pixelshuffle"}', "its config is for scnet-t-x3, not scnet-t-x2"),
            ('{"model": "scnet-t-x2", "upsampler": ' + "[" * 100_000 + "]" * 100_000 + "}", "is not JSON"),
            ('{"model": "scnet-t-x2", "upsampler": 1' + "0" * 5000 + "}", "is not JSON")]):
        header = {"format": "pt", "model": "scnet-t-x2", "kaldn_config": config}
        save_file(tensors, str(tmp_path / f"odd{i}.safetensors"), metadata=header)
        with pytest.raises(ConversionError, match=message) as refused:
            convert(tmp_path / f"odd{i}.safetensors", tmp_path / f"odd{i}")
        assert len(str(refused.value)) < 500 and not (tmp_path / f"odd{i}").exists()
    # A release mixing both upsamplers' layouts is refused by name, not read as one of them.
    mixed = _scnet_published_layout(create_model("scnet-t-x4"), pixelshuffle=False)
    mixed["upconv2.up_layer.0.bias"] = mixed.pop("upconv2.up_layer.1.bias")
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(ConversionError, match="mix the PixelShuffle"):
        convert(tmp_path / "mixed.pth", tmp_path / "mixed", arch="scnet-t", scale=4)


def test_kaldn_safetensors_file_becomes_a_folder(tmp_path):
    torch.manual_seed(1)
    model = create_model("tiny-kdsconv-det-x3").eval()
    folder = save_checkpoint(tmp_path / "ckpt", model)
    out = convert(folder / "model.safetensors", tmp_path / "out")  # name from the file's metadata
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(load_model(out)(x), model(x))
    assert json.loads((out / "config.json").read_text())["weights"]["origin"] == "kaldn"
    # Without metadata the architecture must be given, and it must fit.
    save_file(model.state_dict(), str(tmp_path / "bare.safetensors"))
    with pytest.raises(ConversionError, match="give --arch and --scale"):
        convert(tmp_path / "bare.safetensors", tmp_path / "a")
    with pytest.raises(ConversionError, match="does not fit tiny-ldsconv-x3"):
        convert(tmp_path / "bare.safetensors", tmp_path / "b", arch="tiny-ldsconv", scale=3)
    with pytest.raises(ConversionError, match="its metadata says tiny-kdsconv-det-x3, not tiny-conv-x3"):
        convert(folder / "model.safetensors", tmp_path / "c", arch="tiny-conv", scale=3)
    convert(tmp_path / "bare.safetensors", tmp_path / "d", arch="tiny-kdsconv-det", scale=3)
    assert load_model(tmp_path / "d").config["model"] == "tiny-kdsconv-det-x3"
    # A whole model name carries its scale (it used to become tiny-kdsconv-det-x3-x3, "unknown model").
    convert(tmp_path / "bare.safetensors", tmp_path / "e", arch="tiny-kdsconv-det-x3")
    assert load_model(tmp_path / "e").config["model"] == "tiny-kdsconv-det-x3"
    assert "--arch tiny-kdsconv-det-x3 bare.safetensors" in (tmp_path / "e" / "config.json").read_text()
    with pytest.raises(ConversionError, match="already names a scale: give --arch tiny-kdsconv-det --scale 3"):
        convert(tmp_path / "bare.safetensors", tmp_path / "f", arch="tiny-kdsconv-det-x3", scale=3)


def test_third_party_mark_survives_repacking(tmp_path):
    state = lesrcnn_published_layout(2)
    torch.save(state, tmp_path / "lesrcnn_x2.pth")
    out = convert(tmp_path / "lesrcnn_x2.pth", tmp_path / "out", arch="lesrcnn", scale=2)
    again = convert(out / "model.safetensors", tmp_path / "again")
    weights = json.loads((again / "config.json").read_text())["weights"]
    assert weights["origin"] == "third-party" and weights["source_file"] == "lesrcnn_x2.pth"
    assert "not the kaldn project's" in (again / "README.md").read_text()


# --- the released weights reproduce the published numbers --------------------------------------------------

@pytest.mark.parametrize("arch", list(PEER_FILES))
def test_released_weights_reproduce_set5_x4(tmp_path, peers, shared_data, arch):
    source = peers / PEER_FILES[arch].format(s=4)
    assert convert_main(["--arch", arch, "--scale", "4", str(source), str(tmp_path / arch)]) == 0
    assert evaluate_main(["--models", str(tmp_path / arch), "--datasets", "set5", "--scale", "4",
                          "--no-timing", "--threads", "1", "--out", str(tmp_path / "result")]) == 0
    row = json.loads((tmp_path / "result.json").read_text())["rows"][1]
    psnr, ssim = published_numbers(peers, arch, "Set5", 4)
    assert row["model"] == f"{arch}-x4" and row["params"] == PARAMS[arch][4]
    assert abs(row["set5"]["psnr"] - psnr) <= 0.02 and abs(row["set5"]["ssim"] - ssim) <= 0.001
    # The released networks take RGB in [0, 1] here like every kaldn model (FDIWN's 255 scaling is inside).
    flat = upscale(np.full((24, 24, 3), 0.5, dtype=np.float32), prepare_model(load_model(tmp_path / arch), "cpu"))
    assert abs(float(flat.mean()) - 0.5) < 0.02


def test_scnet_spatial_shift_moves_each_group_one_pixel_and_its_gradient_is_the_opposite_shift():
    from kaldn.archs.scnet import SHIFTS, spatial_shift
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    out = spatial_shift(x)
    for i, (dy, dx) in enumerate(SHIFTS):  # group i at (y, x) reads (y + dy, x + dx), zero outside
        for y, xx in ((0, 0), (2, 3), (4, 6)):
            inside = 0 <= y + dy < 5 and 0 <= xx + dx < 7
            expected = x[1, 2 * i, y + dy, xx + dx] if inside else 0.0
            assert out[1, 2 * i, y, xx] == expected
    assert torch.autograd.gradcheck(spatial_shift, (x,))  # the hand-written backward is the true adjoint
    assert spatial_shift(x.detach().contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last)  # training runs channels_last: no reorder per shift
    with pytest.raises(ValueError, match="multiple of 8"):
        spatial_shift(torch.zeros(1, 12, 4, 4))


def _initial_gradient_rms(model: torch.nn.Module) -> float:
    """Median RMS gradient of the conv weights at initialisation, for an L1 loss on natural image patches."""
    from kaldn.resize import imresize
    image = load_image(Path(__file__).resolve().parents[1] / "examples" / "astronaut.png")[..., :3] / 255.0
    crops = [image[y:y + 64, x:x + 64] for y, x in ((0, 0), (100, 40), (180, 150), (60, 190))]
    hr = torch.tensor(np.stack(crops)).permute(0, 3, 1, 2).float()
    lr = torch.tensor(np.stack([imresize(c, scale=0.25) for c in crops])).permute(0, 3, 1, 2).float()
    F.l1_loss(model.train()(lr), hr).backward()
    return float(np.median([p.grad.pow(2).mean().sqrt().item() for p in model.parameters()
                            if p.grad is not None and p.ndim == 4]))


@pytest.mark.parametrize("name", ["tiny-kdsconv-det-x4", "scnet-t-x4", "lesrcnn-x4", "fdiwn-x4"])
def test_every_architecture_starts_with_gradients_adam_can_follow(name):
    """At initialisation the typical conv weight gets a gradient well above Adam's eps (1e-8). SCNet-T's released
    initialisation (Kaiming x 0.1 on every conv) gives ~1e-10, and it stayed at its bilinear skip for 2,000+
    iterations of the zoo recipe; this catches such a start in a second instead of hours."""
    torch.manual_seed(0)
    assert _initial_gradient_rms(create_model(name)) > 1e-7


def test_scnet_released_initialisation_is_the_stuck_one():
    torch.manual_seed(0)
    model = create_model("scnet-t-x4")
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight)
        conv.weight.data.mul_(0.1)
        torch.nn.init.zeros_(conv.bias)
    assert _initial_gradient_rms(model) < 1e-8  # the check above would have failed on it


def test_fdiwn_stays_in_bf16_under_autocast_and_is_unchanged_in_fp32():
    # Its fp32 scale parameters and group norm would turn every bf16 activation back to fp32 (and each next conv
    # would convert it again); the units keep the activation's dtype, and in fp32 nothing changes.
    from kaldn.archs.fdiwn import ResidualWeighting
    torch.manual_seed(0)
    model = create_model("fdiwn-x4")
    dtypes = []
    for module in model.modules():
        if isinstance(module, ResidualWeighting):
            module.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x = torch.rand(1, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    reference = model(x)
    assert set(dtypes) == {torch.float32} and reference.dtype == torch.float32
