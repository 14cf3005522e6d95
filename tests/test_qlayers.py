"""QuantConfig (presets, validation, JSON round trip) and the quantized layers built from it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import close
from torch import nn

from binlab.quant import quantizers as Q
from binlab.quant.config import PRESETS, QuantConfig
from binlab.quant.layers import QuantEmbedding, QuantLinear, make_act_quantizer, make_weight_quantizer


def sgn(a):
    return np.where(a >= 0, 1.0, -1.0)  # binlab's sign(0) = +1


# ----------------------------------------------------------------------------------------------------------
# QuantConfig

# (weight_bits, weight_method, weight_per_row, embedding_bits, act_bits, act_method, attention, ffn_act),
# written out from methods.md §2-§4
EXPECTED_PRESETS = {
    "fp": (32, "bwn", False, 32, 32, "uniform", "softmax", "gelu"),
    "w2a8": (2, "twn", False, 2, 8, "uniform", "softmax", "gelu"),
    "w1a8": (1, "bwn", False, 1, 8, "uniform", "softmax", "gelu"),
    "w1a4": (1, "bwn", False, 1, 4, "lsq", "softmax", "relu"),
    "w1a2": (1, "bit", False, 1, 2, "elastic", "softmax01", "relu"),
    "w1a1": (1, "bit", False, 1, 1, "elastic", "softmax01", "relu"),
    "bit": (1, "bit", False, 1, 1, "elastic", "softmax01", "relu"),
    "bibert": (1, "bibert", True, 1, 1, "sign", "bool", "gelu"),
}
FIELDS = ("weight_bits", "weight_method", "weight_per_row", "embedding_bits", "act_bits", "act_method",
          "attention", "ffn_act")


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_presets_follow_the_papers(name):
    cfg = QuantConfig.preset(name)
    assert tuple(getattr(cfg, f) for f in FIELDS) == EXPECTED_PRESETS[name]
    assert cfg.quantize_attention is True


def test_every_preset_is_listed():
    assert set(PRESETS) == set(EXPECTED_PRESETS)
    with pytest.raises(ValueError, match="unknown QuantConfig preset 'w1a3'.*bibert"):
        QuantConfig.preset("w1a3")


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_json_round_trip(name):
    cfg = QuantConfig.preset(name)
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["act_bits"] == EXPECTED_PRESETS[name][4]


def test_from_dict_fills_defaults_and_rejects_unknown_keys():
    assert QuantConfig.from_dict({"act_bits": 8}) == QuantConfig(act_bits=8)
    old = {k: v for k, v in QuantConfig.preset("bibert").to_dict().items() if k != "bool_zero"}  # an older checkpoint
    assert QuantConfig.from_dict(old).bool_zero == 0  # the code's bool(0) = 0
    paper = dataclasses.replace(QuantConfig.preset("bibert"), bool_zero=1)
    assert QuantConfig.from_json(paper.to_json()) == paper != QuantConfig.preset("bibert")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['input_bits'\]"):
        QuantConfig.from_dict({"input_bits": 8})
    with pytest.raises(ValueError, match="expects a dict"):
        QuantConfig.from_dict([("act_bits", 8)])


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_bits=3), "weight_bits must be one of"),
    (dict(weight_bits=True), "weight_bits must be one of"),
    (dict(embedding_bits=8), "embedding_bits must be one of"),
    (dict(act_bits=16), "act_bits must be one of"),
    (dict(act_bits="8"), "act_bits must be one of"),
    (dict(weight_method="xnor"), "weight_method must be one of"),
    (dict(weight_bits=2, weight_method="bwn"), "weight_bits=2 needs weight_method"),
    (dict(weight_bits=1, weight_method="twn"), "weight_bits=1 needs weight_method"),
    (dict(act_method="pact"), "act_method must be one of"),
    (dict(act_bits=8, act_method="sign"), "'sign' is 1 bit"),
    (dict(act_bits=1, act_method="uniform"), "needs act_bits >= 2"),
    (dict(act_bits=1, act_method="lsq"), "needs act_bits >= 2"),
    (dict(attention="linear"), "attention must be one of"),
    (dict(ffn_act="swish"), "ffn_act must be one of"),
    (dict(weight_per_row="yes"), "weight_per_row must be True or False"),
    (dict(quantize_attention=1), "quantize_attention must be True or False"),
    (dict(attention="bool", bool_zero=2), "bool_zero must be one of"),
    (dict(attention="bool", bool_zero=True), "bool_zero must be one of"),
    (dict(bool_zero=1), "bool_zero=1 is a choice of attention='bool'"),
])
def test_invalid_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_config_is_frozen_and_replace_validates():
    cfg = QuantConfig.preset("w1a8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.act_bits = 4
    assert dataclasses.replace(cfg, act_bits=4).act_bits == 4
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, act_bits=1)  # uniform needs 2 bits


def test_embedding_method_and_label():
    assert QuantConfig.preset("bit").embedding_method == "bit"
    assert QuantConfig.preset("bibert").embedding_method == "bibert"
    assert QuantConfig.preset("w2a8").embedding_method == "twn"
    assert QuantConfig(weight_bits=2, weight_method="twn", embedding_bits=1).embedding_method == "bwn"
    assert QuantConfig.preset("w1a4").label == "W1E1A4"


# ----------------------------------------------------------------------------------------------------------
# quantizer factories


@pytest.mark.parametrize("method, signed, cls, check", [
    ("uniform", True, Q.UniformQuantizer, lambda m: m.symmetric and m.num_bits == 4),
    ("uniform", False, Q.UniformQuantizer, lambda m: not m.symmetric),
    ("lsq", True, Q.LSQ, lambda m: m.symmetric and m.num_bits == 4),
    ("lsq", False, Q.LSQ, lambda m: not m.symmetric),
    ("elastic", True, Q.Elastic, lambda m: m.signed and m.bias is not None and m.bias.shape == (7,)),
    ("elastic", False, Q.Elastic, lambda m: not m.signed),
])
def test_make_act_quantizer_picks_by_method_and_sign(method, signed, cls, check):
    m = make_act_quantizer(QuantConfig(act_bits=4, act_method=method), signed=signed, num_features=7)
    assert type(m) is cls and check(m)


def test_make_act_quantizer_identity_and_sign():
    assert isinstance(make_act_quantizer(QuantConfig(), signed=True), nn.Identity)
    m = make_act_quantizer(QuantConfig.preset("bibert"), signed=False)  # BiBERT signs every activation
    assert isinstance(m, Q.SteSign) and m.clip_value == 1.0
    assert make_act_quantizer(QuantConfig.preset("bit"), signed=True).bias is None  # no num_features: no shift
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        make_act_quantizer("w1a1", signed=True)


def test_make_weight_quantizer():
    assert isinstance(make_weight_quantizer(32, "bwn", False), nn.Identity)
    m = make_weight_quantizer(1, "bit", True)
    assert isinstance(m, Q.BWN) and m.centering == "bit" and m.per_row
    assert make_weight_quantizer(1, "bwn", False).centering is None
    assert isinstance(make_weight_quantizer(2, "twn", True), Q.TWN)
    with pytest.raises(ValueError, match="no 2-bit weight method 'bwn'"):
        make_weight_quantizer(2, "bwn", False)


# ----------------------------------------------------------------------------------------------------------
# QuantLinear

X = torch.tensor([[0.5, -1.0, 2.0, -0.25],
                  [-3.0, 0.75, 0.0, 1.5]])


def _pair(config, **kw):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, **kw)
    ql = QuantLinear(4, 3, config=config, **kw)
    ql.load_state_dict(lin.state_dict(), strict=False)
    return lin, ql


def test_quantlinear_is_nn_linear_at_32_bits():
    lin, ql = _pair(QuantConfig())
    x1, x2 = X.clone().requires_grad_(), X.clone().requires_grad_()
    y1, y2 = lin(x1), ql(x2)
    assert torch.equal(y1, y2)
    g = torch.randn(2, 3)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.equal(x1.grad, x2.grad) and torch.equal(lin.weight.grad, ql.weight.grad)
    assert torch.equal(lin.bias.grad, ql.bias.grad)
    assert isinstance(ql.input_quantizer, nn.Identity) and isinstance(ql.weight_quantizer, nn.Identity)


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_plain_linear_state_dict_loads_with_only_quantizer_keys_missing(name):
    lin = nn.Linear(4, 3)
    ql = QuantLinear(4, 3, config=QuantConfig.preset(name))
    result = ql.load_state_dict(lin.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("input_quantizer.") for k in result.missing_keys), result.missing_keys
    assert torch.equal(ql.weight, lin.weight) and torch.equal(ql.bias, lin.bias)
    assert set(ql.state_dict()) - set(result.missing_keys) == {"weight", "bias"}


def test_quantlinear_bwn_weights_fp_input_equals_formula_and_identity_ste():
    lin, ql = _pair(QuantConfig(weight_bits=1, weight_method="bwn"))
    w = lin.weight.detach().numpy()
    wq = np.abs(w).mean() * sgn(w)
    x = X.clone().requires_grad_()
    y = ql(x)
    close(y, X.numpy() @ wq.T + lin.bias.detach().numpy(), 1e-5)
    g = torch.randn(2, 3)
    (y * g).sum().backward()
    close(ql.weight.grad, g.numpy().T @ X.numpy(), 1e-5)  # identity STE: dL/dW = dL/dW_q
    close(x.grad, g.numpy() @ wq, 1e-5)


def test_quantlinear_bibert_equals_formula():
    lin, ql = _pair(QuantConfig.preset("bibert"))
    w = lin.weight.detach().numpy()
    wq = np.abs(w).mean(axis=1, keepdims=True) * sgn(w - w.mean(axis=1, keepdims=True))
    close(ql(X), sgn(X.numpy()) @ wq.T + lin.bias.detach().numpy(), 1e-5)


def test_quantlinear_bit_w1a1_equals_formula():
    lin, ql = _pair(QuantConfig.preset("bit"))
    assert ql.input_quantizer.bias.shape == (4,)  # BiT's learnable threshold on the layer input
    w = lin.weight.detach().numpy()
    wq = np.abs(w).mean() * sgn(w - w.mean())
    alpha = 2 * np.abs(X.numpy()).mean()  # elastic alpha initialised on this first batch
    close(ql(X), alpha * sgn(X.numpy()) @ wq.T + lin.bias.detach().numpy(), 1e-5)
    close(ql.input_quantizer.alpha, alpha, 1e-6)


def test_quantlinear_unsigned_input_bit():
    lin, ql = _pair(QuantConfig.preset("bit"), bias=False)
    ql_u = QuantLinear(4, 3, bias=False, config=QuantConfig.preset("bit"), input_signed=False)
    ql_u.load_state_dict(lin.state_dict(), strict=False)
    x = X.relu()  # [[.5, 0, 2, 0], [0, .75, 0, 1.5]], mean = 4.75/8
    alpha = 4 * 4.75 / 8  # 2.375: {0, alpha} with threshold alpha/2 = 1.1875 -> only 2.0 and 1.5 pass
    w = lin.weight.detach().numpy()
    wq = np.abs(w).mean() * sgn(w - w.mean())
    xq = alpha * np.array([[0, 0, 1, 0], [0, 0, 0, 1.0]])
    close(ql_u(x), xq @ wq.T, 1e-5)


def test_quantlinear_w1a8_equals_formula():
    lin, ql = _pair(QuantConfig.preset("w1a8"))
    w = lin.weight.detach().numpy()
    wq = np.abs(w).mean() * sgn(w)
    xc = np.clip(X.numpy(), -2.5, 2.5)  # clip init +-2.5; 8-bit symmetric, s = 127 / max|x_c|
    s = 127 / np.abs(xc).max()
    xq = np.round(xc * s) / s
    close(ql(X), xq @ wq.T + lin.bias.detach().numpy(), 1e-5)


def test_quantlinear_w2a8_ternary_weights():
    lin, ql = _pair(QuantConfig(weight_bits=2, weight_method="twn"))
    w = lin.weight.detach().numpy()
    delta = 0.7 * np.abs(w).mean()
    alpha = np.abs(w)[np.abs(w) > delta].mean()
    wq = alpha * ((w > delta).astype(float) - (w < -delta))
    close(ql(X), X.numpy() @ wq.T + lin.bias.detach().numpy(), 1e-5)


@pytest.mark.parametrize("name", ["w1a4", "w1a2", "bit"])
def test_quantlinear_state_dict_round_trip_keeps_learned_scales(name):
    cfg = QuantConfig.preset(name)
    a = QuantLinear(4, 3, config=cfg, input_signed=False)
    a(X.relu())  # initialises the step / alpha
    with torch.no_grad():
        for p in a.input_quantizer.parameters():
            p.add_(0.05)
    b = QuantLinear(4, 3, config=cfg, input_signed=False)
    b.load_state_dict(a.state_dict())
    x = 5 * X.abs()
    close(b(x), a(x))  # b did not re-initialise on this very different batch
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_quantlinear_rejects_a_non_config():
    with pytest.raises(TypeError, match="QuantLinear: config must be a QuantConfig"):
        QuantLinear(4, 3, config="w1a1")


# ----------------------------------------------------------------------------------------------------------
# QuantEmbedding

IDS = torch.tensor([[0, 3, 3], [1, 2, 0]])


def _emb(config):
    torch.manual_seed(1)
    e = nn.Embedding(5, 4)
    qe = QuantEmbedding(5, 4, config)
    qe.load_state_dict(e.state_dict())  # no quantizer state: strict loading works
    return e, qe


def test_quantembedding_is_nn_embedding_at_32_bits():
    e, qe = _emb(QuantConfig())
    assert torch.equal(e(IDS), qe(IDS))


@pytest.mark.parametrize("name", ["w1a8", "bit", "bibert", "w2a8"])
def test_quantembedding_is_per_row(name):
    e, qe = _emb(QuantConfig.preset(name))
    w = e.weight.detach().numpy()
    a = np.abs(w).mean(axis=1, keepdims=True)  # per-row alpha
    if name == "w1a8":
        wq = a * sgn(w)
    elif name == "bit":
        wq = a * sgn(w - w.mean())  # per-row alpha, GLOBAL mean
    elif name == "bibert":
        wq = a * sgn(w - w.mean(axis=1, keepdims=True))
    else:
        delta = 0.7 * a
        above = np.abs(w) > delta
        alpha = (np.abs(w) * above).sum(axis=1, keepdims=True) / above.sum(axis=1, keepdims=True)
        wq = alpha * ((w > delta).astype(float) - (w < -delta))
    close(qe(IDS), wq[IDS.numpy()], 1e-6)


def test_quantembedding_padding_idx_gets_no_gradient():
    qe = QuantEmbedding(5, 4, QuantConfig.preset("w1a8"), padding_idx=0)
    qe(IDS).sum().backward()
    assert torch.equal(qe.weight.grad[0], torch.zeros(4))
    close(qe.weight.grad[3], 2 * np.ones(4))  # id 3 appears twice, identity STE


@pytest.mark.parametrize("name", ["w1a8", "bit", "bibert", "w2a8"])
@pytest.mark.parametrize("padding_idx, by_freq", [(None, False), (0, False), (None, True)])
def test_quantembedding_rows_only_equals_the_whole_quantized_table(name, padding_idx, by_freq):
    """Quantizing only the looked-up rows gives the rows of Q(W) and the same gradient as quantizing W."""
    cfg = QuantConfig.preset(name)
    torch.manual_seed(2)
    qe = QuantEmbedding(7, 4, cfg, padding_idx=padding_idx)
    qe.scale_grad_by_freq = by_freq
    w = qe.weight.detach().clone().requires_grad_()
    ids = torch.tensor([[0, 3, 3, 6], [1, 3, 0, 0]])
    y = qe(ids)
    method = cfg.embedding_method
    wq = Q.twn(w, True) if method == "twn" else Q.bwn(w, True, None if method == "bwn" else method)
    ref = nn.functional.embedding(ids, wq, padding_idx, scale_grad_by_freq=by_freq)
    assert torch.equal(y, ref)
    g = torch.randn(y.shape)
    (gy,) = torch.autograd.grad((y * g).sum(), qe.weight)
    (gr,) = torch.autograd.grad((ref * g).sum(), w)
    close(gy, gr, 1e-6)
    assert torch.equal(gy[2], torch.zeros(4))  # row 2 is not looked up
