"""Ternary Weight Splitting (TWS): BinaryBERT's way from a trained ternary model to a binary one.

BinaryBERT (Bai et al., ACL 2021; methods.md §2.5) does not train a binary BERT from scratch. It trains a
half-width *ternary* model, then splits every ternary weight W (latent, full precision) into two latent
weights W1 + W2 = W whose *binarizations* add up to the ternarization of W::

    BWN(W1) + BWN(W2) = TWN(W)          (the splitting equivalency; the book's eqs. 5.20-5.23 give the split)

so the binary network, whose every quantized linear layer computes ``y = dense_1(x) + dense_2(x)``, starts out
computing exactly what the ternary one computed, and then fine-tunes with twice the (binary) weights.

The formulas, with Ŵ = TWN(W) and n the number of entries (of the tensor, or of one row of the word embedding)::
    I = {i : Ŵ_i != 0}        J = {i : Ŵ_i = 0, W_i > 0}        K = {i : Ŵ_i = 0, W_i <= 0}
    S_X = sum_{i in X} |W_i|

    W1_i = a * W_i       on I        W2_i = (1 - a) * W_i    on I
           b + W_i       on J               -b               on J
           b             on K               -b + W_i         on K

    a = (S_I + S_K - S_J) / (2 S_I)                                  tws_a           (what the code computes)
    b = ((n / |I|) S_I - sum_i |W_i|) / (2 (|J| + |K|))              tws_b

Where they come from (BWN's alpha is mean |.|): on J and K the two halves have opposite signs, so their sum is 0
iff alpha_1 = alpha_2, i.e. a S_I + S_J = (1 - a) S_I + S_K, which gives ``a``; on I both halves have the sign of
W, so the sum is alpha_1 + alpha_2 = alpha_t = S_I / |I|, which gives ``b``. It is exact when

    b > 0  and  0 < a < 1     (then W1 and W2 have the signs above, no entry is 0)
    |I| >= 1 and |J| + |K| >= 1   (a and b are defined)

The paper prints ``a = (S_I + S_J - S_K) / (2 S_I)``, with J and K swapped (:func:`tws_a_as_printed`). That
version is not exact: it leaves alpha_1 - alpha_2 = 2 (S_J - S_K) / n on the zero entries, small only because
S_J ~ S_K for symmetric weights (on MiniLM up to 1.8e-4 per linear tensor, 5e-3 for an embedding row, where
alpha_t ~ 0.1; the code's a: below 2.5e-8). :func:`split_error` measures both.

**With quantized activations** (8-bit dynamic uniform, 4-bit LSQ) the split model is still exact: the quantizer
acts on the layer's input x, which both halves share, and each half gets a copy of the ternary layer's quantizer
state (clip, step), so both compute the same q(x) and ``q(x) BWN(W1)^T + q(x) BWN(W2)^T = q(x) TWN(W)^T``;
nothing has to commute with the rounding. In float64 the logits agree to 1e-15. In float32 the two sums round
differently from the one (~1e-7), and now and then that moves a value of the NEXT layer's input across a
rounding boundary (about 1 value in 50k): on MiniLM the last hidden state then differs by ~2.5% (relative
norm). The halves' clips are separate parameters, equal only at the split.

The model surgery that uses these formulas is :mod:`binlab.methods.split_model`; BinaryBERT's half-width start
is :mod:`binlab.methods.width`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from binlab.quant.quantizers import bwn, twn

__all__ = ["A_FORMULAS", "tws_a", "tws_a_as_printed", "tws_b", "check_tws_conditions", "tws_split", "split_error"]

A_FORMULAS = ("code", "printed")


# ----------------------------------------------------------------------------------------------------------
# the coefficients a and b


def tws_a(S_I: Tensor, S_J: Tensor, S_K: Tensor) -> Tensor:
    """a = (S_I + S_K - S_J) / (2 S_I): the coefficient that makes alpha_1 = alpha_2 (the authors' code)."""
    return (S_I + S_K - S_J) / (2 * S_I)


def tws_a_as_printed(S_I: Tensor, S_J: Tensor, S_K: Tensor) -> Tensor:
    """a = (S_I + S_J - S_K) / (2 S_I): the formula as the paper prints it, J and K swapped. NOT exact.

    Kept so that the book can show the error numerically (:func:`split_error` with ``a_formula="printed"``).
    """
    return (S_I + S_J - S_K) / (2 * S_I)


def tws_b(S_I: Tensor, S_all: Tensor, n: int, n_I: Tensor, n_zero: Tensor) -> Tensor:
    """b = ((n / |I|) S_I - sum_i |W_i|) / (2 (|J| + |K|)), with S_all = sum_i |W_i| and n_zero = |J| + |K|.

    It makes alpha_1 + alpha_2 = alpha_t = S_I / |I| (the ternary scale) on the non-zero entries.
    """
    return (n / n_I * S_I - S_all) / (2 * n_zero)


def check_tws_conditions(a: Tensor, b: Tensor, n_I: Tensor, n_zero: Tensor, what: str = "weight") -> None:
    """Raise ``ValueError`` unless every row has |I| >= 1, |J| + |K| >= 1, b > 0 and 0 < a < 1.

    All arguments have one entry per row (one row for a per-tensor split). ``what`` names the tensor in the
    message. Without these conditions BWN(W1) + BWN(W2) is not TWN(W): a half would get entries of the wrong
    sign (or 0), or a and b are 0/0.
    """
    problems = [
        (n_I < 1, "no non-zero ternary entry (|I| = 0: the ternary tensor is all zeros, a is 0/0)"),
        (n_zero < 1, "no zero ternary entry (|J| + |K| = 0: b is 0/0; every |W| is above 0.7 mean|W|)"),
        (~(b > 0), "b <= 0 (needs alpha_t > mean|W|)"),
        (~((a > 0) & (a < 1)), "a outside (0, 1) (S_J or S_K too large compared to S_I)"),
    ]
    rows = n_I.numel()
    for bad, reason in problems:
        bad = bad.reshape(-1)
        if bool(bad.any()):
            where = "" if rows == 1 else f" in {int(bad.sum())} of {rows} rows (first: row {int(bad.nonzero()[0])})"
            a0, b0 = float(a.reshape(-1)[bad][0]), float(b.reshape(-1)[bad][0])
            raise ValueError(f"ternary weight splitting of {what}: {reason}{where}; a = {a0:.6g}, b = {b0:.6g}. "
                             f"BWN(W1) + BWN(W2) would not equal TWN(W).")


# ----------------------------------------------------------------------------------------------------------
# splitting one tensor


def tws_split(w: Tensor, per_row: bool = False, a_formula: str = "code", what: str = "weight") -> tuple[Tensor, Tensor]:
    """Split a latent ternary weight W into (W1, W2) with W1 + W2 = W and BWN(W1) + BWN(W2) = TWN(W).

    Args:
        w: the latent full-precision weight of a ternary layer, ``(out, in)`` or ``(vocab, dim)``.
        per_row: a and b per row (BinaryBERT's word embedding, ternarized and binarized per row) instead of per
            tensor (its linear layers). Must match the granularity of TWN and BWN in the model.
        a_formula: ``"code"`` (:func:`tws_a`, exact) or ``"printed"`` (:func:`tws_a_as_printed`, the paper's).
        what: the tensor's name, for error messages.

    The sets I, J, K come from binlab's own :func:`~binlab.quant.quantizers.twn` applied to ``w`` as it is (so they
    are the ternary model's, threshold ties included); S_X, a and b are computed in float64 and W1, W2 cast back
    to ``w``'s dtype, as in the authors' ``tws_split``. Raises ``ValueError`` (:func:`check_tws_conditions`)
    when the split cannot be exact.
    """
    if a_formula not in A_FORMULAS:
        raise ValueError(f"tws_split: a_formula must be one of {A_FORMULAS}, got {a_formula!r}")
    w = w.detach()
    w_t = twn(w, per_row)  # the ternary model's TWN(W): its zeros define I, J, K
    rows = w.shape[0] if per_row else 1
    v = w.double().reshape(rows, -1)  # (rows, n): one row per scale
    on_I = w_t.reshape(rows, -1) != 0
    on_J = ~on_I & (v > 0)
    on_K = ~on_I & ~on_J  # Ŵ = 0 and W <= 0 (the code's "otherwise")
    n = v.shape[1]
    absw = v.abs()
    S_I, S_J, S_K = ((absw * m).sum(1, keepdim=True) for m in (on_I, on_J, on_K))
    n_I = on_I.sum(1, keepdim=True).double()
    n_zero = n - n_I
    a = (tws_a if a_formula == "code" else tws_a_as_printed)(S_I, S_J, S_K)
    b = tws_b(S_I, absw.sum(1, keepdim=True), n, n_I, n_zero)
    check_tws_conditions(a, b, n_I, n_zero, what)  # also catches the 0/0 of an empty I or zero set
    w1 = torch.where(on_I, a * v, torch.where(on_J, b + v, b))
    w2 = torch.where(on_I, (1 - a) * v, torch.where(on_J, -b, v - b))
    return w1.to(w.dtype).reshape(w.shape), w2.to(w.dtype).reshape(w.shape)


def split_error(w: Tensor, per_row: bool = False, a_formula: str = "code") -> float:
    """max |BWN(W1) + BWN(W2) - TWN(W)| after :func:`tws_split` (0 up to float rounding for ``"code"``)."""
    w1, w2 = tws_split(w, per_row, a_formula)
    with torch.no_grad():
        return float((bwn(w1, per_row) + bwn(w2, per_row) - twn(w.detach(), per_row)).abs().max())
