"""Quantizers: forward on hand-worked examples, backward against the documented STE formulas (evaluated here
in numpy, not by the code under test), invariants as hypothesis properties, bad input, state-dict round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import close
from hypothesis import given, settings, strategies as st

from binlab.quant import quantizers as Q

FAST = settings(max_examples=40, deadline=None)


def t(values, requires_grad=True, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def grads(y, *inputs, g=None):
    """Gradients of sum(g * y) with respect to ``inputs`` (g defaults to 1, 2, 3, ...)."""
    if g is None:
        g = torch.arange(1, y.numel() + 1, dtype=y.dtype).reshape(y.shape)
    return torch.autograd.grad((y * g).sum(), inputs), g


# hypothesis strategies: small float32 vectors and matrices with "nice" ranges
floats = st.floats(-8, 8, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
vectors = st.lists(floats, min_size=1, max_size=40).map(lambda v: np.array(v, dtype=np.float32))
matrices = st.integers(1, 6).flatmap(
    lambda r: st.lists(st.lists(floats, min_size=5, max_size=5), min_size=r, max_size=r)).map(
    lambda m: np.array(m, dtype=np.float32))
pow2 = st.sampled_from([0.25, 0.5, 2.0, 4.0])  # exact scalings in floating point


# ----------------------------------------------------------------------------------------------------------
# sign

X7 = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]


def test_ste_sign_forward_hand_worked():
    close(Q.ste_sign(t(X7)), [-1, -1, -1, 1, 1, 1, 1])  # sign(0) = +1


@pytest.mark.parametrize("clip, mask", [(1.0, [0, 1, 1, 1, 1, 1, 0]),  # |x| <= 1, boundary included
                                        (0.5, [0, 0, 1, 1, 1, 0, 0]),
                                        (None, [1, 1, 1, 1, 1, 1, 1])])  # identity STE
def test_ste_sign_backward_is_the_clipped_ste(clip, mask):
    x = t(X7)
    (gx,), g = grads(Q.ste_sign(x, clip), x)
    close(gx, g.numpy() * np.array(mask))


def test_ste_sign_module_and_registry_match_function():
    x = t(X7)
    close(Q.SteSign(0.5)(x), Q.ste_sign(x, 0.5))
    xi = t(X7)
    (gi,), g = grads(Q.get("ste_sign_identity")(xi), xi)
    close(gi, g)


@FAST
@given(vectors, pow2)
def test_ste_sign_properties(v, c):
    x = torch.from_numpy(v)
    y = Q.ste_sign(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}  # two values, never 0
    close(y, np.where(v >= 0, 1.0, -1.0))
    close(Q.ste_sign(x * c), y)  # invariant to positive scaling
    close(Q.ste_sign(y), y)  # +-1 is a fixed point
    xg = x.clone().requires_grad_()
    (gx,), g = grads(Q.ste_sign(xg), xg)
    close(gx, g.numpy() * (np.abs(v) <= 1))


def test_ste_sign_all_zero_is_all_plus_one():
    close(Q.ste_sign(torch.zeros(3, 4)), np.ones((3, 4)))


# ----------------------------------------------------------------------------------------------------------
# bool

XB = [-1.5, -1.0, -0.25, 0.0, 0.25, 1.0, 1.5]


@pytest.mark.parametrize("zero_to_one, expected", [(False, [0, 0, 0, 0, 1, 1, 1]),  # code: x > 0
                                                   (True, [0, 0, 0, 1, 1, 1, 1])])  # paper: x >= 0
def test_ste_bool_forward_hand_worked(zero_to_one, expected):
    close(Q.ste_bool(t(XB), zero_to_one=zero_to_one), expected)


@pytest.mark.parametrize("strict, mask", [(False, [0, 1, 1, 1, 1, 1, 0]),  # paper: |x| <= 1
                                          (True, [0, 0, 1, 1, 1, 0, 0])])  # code: -1 < x < 1
def test_ste_bool_backward(strict, mask):
    x = t(XB)
    (gx,), g = grads(Q.ste_bool(x, strict_window=strict), x)
    close(gx, g.numpy() * np.array(mask))


@FAST
@given(vectors)
def test_ste_bool_properties(v):
    y = Q.SteBool()(torch.from_numpy(v))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    close(y, (v > 0).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# BWN (BinaryBERT), BiT and BiBERT weights

W = [[1.0, -2.0, 3.0, 0.0],
     [-1.0, -1.0, 2.0, 4.0]]
# mean|W| = 14/8 = 1.75; row means of |W|: 6/4 = 1.5 and 8/4 = 2; global mean of W = 6/8 = 0.75;
# row means of W: 0.5 and 1.


@pytest.mark.parametrize("per_row, centering, expected", [
    (False, None, [[1.75, -1.75, 1.75, 1.75], [-1.75, -1.75, 1.75, 1.75]]),  # sign(0) = +1
    (True, None, [[1.5, -1.5, 1.5, 1.5], [-2, -2, 2, 2]]),
    # BiT: W - 0.75 = [[.25, -2.75, 2.25, -.75], [-1.75, -1.75, 1.25, 3.25]], alpha of the UN-centred W
    (False, "bit", [[1.75, -1.75, 1.75, -1.75], [-1.75, -1.75, 1.75, 1.75]]),
    (True, "bit", [[1.5, -1.5, 1.5, -1.5], [-2, -2, 2, 2]]),  # per-row alpha, global mean (BiT's embedding)
    # BiBERT: W - rowmean = [[.5, -2.5, 2.5, -.5], [-2, -2, 1, 3]]
    (True, "bibert", [[1.5, -1.5, 1.5, -1.5], [-2, -2, 2, 2]]),
])
def test_bwn_forward_hand_worked(per_row, centering, expected):
    close(Q.bwn(t(W), per_row=per_row, centering=centering), expected)
    close(Q.BWN(per_row, centering)(t(W)), expected)


@pytest.mark.parametrize("per_row, centering", [(False, None), (True, None), (False, "bit"), (True, "bit")])
def test_bwn_and_bit_backward_is_identity(per_row, centering):
    w = t(W)
    (gw,), g = grads(Q.bwn(w, per_row, centering), w)
    close(gw, g)


def test_bibert_backward_hand_worked():
    # M = 1{|W - rowmean| <= 1} = [[1,0,0,1],[0,0,1,0]] (|1| <= 1: the clamp's boundary passes);
    # M*g = [[1,0,0,4],[0,0,7,0]]; minus its row means 1.25 and 1.75.
    w = t(W)
    (gw,), _ = grads(Q.bwn(w, per_row=True, centering="bibert"), w)
    close(gw, [[-0.25, -1.25, -1.25, 2.75], [-1.75, -1.75, 5.25, -1.75]])


@FAST
@given(matrices)
def test_bibert_backward_equals_the_codes_detach_trick(m):
    """BiBERT's code: Wb.detach() - clamp(Wc).detach() + clamp(Wc), differentiated by autograd."""
    w1 = torch.from_numpy(m).requires_grad_()
    w2 = torch.from_numpy(m.copy()).requires_grad_()
    g = torch.randn(m.shape, generator=torch.Generator().manual_seed(0))
    (ga,) = torch.autograd.grad((Q.bwn(w1, True, "bibert") * g).sum(), w1)
    wc = w2 - w2.mean(dim=-1, keepdim=True)
    clipped = torch.clamp(wc, -1, 1)
    ref = clipped - clipped.detach()  # only the gradient of the trick matters here
    (gb,) = torch.autograd.grad((ref * g).sum(), w2)
    close(ga, gb, 1e-5)


@FAST
@given(matrices, pow2, st.sampled_from([None, "bit", "bibert"]), st.booleans())
def test_bwn_properties(m, c, centering, per_row):
    w = torch.from_numpy(m)
    y = Q.bwn(w, per_row, centering)
    rows = y if per_row else y.reshape(1, -1)
    for r in rows:
        assert r.unique().numel() <= 2  # binary: one +alpha and one -alpha per scale group
    alpha = np.abs(m).mean(axis=1, keepdims=True) if per_row else np.abs(m).mean()
    close(y.abs(), np.broadcast_to(alpha, m.shape), 1e-5)  # |q| = alpha = mean|W| (un-centred)
    if np.abs(m).sum() > 0:
        assert float(y.abs().max()) > 0  # alpha > 0
    close(Q.bwn(w * c, per_row, centering), c * y, 1e-5)  # scale equivariance


# ----------------------------------------------------------------------------------------------------------
# TWN

WT = [[0.1, -1.0, 2.0, -0.3],
      [0.5, 0.5, -0.5, 0.0]]


@pytest.mark.parametrize("per_row, expected", [
    # mean|W| = 4.9/8 = 0.6125, Delta = 0.42875; above: 1, 2, .5, .5, .5 -> alpha = 4.5/5 = 0.9
    (False, [[0, -0.9, 0.9, 0], [0.9, 0.9, -0.9, 0]]),
    # row 0: Delta = 0.7*0.85 = 0.595, alpha = (1+2)/2 = 1.5; row 1: Delta = 0.2625, alpha = 0.5
    (True, [[0, -1.5, 1.5, 0], [0.5, 0.5, -0.5, 0]]),
])
def test_twn_forward_hand_worked(per_row, expected):
    close(Q.twn(t(WT), per_row), expected)
    close(Q.TWN(per_row)(t(WT)), expected)


def test_twn_backward_is_identity():
    w = t(WT)
    (gw,), g = grads(Q.twn(w, per_row=True), w)
    close(gw, g)


@FAST
@given(matrices, pow2, st.booleans())
def test_twn_properties(m, c, per_row):
    w = torch.from_numpy(m)
    y = Q.twn(w, per_row)
    rows = y if per_row else y.reshape(1, -1)
    for r in rows:
        assert r.unique().numel() <= 3
    groups = m if per_row else m.reshape(1, -1)
    for r, q in zip(groups, rows):  # reference: Delta = 0.7 mean|W|, alpha = mean |W| above Delta
        delta = 0.7 * np.abs(r).mean()
        above = np.abs(r) > delta
        alpha = np.abs(r)[above].mean() if above.any() else 0.0
        close(q, alpha * (np.where(r > delta, 1, 0) - np.where(r < -delta, 1, 0)), 1e-5)
    close(Q.twn(w * c, per_row), c * y, 1e-5)


# ----------------------------------------------------------------------------------------------------------
# uniform k-bit with a PACT clip (BinaryBERT)


def test_uniform_sym_hand_worked():
    # clip [-2.5, 2.5] -> x_c = [-2.5, -1, .2, .5, 1.2, 2.5]; s = 3/2.5 = 1.2;
    # x_c*s = [-3, -1.2, .24, .6, 1.44, 3] -> round [-3, -1, 0, 1, 1, 3] -> / 1.2
    x = t([-3.0, -1.0, 0.2, 0.5, 1.2, 3.0])
    clip = t([-2.5, 2.5])
    y = Q.uniform(x, clip, num_bits=3, symmetric=True)
    close(y, [-2.5, -5 / 6, 0, 5 / 6, 5 / 6, 2.5])
    (gx, gc), _ = grads(y, x, clip)
    close(gx, [0, 2, 3, 4, 5, 0])  # straight through strictly inside (c-, c+)
    close(gc, [1, 6])  # PACT: dc- = sum g over {x <= c-}, dc+ = sum g over {x >= c+}


def test_uniform_asym_hand_worked():
    # x_c = [-2.5, -.2, .4, 1, 2.5]; b = -2.5, a = 5; (x_c - b)/a*3 = [0, 1.38, 1.74, 2.1, 3]
    # -> round [0, 1, 2, 2, 3] -> /3*5 - 2.5
    x = t([-3.0, -0.2, 0.4, 1.0, 3.0])
    clip = t([-2.5, 2.5])
    y = Q.uniform(x, clip, num_bits=2, symmetric=False)
    close(y, [-2.5, -5 / 6, 5 / 6, 5 / 6, 2.5])
    (gx, gc), _ = grads(y, x, clip)
    close(gx, [0, 2, 3, 4, 0])
    close(gc, [1, 5])


def test_uniform_module_learns_its_clip():
    m = Q.UniformQuantizer(num_bits=8, symmetric=True, clip_init=1.0)
    assert isinstance(m.clip_val, torch.nn.Parameter)
    close(m.clip_val, [-1.0, 1.0])
    x = t([-3.0, 0.1, 2.0])
    m(x).sum().backward()
    close(m.clip_val.grad, [1.0, 1.0])
    fixed = Q.UniformQuantizer(num_bits=8, clip_init=1.0, learnable=False)
    assert "clip_val" in dict(fixed.named_buffers()) and not list(fixed.parameters())


@FAST
@given(vectors, st.integers(2, 5), st.booleans(), st.floats(0.5, 6))
def test_uniform_properties(v, bits, symmetric, c):
    x = torch.from_numpy(v).requires_grad_()
    clip = torch.tensor([-c, c], requires_grad=True)
    y = Q.uniform(x, clip, bits, symmetric)
    assert y.unique().numel() <= 2 ** bits
    xc = np.clip(v, -c, c)
    lo, hi = (-np.abs(xc).max(), np.abs(xc).max()) if symmetric else (xc.min(), xc.max())
    assert float(y.detach().min()) >= lo - 1e-5 and float(y.detach().max()) <= hi + 1e-5  # within the clipped range
    if symmetric:  # reference forward, evaluated in numpy
        n = 2 ** (bits - 1) - 1
        mx = np.abs(xc).max()
        ref = np.round(xc * (n / mx)) / (n / mx) if mx > 0 else xc
        close(y, ref, 1e-4)
    (gx, gc), g = grads(y, x, clip)
    gn = g.numpy()
    c32 = np.float32(c)
    close(gx, gn * ((v > -c32) & (v < c32)))
    close(gc, [gn[v <= -c32].sum(), gn[v >= c32].sum()], 1e-4)


def test_uniform_degenerate_inputs_give_no_nan():
    close(Q.uniform(torch.zeros(5), 2.5, 8, True), np.zeros(5))
    close(Q.uniform(torch.full((4,), 0.7), 2.5, 8, False), np.full(4, 0.7))  # constant: returned as is


# ----------------------------------------------------------------------------------------------------------
# LSQ (BinaryBERT 4-bit)


def test_lsq_sym_hand_worked():
    # 3 bits: Qn = -4, Qp = 3, s = 0.5; v = x/s = [-6, -2.2, .4, 1.4, 2.8, 4]
    x = t([-3.0, -1.1, 0.2, 0.7, 1.4, 2.0])
    s = t(0.5)
    y = Q.lsq(x, s, num_bits=3, symmetric=True)
    close(y, [-2.0, -1.0, 0.0, 0.5, 1.5, 1.5])
    (gx, gs), _ = grads(y, x, s)
    close(gx, [0, 2, 3, 4, 5, 0])  # 1{Qn <= v <= Qp}
    # ds: [Qn, round(v)-v ..., Qp] = [-4, .2, -.4, -.4, .2, 3]; sum(ds*g) = 12.6; scale 1/sqrt(6*3)
    close(gs, 12.6 / math.sqrt(18), 1e-5)


def test_lsq_asym_hand_worked():
    # 2 bits: Qn = 0, Qp = 3, s = 0.5; x - min = [0, .4, 1.1, 1.3, 2]; v = [0, .8, 2.2, 2.6, 4]
    x = t([-1.0, -0.6, 0.1, 0.3, 1.0])
    s = t(0.5)
    y = Q.lsq(x, s, num_bits=2, symmetric=False)
    close(y, [-1.0, -0.5, 0.0, 0.5, 0.5])
    (gx, gs), _ = grads(y, x, s)
    close(gx, [1, 2, 3, 4, 0])  # no gradient through the minimum
    # ds = [0, .2, -.2, .4, 3]; sum(ds*g) = 16.4; scale 1/sqrt(5*3)
    close(gs, 16.4 / math.sqrt(15), 1e-5)


def lsq_reference(v, s, qn, qp, subtract_min):
    """The LSQ forward and STE gradients, in numpy (methods.md §2.3)."""
    lo = v.min() if subtract_min else 0.0
    u = (v - lo) / s
    y = np.clip(np.round(u), qn, qp) * s + lo
    small, big = u < qn, u > qp
    mid = ~small & ~big
    dx = mid.astype(np.float64)
    ds = np.where(small, qn, np.where(big, qp, np.round(u) - u))
    return y, dx, ds, 1.0 / math.sqrt(v.size * qp)


@FAST
@given(vectors, st.integers(2, 5), st.booleans(), st.floats(0.05, 3))
def test_lsq_properties(v, bits, symmetric, step):
    x = torch.from_numpy(v).requires_grad_()
    s = torch.tensor(step, dtype=torch.float32, requires_grad=True)
    y = Q.lsq(x, s, bits, symmetric)
    assert y.unique().numel() <= 2 ** bits
    qn, qp = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    v64 = v.astype(np.float64)
    yr, dx, ds, scale = lsq_reference(v64, np.float32(step), qn, qp, not symmetric)
    (gx, gs), g = grads(y, x, s)
    gn = g.numpy().astype(np.float64)
    # exclude exact rounding ties (x/s on a .5 boundary), where float32 and float64 may round differently
    frac = np.abs(((v64 - (v64.min() if not symmetric else 0)) / np.float32(step)) % 1 - 0.5)
    if frac.min() > 1e-3:
        close(y, yr, 1e-4)
        close(gs, (ds * gn).sum() * scale, 1e-3)
    close(gx, gn * dx)


def test_lsq_module_initialises_on_first_use():
    x = t([-3.0, -1.1, 0.2, 0.7, 1.4, 2.0], requires_grad=False)  # mean|x| = 8.4/6 = 1.4
    m = Q.LSQ(num_bits=3, symmetric=True)
    assert not bool(m.initialized)
    m(x)
    assert bool(m.initialized)
    close(m.step, 2 * 1.4 / math.sqrt(3), 1e-6)  # 2 mean|x| / sqrt(Qp)
    m2 = Q.LSQ(num_bits=2, symmetric=False)
    m2(x)
    close(m2.step, 4 * 1.4 / math.sqrt(3), 1e-6)  # 4 mean|x| / sqrt(Qp), Qp = 2^2 - 1
    m(x * 10)
    close(m.step, 2 * 1.4 / math.sqrt(3), 1e-6)  # only once


# ----------------------------------------------------------------------------------------------------------
# BiT's elastic binarization


def test_elastic_signed_hand_worked():
    x = t([-2.0, -0.3, 0.0, 0.25, 0.75])
    a = t(0.5)
    y = Q.elastic(x, a, num_bits=1, signed=True)
    close(y, [-0.5, -0.5, 0.5, 0.5, 0.5])  # sign(0) = +1
    (gx, ga), _ = grads(y, x, a)
    close(gx, [0, 2, 3, 4, 0])  # v = x/alpha = [-4, -.6, 0, .5, 1.5]: 1{-1 <= v <= 1}
    close(ga, (-1 - 2 + 3 + 4 + 5) / math.sqrt(5), 1e-6)  # sum(sign(x) g) / sqrt(N)


def test_elastic_unsigned_hand_worked():
    x = t([-0.5, 0.2, 0.5, 0.6, 0.9, 1.5])
    a = t(1.0)
    y = Q.elastic(x, a, num_bits=1, signed=False)
    close(y, [0, 0, 0, 1, 1, 1])  # 1 iff x/alpha > 1/2 (round half to even: 0.5 -> 0)
    (gx, ga), _ = grads(y, x, a)
    close(gx, [0, 2, 3, 4, 5, 0])  # 1{0 <= v <= 1}
    # dalpha: [0 (v<0), -.2, -.5, .4, .1, 1 (v>1)] . g = 6.2, over sqrt(6)
    close(ga, 6.2 / math.sqrt(6), 1e-6)


def test_elastic_alpha_is_clamped_and_gradient_passes_through():
    x = t([0.3, -0.2])
    a = t(-1.0)  # a learned alpha that went negative: the forward uses 1e-5 (BiT's code)
    y = Q.elastic(x, a)
    close(y, [1e-5, -1e-5])
    (ga,), _ = grads(y, a)
    close(ga, (1 * 1 - 1 * 2) / math.sqrt(2), 1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_elastic_multibit_is_lsq(signed):
    x = t([-3.0, -1.1, 0.2, 0.7, 1.4, 2.0])
    x2 = t([-3.0, -1.1, 0.2, 0.7, 1.4, 2.0])
    a, s = t(0.5), t(0.5)
    y1, y2 = Q.elastic(x, a, num_bits=2, signed=signed), Q.lsq(x2, s, num_bits=2, symmetric=signed)
    close(y1, y2)
    (g1, ga), _ = grads(y1, x, a)
    (g2, gs), _ = grads(y2, x2, s)
    close(g1, g2)
    close(ga, gs)


@pytest.mark.parametrize("signed, factor", [(True, 2.0), (False, 4.0)])
def test_elastic_module_init_and_learned_threshold(signed, factor):
    x = t([[-1.0, 0.5, 2.0], [0.5, -0.25, 1.0]], requires_grad=False)  # mean|x| = 5.25/6 = 0.875
    m = Q.Elastic(num_bits=1, signed=signed, num_features=3)
    close(m.bias, [0, 0, 0])  # beta init 0
    m(x)
    close(m.alpha, factor * 0.875, 1e-6)  # 2 mean|x| (signed) / 4 mean|x| (unsigned) on the first forward
    with torch.no_grad():
        m.alpha.fill_(1.0)
        m.bias.copy_(torch.tensor([1.5, 0.0, -1.5]))
    y = m(x)  # BiT's code adds the shift: q(x + b), i.e. the paper's threshold beta = -b
    xb = x.numpy() + np.array([1.5, 0.0, -1.5])  # [[.5, .5, .5], [2, -.25, -.5]]
    if signed:
        close(y, np.where(xb >= 0, 1.0, -1.0))
    else:
        close(y, (np.clip(np.round(xb), 0, 1)))
    g = torch.arange(1.0, 7.0).reshape(2, 3)
    (gb,) = torch.autograd.grad((y * g).sum(), m.bias)
    window = (xb >= -1) & (xb <= 1) if signed else (xb >= 0) & (xb <= 1)
    close(gb, (g.numpy() * window).sum(axis=0))  # the shift gets the input's STE gradient, summed per channel


@pytest.mark.parametrize("bits, signed, expected", [(3, True, 2 * 1.4 / math.sqrt(3)),  # Qp = 3
                                                    (2, False, 4 * 1.4 / math.sqrt(3)),  # Qp = 2^2 - 1
                                                    (1, False, 4 * 1.4)])
def test_elastic_multibit_init_divides_by_sqrt_qp(bits, signed, expected):
    m = Q.Elastic(num_bits=bits, signed=signed)
    m(torch.tensor([-3.0, -1.1, 0.2, 0.7, 1.4, 2.0]))  # mean|x| = 1.4
    close(m.alpha, expected, 1e-6)


@FAST
@given(vectors, st.integers(1, 4), st.booleans(), st.floats(0.05, 3))
def test_elastic_properties(v, bits, signed, alpha):
    x = torch.from_numpy(v).requires_grad_()
    a = torch.tensor(alpha, dtype=torch.float32, requires_grad=True)
    y = Q.elastic(x, a, bits, signed)
    assert y.unique().numel() <= 2 ** bits
    if bits == 1:
        a32 = np.float32(alpha)
        vals = {-a32, a32} if signed else {0.0, a32}
        assert set(np.float32(y.detach().numpy()).tolist()) <= vals
        (gx, ga), g = grads(y, x, a)
        u = v / a32
        gn = g.numpy().astype(np.float64)
        if signed:
            close(gx, gn * ((u >= -1) & (u <= 1)))
            close(ga, (np.where(v >= 0, 1.0, -1.0) * gn).sum() / math.sqrt(v.size), 1e-4)
        else:
            close(gx, gn * ((u >= 0) & (u <= 1)))


# ----------------------------------------------------------------------------------------------------------
# data-initialised quantizers survive a state-dict round trip


@pytest.mark.parametrize("make", [lambda: Q.LSQ(4, True), lambda: Q.LSQ(4, False),
                                  lambda: Q.Elastic(1, True, num_features=3), lambda: Q.Elastic(2, False)])
def test_learned_scale_state_dict_round_trip_without_reinit(make):
    gen = torch.Generator().manual_seed(0)
    m = make()
    m(torch.randn(4, 3, generator=gen))
    name = m.scale_name
    with torch.no_grad():
        getattr(m, name).fill_(0.123)  # "trained"
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    sd = m.state_dict()
    assert "initialized" in sd and bool(sd["initialized"])
    fresh = make()
    fresh.load_state_dict(sd)
    x = 10 * torch.randn(4, 3, generator=gen)
    close(fresh(x), m(x))  # same function, and the first forward after loading did not re-initialise
    close(getattr(fresh, name), 0.123)
    if getattr(m, "bias", None) is not None:
        close(fresh.bias, [0.1, -0.2, 0.3])


def test_uniform_clip_state_dict_round_trip():
    m = Q.UniformQuantizer(8, True)
    with torch.no_grad():
        m.clip_val.copy_(torch.tensor([-1.25, 3.0]))
    fresh = Q.UniformQuantizer(8, True)
    fresh.load_state_dict(m.state_dict())
    close(fresh.clip_val, [-1.25, 3.0])


def test_all_zero_first_batch_gives_a_positive_scale():
    for m in (Q.LSQ(4, True), Q.Elastic(1, True), Q.Elastic(1, False)):
        y = m(torch.zeros(2, 3))
        assert torch.isfinite(y).all() and float(getattr(m, m.scale_name).detach()) > 0  # alpha > 0


# ----------------------------------------------------------------------------------------------------------
# bad input, for every registered quantizer

REGISTERED = Q.available()


def test_registry_knows_every_quantizer():
    assert REGISTERED == sorted(["ste_sign", "ste_sign_identity", "ste_bool", "bwn", "bwn_bit", "bwn_bibert", "twn",
                                 "uniform_sym", "uniform_asym", "lsq_sym", "lsq_asym", "elastic_signed",
                                 "elastic_unsigned"])
    assert isinstance(Q.get("lsq_asym", num_bits=2), Q.LSQ) and Q.get("lsq_asym", num_bits=2).num_bits == 2
    assert Q.get("bwn_bibert").centering == "bibert"
    with pytest.raises(ValueError, match="unknown quantizer 'nope'.*ste_sign"):
        Q.get("nope")


@pytest.mark.parametrize("name", REGISTERED)
def test_all_zero_input_gives_no_nan(name):
    y = Q.get(name)(torch.zeros(3, 4))
    assert torch.isfinite(y).all()
    if name.startswith("ste_sign"):
        close(y, np.ones((3, 4)))


def _prefix(name: str) -> str:  # the name the error message uses
    return {"ste_sign_identity": "ste_sign", "bwn_bit": "bwn", "bwn_bibert": "bwn"}.get(name, name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", REGISTERED)
def test_nan_and_inf_raise_naming_the_quantizer(name, bad):
    x = torch.ones(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=rf"^{_prefix(name)}: input contains"):
        Q.get(name)(x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
@pytest.mark.parametrize("name", REGISTERED)
def test_non_floating_dtypes_are_rejected(name, dtype):
    with pytest.raises(TypeError, match=rf"^{_prefix(name)}: expected a floating-point tensor"):
        Q.get(name)(torch.ones(2, 3, dtype=dtype))


def test_non_tensor_is_rejected():
    with pytest.raises(TypeError, match="ste_sign: expected a torch.Tensor"):
        Q.ste_sign([1.0, -1.0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_work(dtype):
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=dtype)
    for name in REGISTERED:
        y = Q.get(name)(x.reshape(1, 3))
        assert y.dtype == dtype and torch.isfinite(y).all(), name


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="ste_sign: clip_value"):
        Q.SteSign(clip_value=0)
    with pytest.raises(ValueError, match="bwn: centering"):
        Q.bwn(torch.ones(2, 2), centering="row")
    with pytest.raises(ValueError, match="bwn: per_row needs"):
        Q.bwn(torch.ones(3), per_row=True)
    with pytest.raises(ValueError, match="uniform_sym: num_bits"):
        Q.UniformQuantizer(num_bits=1)
    with pytest.raises(ValueError, match="uniform_asym: the clip range"):
        Q.uniform(torch.ones(3), torch.tensor([1.0, -1.0]), 8, False)
    with pytest.raises(ValueError, match="lsq_sym: num_bits"):
        Q.LSQ(num_bits=1, symmetric=True)
    with pytest.raises(ValueError, match="lsq_sym: step is NaN"):
        Q.lsq(torch.ones(3), torch.tensor(float("nan")), 4)
    with pytest.raises(ValueError, match="elastic_signed: num_features"):
        Q.Elastic(num_features=0)
    with pytest.raises(ValueError, match="elastic_unsigned: the last dimension"):
        Q.Elastic(signed=False, num_features=4)(torch.ones(2, 3))
    with pytest.raises(ValueError, match="bwn: mean= is BiT's global mean"):
        Q.bwn(torch.ones(2, 2), per_row=True, centering="bibert", mean=torch.tensor(0.0))
    with pytest.raises(ValueError, match="twn: got an empty tensor"):
        Q.twn(torch.ones(0, 3))


def test_finite_checks_can_be_switched_off_and_come_back():
    x = torch.tensor([0.5, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        Q.ste_sign(x)
    with Q.finite_checks(False):
        Q.ste_sign(x)  # no error: the caller promised finite inputs
    with pytest.raises(ValueError, match="NaN"):
        Q.ste_sign(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("closed", [True, False])
def test_keep_inside_equals_the_boolean_mask_at_the_interval_ends(dtype, closed):
    """The one-pass STE mask (hardtanh_backward with the ends moved one float) must treat values exactly at,
    and one float beyond, the ends as the plain comparison does."""
    from binlab.quant.quantizers import _keep_inside

    lo, hi = -1.0, 2.0
    ends = torch.tensor([lo, hi], dtype=dtype)
    near = torch.cat([ends, torch.nextafter(ends, ends + 1), torch.nextafter(ends, ends - 1)])
    x = torch.cat([near, torch.randn(200, dtype=dtype) * 2, torch.tensor([0.0, -0.0], dtype=dtype)])
    g = torch.randn_like(x)
    mask = ((x >= lo) & (x <= hi)) if closed else ((x > lo) & (x < hi))
    expected = torch.where(mask, g, torch.zeros_like(g))
    assert torch.equal(_keep_inside(g, x, lo, hi, closed=closed), expected)
