"""The row-wise steps of a layer, run on the rows in ``n_chunks`` contiguous parts at once, and the LayerNorm.

Every step between two products except attention works on each token's row alone, so the rows can be cut into
parts, one per thread (``prange``), each part computed by the serial kernel's operations in the same order: the
bits do not depend on the number of parts. ``n_chunks = 1`` is the serial kernel.

    residual_layer_norm_binarize   P [R, N] -> LayerNorm(c P + b + residual) [R, N], and its bits for each of the
                                   next products' binarizers [J, R, ceil(N / 64)]      (after W_o and W_2)
    layer_norm_binarize            x [R, N] -> LayerNorm(x), and its bits                (after the embeddings)
    threshold_bits_parallel        :func:`fused.threshold_bits` by parts of rows        (ReLU or GELU into FFN2)
    qkv_threshold_bits_parallel    :func:`fused.qkv_threshold_bits` by parts made of whole 64-token words of V
    binarize_rows_parallel         :func:`fused.binarize_rows` by parts of rows           (GELU without thresholds)
    context_binarize_parallel      :func:`fused.context_binarize` by parts of the token rows (into W_o)

The LayerNorm is ``(y - mean) / sqrt(var + eps) * gamma + beta`` with the biased variance, as torch's; mean and
variance are summed in float64 (in vector lanes: :func:`_sum`) whatever the dtype of y, and the result is
rounded to that dtype once. In float32 that is closer to the float64 model than torch's float32 LayerNorm, and not
bit-equal to it (the engine's float32 agreement with the float32 fake-quant model is reported, not assumed).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from binlab.infer.fused import (_bytes, _pack, _row_bits, affine_residual, binarize_rows, context_binarize_tokens,
                                qkv_threshold_units, threshold_bits, window_bits)

__all__ = ["layer_norm_binarize", "residual_layer_norm_binarize", "threshold_bits_parallel",
           "qkv_threshold_bits_parallel", "binarize_rows_parallel", "context_binarize_parallel"]


@njit(cache=True, fastmath={"reassoc"})
def _sum(y, mean, square):
    """``sum_k y[k]``, or ``sum_k (y[k] - mean)^2`` if ``square``, in float64. The one place with a fast-math
    flag: reassociation lets the sum run in vector lanes (a fixed order for a compiled kernel, whatever the row)."""
    s = 0.0
    if square:
        for k in range(y.shape[0]):
            t = np.float64(y[k]) - mean
            s += t * t
    else:
        for k in range(y.shape[0]):
            s += np.float64(y[k])
    return s


@njit(cache=True, inline="always")
def _ln_row_bits(y, gamma, beta, eps, kinds, alphas, thrs, out, words, r, bits, b8):
    """LayerNorm of row ``y`` into ``out``; the bits of ``out + thrs[j]`` for each binarizer j into
    ``words[j, r]``; the NaN count."""
    N = y.shape[0]
    mean = _sum(y, 0.0, False) / N
    var = _sum(y, mean, True) / N
    rstd = 1.0 / math.sqrt(var + eps)
    for k in range(N):
        out[k] = ((np.float64(y[k]) - mean) * rstd) * gamma[k] + beta[k]
    n_nan = 0
    for j in range(kinds.shape[0]):
        kind, a, t = kinds[j], alphas[j], thrs[j]
        if kind == 2:
            for k in range(N):
                n_nan += _row_bits(out[k] + t[k], 2, a, bits, k)
        else:
            for k in range(N):
                n_nan += _row_bits(out[k] + t[k], 0, a, bits, k)
        for w in range(words.shape[2]):
            words[j, r, w] = _pack(bits, b8, 64 * w, min(64, N - 64 * w))
    return n_nan


@njit(cache=True)
def _residual_ln_range(r0, r1, prod, c, b, res, gamma, beta, eps, kinds, alphas, thrs, out, words):
    N = out.shape[1]
    y = np.empty((1, N), out.dtype)
    bits = _bytes(N)
    b8 = bits.view(np.uint64)
    n_nan = 0
    for r in range(r0, r1):
        if prod is None:
            y[0] = res[r]
        else:
            affine_residual(prod[r:r + 1], c, b, res[r:r + 1], y)
        n_nan += _ln_row_bits(y[0], gamma, beta, eps, kinds, alphas, thrs, out[r], words, r, bits, b8)
    return n_nan


@njit(cache=True, parallel=True)
def residual_layer_norm_binarize(n_chunks, prod, c, b, res, gamma, beta, eps, kinds, alphas, thrs, out, words):
    """``out = LayerNorm((c * P + b) + res)`` row by row (``prod`` None: ``LayerNorm(res)``), then for each
    binarizer j (``kinds, alphas [J]``, ``thrs [J, N]``; J may be 0) the bits of ``out + thrs[j]`` into
    ``words [J, R, ceil(N / 64)]``. The affine step is :func:`fused.affine_residual`, a row at a time. Returns the NaN
    count."""
    R = out.shape[0]
    n_nan = 0
    for ch in prange(n_chunks):
        n_nan += _residual_ln_range(ch * R // n_chunks, (ch + 1) * R // n_chunks, prod, c, b, res, gamma, beta, eps,
                                    kinds, alphas, thrs, out, words)
    return n_nan


def layer_norm_binarize(n_chunks, x, gamma, beta, eps, kinds, alphas, thrs, out, words):
    """:func:`residual_layer_norm_binarize` of ``x`` itself (no product): the LayerNorm and its bits."""
    return residual_layer_norm_binarize(n_chunks, None, gamma, gamma, x, gamma, beta, eps, kinds, alphas, thrs, out,
                                        words)


@njit(cache=True, parallel=True)
def threshold_bits_parallel(n_chunks, prod, lo, hi, chans, w0, wm, out):
    """:func:`fused.threshold_bits`, then :func:`fused.window_bits` on the channels ``chans`` (none: empty), on
    ``n_chunks`` parts of the rows."""
    R = prod.shape[0]
    for ch in prange(n_chunks):
        r0, r1 = ch * R // n_chunks, (ch + 1) * R // n_chunks
        threshold_bits(prod[r0:r1], lo, hi, out[r0:r1])
        window_bits(prod[r0:r1], chans, w0, wm, out[r0:r1])


@njit(cache=True, parallel=True)
def qkv_threshold_bits_parallel(n_chunks, prod, lo, hi, L, H, d, q_out, k_out, v_out):
    """:func:`fused.qkv_threshold_bits` on ``n_chunks`` parts, each a run of whole 64-token words of V (a V word
    gathers 64 tokens' bits, so two threads never write one word)."""
    n_units = (prod.shape[1] // L) * ((L + 63) // 64)
    for ch in prange(n_chunks):
        qkv_threshold_units(ch * n_units // n_chunks, (ch + 1) * n_units // n_chunks, prod, lo, hi, L, H, d, q_out,
                            k_out, v_out)


@njit(cache=True, parallel=True)
def binarize_rows_parallel(n_chunks, x, kind, alpha, thr, out):
    """:func:`fused.binarize_rows` on ``n_chunks`` parts of the rows; the NaN count."""
    R = x.shape[0]
    n_nan = 0
    for ch in prange(n_chunks):
        r0, r1 = ch * R // n_chunks, (ch + 1) * R // n_chunks
        n_nan += binarize_rows(x[r0:r1], kind, alpha, thr, out[r0:r1])
    return n_nan


@njit(cache=True, parallel=True)
def context_binarize_parallel(n_chunks, ctx, c, kind, alpha, thr, out):
    """:func:`fused.context_binarize` on ``n_chunks`` parts of the token rows; the NaN count."""
    R = ctx.shape[0] * ctx.shape[2]
    n_nan = 0
    for ch in prange(n_chunks):
        n_nan += context_binarize_tokens(ch * R // n_chunks, (ch + 1) * R // n_chunks, ctx, c, kind, alpha, thr, out)
    return n_nan
