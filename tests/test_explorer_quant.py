"""Chapter 2's library side (binlab.explorers.quant): the explorers react to their controls, the curves they
draw are the real quantizers' outputs and gradients, and the numbers the chapter states hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_titled

from binlab.explorers import quant as E
from binlab.quant import quantizers as Q


@pytest.fixture(scope="module")
def random_sample():
    return E.load_weight_sample(pretrained=False)


def _arr(trace_values):
    return np.asarray(trace_values, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# transfer curves


@pytest.mark.parametrize("name", list(E.QUANTIZER_PARAMS))
def test_transfer_curve_is_the_quantizers_output(name):
    x = torch.linspace(-3, 3, 241)
    knobs = dict(bits=3, clip=1.5, scale=0.4)
    y, g = E.transfer_curve(name, x, **knobs)
    q = E.build_quantizer(name, **knobs)
    with torch.no_grad():
        expected = q(x.reshape(1, -1)).reshape(-1)
    np.testing.assert_allclose(y, expected.double().numpy(), atol=1e-6)
    assert g.shape == y.shape and np.isfinite(g).all()


@pytest.mark.parametrize("clip", [0.5, 1.0, 2.0])
def test_transfer_gradient_of_ste_sign_is_the_window(clip):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    y, g = E.transfer_curve("ste_sign", x, clip=clip)
    xn = x.numpy()
    np.testing.assert_array_equal(y, np.where(xn < 0, -1.0, 1.0))
    np.testing.assert_array_equal(g, (np.abs(xn) <= clip).astype(float))  # reference formula, evaluated here
    _, g_id = E.transfer_curve("ste_sign_identity", x)
    np.testing.assert_array_equal(g_id, np.ones_like(xn))


def test_transfer_explorer_draws_the_quantizer_and_reacts_to_every_control():
    ui, fig, c = E.make_transfer_explorer("ste_sign")
    assert_titled(fig)
    xs = _arr(fig.data[0].x)
    np.testing.assert_array_equal(_arr(fig.data[0].y), np.where(xs < 0, -1.0, 1.0))
    np.testing.assert_array_equal(_arr(fig.data[2].y), (np.abs(xs) <= 1.0).astype(float))

    before = _arr(fig.data[2].y).copy()
    c["clip"].value = 2.0
    assert not np.array_equal(before, _arr(fig.data[2].y))
    np.testing.assert_array_equal(_arr(fig.data[2].y), (np.abs(xs) <= 2.0).astype(float))
    assert "2" in fig.layout.title.text

    c["quantizer"].value = "uniform_sym"
    assert not c["bits"].disabled and c["scale"].disabled and c["zero_to_one"].disabled
    assert c["bits"].value >= 2  # uniform needs k >= 2: the slider was moved up
    y_before = _arr(fig.data[0].y).copy()
    c["bits"].value = 4
    y_after = _arr(fig.data[0].y)
    assert not np.array_equal(y_before, y_after)
    expected = E.quantize("uniform_sym", torch.tensor(xs, dtype=torch.float32), bits=4, clip=2.0)
    np.testing.assert_allclose(y_after, expected.double().numpy(), atol=1e-6)

    c["quantizer"].value = "lsq_sym"
    y_before = _arr(fig.data[0].y).copy()
    c["scale"].value = 0.25
    assert not np.array_equal(y_before, _arr(fig.data[0].y))

    c["quantizer"].value = "bwn"
    assert c["bits"].disabled and c["clip"].disabled
    y_before = _arr(fig.data[0].y).copy()
    c["x_range"].value = 5.0
    assert _arr(fig.data[0].x).max() == pytest.approx(5.0)
    assert np.abs(_arr(fig.data[0].y)).max() > np.abs(y_before).max()  # alpha = mean|x| grows with the range

    c["quantizer"].value = "ste_bool"
    c["x_range"].value = 1.0  # the grid hits x = 0 and |x| = 1 exactly
    g_before = _arr(fig.data[2].y).copy()
    c["strict_window"].value = True
    assert not np.array_equal(g_before, _arr(fig.data[2].y))
    y_before = _arr(fig.data[0].y).copy()
    c["zero_to_one"].value = True
    assert not np.array_equal(y_before, _arr(fig.data[0].y))


def test_build_quantizer_rejects_bad_choices():
    with pytest.raises(ValueError, match="unknown quantizer"):
        E.build_quantizer("nope")
    with pytest.raises(ValueError, match="at least 2 bits"):
        E.build_quantizer("uniform_sym", bits=1)
    with pytest.raises(ValueError, match="positive"):
        E.build_quantizer("lsq_sym", scale=0.0)


# ----------------------------------------------------------------------------------------------------------
# real weights: histogram, error against bits


def test_random_fallback_says_so(random_sample):
    assert not random_sample.pretrained
    assert "RANDOM INIT" in random_sample.source
    assert random_sample.weight.shape == (384, 384)
    again = E.load_weight_sample(pretrained=False)
    assert torch.equal(again.weight, random_sample.weight)  # seeded


def test_pretrained_sample_when_installed():
    sample = E.load_weight_sample()
    if not sample.pretrained:
        pytest.skip(f"no pretrained checkpoint here: {sample.source}")
    assert "pretrained" in sample.source and sample.weight.shape == (384, 384)
    assert sample.name == "bert.encoder.layer.0.attention.query.weight"


def test_histogram_explorer_reacts_and_reports_the_error(random_sample):
    ui, fig, c = E.make_histogram_explorer(random_sample)
    assert_titled(fig)
    assert "RANDOM INIT" in fig.layout.title.text
    w = random_sample.weight
    assert _arr(fig.data[0].y).sum() == w.numel() and _arr(fig.data[1].y).sum() == w.numel()
    err = E.relative_error(w, Q.bwn(w))
    assert f"{err:.4f}" in fig.layout.title.text
    bwn_counts = _arr(fig.data[1].y).copy()
    assert (bwn_counts > 0).sum() == 2  # two levels, +-mean|W|

    c["quantizer"].value = "twn"
    assert not np.array_equal(bwn_counts, _arr(fig.data[1].y))
    assert (_arr(fig.data[1].y) > 0).sum() == 3
    assert c["bits"].disabled

    c["quantizer"].value = "uniform_sym"
    assert not c["bits"].disabled
    c["bits"].value = 4
    counts4 = _arr(fig.data[1].y).copy()
    c["bits"].value = 8
    assert not np.array_equal(counts4, _arr(fig.data[1].y))
    c["log_y"].value = False
    assert fig.layout.yaxis.type == "linear"


def test_error_decreases_with_bits(random_sample):
    sample = E.load_weight_sample()  # pretrained where installed; the random init is checked too
    for w in (random_sample.weight, sample.weight):
        errors = E.error_vs_bits(w)
        assert set(errors) == set(E.ERROR_METHODS)
        for label, row in errors.items():
            values = [e for e in row if e is not None]
            assert len(values) >= 2, label
            assert all(a > b for a, b in zip(values, values[1:])), f"{label}: {row}"
        # BWN at 1 bit: the closed form 1 - mean|W|^2 / mean(W^2); BiT's init alpha = 2 mean|W| gives exactly 1
        wd = w.double()
        bwn_row = errors[next(k for k in errors if k.startswith("weights"))]
        assert bwn_row[0] == pytest.approx(1 - float(wd.abs().mean()) ** 2 / float((wd ** 2).mean()), rel=1e-5)
        assert errors[next(k for k in errors if "elastic" in k)][0] == pytest.approx(1.0, abs=1e-5)
        fig = E.error_vs_bits_figure(errors)
        assert_titled(fig)
        assert len(fig.data) == len(errors)


# ----------------------------------------------------------------------------------------------------------
# the optimal binary scale


def test_binary_scale_errors_match_the_closed_form(random_sample):
    w = random_sample.weight.double()
    alphas = np.linspace(0, 0.1, 11)
    closed = [float((w ** 2).mean() - 2 * a * w.abs().mean() + a * a) for a in alphas]
    np.testing.assert_allclose(E.binary_scale_errors(w, alphas), closed, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("pretrained", [False, True])
def test_alpha_curve_minimum_is_mean_abs_w(pretrained):
    sample = E.load_weight_sample(pretrained=pretrained)
    ui, fig, c = E.make_alpha_explorer(sample)
    assert_titled(fig)
    alphas, errors = _arr(fig.data[0].x), _arr(fig.data[0].y)
    mean_abs = float(sample.weight.double().abs().mean())
    step = alphas[1] - alphas[0]
    assert abs(alphas[errors.argmin()] - mean_abs) <= step / 2 + 1e-12
    assert _arr(fig.data[2].x)[0] == pytest.approx(mean_abs, rel=1e-5)  # the marker is BWN's alpha
    assert _arr(fig.data[2].y)[0] <= errors.min() + 1e-15

    before = (_arr(fig.data[1].x)[0], _arr(fig.data[1].y)[0])
    c["alpha"].value = float(alphas[200])
    after = (_arr(fig.data[1].x)[0], _arr(fig.data[1].y)[0])
    assert after != before
    assert after[0] == pytest.approx(alphas[200]) and after[1] == pytest.approx(errors[200], rel=1e-9)
    assert f"{alphas[200]:.4f}" in fig.layout.title.text


# ----------------------------------------------------------------------------------------------------------
# the STE matters: a tiny binarized MLP


@pytest.fixture(scope="module")
def ste_runs():
    return E.compare_ste(num_steps=150)


def test_ste_choice_changes_the_loss_curve(ste_runs):
    clipped, identity = ste_runs["clipped"], ste_runs["identity"]
    assert len(clipped.losses) == len(identity.losses) == 150
    assert clipped.losses[0] == pytest.approx(identity.losses[0])  # same data and init: same first loss
    assert not np.allclose(clipped.losses, identity.losses)
    last = slice(-30, None)
    assert np.mean(clipped.losses[last]) < np.mean(identity.losses[last]) - 0.1  # visibly, not marginally
    assert clipped.accuracy > identity.accuracy
    fig = E.ste_comparison_figure(ste_runs)
    assert_titled(fig)
    assert len(fig.data) == 4


def test_ste_run_is_deterministic(ste_runs):
    again = E.ste_toy_run("identity", num_steps=150)
    assert again.losses == ste_runs["identity"].losses
    with pytest.raises(ValueError, match="ste must be"):
        E.ste_toy_run("sigmoid")
