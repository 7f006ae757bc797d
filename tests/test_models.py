"""The model factory: every name builds and runs at its scale."""

import pytest
import torch

from kaldn.models import BACKBONES, create_model, model_names, parse_model_name


@pytest.mark.parametrize("name", model_names(backbones=("tiny",)))
def test_every_tiny_model_builds_and_runs(name):
    model = create_model(name).eval()
    scale = parse_model_name(name).scale
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 13, 17))
    assert y.shape == (1, 3, 13 * scale, 17 * scale)
    assert model.config["model"] == name


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paper_models_run(scale):
    # The paper backbone is large: check each scale once, on the conv that matters most.
    model = create_model(f"paper-kdsconv-det-x{scale}").eval()
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 6, 7))
    assert y.shape == (1, 3, 6 * scale, 7 * scale)


def test_every_paper_name_builds():
    for name in model_names(backbones=("paper",)):
        assert create_model(name).config["backbone"] == "paper"


def test_unknown_name_suggests_the_close_valid_names():
    with pytest.raises(ValueError) as info:
        create_model("tiny-kdsconv-median-x4")
    assert "did you mean tiny-kdsconv-" in str(info.value) and "kaldn.model_names() lists all" in str(info.value)
    assert "paper-conv-x2" not in str(info.value)  # not all 72 names
    with pytest.raises(ValueError):
        create_model("tiny-ldsconv-x5")


def test_tiny_is_sized_for_a_cpu():
    n = sum(p.numel() for p in create_model("tiny-ldsconv-x4").parameters())
    assert 50_000 < n < 300_000
    assert set(BACKBONES) == {"paper", "small", "tiny"}
