"""Loss landscapes and Hessian eigenvalues (binlab.analysis.landscape) on tiny models.

The power iteration is checked against ``torch.linalg.eigvalsh`` / ``eigvals`` of the FULL Hessian computed by
``torch.autograd.functional.hessian``: for a quadratic, a tiny MLP, and a tiny BERT (full precision, and a
quantized one, where both sides see the straight-through surrogate).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from binlab.analysis import landscape as L
from binlab.explorers import landscape as EL
from binlab.model import BertForSequenceClassification, tiny_bert as make_tiny_bert
from binlab.quant.config import QuantConfig
from binlab.train.trainer import default_loss

V0, V1 = L.value_layers()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two fighting for busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_bert(quant="fp", layers=3, seed=0) -> BertForSequenceClassification:
    model = make_tiny_bert(2, quant, seed=seed, vocab_size=60, hidden_size=8, num_hidden_layers=layers,
                           num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
    with torch.no_grad():  # move away from BERT's N(0, 0.02) init so that every layer matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def make_batches(sizes=(5, 3), length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        out.append({"input_ids": torch.randint(0, 60, (n, length), generator=g),
                    "attention_mask": torch.ones(n, length, dtype=torch.long),
                    "token_type_ids": torch.zeros(n, length, dtype=torch.long),
                    "labels": torch.randint(0, 2, (n,), generator=g)})
    return out


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, state):
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"


# -------------------------------------------------------------------------------------- with_quant
@pytest.mark.parametrize("preset", ["w2a8", "w1a8"])
def test_with_quant_copies_the_latent_weights(preset):
    fp = tiny_bert()
    before = snapshot(fp)
    rng = torch.get_rng_state()
    q = L.with_quant(fp, preset)
    assert torch.equal(torch.get_rng_state(), rng)  # the throwaway init did not consume the global RNG
    assert q.config.quant == QuantConfig.preset(preset) and fp.config.quant == QuantConfig()
    qs = q.state_dict()
    for k, v in before.items():
        assert torch.equal(qs[k], v), k
    assert_same_state(fp, before)
    b = make_batches()[0]
    assert not torch.allclose(default_loss(q, b), default_loss(fp, b))  # it does quantize
    assert q.training == fp.training


def test_with_quant_copies_quantizer_state_both_configs_have():
    ternary = L.with_quant(tiny_bert(), "w2a8")
    key = "bert.encoder.layer.0.attention.query.input_quantizer.clip_val"
    with torch.no_grad():
        ternary.state_dict()[key].copy_(torch.tensor([-1.5, 2.0]))
    binary = L.with_quant(ternary, "w1a8")
    assert binary.state_dict()[key].tolist() == [-1.5, 2.0]


def test_with_quant_errors():
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        L.with_quant(nn.Linear(2, 2), "fp")
    with pytest.raises(ValueError, match="unknown QuantConfig preset"):
        L.with_quant(tiny_bert(), "w3a3")


# ---------------------------------------------------------------------------------------- the grid
def test_dataset_loss_averages_over_examples():
    m = tiny_bert()
    b1, b2 = make_batches((5, 3))
    both = {k: torch.cat([b1[k], b2[k]]) for k in b1}
    assert L.dataset_loss(m, [b1, b2]) == pytest.approx(L.dataset_loss(m, both), rel=1e-6)
    assert L.dataset_loss(m, b1) == pytest.approx(default_loss(m, b1).item(), rel=1e-6)


@pytest.mark.parametrize("preset", ["fp", "w2a8", "w1a8"])
def test_grid_centre_is_the_unperturbed_loss(preset):
    m = tiny_bert(preset)
    batches = make_batches()
    expected = L.dataset_loss(m, batches)
    g = L.loss_grid(m, batches, steps=5, progress=False)
    assert g.losses.shape == (5, 5) and g.xs.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert g.names == (V0, V1)
    assert g.center == expected == g.center_loss
    assert np.isfinite(g.losses).all() and g.losses.std() > 0


def test_grid_points_are_the_papers_perturbation():
    """losses[i, j] = loss(W1 + xs[i] mean|W1| 1, W2 + ys[j] mean|W2| 1): a corner, rebuilt by hand."""
    m = tiny_bert("w1a8")
    batches = make_batches()
    g = L.loss_grid(m, batches, steps=3, span=0.5, progress=False)
    assert g.xs.tolist() == [-0.5, 0.0, 0.5]
    for i, j in [(0, 2), (2, 0), (0, 1)]:
        manual = copy.deepcopy(m)
        p = dict(manual.named_parameters())
        with torch.no_grad():
            p[V0].add_(g.xs[i] * p[V0].abs().mean())
            p[V1].add_(g.ys[j] * p[V1].abs().mean())
        assert g.losses[i, j] == pytest.approx(L.dataset_loss(manual, batches), rel=1e-6, abs=1e-7)
    assert g.losses[0, 2] != g.losses[2, 0]  # x and y are not interchangeable: the indexing matters
    np.testing.assert_array_equal(g.surface_z, g.losses.T)


def test_perturbation_direction_uses_mean_absolute_value():
    W = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    d = L.perturbation_direction(W)
    assert d.shape == W.shape and torch.allclose(d, torch.full_like(W, 1.25))
    assert not d.requires_grad


def test_weights_mode_and_flags_restored_exactly():
    m = tiny_bert("w2a8")
    m.train()
    m.classifier.weight.requires_grad_(False)
    before = snapshot(m)
    L.loss_grid(m, make_batches(), names=[L.layer_param(2, "FFN in"), L.layer_param(0, "query")], steps=3,
                progress=False)
    assert_same_state(m, before)
    assert m.training and not m.classifier.weight.requires_grad


def test_weights_restored_when_the_loss_raises():
    m = tiny_bert()
    before = snapshot(m)
    calls = []

    def flaky_loss(model, batch):
        calls.append(1)
        if len(calls) == 7:  # in the middle of the grid, with both weights perturbed
            raise RuntimeError("out of memory, say")
        return default_loss(model, batch)

    with pytest.raises(RuntimeError, match="out of memory"):
        L.loss_grid(m, make_batches(), steps=5, loss_fn=flaky_loss, progress=False)
    assert len(calls) == 7
    assert_same_state(m, before)
    assert not m.training


def test_unknown_or_bad_parameter_names():
    m = tiny_bert()
    with pytest.raises(ValueError, match=r"unknown parameter name.*did you mean.*layer\.0\.attention\.value"):
        L.loss_grid(m, make_batches(), names=["bert.encoder.layer.0.attention.values.weight", V1], steps=3)
    with pytest.raises(ValueError, match="unknown parameter name"):
        L.top_hessian_eigenvalue(m, make_batches(), "nope")
    with pytest.raises(ValueError, match="distinct"):
        L.loss_grid(m, make_batches(), names=[V0, V0], steps=3)
    with pytest.raises(ValueError, match="exactly 2"):
        L.loss_grid(m, make_batches(), names=[V0, V1, L.layer_param(2)], steps=3)
    with pytest.raises(ValueError, match="exactly 2"):
        L.loss_grid(m, make_batches(), names=V0, steps=3)
    with pytest.raises(ValueError, match="unknown module"):
        L.layer_param(0, "values")
    with pytest.raises(ValueError, match="non-negative"):
        L.layer_param(-1)


@pytest.mark.parametrize("steps", [4, 2, 1, 0, -3, 5.0, True, "5", None])
def test_bad_grid_sizes(steps):
    with pytest.raises(ValueError, match="steps"):
        L.loss_grid(tiny_bert(), make_batches(), steps=steps, progress=False)


@pytest.mark.parametrize("span", [0, -1.0, math.nan, math.inf, True])
def test_bad_span(span):
    with pytest.raises(ValueError, match="span"):
        L.grid_coords(5, span)


def test_empty_batches():
    with pytest.raises(ValueError, match="empty"):
        L.loss_grid(tiny_bert(), [], steps=3)


def test_landscapes_compares_three_versions_of_the_same_weights():
    m = tiny_bert()
    before = snapshot(m)
    batches = make_batches()
    grids = L.landscapes(m, batches, steps=3, progress=False)
    assert list(grids) == list(L.LANDSCAPE_MODELS) == ["full precision", "ternary", "binary"]
    for label, preset in L.LANDSCAPE_MODELS.items():
        assert grids[label].label == label
        assert grids[label].center_loss == pytest.approx(L.dataset_loss(L.with_quant(m, preset), batches))
    assert len({g.center_loss for g in grids.values()}) == 3
    assert_same_state(m, before)


def test_ones_alignment_is_zero_for_a_plain_layernorm_and_grows_with_its_bias():
    m = tiny_bert(layers=2)
    with torch.no_grad():  # every LayerNorm plain: gamma = 1, beta = 0, so each token's entries sum to 0
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
    batches = make_batches()
    batches[0]["attention_mask"][:, -2:] = 0  # padding is left out
    plain = L.ones_alignment(m, batches)
    assert set(plain) == {0, 1} and max(plain.values()) < 1e-5
    # ... and then the all-ones perturbation of a full-precision value weight changes (almost) nothing
    flat = L.loss_grid(m, batches, steps=3, progress=False)
    assert np.ptp(flat.losses) < 1e-5
    with torch.no_grad():
        m.bert.embeddings.LayerNorm.bias.fill_(0.5)  # every token entering layer 1 gains 0.5 * 1
    shifted = L.ones_alignment(m, batches, layers=[0])
    assert shifted[0] > 0.3
    tilted = L.loss_grid(m, batches, steps=3, progress=False)
    assert np.ptp(tilted.losses[:, 1]) > 1e-3  # x moves layer 1's value weight, whose input now has 1^T x != 0
    with pytest.raises(ValueError, match="layers"):
        L.ones_alignment(m, batches, layers=[2])


# --------------------------------------------------------------------------------- power iteration
def test_power_iteration_matches_eigvalsh_of_a_quadratic():
    """loss = 1/2 w^T A w + b^T w: the Hessian is A, computed in full by autograd.functional.hessian."""
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    A = (Q * torch.linspace(0.1, 4.0, 12, dtype=torch.float64)) @ Q.T
    b = torch.randn(12, generator=g, dtype=torch.float64)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(12, generator=g, dtype=torch.float64))

    def f(w):
        return 0.5 * w @ A @ w + b @ w

    model = Quadratic()
    H = torch.autograd.functional.hessian(f, model.w.detach())
    top = torch.linalg.eigvalsh(H)[-1].item()
    r = L.top_hessian_eigenvalue(model, [None], "w", loss_fn=lambda m, _: f(m.w), max_iter=500, tol=1e-12)
    assert r.eigenvalue == pytest.approx(top, rel=1e-8) and r.converged
    assert r.iterations == len(r.history) <= 500


def flat_hessian(f, params):
    """The full Hessian of f(*params) as one (n, n) matrix (blocks laid out in parameter order)."""
    H = torch.autograd.functional.hessian(f, tuple(p.detach() for p in params))
    sizes = [p.numel() for p in params]
    return torch.cat([torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                      for i in range(len(params))], 0)


def dominant(eigenvalues: torch.Tensor) -> tuple[float, float]:
    """(the eigenvalue of largest magnitude, |second| / |first|: the convergence ratio)."""
    ev = eigenvalues.real if eigenvalues.is_complex() else eigenvalues
    order = ev.abs().argsort(descending=True)
    return ev[order[0]].item(), (ev[order[1]].abs() / ev[order[0]].abs()).item()


def test_power_iteration_matches_the_full_hessian_of_a_tiny_network():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    names = ["0.weight", "2.weight"]
    params = L.get_parameters(net, names)

    def f(w0, w2):
        return nn.functional.cross_entropy(functional_call(net, {"0.weight": w0, "2.weight": w2}, (x,)), y)

    H = flat_hessian(f, params)
    assert torch.allclose(H, H.T, atol=1e-12)
    top, ratio = dominant(torch.linalg.eigvalsh(H))
    assert ratio < 0.95  # a gap, or the test would prove little
    r = L.top_hessian_eigenvalue(net, [None], names, loss_fn=lambda m, _: nn.functional.cross_entropy(m(x), y),
                                 max_iter=3000, tol=1e-12)
    assert r.eigenvalue == pytest.approx(top, rel=1e-6)


@pytest.mark.parametrize("preset", ["fp", "w2a8", "w1a8"])
def test_power_iteration_matches_the_full_hessian_of_a_tiny_bert(preset):
    """For a quantized model both sides differentiate the STE backward: the surrogate's Hessian."""
    m = tiny_bert(preset, layers=2)
    batch = make_batches((6,))[0]
    name = "bert.encoder.layer.0.attention.value.weight"
    W = dict(m.named_parameters())[name]

    def f(w):
        return default_loss(lambda *a, **k: functional_call(m, {name: w}, a, k), batch)

    H = flat_hessian(f, [W])
    top, ratio = dominant(torch.linalg.eigvals(H))
    assert ratio < 0.9
    r = L.top_hessian_eigenvalue(m, batch, name, max_iter=300, tol=1e-8)
    assert r.eigenvalue == pytest.approx(top, rel=1e-5)


def test_power_iteration_keeps_the_sign_and_normalises():
    D = torch.tensor([-5.0, 2.0, 1.0, 0.5])
    r, v = L.power_iteration(lambda v: D * v, torch.ones(4), max_iter=200, tol=1e-10)
    assert r.eigenvalue == pytest.approx(-5.0, rel=1e-8) and r.converged
    assert abs(abs(v[0].item()) - 1) < 1e-6
    # eigenvalues ~1e20: without normalising every step the float32 vector overflows within 2 products
    big = torch.tensor([1e20, 0.6e20, 1.0])
    r, _ = L.power_iteration(lambda v: big * v, torch.ones(3), max_iter=300, tol=1e-9)
    assert r.eigenvalue == pytest.approx(1e20, rel=1e-5)


def test_power_iteration_on_lists_stops_at_max_iter():
    calls = []

    def matvec(v):
        calls.append(1)
        return [2.0 * v[0], 1.99 * v[1]]  # eigenvalues 2 and 1.99: very slow convergence

    r, v = L.power_iteration(matvec, [torch.ones(3), torch.ones(2)], max_iter=4, tol=1e-12)
    assert len(calls) == 4 == r.iterations and not r.converged
    assert isinstance(v, list) and [t.shape for t in v] == [torch.Size([3]), torch.Size([2])]
    r, _ = L.power_iteration(lambda v: 3.0 * v, torch.randn(5), max_iter=50, tol=1e-6)
    assert r.iterations == 2 and r.converged and r.eigenvalue == pytest.approx(3.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"), (dict(max_iter=True), "max_iter"),
    (dict(tol=-1.0), "tol"), (dict(tol=math.nan), "tol"),
])
def test_power_iteration_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.power_iteration(lambda v: v, torch.ones(3), **kwargs)


def test_power_iteration_rejects_a_zero_start():
    with pytest.raises(ValueError, match="nonzero"):
        L.power_iteration(lambda v: v, torch.zeros(3))


def test_top_eigenvalue_is_reproducible_and_leaves_the_model_alone():
    m = tiny_bert("w1a8")
    m.train()
    before = snapshot(m)
    batches = make_batches()
    names = L.module_param_names(1, "MHA-QK")
    assert names == ("bert.encoder.layer.1.attention.query.weight", "bert.encoder.layer.1.attention.key.weight")
    a = L.top_hessian_eigenvalue(m, batches, names, max_iter=15, tol=1e-4, seed=7)
    b = L.top_hessian_eigenvalue(m, batches, names, max_iter=15, tol=1e-4, seed=7)
    assert a.eigenvalue == b.eigenvalue and a.history == b.history
    assert_same_state(m, before)
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_hessian_eigenvalues_and_table():
    models = {label: L.with_quant(tiny_bert(), preset) for label, preset in L.LANDSCAPE_MODELS.items()}
    batches = make_batches()
    per_type = L.hessian_eigenvalues(models["binary"], batches, layers=[0, 2], max_iter=5, progress=False)
    assert list(per_type) == list(L.MODULE_TYPES)
    assert all(len(v) == 2 and all(math.isfinite(r.eigenvalue) for r in v) for v in per_type.values())
    rows = L.eigenvalue_table(models, batches, layers=[1], module_types=["MHA-V", "FFN-Out"], max_iter=5,
                              progress=False)
    assert [(r["model"], r["module"]) for r in rows] == [(lab, t) for lab in models for t in ("MHA-V", "FFN-Out")]
    for r in rows:
        assert r["std"] == 0.0 and r["mean"] == r["per_layer"][0]  # one layer: no spread
        assert r["mean_abs"] == abs(r["mean"]) and r["std_abs"] == 0.0 and r["converged"] in ("0/1", "1/1")
    rows = L.eigenvalue_table({"binary": models["binary"]}, batches, layers=[0, 1, 2], module_types=["MHA-QK"],
                              max_iter=20, progress=False)
    values = np.array(rows[0]["per_layer"])
    assert len(values) == 3 and rows[0]["mean"] == pytest.approx(values.mean())
    assert rows[0]["std_abs"] == pytest.approx(np.abs(values).std())
    with pytest.raises(ValueError, match="module type"):
        L.hessian_eigenvalues(models["binary"], batches, module_types=["MHA-K"])
    with pytest.raises(ValueError, match="layers"):
        L.hessian_eigenvalues(models["binary"], batches, layers=[3])


# --------------------------------------------------------------------------------------- figures
def test_landscape_figure_has_three_labelled_surfaces():
    grids = L.landscapes(tiny_bert(), make_batches(), steps=3, progress=False)
    fig = EL.landscape_figure(grids)
    assert [t.type for t in fig.data] == ["surface"] * 3
    assert "(L1 value)" in fig.layout.title.text and "(L2 value)" in fig.layout.title.text
    for k, scene in enumerate(["scene", "scene2", "scene3"]):
        s = fig.layout[scene]
        assert s.xaxis.title.text == "x: L1 value" and s.yaxis.title.text == "y: L2 value"
        assert s.zaxis.title.text == "training loss"
        np.testing.assert_allclose(np.array(fig.data[k].z), list(grids.values())[k].losses.T)
    titles = [a.text for a in fig.layout.annotations]
    assert [t.split("<br>")[0] for t in titles] == list(grids)     # the label, then the centre loss below it
    assert all("(centre loss " in t for t in titles)


def test_eigenvalue_figure():
    rows = [{"model": m, "module": t, "mean": -1.0 - i, "std": 0.1, "mean_abs": 1.0 + i, "std_abs": 0.2}
            for i, m in enumerate(["fp", "bin"]) for t in ("MHA-V", "MHA-O")]
    fig = EL.eigenvalue_figure(rows)
    assert [t.name for t in fig.data] == ["fp", "bin"] and list(fig.data[1].y) == [2.0, 2.0]
    assert list(fig.data[0].error_y.array) == [0.2, 0.2] and "|λ_max|" in fig.layout.yaxis.title.text
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "module type"
    signed = EL.eigenvalue_figure(rows, magnitude=False)
    assert list(signed.data[1].y) == [-2.0, -2.0] and "signed" in signed.layout.yaxis.title.text


def test_explorer_controls_redraw_the_surface():
    base = tiny_bert()
    models = {label: L.with_quant(base, preset) for label, preset in L.LANDSCAPE_MODELS.items()}
    batches = make_batches()
    ui, fig, controls = EL.make_landscape_explorer(models, batches, steps_options=(3, 5))
    assert set(controls) == {"model", "module", "layers", "steps"}
    assert np.array(fig.data[0].z).shape == (5, 5)
    assert "full precision" in fig.layout.title.text

    controls["steps"].value = 3
    assert np.array(fig.data[0].z).shape == (3, 3)
    controls["model"].value = "binary"
    expected = L.loss_grid(models["binary"], batches, value_layers_pair := (V0, V1), steps=3, progress=False)
    np.testing.assert_allclose(np.array(fig.data[0].z), expected.losses.T)
    assert "binary" in fig.layout.title.text and value_layers_pair == expected.names

    controls["layers"].value = (1, 2)
    controls["module"].value = "FFN out"
    assert fig.layout.scene.xaxis.title.text == "x: L2 FFN out"
    assert fig.layout.scene.yaxis.title.text == "y: L3 FFN out" and "(L3 FFN out)" in fig.layout.title.text
    grid = EL.explorer_grid(models, batches, "binary", "FFN out", (1, 2), 3)
    np.testing.assert_allclose(np.array(fig.data[0].z), grid.surface_z)
    assert ui.children[-1] is fig


def _shown_ranges(fig):
    """(z axis range, colour range) of the explorer's surface, as drawn."""
    return tuple(fig.layout.scene.zaxis.range), (fig.data[0].cmin, fig.data[0].cmax)


def test_explorer_fits_its_z_axis_and_colours_to_the_surface_shown():
    base = tiny_bert()
    models = {label: L.with_quant(base, preset) for label, preset in L.LANDSCAPE_MODELS.items()}
    batches = make_batches()
    ui, fig, controls = EL.make_landscape_explorer(models, batches, steps_options=(3, 5))
    # a fixed box: with plotly's default aspect ("data") a 1e-5 variation over x, y in [-1, 1] is a flat sheet
    assert fig.layout.scene.aspectmode == "manual" and fig.layout.scene.aspectratio.z > 0.5
    seen = []
    for label in ("full precision", "binary"):
        controls["model"].value = label
        grid = EL.explorer_grid(models, batches, label, "value", (0, 1), 5)
        lo, hi = float(grid.losses.min()), float(grid.losses.max())
        z_range, colours = _shown_ranges(fig)
        assert colours == pytest.approx((lo, hi))
        pad = 0.05 * (hi - lo)
        assert z_range == pytest.approx((lo - pad, hi + pad))
        assert f"varies by {hi - lo:.2g} (max − min)" in fig.layout.title.text
        seen.append(z_range)
    assert seen[0] != seen[1]  # the range follows the model


def test_surface_range_of_a_flat_grid_is_not_empty():
    xs = L.grid_coords(3)
    grid = L.LossGrid(xs, xs, np.full((3, 3), 0.5), (V0, V1), 0.5)
    lo, hi = EL.surface_range(grid)
    assert lo < 0.5 < hi and hi - lo < 1e-5
    assert EL.surface_range(grid, pad=0.0) == (lo, hi)


def test_explorer_needs_two_layers():
    with pytest.raises(ValueError, match="2 layers"):
        EL.make_landscape_explorer({"fp": tiny_bert(layers=1)}, make_batches())


# ------------------------------------------------------------------------------ the chapter's setup
@pytest.fixture(scope="module")
def tiny_setup():
    return EL.setup_sst2(fast=True, num_train=64, num_eval=16, train_steps=3, batch_size=16)


def test_setup_fast_mode_trains_a_tiny_model_and_says_so(tiny_setup, monkeypatch):
    s = tiny_setup
    assert s.source == "tiny" and s.model.config.hidden_size == 32 and s.model.config.num_hidden_layers == 3
    assert "Fast mode" in s.description and "SYNTHETIC" in s.description
    assert sum(b["input_ids"].shape[0] for b in s.batches) == 16
    assert not s.model.training


def test_setup_falls_back_without_a_checkpoint_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv(EL.SST2_MODEL_ENV, raising=False)
    monkeypatch.setenv("BINLAB_ROOT", str(tmp_path))  # a checkout without runs/
    threads = torch.get_num_threads()
    s = EL.setup_sst2(fast=False, num_train=16, num_eval=8, train_steps=1, batch_size=8)
    assert s.source == "tiny" and "No fine-tuned SST-2 checkpoint" in s.description
    assert EL.SST2_MODEL_ENV in s.description and EL.SST2_TRAIN_COMMAND in s.description
    assert torch.get_num_threads() == threads  # the one-thread setting of the tiny model is given back


def test_setup_finds_the_checkouts_sst2_run_by_itself(tiny_setup, monkeypatch, tmp_path):
    from binlab.checkpoint import save_pretrained

    monkeypatch.delenv(EL.SST2_MODEL_ENV, raising=False)
    monkeypatch.setenv("BINLAB_ROOT", str(tmp_path))
    monkeypatch.setenv("BINLAB_GLUE_SOURCE", "synthetic")
    save_pretrained(tiny_setup.model, tmp_path / EL.DEFAULT_SST2_RUN / "best_model", tokenizer=tiny_setup.tokenizer)
    s = EL.setup_sst2(fast=False, num_eval=8, batch_size=8)
    assert s.source == "checkpoint" and f"found {EL.DEFAULT_SST2_RUN}/" in s.description


def test_setup_loads_a_checkpoint_in_full_mode(tiny_setup, tmp_path, monkeypatch):
    from binlab.checkpoint import save_pretrained

    save_pretrained(L.with_quant(tiny_setup.model, "w1a8"), tmp_path, tokenizer=tiny_setup.tokenizer)
    monkeypatch.setenv(EL.SST2_MODEL_ENV, str(tmp_path))
    monkeypatch.setenv("BINLAB_GLUE_SOURCE", "synthetic")
    s = EL.setup_sst2(fast=False, num_eval=8, batch_size=8)
    assert s.source == "checkpoint" and str(tmp_path) in s.description
    assert s.model.config.quant == QuantConfig()  # the latent weights, read full precision
    loaded = s.model.state_dict()
    for k, v in tiny_setup.model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    run_dir = tmp_path / "run"  # what `binlab train` writes: the best checkpoint in best_model/
    save_pretrained(tiny_setup.model, run_dir / "best_model", tokenizer=tiny_setup.tokenizer)
    s = EL.setup_sst2(run_dir, fast=False, num_eval=8, batch_size=8)
    assert s.source == "checkpoint" and "best_model" in s.description and "(model_dir)" in s.description
    fast = EL.setup_sst2(fast=True, num_train=16, num_eval=8, train_steps=1, batch_size=8)
    assert fast.source == "tiny" and "is set but ignored" in fast.description


def test_torch_threads_gives_the_count_back_also_on_an_error():
    from binlab.settings import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
