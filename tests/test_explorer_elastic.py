"""Chapter 5's explorer and figures, driven from Python: BiT's elastic binary activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_titled

from binlab.explorers import elastic as E
from binlab.quant import quantizers as Q


@pytest.fixture(scope="module")
def samples():
    return E.capture_activations()


def test_captured_activations_have_the_right_sets(samples):
    assert set(samples) == set(E.ACTIVATIONS)
    assert samples["layernorm"].signed and not samples["softmax"].signed and not samples["relu"].signed
    for s in samples.values():
        assert s.values.dim() == 1 and s.values.numel() > 1000 and torch.isfinite(s.values).all()
        assert ("pretrained" in s.source) == s.pretrained or "RANDOM INIT" in s.source
    assert samples["softmax"].values.min() >= 0 and samples["softmax"].values.max() <= 1
    assert samples["relu"].values.min() >= 0
    assert samples["layernorm"].values.min() < 0 < samples["layernorm"].values.max()


def test_binarize_is_the_library_elastic():
    x = torch.tensor([-1.0, 0.0, 0.25, 0.5, 0.75, 2.0])
    assert E.binarize(x, 0.5, 0.0, True).tolist() == [-0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert E.binarize(x, 0.5, 0.0, False).tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]  # 0.25 / 0.5 = 1/2 -> 0
    assert E.binarize(x, 1.0, 0.5, True).tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    assert torch.equal(E.binarize(x, 0.7, 0.1, False), Q.elastic(x - 0.1, torch.tensor(0.7), 1, False))


@pytest.mark.parametrize("key", list(E.ACTIVATIONS))
def test_alpha_sweep_minimum_is_at_optimal_alpha(samples, key):
    s = samples[key]
    alphas, errors = E.alpha_sweep(s.values, s.signed, num_alphas=301)
    step = alphas[1] - alphas[0]
    assert abs(alphas[int(np.argmin(errors))] - Q.optimal_alpha(s.values, s.signed)) <= step
    assert E.reconstruction_error(s.values, s.alpha_star, s.signed) <= errors.min() + 1e-12
    # the code's init is on the grid and worse than alpha*
    assert alphas[-1] >= s.alpha_code
    assert E.reconstruction_error(s.values, s.alpha_code, s.signed) > E.reconstruction_error(
        s.values, s.alpha_star, s.signed)


def test_signed_alpha_star_is_mean_abs(samples):
    s = samples["layernorm"]
    assert s.alpha_star == pytest.approx(float(s.values.double().abs().mean()))
    assert s.alpha_code == pytest.approx(2 * s.alpha_star)


def test_explorer_redraws_when_a_control_moves(samples):
    ui, fig, controls = E.make_elastic_explorer(samples)
    assert set(controls) == {"activation", "alpha", "beta"}
    assert_titled(fig)
    s = samples[controls["activation"].value]
    assert controls["alpha"].value == pytest.approx(s.alpha_star, rel=1e-3)
    title, upper = fig.layout.title.text, np.array(fig.data[1].y)
    controls["alpha"].value = controls["alpha"].value * 1.5
    assert fig.layout.title.text != title
    assert fig.data[4].x[0] == pytest.approx(controls["alpha"].value)
    controls["beta"].value = controls["beta"].max / 4
    assert not np.array_equal(np.array(fig.data[1].y), upper)  # fewer entries above the moved threshold
    assert fig.data[2].x[0] == pytest.approx(controls["beta"].value)
    controls["activation"].value = "softmax"
    soft = samples["softmax"]
    assert controls["alpha"].value == pytest.approx(soft.alpha_star, rel=1e-2) and controls["beta"].value == 0
    assert "share of ones" in fig.layout.title.text
    assert fig.data[2].x[0] == pytest.approx(controls["alpha"].value / 2)  # {0, alpha}: threshold alpha / 2
    assert_titled(fig)


def test_static_figures_are_titled(samples):
    for fig in (E.activation_histograms_figure(samples), E.alpha_sweep_figure(samples, num_alphas=51),
                E.ste_gradient_figure(num_points=41), E.uniform_attention_figure(E.uniform_attention_rows())):
        assert_titled(fig)
        assert len(fig.data) > 0


def test_ste_gradients_match_the_documented_formulas():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 0.75, 1.0, 3.0], dtype=torch.float64)
    signed = E.ste_gradients(x, 1.0, True)
    assert signed["q"].tolist() == [-1, -1, 1, 1, 1, 1, 1]
    assert signed["dx"].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert signed["dalpha"].tolist() == [-1, -1, 1, 1, 1, 1, 1]
    unsigned = E.ste_gradients(x, 1.0, False)
    assert unsigned["q"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert unsigned["dx"].tolist() == [0, 0, 1, 1, 1, 1, 0]
    assert unsigned["dalpha"] == pytest.approx([0, 0, 0, -0.25, 0.25, 0, 1])


def test_uniform_attention_rows_are_all_zero_with_the_code_init():
    rows = E.uniform_attention_rows((2, 8, 32, 128))
    for r in rows:
        assert r["p"] == pytest.approx(1 / r["L"])
        assert r["alpha code"] == pytest.approx(4 / r["L"]) and r["threshold code"] > r["p"]
        assert r["ones code"] == 0  # 4 mean(p) puts the threshold at 2/L, above every 1/L
        assert r["alpha*"] == pytest.approx(1 / r["L"]) and r["ones alpha*"] == r["L"]


def test_all_zero_attention_rows_are_counted_by_calibrate():
    code = E.all_zero_attention_rows(alpha_init="code")
    optimal = E.all_zero_attention_rows(alpha_init="optimal")
    assert len(code["rows"]) == len(code["all_zero"]) == 6 and sum(code["rows"]) > 0
    assert all(0 <= z <= r for z, r in zip(code["all_zero"], code["rows"]))
    assert sum(optimal["all_zero"]) <= sum(code["all_zero"])


def test_fast_comparison_runs_and_returns_three_rows():
    comparison = E.compare_activation_scales(steps=8, train_examples=64, dev_examples=32, batch_size=16)
    assert [r["variant"] for r in comparison.rows] == list(E.SCALE_VARIANTS)
    for r in comparison.rows:
        assert 0 <= r["dev accuracy"] <= 1 and np.isfinite(r["final train loss"])
    by = {r["variant"]: r for r in comparison.rows}
    assert by["no scale"]["mean alpha at the end"] == 1.0
    assert by["fixed alpha*"]["mean alpha at the end"] != by["elastic"]["mean alpha at the end"]  # only one learns
    assert all(len(v) == comparison.settings["steps"] == 8 for v in comparison.losses.values())
    fig = E.scale_comparison_figure(comparison)
    assert_titled(fig)
    assert len(fig.data) == 3
