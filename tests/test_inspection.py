"""Model inspection (kaldn.inspection, kaldn.gates): the hasty-ReLU statistic, kernel tables and the gate report."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kaldn.cache import ModelCache
from kaldn.errors import UserError
from kaldn.images import load_image
from kaldn.inputs import prepare_inputs
from kaldn.gates import gate_report, gate_summary, gate_verdict
from kaldn.inspection import (depthwise_stats, gate_note, gate_rows, hasty_relu_report, inspection_choices,
                              kernel_layers, kernel_rows, kernel_table, kernel_view, render_kernel_grid)
from kaldn.models import create_model

from app_server import rng_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


def test_hasty_relu_statistic_is_a_fraction(use_throwaway):
    lr = prepare_inputs(load_image(EXAMPLE), 2, "hr").lr
    report = hasty_relu_report(lr, 2, ModelCache(), where="the example")
    assert set(report.stats) == {"dsconv", "ldsconv"} and not report.missing
    assert report.summary.startswith("At x2, on the example:")
    ds, lin = report.stats["dsconv"], report.stats["ldsconv"]
    assert ds["relu_after_depthwise"] and not lin["relu_after_depthwise"]
    for st in (ds, lin):
        assert 0.0 <= st["zeroed_fraction"] <= 1.0 and 0.0 <= st["zeroed_energy"] <= 1.0
        assert len(st["layers"]) == 16  # tiny: 4 blocks x 4 layers
        assert all(0 <= layer["zeroed_fraction"] <= 1 for layer in st["layers"])
        assert st["map"].shape == lr.shape[:2] and st["map"].min() >= 0 and st["map"].max() <= 1
    assert "DSConv" in report.summary and len(report.maps) == 3
    # The maps' colour range is said at both ends (not 0-100 %), and it contains what the maps show.
    lo, hi = map(float, re.search(r"(\d+\.\d)% \(dark\) to (\d+\.\d)% \(light\)", report.summary).groups())
    for st in (ds, lin):
        assert lo - 0.05 <= 100 * np.percentile(st["map"], 50) <= hi + 0.05
    assert len(report.rows) == 2 and len(report.per_layer) == 32
    with pytest.raises(UserError, match="No DSConv / linear DSConv checkpoint at x3: tiny-dsconv-x3"):
        hasty_relu_report(lr, 3, ModelCache())


def test_depthwise_stats_match_a_direct_computation(use_throwaway):
    """For DSConv, the share of zeros after its ReLU is exactly what the statistic reports."""
    model = ModelCache().raw("tiny-dsconv-x2")
    lr = rng_image(24, 24)
    seen = []
    layer = model.blocks[0].layers[0]
    handle = layer.depthwise.register_forward_hook(lambda m, i, o: seen.append(float((o < 0).float().mean())))
    try:
        stats = depthwise_stats(model, lr)
    finally:
        handle.remove()
    assert stats["layers"][0]["zeroed_fraction"] == pytest.approx(seen[0], abs=1e-6)


def test_kernel_table_and_heat_map(use_throwaway):
    model = ModelCache().raw("tiny-kdsconv-det-x4")
    layers = kernel_layers(model)
    assert layers[0] == "blocks.0.layers.0" and len(layers) == 16
    table = kernel_table(model, layers[1])
    c = table["kernels"].shape[0]
    assert table["kernels"].shape == (c, 3, 3) and c == 64
    layer = model.blocks[0].layers[1]
    np.testing.assert_allclose(table["scale"], 1 + layer.attention().numpy(), rtol=1e-6)
    assert np.all((table["scale"] > 1) & (table["scale"] < 2))
    np.testing.assert_allclose(table["avg"], layer.depthwise.weight[:, 0].mean(dim=(1, 2)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(table["det"], [np.linalg.det(k) for k in table["kernels"].astype(np.float64)],
                               atol=1e-6)
    grid = render_kernel_grid(table)
    assert grid.ndim == 3 and grid.dtype == np.uint8 and grid.shape[1] > 500
    assert len(kernel_rows(table)) == c
    fixed = kernel_table(ModelCache().raw("tiny-kdsconv-fixed-x4"), "blocks.0.layers.0")
    assert np.all(fixed["scale"] == 1.5)
    headers, rows = gate_rows(model)
    assert len(rows) == 16 and headers[0] == "Layer"
    with pytest.raises(UserError):
        kernel_table(model, "upsample")




def test_kernel_view_and_the_model_lists(use_throwaway):
    cache = ModelCache()
    view = kernel_view(cache, "tiny-kdsconv-det-x4")
    assert view.layer == "blocks.0.layers.2" and len(view.layers) == 16 and len(view.gate_rows) == 16
    assert kernel_view(cache, "tiny-dsconv-x4", "blocks.3.layers.3").layer == "blocks.3.layers.3"
    dsconv = kernel_view(cache, "tiny-dsconv-x4")
    assert dsconv.gate_rows == [] and "no gate to report" in dsconv.gate_note  # the empty table says why
    assert "no dead or near-constant gate" in view.gate_note or "gates are" in view.gate_note
    # an upload's note names the upload (its config still names the base model it was trained from)
    uploaded = kernel_view(cache, "tiny-kdsconv-det-x4", label="Uploaded #1")
    assert uploaded.gate_note.startswith("**Uploaded #1") and "tiny-kdsconv-det-x4" not in uploaded.gate_note
    with pytest.raises(UserError, match="Cannot load tiny-kdsconv-det-x3"):
        kernel_view(cache, "tiny-kdsconv-det-x3")
    available = ["tiny-conv-x4", "tiny-dsconv-x2", "tiny-kdsconv-avg-x2", "tiny-kdsconv-det-x2",
                 "tiny-kdsconv-fixed-x4", "tiny-kdsconv-max-x4", "small-kdsconv-det-x4"]
    # Kernel attention first (x4 first, then det/avg/max; any backbone), then the rest; no standard conv.
    assert [m for _, m in inspection_choices(available)] == [
        "small-kdsconv-det-x4", "tiny-kdsconv-max-x4", "tiny-kdsconv-det-x2", "tiny-kdsconv-avg-x2", "tiny-dsconv-x2",
        "tiny-kdsconv-fixed-x4"]


def test_gate_report_sees_a_dead_gate():
    torch.manual_seed(0)
    model = create_model("tiny-kdsconv-det-x2")
    layer = model.blocks[0].layers[0]
    with torch.no_grad():
        layer.gate_down.weight.zero_()  # every gate ReLU off: a = sigmoid(0) for every channel
    rows = gate_report(model)
    assert len(rows) == 16
    assert rows[0]["a_std"] == 0 and rows[0]["a_mean"] == pytest.approx(0.5)  # dead: sigmoid(0) everywhere
    assert all(r["a_std"] > 0 for r in rows[1:])
    summary = gate_summary(rows)
    assert summary["gate_layers"] == 16 and 0 < summary["gate_a_std_mean"] < max(r["a_std"] for r in rows)
    headers, table = gate_rows(model)
    assert table[0][-1].startswith("DEAD: a = 0.500") and table[0][headers.index("corr(z, a)")] is None
    assert "1 of 16 gates are dead" in gate_note(model, "m") and "blocks.0.layers.0" in gate_note(model, "m")
    assert gate_summary([]) == {}


def test_gate_report_tells_a_near_constant_gate_from_one_that_varies():
    """The raw-determinant collapse is not dead (a still moves by a few thousandths) but is about one scale:
    the report must not call it a varying gate. A monotone gate shows in corr(z, a) with its sign."""
    torch.manual_seed(0)
    model = create_model("tiny-kdsconv-det-x2")
    collapsed, rising, falling = model.blocks[0].layers[0], model.blocks[0].layers[1], model.blocks[0].layers[2]
    with torch.no_grad():
        collapsed.gate_down.weight.mul_(1e-3)  # what z ~ 0.01 does: the gate sees almost nothing
    for layer, sign in ((rising, 1.0), (falling, -1.0)):  # a gate whose a_c follows z_c, up or down
        z = torch.linspace(-1, 1, layer.gate_up.weight.shape[0])
        layer.descriptor = (lambda z: lambda: z)(z)
        layer.attention = (lambda s, z: lambda: torch.sigmoid(s * 3 * z))(sign, z)
    headers, table = gate_rows(model)
    verdict, corr = headers.index("Gate"), headers.index("corr(z, a)")
    assert table[0][verdict].startswith("near-constant: a = 0.50") and "about a fixed 1.50x" in table[0][verdict]
    assert table[1][verdict] == "varies across channels" and table[1][corr] > 0.9
    assert table[2][corr] < -0.9
    # The thresholds themselves: a raw-determinant gate (a std ~0.001) and an untrained one (median ~0.05).
    assert gate_verdict({"a_std": 0.0, "a_mean": 0.5}).startswith("DEAD")
    assert gate_verdict({"a_std": 0.001, "a_mean": 0.5}).startswith("near-constant")
    assert gate_verdict({"a_std": 0.019, "a_mean": 0.5}).startswith("near-constant")
    assert gate_verdict({"a_std": 0.021, "a_mean": 0.5}) == "varies across channels"
    note = gate_note(model, "m")
    assert "gates are near-constant" in note and "blocks.0.layers.0" in note and "dead" not in note


def test_depthwise_stats_never_runs_or_hooks_the_callers_model():
    # The app's model cache shares one model between users: measuring must leave it untouched, even while
    # it runs (a hook on it, copied by a concurrent prepare_model, broke later comparisons).
    import numpy as np
    from kaldn.inspection import depthwise_stats
    from kaldn.layers import DSConv
    from kaldn.models import create_model
    model = create_model("tiny-dsconv-x2").eval()
    calls = []
    first = next(m for m in model.modules() if isinstance(m, DSConv))
    first.register_forward_pre_hook(lambda module, _args: calls.append(module))  # copies carry it too
    stats = depthwise_stats(model, np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    assert stats["layers"] and calls and all(m is not first for m in calls)  # a copy ran, never the original
    assert len(first._forward_pre_hooks) == 1  # only the spy


def test_the_hasty_relu_view_quotes_what_the_relu_cost_on_the_compared_image():
    from kaldn.inspection import hasty_outcome
    from kaldn.comparison import Comparison, VariantResult
    from kaldn.inputs import Inputs
    lr = np.zeros((8, 8, 3), np.uint8)

    def comparison(*results):
        return Comparison(Inputs(lr=lr, gt=None, scale=4, mode="lr"), list(results), "cpu")

    ds = VariantResult("dsconv", "DSConv", "tiny-dsconv-x4", None, psnr=30.50)
    lin = VariantResult("ldsconv", "Linear DSConv", "tiny-ldsconv-x4", None, psnr=30.45)
    outcome = hasty_outcome(comparison(VariantResult("bicubic", "Bicubic", None, None, psnr=28.0), lin, ds))
    assert "DSConv 30.50 dB, Linear DSConv 30.45 dB (-0.05 dB without the ReLU;" in outcome
    assert "how much another seed alone moves PSNR" in outcome  # one image: noise is named
    assert hasty_outcome(comparison(ds)) == ""                                   # one of the two: nothing
    assert hasty_outcome(comparison(ds, VariantResult("ldsconv", "Linear DSConv", "m", None))) == ""  # no GT
