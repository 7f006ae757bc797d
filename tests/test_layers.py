"""The conv variants: pooling, parameter counts, fusion, Table IV."""

import functools

import pytest
import torch

from kaldn.layers import (DSConv, FixedScaleDSConv, KDSConv, LinearDSConv, StandardConv, fuse,
                          kernel_descriptor, kernel_determinant, make_conv, pool_kernels)
from kaldn.archs.rdn import ResidualDenseBlock
from kaldn.models import create_model


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_det_pooling_matches_linalg_det(k):
    kernels = torch.randn(64, k, k, dtype=torch.float64)
    torch.testing.assert_close(kernel_determinant(kernels), torch.linalg.det(kernels), rtol=1e-10, atol=1e-12)


def test_what_the_how_it_works_tab_says_about_the_determinant():
    """The facts app.py's HOW_DET teaches, on kaldn's own determinant pooling."""
    gaussian = torch.tensor([1.0, 2.0, 1.0])
    sobel = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0]))
    plus = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])    # Laplacian: corners 0
    sharpen = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 9.0, -1.0], [0.0, -1.0, 0.0]])
    zero_column = torch.randn(3, 3)
    zero_column[:, 1] = 0
    rank_one = torch.stack([torch.outer(gaussian, gaussian), torch.ones(3, 3), sobel, plus, sharpen, zero_column])
    assert torch.allclose(kernel_determinant(rank_one), torch.zeros(6), atol=1e-6)
    diagonal = torch.diag(torch.tensor([1.0, 2.0, 3.0]))[None]
    assert kernel_determinant(diagonal).item() == pytest.approx(6.0)
    assert kernel_determinant(diagonal.flip(-1)).item() == pytest.approx(-6.0)   # mirrored left-right
    w = torch.randn(32, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(kernel_determinant(w.flip(-2)), -kernel_determinant(w))  # mirrored top-bottom
    torch.testing.assert_close(kernel_determinant(0.2 * w), 0.008 * kernel_determinant(w))  # the cube of the scale


def test_avg_and_max_pooling():
    kernels = torch.arange(18, dtype=torch.float32).reshape(2, 3, 3)
    assert pool_kernels(kernels, "avg").tolist() == [4.0, 13.0]
    assert pool_kernels(kernels, "max").tolist() == [8.0, 17.0]
    with pytest.raises(ValueError, match="kernel_pool"):
        pool_kernels(kernels, "median")


def test_descriptor_norms():
    kernels = torch.randn(32, 3, 3) * 0.05
    z = kernel_descriptor(kernels, "det", "standardize")
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std(unbiased=False)) - 1) < 1e-3
    # unit-kernel pooling is invariant to the kernels' scale; raw det is not
    torch.testing.assert_close(kernel_descriptor(kernels * 7, "det", "unit-kernel"),
                               kernel_descriptor(kernels, "det", "unit-kernel"))
    raw = kernel_descriptor(kernels, "det", "none")
    torch.testing.assert_close(raw, kernel_determinant(kernels))


def test_dsconv_and_linear_dsconv_have_identical_parameters():
    a, b = DSConv(48, 32), LinearDSConv(48, 32)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 48, 16, 16)
    # Same weights, different function: only the hasty ReLU differs.
    assert not torch.allclose(a(x), b(x))
    ref = torch.relu(b.pointwise(torch.relu(b.depthwise(x))))
    torch.testing.assert_close(a(x), ref)


@pytest.mark.parametrize("pool", ["det", "avg", "max"])
@pytest.mark.parametrize("norm", ["none", "standardize", "unit-kernel"])
def test_kdsconv_fuse_matches(pool, norm):
    torch.manual_seed(0)
    layer = KDSConv(64, 32, kernel_pool=pool, descriptor_norm=norm, reduction=8).eval()
    x = torch.randn(2, 64, 20, 20)
    fused = layer.fuse()
    assert type(fused) is LinearDSConv
    torch.testing.assert_close(fused(x), layer(x), rtol=1e-5, atol=1e-6)


def test_kdsconv_scales_kernel_by_one_plus_attention():
    layer = KDSConv(32, 16, reduction=8)
    a = layer.attention()
    assert a.shape == (32,) and bool(((a > 0) & (a < 1)).all())
    torch.testing.assert_close(layer.injected_kernel(), layer.depthwise.weight * (1 + a)[:, None, None, None])


def test_fixed_scale_control_is_one_and_a_half_times_the_kernel():
    torch.manual_seed(0)
    control, linear = FixedScaleDSConv(32, 16), LinearDSConv(32, 16)
    linear.load_state_dict(control.state_dict())
    with torch.no_grad():
        linear.depthwise.weight.mul_(1.5)
    x = torch.randn(1, 32, 12, 12)
    torch.testing.assert_close(control(x), linear(x))
    torch.testing.assert_close(control.fuse()(x), control(x))


def test_whole_model_fuse_removes_attention_and_keeps_output():
    torch.manual_seed(0)
    model = create_model("tiny-kdsconv-det-x4").eval()
    with torch.no_grad():  # make the gate non-trivial
        for m in model.modules():
            if isinstance(m, KDSConv):
                m.gate_up.weight.normal_(0, 1)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        ref = model(x)
    fuse(model)
    assert not any(isinstance(m, KDSConv) for m in model.modules())
    assert not any("gate" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def _weights_without_biases(module):
    return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight"))


@pytest.mark.parametrize("conv, expected", [
    ("conv", 1_363_968),      # RDB
    ("dsconv", 205_056),      # DW-RDB
    ("ldsconv", 205_056),     # LDW-RDB
    ("kdsconv-det", 257_280), # ALD-RDB: r = 32, bias-free gate
])
def test_paper_table_iv_parameter_counts(conv, expected):
    block = ResidualDenseBlock(functools.partial(make_conv, conv, reduction=32), num_features=64, growth=64,
                               num_layers=8)
    assert _weights_without_biases(block) == expected


def test_layers_keep_shape():
    x = torch.randn(1, 40, 9, 11)
    for layer in (StandardConv(40, 8), DSConv(40, 8), LinearDSConv(40, 8), KDSConv(40, 8, reduction=8),
                  FixedScaleDSConv(40, 8)):
        y = layer(x)
        assert y.shape == (1, 8, 9, 11) and bool((y >= 0).all())
