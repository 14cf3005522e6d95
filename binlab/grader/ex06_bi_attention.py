"""Exercise 6 (``exercises/06_bi_attention.ipynb``): BiBERT's Bi-Attention and direction-matching distillation.

Questions (torch tensors in; attention maps and projections are (B, H, L, L) and (B, H, L, d), the attention mask
(B, L) with 1 = real token, 0 = padding):
* q1 ``map_entropy(A, attention_mask)``: the entropy of a binarized {0, 1} attention map, per head: H(p) of the
  share of ones p over each query row's REAL keys, averaged over the real query rows;
* q2 ``BoolSTE``: a ``torch.autograd.Function`` for bool(x) = 1{x > 0} (bool(0) = 0, BiBERT's code) with the
  straight-through gradient 1{|x| <= 1};
* q3 ``bi_attention(q, k, v, attention_mask)``: Bi-Attention's context, bool(sign(Q) sign(K)^T / sqrt(d) + mask)
  times sign(V), no softmax;
* q4 ``dmd_distance(f_s, f_t)``: one DMD term, || S / ||S||_F - T / ||T||_F ||_F of the similarity matrices
  S = F_s F_s^T / sqrt(d) and T = F_t F_t^T / sqrt(d), each norm over the whole tensor, not squared.

The library versions are :func:`binlab.analysis.entropy.row_entropy` / ``mean_over_rows``,
:func:`binlab.quant.quantizers.ste_bool`, the ``"bool"`` attention of :class:`binlab.model.BertSelfAttention` and
:func:`binlab.methods.distill.direction_distance` of :func:`~binlab.methods.distill.similarity_matrix`; the checks
compare with them.
"""

from __future__ import annotations

import math

import torch

from binlab.analysis import entropy as H
from binlab.grader.checks import generator, one_number, randn, show, tensor_of_shape
from binlab.grader.core import Check, CheckFailed, Exercise, Mistake, NotAttempted, Question, call, describe_error
from binlab.methods import distill as D
from binlab.model import MASK_VALUE
from binlab.quant import quantizers as Q

__all__ = ["q1", "q2", "q3", "q4", "EXERCISE", "MISTAKES", "map_entropy", "BoolSTE", "bi_attention", "dmd_distance"]


# ------------------------------------------------------------------------ reference solutions
def map_entropy(A, attention_mask):
    """The entropy of a binarized attention map, per head, in bits per entry (BiBERT's argument for bool()).

    A: (B, H, L, L), 1 where a query (row) attends to a key (column), else 0; attention_mask: (B, L), 1 = real token,
    0 = padding. For every REAL query row, p = (ones among the row's real keys) / (number of real keys) and

        H(p) = - p log2 p - (1 - p) log2 (1 - p)        with 0 log 0 = 0, so H(0) = H(1) = 0

    Return the mean of H(p) over the real query rows of each head: a tensor of shape (H,). Padded keys are not
    counted in p and padded query rows are not averaged. Example: one sentence of 3 real tokens and 1 padded one,
    one head, rows [1, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 0], (the padded row): p = 2/3, 1, 1/3, so
    H = (0.9183 + 0 + 0.9183) / 3 = 0.6122.
    """
    real = attention_mask.bool()
    ones = ((A != 0) & real[:, None, None, :]).sum(-1).double()  # (B, H, L): ones among the real keys
    p = ones / real.sum(-1).double()[:, None, None]
    h = -(torch.where(p > 0, p * torch.log2(p), 0.0) + torch.where(p < 1, (1 - p) * torch.log2(1 - p), 0.0))
    rows = real[:, None, :].double()  # 1 for a real query row
    return (h * rows).sum((0, 2)) / rows.sum()


class BoolSTE(torch.autograd.Function):
    """BiBERT's bool with a straight-through gradient. Use it as ``BoolSTE.apply(x)``.

        forward:   bool(x) = 1 if x > 0 else 0        (bool(0) = 0, as BiBERT's code; a float tensor)
        backward:  dL/dx = dL/dbool * 1{|x| <= 1}     (the closed window: |x| = 1 passes)

    Example: x = [-2, -1, -0.5, 0, 0.5, 1, 2], dL/dbool = 1: forward [0, 0, 0, 0, 1, 1, 1],
    dL/dx = [0, 1, 1, 1, 1, 1, 0].
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def bi_attention(q, k, v, attention_mask):
    """BiBERT's Bi-Attention: the context vectors of binary queries, keys and values, without softmax.

    q, k, v: (B, H, L, d) full-precision projections; attention_mask: (B, L), 1 = real token, 0 = padding.

        sign(x) = +1 if x >= 0 else -1                       (sign(0) = +1, binlab's convention)
        scores  = sign(q) sign(k)^T / sqrt(d) + mask         mask = -10000 on padded keys, 0 elsewhere
        A       = bool(scores) = 1{scores > 0}               bool(0) = 0 (BiBERT's code); no softmax
        context = A @ sign(v)                                (B, H, L, d); no 1/k normalisation

    Example (B = H = 1, d = 1, L = 2, no padding): q = [[1], [-1]], k = [[2], [-3]], v = [[0.5], [-0.5]]:
    scores = [[1, -1], [-1, 1]], A = [[1, 0], [0, 1]], context = [[1], [-1]].
    """
    d = q.shape[-1]
    sq, sk, sv = (torch.where(x >= 0, 1.0, -1.0).to(q.dtype) for x in (q, k, v))
    mask = (1.0 - attention_mask[:, None, None, :].to(q.dtype)) * -10000.0
    scores = sq @ sk.transpose(-1, -2) / d ** 0.5 + mask
    return BoolSTE.apply(scores) @ sv


def dmd_distance(f_s, f_t):
    """One term of BiBERT's direction-matching distillation (DMD) for one tensor, e.g. one layer's queries.

    f_s, f_t: (B, H, L, d), the student's and the teacher's full-precision projections (before sign()).

        S = f_s f_s^T / sqrt(d),   T = f_t f_t^T / sqrt(d)             (B, H, L, L) similarity matrices
        D = || S / ||S||_F  -  T / ||T||_F ||_F                        one Frobenius norm over the WHOLE tensor
                                                                      (batch and heads included); not squared

    Return D as a 0-d tensor that keeps the gradient (the student is trained on it). Example: with f_t = 2 f_s the
    distance is 0 (only the direction counts); one 1 x 1 x 2 x 1 tensor f_s = [1, 0], f_t = [0, 1]:
    S = [[1, 0], [0, 0]], T = [[0, 0], [0, 1]], D = sqrt(2) = 1.4142.
    """
    d = f_s.shape[-1]
    S = f_s @ f_s.transpose(-1, -2) / d ** 0.5
    T = f_t @ f_t.transpose(-1, -2) / d ** 0.5
    return torch.linalg.vector_norm(S / torch.linalg.vector_norm(S) - T / torch.linalg.vector_norm(T))


# ------------------------------------------------------------------------------ shared helpers
def _mask(lengths, L):
    return (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()


def _same(a, b, rtol=1e-6, atol=1e-9):
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def _sign(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# ------------------------------------------------------------------------------- q1 helpers
def _library_entropy(A, mask):
    return H.mean_over_rows(H.row_entropy(A, mask), mask)


def _h(p):
    return -(torch.where(p > 0, p * torch.log2(p), 0.0) + torch.where(p < 1, (1 - p) * torch.log2(1 - p), 0.0))


def _random_map(seed, B, heads, L, density=0.5):
    return (torch.rand(B, heads, L, L, generator=generator(seed)) < density).long()


def _check_entropy(fn, A, mask, on):
    want = _library_entropy(A, mask)
    got = tensor_of_shape(call(fn, A.clone(), mask.clone(), on=on), "map_entropy", on, (A.shape[1],))
    if _same(got, want, rtol=1e-5, atol=1e-7):
        return
    real = mask.bool()
    L = A.shape[-1]
    rows = real[:, None, :].double()
    msg = f"map_entropy on {on}: expected {show(want, 4)} (one mean per head), got {show(got, 4)}."
    p_all = (A != 0).sum(-1).double() / L  # every key counted, padded ones too
    p_real = ((A != 0) & real[:, None, None, :]).sum(-1).double() / real.sum(-1).double()[:, None, None]
    every_row = lambda h: h.mean((0, 2))  # noqa: E731
    real_rows = lambda h: (h * rows).sum((0, 2)) / rows.sum()  # noqa: E731
    if torch.isnan(got).any():
        msg += (" You return NaN: an all-ones or all-zero row has p = 1 or 0, and p log2 p is then 0 * (-inf). "
                "Use 0 log 0 = 0: torch.where(p > 0, p * torch.log2(p), 0.0) (and the same for 1 - p).")
    elif _same(got, real_rows(_h(p_all)), 1e-5, 1e-7) or _same(got, every_row(_h(p_all)), 1e-5, 1e-7):
        msg += (" You count the padded keys: p is the share of ones over the row's REAL keys (mask the keys "
                "with attention_mask and divide by their number, not by L).")
    elif _same(got, every_row(_h(p_real)), 1e-5, 1e-7):
        msg += (" You average over the padded query rows too: a padded token's row is not a real query; average "
                "over the rows where attention_mask is 1.")
    elif _same(got, real_rows(_h(p_real)) * math.log(2), 1e-5, 1e-7):
        msg += " That is the entropy in nats (natural log): the entropy of a binary map is in bits, log2."
    else:
        per_map = torch.stack([_h(((A[:, h] != 0) & real[:, None, :] & real[:, :, None]).sum().double()
                                  / (real.sum(-1).double() ** 2).sum()) for h in range(A.shape[1])])
        if _same(got, per_map, 1e-5, 1e-7):
            msg += (" You take one p for the whole map; the entropy is computed per row (each query's share of "
                    "ones), then averaged over the rows.")
    raise CheckFailed(msg)


def _q1_no_padding(fn):
    A = torch.tensor([[[[1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]]])
    _check_entropy(fn, A, torch.ones(1, 4, dtype=torch.long), f"one sentence of 4 tokens, rows {show(A[0, 0], 8)}")
    _check_entropy(fn, _random_map(11, 2, 3, 7, 0.3), torch.ones(2, 7, dtype=torch.long),
                   "two sentences of 7 tokens, 3 heads, no padding")


def _q1_padded_keys(fn):
    A = torch.tensor([[[[1, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]]]])
    _check_entropy(fn, A, _mask([3], 4), "one sentence of 3 real tokens + 1 padded (the docstring's example)")
    _check_entropy(fn, _random_map(12, 3, 2, 8, 0.6), _mask([8, 5, 3], 8), "3 sentences of 8, 5, 3 real tokens, L = 8")


def _q1_padded_rows(fn):
    A = torch.zeros(2, 2, 6, 6, dtype=torch.long)
    A[..., :2] = 1  # every row attends to the first two keys
    A[0, :, 3:] = 1  # the padded rows of sentence 0 attend everywhere
    _check_entropy(fn, A, _mask([3, 6], 6), "2 sentences of 3 and 6 real tokens whose padded rows are all ones")


def _q1_constant_rows(fn):
    ones = torch.ones(2, 2, 5, 5, dtype=torch.long)  # sign(softmax): every entry +1
    _check_entropy(fn, ones, _mask([5, 4], 5), "an all-ones map (sign(softmax))")
    A = ones.clone()
    A[:, 1] = 0
    _check_entropy(fn, A, _mask([5, 4], 5), "head 1 all ones, head 2 all zeros")


# ------------------------------------------------------------------------------- q2 helpers
def _is_function_class(obj):
    return isinstance(obj, type) and issubclass(obj, torch.autograd.Function)


def _apply_bool(obj, x, on):
    if not _is_function_class(obj):
        what = "a function" if callable(obj) else type(obj).__name__
        raise CheckFailed("BoolSTE should be a class deriving from torch.autograd.Function, used as BoolSTE.apply(x); "
                          f"got {what}.")
    try:
        return obj.apply(x)
    except NotImplementedError as e:
        raise NotAttempted(f"BoolSTE still raises NotImplementedError: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"BoolSTE.apply(x) raised {describe_error(e)} on {on}.") from e


_BOOL_X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -0.25, 0.75, 1.5], dtype=torch.float64)
_BOOL_ON = f"x = {show(_BOOL_X, 10)}"


def _q2_forward(obj):
    for x, on in ((_BOOL_X, _BOOL_ON), (torch.round(randn(21, 4, 9, dtype=torch.float64) * 4) / 2,
                                       "scores of shape (4, 9), multiples of 0.5 (many exact zeros)")):
        y = _apply_bool(obj, x.clone(), on)
        got = tensor_of_shape(y, "BoolSTE.apply", on, x.shape)
        want = Q.ste_bool(x).double()
        if _same(got, want):
            continue
        msg = f"BoolSTE on {on}: expected {show(want, 10)}, got {show(got, 10)}."
        if _same(got, (x >= 0).double()):
            msg += (" Where x = 0 you return 1: BiBERT's code maps a score of exactly 0 to 0, bool(0) = 0 "
                    "(x > 0, strict). The paper's x >= 0 is the other choice, bool_zero=1 in binlab.")
        elif _same(got, _sign(x).double()) or _same(got, torch.sign(x).double()):
            msg += " You return signs (+-1); bool keeps {0, 1}: 1 where x > 0, else 0."
        elif _same(got, (x < 0).double()) or _same(got, (x <= 0).double()):
            msg += " You keep the negative scores; bool keeps the positive ones, x > 0."
        raise CheckFailed(msg)


def _q2_backward(obj):
    cases = ((_BOOL_X, _BOOL_ON), (torch.round(randn(22, 3, 8, dtype=torch.float64) * 4) / 4,
                                   "scores of shape (3, 8), multiples of 0.25 (some exactly +-1)"))
    for j, (x, on) in enumerate(cases):
        g = torch.randn(x.shape, generator=generator(30 + j), dtype=x.dtype)
        xv = x.clone().requires_grad_(True)
        y = _apply_bool(obj, xv, on)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            raise CheckFailed(f"the output of BoolSTE.apply is not connected to x on {on} (did forward return a "
                              "detached tensor, or not a tensor?).")
        try:
            y.backward(g)
        except NotImplementedError as e:
            raise NotAttempted(f"BoolSTE.backward raised NotImplementedError: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise CheckFailed(f"the backward pass raised {describe_error(e)} on {on} (backward returns one "
                              "gradient, dL/dx).") from e
        if xv.grad is None:
            raise CheckFailed(f"no gradient reached x on {on}: backward must return dL/dx.")
        got, want = xv.grad.detach(), g * (x.abs() <= 1).to(g.dtype)
        if torch.allclose(got, want, rtol=1e-9, atol=1e-12):
            continue
        i = int((~torch.isclose(got, want, rtol=1e-9, atol=1e-12)).flatten().nonzero()[0])
        msg = (f"dL/dx on {on}: at x = {float(x.flatten()[i]):.4g} with dL/dbool = {float(g.flatten()[i]):.4g} "
               f"expected {float(want.flatten()[i]):.4g}, got {float(got.flatten()[i]):.4g}.")
        if torch.allclose(got, g):
            msg += " The gradient passes everywhere: the straight-through window 1{|x| <= 1} is missing."
        elif torch.allclose(got, g * (x.abs() < 1).to(g.dtype)):
            msg += (" At |x| = 1 you stop the gradient: the paper's window is closed, 1{|x| <= 1} (the open "
                    "-1 < x < 1 of BiBERT's code is strict_window=True in binlab).")
        elif torch.allclose(got, g * ((x >= 0) & (x <= 1)).to(g.dtype)):
            msg += " You pass the gradient only on 0 <= x <= 1: the window is symmetric, 1{|x| <= 1}."
        elif torch.allclose(got, torch.zeros_like(g)):
            msg += (" The gradient is 0 everywhere (the true derivative of a step): that is why a straight-through "
                    "one is used.")
        raise CheckFailed(msg)


# ------------------------------------------------------------------------------- q3 helpers
def _library_bi_attention(q, k, v, mask, zero_to_one=False):
    """What binlab's model computes with attention="bool" (no dropout)."""
    d = q.shape[-1]
    add = (1.0 - mask[:, None, None, :].to(q.dtype)) * MASK_VALUE
    sq, sk, sv = (Q.ste_sign(x, None) for x in (q, k, v))
    return Q.ste_bool(sq @ sk.transpose(-1, -2) / math.sqrt(d) + add, zero_to_one=zero_to_one) @ sv


def _qkv(seed, B, heads, L, d, zeros=True):
    q, k, v = (randn(seed + i, B, heads, L, d, dtype=torch.float64) for i in range(3))
    if zeros:  # exact zeros: sign(0) = +1
        q[..., 0, 0] = 0.0
        v[..., ::3, 1 % d] = 0.0
    return q, k, v


def _check_bi_attention(fn, q, k, v, mask, on):
    want = _library_bi_attention(q, k, v, mask)
    got = tensor_of_shape(call(fn, q.clone(), k.clone(), v.clone(), mask.clone(), on=on), "bi_attention", on,
                          q.shape)
    if _same(got, want):
        return
    d = q.shape[-1]
    add = (1.0 - mask[:, None, None, :].to(q.dtype)) * MASK_VALUE
    sq, sk, sv = _sign(q), _sign(k), _sign(v)
    scores = sq @ sk.transpose(-1, -2) / math.sqrt(d) + add
    A = (scores > 0).double()
    bad = ~torch.isclose(got, want.double(), rtol=1e-6, atol=1e-9)
    b, h, i, j = (int(x) for x in bad.nonzero()[0])
    msg = (f"bi_attention on {on}: the context of example {b}, head {h}, query {i}, dimension {j} should be "
           f"{float(want[b, h, i, j]):.4g}, yours is {float(got[b, h, i, j]):.4g} ({int(bad.sum())} of "
           f"{bad.numel()} entries differ).")
    ts = torch.sign
    if _same(got, ((q @ k.transpose(-1, -2) / math.sqrt(d) + add) > 0).double() @ sv):
        msg += (" You take bool() of the full-precision scores: binarize first, sign(Q) sign(K)^T / sqrt(d) (the "
                "whole point is a product of +-1 values).")
    elif _same(got, ((ts(q) @ ts(k).transpose(-1, -2) / math.sqrt(d) + add) > 0).double() @ ts(v)) \
            or _same(got, A @ ts(v)):
        msg += (" Where an entry is exactly 0 you use torch.sign(0) = 0; binlab's sign(0) = +1 "
                "(torch.where(x >= 0, 1.0, -1.0)).")
    elif _same(got, (scores >= 0).double() @ sv):
        msg += (" Where a score is exactly 0 you keep the key: BiBERT's code has bool(0) = 0 (scores > 0, strict). "
                "With binary Q and K the scores are integers / sqrt(d), so exact zeros are common.")
    elif _same(got, ((scores - add) > 0).double() @ sv) or _same(got, ((scores - add) >= 0).double() @ sv):
        msg += (" The padded keys are counted: add the mask (-10000 where attention_mask is 0) to the scores "
                "before bool(), so a padded key never gets a 1.")
    elif _same(got, torch.softmax(scores, -1) @ sv) or _same(got, (torch.softmax(scores, -1) > 0).double() @ sv) \
            or _same(got, (torch.softmax(scores, -1) >= 0).double() @ sv):
        msg += (" You kept softmax: Bi-Attention has none. Every softmax output is positive, so bool(softmax) (or "
                "its sign) is 1 everywhere: zero entropy. Apply bool() to the scores themselves.")
    elif _same(got, (A / A.sum(-1, keepdim=True).clamp_min(1)) @ sv):
        msg += " You divide by the number of ones (a 1/k normalisation): the context is A @ sign(V), unnormalised."
    elif _same(got, A @ v):
        msg += " The values are full precision: take sign(V) too."
    raise CheckFailed(msg)


def _q3_plain(fn):
    q = torch.tensor([[[[1.0], [-1.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[2.0], [-3.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[0.5], [-0.5]]]], dtype=torch.float64)
    _check_bi_attention(fn, q, k, v, torch.ones(1, 2, dtype=torch.long), "the docstring's example (d = 1, L = 2)")
    q, k, v = _qkv(40, 2, 2, 5, 3)
    _check_bi_attention(fn, q, k, v, torch.ones(2, 5, dtype=torch.long),
                        "q, k, v of shape (2, 2, 5, 3), no padding, some exact zeros")


def _q3_exact_zeros(fn):
    q, k, v = _qkv(43, 1, 2, 6, 4, zeros=False)  # d = 4: scores in {-2, -1, 0, 1, 2}, many exactly 0
    _check_bi_attention(fn, q, k, v, torch.ones(1, 6, dtype=torch.long),
                        "q, k, v of shape (1, 2, 6, 4): with d = 4 many scores are exactly 0")


def _q3_padding(fn):
    q, k, v = _qkv(46, 3, 2, 6, 3)
    _check_bi_attention(fn, q, k, v, _mask([6, 4, 2], 6), "3 sentences of 6, 4, 2 real tokens (L = 6), d = 3")


# ------------------------------------------------------------------------------- q4 helpers
def _library_dmd(f_s, f_t):
    return D.direction_distance(D.similarity_matrix(f_s), D.similarity_matrix(f_t))


def _dmd_pair(seed, B, heads, L, d):
    f_t = randn(seed, B, heads, L, d, dtype=torch.float64)
    f_s = f_t + 0.8 * randn(seed + 1, B, heads, L, d, dtype=torch.float64)
    f_s[0] *= 3.0  # examples of different sizes: a norm per example differs from the one over the tensor
    return f_s, f_t


def _check_dmd(fn, f_s, f_t, on):
    want = float(_library_dmd(f_s, f_t))
    got = one_number(call(fn, f_s.clone(), f_t.clone(), on=on), "dmd_distance", on, "one number, the distance D")
    if abs(got - want) <= 1e-6 * max(1.0, abs(want)):
        return
    d = f_s.shape[-1]
    S, T = f_s @ f_s.transpose(-1, -2) / math.sqrt(d), f_t @ f_t.transpose(-1, -2) / math.sqrt(d)
    nrm = torch.linalg.vector_norm

    def near(value):
        return abs(got - float(value)) <= 1e-6 * max(1.0, abs(float(value)))

    msg = f"dmd_distance on {on}: expected D = {want:.6g}, got {got:.6g}."
    diff = S / nrm(S) - T / nrm(T)
    if math.isnan(got):
        msg += (" You return NaN: somewhere you divide by a norm of 0 (here a row of S is all zeros). DMD divides "
                "by one Frobenius norm over the whole tensor, which is 0 only for an all-zero tensor.")
    elif near(want ** 2) or near((diff ** 2).mean()):
        msg += (" That is the squared distance (or a mean of squares): BiBERT's D is the Frobenius norm itself, "
                "|| S/||S|| - T/||T|| ||_F, not squared.")
    elif near(nrm(S / nrm(S, dim=-1, keepdim=True) - T / nrm(T, dim=-1, keepdim=True))):
        msg += (" You normalise every row of S and T on its own (a norm per row); DMD divides by one Frobenius norm "
                "over the whole tensor, batch and heads included.")
    elif any(near(nrm(S / nrm(S, dim=dims, keepdim=True) - T / nrm(T, dim=dims, keepdim=True)))
             for dims in ((-1, -2), (1, 2, 3))) or any(near(sum(
                 nrm(S[i] / nrm(S[i]) - T[i] / nrm(T[i])) for i in range(len(S))) / scale) for scale in (1, len(S))):
        msg += (" You normalise each example (or each head) separately; DMD uses one Frobenius norm over the whole "
                "tensor, batch and heads included.")
    elif near(nrm(S - T)) or near(nrm(f_s @ f_s.transpose(-1, -2) - f_t @ f_t.transpose(-1, -2))):
        msg += (" You compare the raw matrices: normalise S and T by their Frobenius norms first, so that only the "
                "direction is matched (D does not change when S is scaled).")
    elif near(nrm(f_s / nrm(f_s) - f_t / nrm(f_t))):
        msg += " You compare F itself: DMD compares the similarity matrices F F^T / sqrt(d) of the tokens."
    else:
        St, Tt = f_s.transpose(-1, -2) @ f_s, f_t.transpose(-1, -2) @ f_t
        if near(nrm(St / nrm(St) - Tt / nrm(Tt))):
            msg += (" You computed F^T F (d x d, a similarity of the features); DMD's matrix is F F^T (L x L, a "
                    "similarity of the tokens).")
    raise CheckFailed(msg)


def _q4_one(fn):
    f_s = torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64)
    f_t = torch.tensor([[[[0.0], [1.0]]]], dtype=torch.float64)
    _check_dmd(fn, f_s, f_t, "the docstring's example f_s = [1, 0], f_t = [0, 1]")
    f_s, f_t = _dmd_pair(50, 1, 1, 6, 4)
    _check_dmd(fn, f_s, f_t, "one example, one head, L = 6, d = 4")
    _check_dmd(fn, f_s, 2.5 * f_s, "f_t = 2.5 f_s (the same direction: D = 0)")


def _q4_batch(fn):
    f_s, f_t = _dmd_pair(52, 3, 2, 5, 4)
    _check_dmd(fn, f_s, f_t, "3 examples, 2 heads, L = 5, d = 4 (the first example 3 times larger)")


def _q4_gradient(fn):
    f_s, f_t = _dmd_pair(54, 2, 2, 4, 3)
    on = "2 examples, 2 heads, L = 4, d = 3"
    xs = f_s.clone().requires_grad_(True)
    out = call(fn, xs, f_t.clone(), on=on)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise CheckFailed(f"dmd_distance returned {type(out).__name__} without a gradient on {on}: the student is "
                          "trained on D, so return a tensor connected to f_s (no .item(), float() or .detach()).")
    if out.numel() != 1:
        raise CheckFailed(f"dmd_distance returned {out.numel()} numbers on {on}; expected one, the distance D.")
    out.reshape(()).backward()
    ref = f_s.clone().requires_grad_(True)
    _library_dmd(ref, f_t).backward()
    if xs.grad is None or not torch.allclose(xs.grad, ref.grad, rtol=1e-6, atol=1e-10):
        raise CheckFailed(f"the gradient of dmd_distance with respect to f_s on {on} is not the library's "
                          "(check the value first: the other checks).")


# --------------------------------------------------------------------------------- questions
q1 = Question(
    "q1", "map_entropy", "The entropy of a binarized attention map, padding excluded",
    checks=[
        Check("rows of one sentence and of a batch, no padding", 1, _q1_no_padding),
        Check("padded keys are not counted in p", 2, _q1_padded_keys),
        Check("padded query rows are not averaged", 1, _q1_padded_rows),
        Check("all-ones and all-zero rows: H = 0 (0 log 0 = 0)", 1, _q1_constant_rows),
    ],
    hints=[
        """`real = attention_mask.bool()`; the ones among the real keys are
        `(A.bool() & real[:, None, None, :]).sum(-1)`, and the number of real keys `real.sum(-1)[:, None, None]`:
        p has shape (B, H, L).""",
        """Guard the logarithms: `torch.where(p > 0, p * torch.log2(p), 0.0)` and the same for 1 - p. Then average
        with the real rows as weights: `(h * real[:, None, :]).sum((0, 2)) / real.sum()`.""",
    ],
    solution=map_entropy,
)

q2 = Question(
    "q2", "BoolSTE", "bool() with its straight-through gradient",
    checks=[
        Check("forward: 1{x > 0}, bool(0) = 0", 1, _q2_forward),
        Check("backward: dL/dx = dL/dbool * 1{|x| <= 1}", 2, _q2_backward),
    ],
    hints=[
        """In forward save the input, `ctx.save_for_backward(x)`, and return `(x > 0).to(x.dtype)`.""",
        """In backward: `(x,) = ctx.saved_tensors; return grad_output * (x.abs() <= 1).to(grad_output.dtype)`.""",
    ],
    solution=BoolSTE,
    congrats="This is binlab.quant.quantizers.ste_bool (BiBERT's code's zero, the paper's closed window).",
)

q3 = Question(
    "q3", "bi_attention", "Bi-Attention: bool(sign(Q) sign(K)^T / sqrt(d) + mask) @ sign(V)",
    checks=[
        Check("the context of binary Q, K, V, sign(0) = +1, no padding", 2, _q3_plain),
        Check("a score of exactly 0 gives 0 (bool(0) = 0)", 1, _q3_exact_zeros),
        Check("padded keys get 0 (the mask)", 2, _q3_padding),
    ],
    hints=[
        """`sq, sk, sv = (torch.where(x >= 0, 1.0, -1.0) for x in (q, k, v))`; the additive mask is
        `(1.0 - attention_mask[:, None, None, :]) * -10000.0`, shape (B, 1, 1, L), added to every query row.""",
        """`scores = sq @ sk.transpose(-1, -2) / d ** 0.5 + mask`, then `A = BoolSTE.apply(scores)` (or
        `(scores > 0).double()`) and `A @ sv`. No softmax, no division by the number of ones.""",
    ],
    solution=bi_attention,
    uses=[q2],  # a learner's bi_attention may binarize with their BoolSTE
)

q4 = Question(
    "q4", "dmd_distance", "One DMD term: the distance of two normalised similarity matrices",
    checks=[
        Check("one example: D of F F^T / sqrt(d), scale-free", 1, _q4_one),
        Check("a batch: one Frobenius norm over the whole tensor, not squared", 2, _q4_batch),
        Check("a tensor with the library's gradient (the student trains on it)", 1, _q4_gradient),
    ],
    hints=[
        """`S = f_s @ f_s.transpose(-1, -2) / d ** 0.5` (L x L per example and head), and the same T for f_t.""",
        """`torch.linalg.vector_norm(S)` is the Frobenius norm of the WHOLE tensor; the distance is
        `torch.linalg.vector_norm(S / nS - T / nT)`, not squared.""",
    ],
    solution=dmd_distance,
    congrats="This is binlab.methods.distill.direction_distance of similarity_matrix (BiBERT's att_loss_r2b).",
)

EXERCISE = Exercise("06_bi_attention", "Bi-Attention: the entropy of binary attention, bool() and its STE, DMD",
                    [q1, q2, q3, q4])


# ---------------------------------------------------------------------------------- mistakes
def _entropy_parts(A, mask):
    real = mask.bool()
    return real, ((A != 0) & real[:, None, None, :]).sum(-1).double(), real.sum(-1).double()[:, None, None]


def _ent_padded_keys(A, attention_mask):
    real = attention_mask.bool()
    p = (A != 0).sum(-1).double() / A.shape[-1]
    rows = real[:, None, :].double()
    return (_h(p) * rows).sum((0, 2)) / rows.sum()


def _ent_padded_rows(A, attention_mask):
    real, ones, n = _entropy_parts(A, attention_mask)
    return _h(ones / n).mean((0, 2))


def _ent_natural_log(A, attention_mask):
    return map_entropy(A, attention_mask) * math.log(2)


def _ent_nan(A, attention_mask):
    real, ones, n = _entropy_parts(A, attention_mask)
    p = ones / n
    h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    rows = real[:, None, :].double()
    return (h * rows).sum((0, 2)) / rows.sum()


def _ent_whole_map(A, attention_mask):
    real = attention_mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    p = ((A != 0) & pairs).sum((0, 2, 3)).double() / pairs.sum()
    return _h(p)


class _BoolZeroOne(BoolSTE):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)


class _BoolOpenWindow(BoolSTE):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() < 1).to(grad_output.dtype)


class _BoolNoWindow(BoolSTE):
    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


def _bi(q, k, v, attention_mask, *, sign=_sign, bool_fn=lambda s: (s > 0).double(), mask=True, softmax=False,
        normalise=False, sign_v=True):
    d = q.shape[-1]
    add = (1.0 - attention_mask[:, None, None, :].to(q.dtype)) * -10000.0 if mask else 0.0
    scores = sign(q) @ sign(k).transpose(-1, -2) / math.sqrt(d) + add
    A = torch.softmax(scores, -1) if softmax else bool_fn(scores).to(q.dtype)
    if normalise:
        A = A / A.sum(-1, keepdim=True).clamp_min(1)
    return A @ (sign(v) if sign_v else v)


MISTAKES = [
    Mistake("q1", "padded_keys", "p divided by L: the padded keys counted", _ent_padded_keys, "padded keys"),
    Mistake("q1", "padded_rows", "the mean over every query row, padded ones included", _ent_padded_rows,
            "padded query rows"),
    Mistake("q1", "natural_log", "the entropy in nats", _ent_natural_log, "log2"),
    Mistake("q1", "nan_zero_log", "no guard: 0 * log2(0) = NaN", _ent_nan, "0 log 0 = 0"),
    Mistake("q1", "whole_map", "one p for the whole map instead of one per row", _ent_whole_map, "per row"),
    Mistake("q2", "bool_zero_one", "bool(0) = 1 (x >= 0)", _BoolZeroOne, "bool(0) = 0"),
    Mistake("q2", "open_window", "the open window |x| < 1", _BoolOpenWindow, "window is closed"),
    Mistake("q2", "no_window", "the identity STE: the gradient passes everywhere", _BoolNoWindow,
            "window 1{|x| <= 1} is missing"),
    Mistake("q3", "softmax_kept", "bool(softmax(scores)): softmax kept", lambda q, k, v, m: _bi(
        q, k, v, m, bool_fn=lambda s: (torch.softmax(s, -1) > 0).double()), "kept softmax"),
    Mistake("q3", "softmax_probabilities", "softmax(scores) @ sign(V)",
            lambda q, k, v, m: _bi(q, k, v, m, softmax=True), "kept softmax"),
    Mistake("q3", "bool_zero_one", "scores >= 0: bool(0) = 1", lambda q, k, v, m: _bi(
        q, k, v, m, bool_fn=lambda s: (s >= 0).double()), "bool(0) = 0"),
    Mistake("q3", "mask_forgotten", "no mask: padded keys counted", lambda q, k, v, m: _bi(q, k, v, m, mask=False),
            "padded keys are counted"),
    Mistake("q3", "torch_sign", "torch.sign: sign(0) = 0", lambda q, k, v, m: _bi(q, k, v, m, sign=torch.sign),
            "sign(0) = +1"),
    Mistake("q3", "normalised", "A divided by its number of ones", lambda q, k, v, m: _bi(q, k, v, m, normalise=True),
            "1/k normalisation"),
    Mistake("q3", "fp_values", "V not binarized", lambda q, k, v, m: _bi(q, k, v, m, sign_v=False), "sign(V) too"),
    Mistake("q4", "squared", "the squared distance", lambda f_s, f_t: dmd_distance(f_s, f_t) ** 2,
            "squared distance"),
    Mistake("q4", "per_row_norm", "every row of S and T normalised on its own", lambda f_s, f_t: _dmd_norm(
        f_s, f_t, dim=-1), "norm per row"),
    Mistake("q4", "per_example_norm", "each example normalised on its own", lambda f_s, f_t: _dmd_norm(
        f_s, f_t, dim=(1, 2, 3)), "each example (or each head) separately"),
    Mistake("q4", "no_normalisation", "||S - T||: no normalisation", lambda f_s, f_t: torch.linalg.vector_norm(
        D.similarity_matrix(f_s) - D.similarity_matrix(f_t)), "normalise S and T"),
    Mistake("q4", "features_gram", "F^T F instead of F F^T", lambda f_s, f_t: _dmd_gram(f_s, f_t), "F F^T"),
    Mistake("q4", "detached", "a Python float: no gradient", lambda f_s, f_t: float(dmd_distance(f_s, f_t)),
            "without a gradient"),
]


def _dmd_norm(f_s, f_t, dim):
    S, T = D.similarity_matrix(f_s), D.similarity_matrix(f_t)
    n = torch.linalg.vector_norm
    return n(S / n(S, dim=dim, keepdim=True) - T / n(T, dim=dim, keepdim=True))


def _dmd_gram(f_s, f_t):
    S, T = f_s.transpose(-1, -2) @ f_s, f_t.transpose(-1, -2) @ f_t
    n = torch.linalg.vector_norm
    return n(S / n(S) - T / n(T))
