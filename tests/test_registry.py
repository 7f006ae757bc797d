"""The registry: model names, the app's choices and the claims all follow its entries; adding one is one entry."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kaldn.checkpoint import load_checkpoint, save_checkpoint
from kaldn.choices import variant_choices
from kaldn.layers import ATTENTION_OPTIONS, KDSConv
from kaldn.models import (create_model, model_names, on_other_backbone, parse_model_name, scales, variant, variant_of,
                          variants)
from kaldn.registry import (architecture, conv_entries, register_architecture, register_conv,
                            unregister_architecture, unregister_conv)
from kaldn.results import claims


class Toy(nn.Module):
    """A peer in miniature: a plain module built as Toy(scale), RGB in [0, 1] in and out."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.scale)


@pytest.fixture
def toy_peer():
    register_architecture("toy", lambda scale, **kw: Toy(scale), label="Toy peer", order=900, scales=(2, 4))
    yield
    unregister_architecture("toy")


@pytest.fixture
def wide_gate_conv():
    # README's example of adding a variant, verbatim.
    register_conv("kdsconv-det-r4", functools.partial(KDSConv, kernel_pool="det", reduction=4),
                  label="KDSConv (det, r = 4)", order=35, options=("descriptor_norm",), depthwise=True)
    yield
    unregister_conv("kdsconv-det-r4")


@pytest.fixture
def median_conv():
    # KDSConv with a fourth pooling name: the layer rejects it, so build with "avg" and call it median here.
    register_conv("kdsconv-median", functools.partial(KDSConv, kernel_pool="avg"), label="KDSConv (median)",
                  order=55, options=ATTENTION_OPTIONS, depthwise=True, kernel_pool="median")
    yield
    unregister_conv("kdsconv-median")


def test_the_built_in_entries():
    assert [v.key for v in variants()] == ["dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max",
                                           "kdsconv-fixed", "conv", "lesrcnn", "fdiwn", "scnet-t"]
    assert [c.name for c in conv_entries()] == [v.key for v in variants()][:7]  # the convs, then the peers
    assert scales() == (2, 3, 4)
    assert len(model_names()) == 3 * 7 * 3 + 3 * 3 and len(model_names(("tiny",))) == 21
    spec = parse_model_name("small-kdsconv-max-x3")
    assert (spec.arch, spec.backbone, spec.conv, spec.scale, spec.variant) == ("rdn", "small", "kdsconv-max", 3,
                                                                               "kdsconv-max")
    assert variant("kdsconv-det").model_name(2) == "tiny-kdsconv-det-x2"
    assert variant_of("tiny-ldsconv-x3").key == "ldsconv" and variant_of("paper-ldsconv-x3").key == "ldsconv"
    assert not on_other_backbone("tiny-ldsconv-x3") and on_other_backbone("small-ldsconv-x3")
    assert not on_other_backbone("lesrcnn-x4") and not on_other_backbone("nonsense")
    assert variant_of("nonsense") is None
    with pytest.raises(ValueError, match="already registered"):
        register_conv("dsconv", nn.Identity, label="again", order=1)
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture("nope")


def test_a_peer_is_one_entry(toy_peer, tmp_path):
    assert "toy-x2" in model_names() and "toy-x4" in model_names() and "toy-x3" not in model_names()
    assert "toy-x2" not in model_names(("tiny",))  # backbones select family models only
    spec = parse_model_name("toy-x4")
    assert (spec.arch, spec.backbone, spec.conv, spec.scale, spec.variant) == ("toy", None, None, 4, "toy")
    model = create_model("toy-x4")
    assert model.config == {"model": "toy-x4", "arch": "toy", "scale": 4}
    assert model(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    with pytest.raises(ValueError, match="takes no option descriptor_norm"):
        create_model("toy-x4", descriptor_norm="none")
    # The checkpoint format, the app's choices and its model lookups take it as they take RDN models.
    save_checkpoint(tmp_path / "toy", model)
    loaded = load_checkpoint(tmp_path / "toy")
    assert loaded.config["arch"] == "toy" and torch.equal(loaded.body.weight, model.body.weight)
    assert variants()[-1].key == "toy" and variant_of("toy-x2").label == "Toy peer"
    choices = dict((key, label) for label, key in variant_choices(4, ["toy-x4"]))
    assert choices["toy"] == "Toy peer" and choices["dsconv"] == "DSConv (no x4 checkpoint)"
    assert dict((key, label) for label, key in variant_choices(3, []))["toy"] == "Toy peer (no x3 checkpoint)"


def test_a_conv_variant_is_one_entry(wide_gate_conv, tmp_path):
    assert {"tiny-kdsconv-det-r4-x4", "small-kdsconv-det-r4-x2", "paper-kdsconv-det-r4-x3"} <= set(model_names())
    spec = parse_model_name("tiny-kdsconv-det-r4-x4")
    assert (spec.backbone, spec.conv, spec.scale) == ("tiny", "kdsconv-det-r4", 4)
    assert [v.key for v in variants()].index("kdsconv-det-r4") == 3  # after det (30), before avg (40)
    model = create_model("tiny-kdsconv-det-r4-x4")
    layer = model.blocks[0].layers[0]
    assert layer.kernel_pool == "det" and layer.gate_down.out_features == 32 // 4  # r = 4, not tiny's 8
    save_checkpoint(tmp_path / "wide", model)
    assert load_checkpoint(tmp_path / "wide").config["conv"] == "kdsconv-det-r4"
    choices = dict((key, label) for label, key in variant_choices(4, ["tiny-kdsconv-det-r4-x4"]))
    assert choices["kdsconv-det-r4"] == "KDSConv (det, r = 4)"


def test_a_pooling_entry_joins_the_claims(median_conv):
    names = model_names()
    assert {"tiny-kdsconv-median-x2", "small-kdsconv-median-x4", "paper-kdsconv-median-x3"} <= set(names)
    assert [v.key for v in variants()].index("kdsconv-median") == 5  # after max (50), before fixed (60)
    model = create_model("tiny-kdsconv-median-x2", descriptor_norm="none")
    assert model.config["conv"] == "kdsconv-median" and model.blocks[0].layers[0].descriptor_norm == "none"
    rows = [{"model": f"tiny-kdsconv-{p}-x4", "seed": 0, "set5": {"psnr": v, "ssim": 0.9}}
            for p, v in (("det", 30.0), ("avg", 30.1), ("median", 30.2))]
    assert "pooling ranking: median (30.200) > avg (30.100) > det (30.000)" in claims(rows, ["set5"])


def test_claims_come_from_the_entries():
    names = [f"tiny-{c}-x4" for c in ["dsconv", "ldsconv", "kdsconv-det", "kdsconv-fixed", "conv"]] + \
        ["scnet-t-x4", "lesrcnn-x4", "fdiwn-x4"]
    rows = [{"model": name, "seed": 0, "set5": {"psnr": 30.0 + i / 10, "ssim": 0.9}} for i, name in enumerate(names)]
    text = claims(rows, ["set5"])
    expected = [c.text for v in variants() for c in v.claims]
    assert [line.split(":")[0].strip(" -") for line in text.splitlines()[1:]] == expected


def test_the_peers_with_released_weights_come_from_the_registry_alone():
    """The converter and the app's checkpoint upload list what the registry marks as published: one entry
    added there is offered everywhere, and gone again when withdrawn."""
    from kaldn.convert import published_architectures
    from kaldn.registry import Published, register_architecture, unregister_architecture
    from kaldn.session_models import upload_archs
    assert set(published_architectures()) == {"lesrcnn", "fdiwn", "scnet-t"}
    register_architecture("toy-peer", lambda scale: nn.Identity(), label="Toy peer", order=999, default=False,
                          published=Published("A. Author, Toy (2026)", "example.org/toy", lambda name: name))
    try:
        assert "toy-peer" in published_architectures()
        assert ("Toy peer (published .pt / .pth)", "toy-peer") in upload_archs()
    finally:
        unregister_architecture("toy-peer")
    assert "toy-peer" not in published_architectures()
    assert all(value != "toy-peer" for _, value in upload_archs())


def test_a_featured_model_must_name_another_backbone_and_a_registered_conv():
    from kaldn.registry import register_architecture
    backbones = {"tiny": {}, "small": {}}
    for featured in ("small-kdsconv-det", ("tiny-kdsconv-det",), ("small-no-such-conv",), ("huge-kdsconv-det",)):
        with pytest.raises(ValueError, match="featured"):
            register_architecture("toy-family", lambda scale, **kw: None, label="Toy", order=998, backbones=backbones,
                                  default_backbone="tiny", featured=featured)
    from kaldn.models import is_featured
    assert is_featured("small-kdsconv-det-x4") and not is_featured("small-ldsconv-x4")
    assert not is_featured("tiny-kdsconv-det-x4") and not is_featured("lesrcnn-x4")
