"""The elementwise work around each bitwise product, fused into one numba pass each.

A popcount product gives an int32 count ``P``; what the next product needs is bits again. In between, per entry::

    y   = c * P + b                  c = (value of an input bit) x (weight scale), b the bias (if any)
    bit = 1{y + t >= 0}              kind "sign" / "pm1"   (t = 0 for "sign")
          1{(y + t) / alpha > 1/2}   kind "01"             ({0, alpha}: BiT's unsigned elastic binarizer)

and the bit goes straight into a uint64 word (bit ``k % 64`` of word ``k // 64``, binlab.kernels' layout), so the
float y is never written out. The kernels here do that for each place of the forward pass:

    embed             word rows from packed bits: (scale_v * (+-1) + position) + token type
    binarize_rows     x [R, K] -> words [R, ceil(K/64)]                       (layer inputs, GELU output, pooler)
    affine_binarize   P [R, N] -> y -> (ReLU) -> words                        (FFN1 into FFN2's {0, alpha})
    affine            P [R, N] -> y [R, N]                                    (FFN1 before GELU, pooler)
    affine_residual   P [R, N] -> y + residual [R, N]                         (before a LayerNorm)
    qkv_binarize      P [3, R, A] -> Q, K bits per head along d, V bits per head along tokens
    softmax_binarize  scores P [B, H, L, L] -> c P / sqrt(d) + mask -> softmax -> bits along keys  (BiT)
    bool_binarize     scores P -> 1{P > 0} (1{P >= 0}) on real keys                                  (BiBERT)
    context_binarize  context P [B, H, L, d] -> c P -> bits along the concatenated heads

Every float operation runs in the dtype of the arrays passed (float32 or float64: one compiled version each), in
the order the fake-quant model computes it. Kinds are ints: :data:`KIND_CODES`. Functions that read floats return
the number of NaNs they met, for the caller to raise on (a NaN has no bit).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.extending import overload

__all__ = ["KIND_CODES", "embed", "binarize_rows", "affine_binarize", "affine", "affine_residual", "qkv_binarize",
           "softmax_binarize", "bool_binarize", "context_binarize"]

KIND_CODES = {"sign": 0, "pm1": 1, "01": 2}
_ONE = np.uint64(1)


def _like(a, v):
    """``v`` converted to the dtype of array ``a`` (inside numba: a cast, so float32 stays float32)."""
    return a.dtype.type(v)


@overload(_like)
def _like_impl(a, v):
    dtype = a.dtype

    def impl(a, v):
        return dtype(v)

    return impl


@njit(cache=True, inline="always")
def _bit(v, kind, alpha):
    """The bit of ``v`` (threshold already added): ``v / alpha > 1/2`` for kind 2 ("01"), else ``v >= 0``."""
    if kind == 2:
        return v / alpha > 0.5
    return v >= 0


@njit(cache=True)
def embed(ids, types, bits, scale, pos, tt, out):
    """``out[b, l] = (scale[id] * s(id) + pos[l]) + tt[type]``, s(id) = +-1 from row ``id`` of the packed table."""
    B, L, D = out.shape
    for b in range(B):
        for l in range(L):
            i = ids[b, l]
            s = scale[i]
            t = types[b, l]
            for d in range(D):
                on = (bits[i, d >> 6] >> np.uint64(d & 63)) & _ONE
                w = s if on else -s
                out[b, l, d] = (w + pos[l, d]) + tt[t, d]


@njit(cache=True)
def binarize_rows(x, kind, alpha, thr, out):
    """Pack the bits of ``x [R, K] + thr [K]`` (kind, alpha[0]) into ``out [R, ceil(K / 64)]``; NaN count."""
    R, K = x.shape
    a = alpha[0]
    n_nan = 0
    for r in range(R):
        for w in range(out.shape[1]):
            word = np.uint64(0)
            for j in range(min(64, K - 64 * w)):
                k = 64 * w + j
                v = x[r, k] + thr[k]
                if v != v:
                    n_nan += 1
                if _bit(v, kind, a):
                    word |= _ONE << np.uint64(j)
            out[r, w] = word
    return n_nan


@njit(cache=True)
def affine_binarize(prod, c, b, relu, kind, alpha, thr, out):
    """``y = c * P + b``, ReLU if ``relu``, then the bits of ``y + thr`` into ``out [R, ceil(N / 64)]``."""
    R, N = prod.shape
    a = alpha[0]
    zero = _like(c, 0)
    n_nan = 0
    for r in range(R):
        for w in range(out.shape[1]):
            word = np.uint64(0)
            for j in range(min(64, N - 64 * w)):
                n = 64 * w + j
                y = _like(c, prod[r, n]) * c[n] + b[n]
                if relu and y < zero:
                    y = zero
                v = y + thr[n]
                if v != v:
                    n_nan += 1
                if _bit(v, kind, a):
                    word |= _ONE << np.uint64(j)
            out[r, w] = word
    return n_nan


@njit(cache=True)
def affine(prod, c, b, out):
    """``out = c * P + b`` row by row (c, b [N])."""
    R, N = prod.shape
    for r in range(R):
        for n in range(N):
            out[r, n] = _like(c, prod[r, n]) * c[n] + b[n]


@njit(cache=True)
def affine_residual(prod, c, b, res, out):
    """``out = (c * P + b) + res``: a linear layer's output and the residual, ready for the LayerNorm."""
    R, N = prod.shape
    for r in range(R):
        for n in range(N):
            out[r, n] = (_like(c, prod[r, n]) * c[n] + b[n]) + res[r, n]


@njit(cache=True)
def qkv_binarize(prod, c, b, kinds, alphas, thr, L, H, d, q_out, k_out, v_out):
    """Q, K, V from their products ``P [3, B*L, H*d]``: ``y_j = c_j * P_j + b_j``, bits of ``y_j + thr_j``.

    Q and K go to ``[B, H, L, ceil(d / 64)]`` (packed along the head dimension, for Q K^T); V to
    ``[B, H, d, ceil(L / 64)]`` (packed along the tokens, for probs @ V). Returns the NaN count.
    """
    R = prod.shape[1]
    n_nan = 0
    v_out[:] = 0
    for j in range(3):
        kind = kinds[j]
        a = alphas[j]
        for r in range(R):
            bb = r // L
            l = r - bb * L
            for h in range(H):
                word = np.uint64(0)
                for e in range(d):
                    n = h * d + e
                    y = _like(c, prod[j, r, n]) * c[j, n] + b[j, n]
                    v = y + thr[j, n]
                    if v != v:
                        n_nan += 1
                    on = _bit(v, kind, a)
                    if j == 2:
                        if on:
                            v_out[bb, h, e, l >> 6] |= _ONE << np.uint64(l & 63)
                    else:
                        if on:
                            word |= _ONE << np.uint64(e & 63)
                        if (e & 63) == 63 or e == d - 1:
                            if j == 0:
                                q_out[bb, h, l, e >> 6] = word
                            else:
                                k_out[bb, h, l, e >> 6] = word
                            word = np.uint64(0)
    return n_nan


@njit(cache=True)
def softmax_binarize(scores, c, sqrt_d, mask, kind, alpha, out):
    """BiT's attention bits: per query row, ``s = c P / sqrt(d) + mask``, ``p = softmax(s)``, bits of p along keys.

    ``scores [B, H, L, L]`` int32, ``mask [B, L]`` additive (0 or -10000), ``out [B, H, L, ceil(L / 64)]``.
    Softmax as torch computes it: ``exp(s - max s) * (1 / sum)``. Returns the NaN count.
    """
    B, H, L, _ = scores.shape
    cc = c[0]
    sd = sqrt_d[0]
    a = alpha[0]
    row = np.empty(L, mask.dtype)
    one = _like(mask, 1)
    n_nan = 0
    for b in range(B):
        for h in range(H):
            for i in range(L):
                top = -np.inf
                for j in range(L):
                    s = (_like(mask, scores[b, h, i, j]) * cc) / sd + mask[b, j]
                    row[j] = s
                    if s > top:
                        top = s
                total = _like(mask, 0)
                for j in range(L):
                    e = math.exp(row[j] - top)
                    row[j] = e
                    total += e
                inv = one / total
                for w in range(out.shape[3]):
                    word = np.uint64(0)
                    for jj in range(min(64, L - 64 * w)):
                        p = row[64 * w + jj] * inv
                        if p != p:
                            n_nan += 1
                        if _bit(p, kind, a):
                            word |= _ONE << np.uint64(jj)
                    out[b, h, i, w] = word
    return n_nan


@njit(cache=True)
def bool_binarize(scores, zero_to_one, valid, out):
    """BiBERT's Bi-Attention bits: ``bool(P / sqrt(d) + mask)`` is 1 exactly when the key is real and P > 0
    (P >= 0 with ``zero_to_one``): a padded key's -10000 outweighs |P| / sqrt(d) <= sqrt(d)."""
    B, H, L, _ = scores.shape
    for b in range(B):
        for h in range(H):
            for i in range(L):
                for w in range(out.shape[3]):
                    word = np.uint64(0)
                    for jj in range(min(64, L - 64 * w)):
                        j = 64 * w + jj
                        p = scores[b, h, i, j]
                        if valid[b, j] and (p > 0 or (zero_to_one and p == 0)):
                            word |= _ONE << np.uint64(jj)
                    out[b, h, i, w] = word


@njit(cache=True)
def context_binarize(ctx, c, kind, alpha, thr, out):
    """The attention output's input bits: ``y = c P`` for ``P [B, H, L, d]`` (heads concatenated: channel h d + e),
    bits of ``y + thr`` into ``out [B * L, ceil(H d / 64)]``. Returns the NaN count."""
    B, H, L, d = ctx.shape
    cc = c[0]
    a = alpha[0]
    n_nan = 0
    for b in range(B):
        for l in range(L):
            r = b * L + l
            for w in range(out.shape[1]):
                out[r, w] = 0
            for h in range(H):
                for e in range(d):
                    n = h * d + e
                    v = _like(c, ctx[b, h, l, e]) * cc + thr[n]
                    if v != v:
                        n_nan += 1
                    if _bit(v, kind, a):
                        out[r, n >> 6] |= _ONE << np.uint64(n & 63)
    return n_nan
