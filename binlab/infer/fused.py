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
    scores_softmax_binarize, scores_bool_binarize: Q, K bits -> the same bits, Q K^T computed inside (no scores array)
    context_binarize  context P [B, H, L, d] -> c P -> bits along the concatenated heads

Where bits follow the affine step directly (Q, K, V; ReLU into FFN2), the bit is a monotone function of the integer
P per channel, so ``product_thresholds`` finds, once per model, the P at which it flips (with the same float
operations), and ``threshold_bits`` / ``qkv_threshold_bits`` produce the same bits by integer compares alone.
Through GELU (which falls, then rises) the bits are ``P <= lo or P >= hi`` plus, in float32, a few ones in a
64-wide window between them: ``table_thresholds`` reads them off a table of every P's bit
(:func:`binlab.infer.engine.gelu_thresholds` fills it with torch's GELU).

Every float operation runs in the dtype of the arrays passed (float32 or float64: one compiled version each), in
the order the fake-quant model computes it. Kinds are ints: :data:`KIND_CODES`. Functions that read floats return
the number of NaNs they met, for the caller to raise on (a NaN has no bit).

``softmax_binarize_parallel(n_chunks, ...)`` is BiT's softmax with its (batch row, head) pairs cut into contiguous
ranges under ``prange``; every row is computed by the same operations in the same order, so its bits are the serial
kernel's whatever the thread count. :mod:`binlab.infer.rows` runs the row-wise kernels the same way on parts of
the rows (and holds the LayerNorm, fused with the bits that follow it).
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numba import njit, prange
from numba.extending import overload

from binlab.kernels._simd import popcount

__all__ = ["KIND_CODES", "embed", "binarize_rows", "affine_binarize", "affine", "affine_residual", "qkv_binarize",
           "product_thresholds", "table_thresholds", "threshold_bits", "window_bits", "qkv_threshold_bits",
           "softmax_binarize", "softmax_binarize_parallel", "scores_softmax_binarize",
           "scores_softmax_binarize_parallel",
           "bool_binarize", "scores_bool_binarize", "context_binarize"]

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


_LITTLE = sys.byteorder == "little"
_MAGIC = np.uint64(0x0102040810204080)  # (8 bytes of 0 / 1) * _MAGIC >> 56: byte g's bit at bit g (little-endian)


@njit(cache=True, inline="always")
def _bytes(n):
    """A zeroed byte per bit for ``n`` bits, padded to whole words (the kernels' scratch row)."""
    return np.zeros(64 * ((n + 63) // 64) + 64, np.uint8)


@njit(cache=True, inline="always")
def _pack(bits, b8, start, count):
    """One word from ``count`` <= 64 bytes of 0 / 1 at ``bits[start:]`` (bit t = byte start + t); ``b8`` is
    ``bits`` viewed as uint64: 8 bytes at a time with one multiply where ``start`` is a multiple of 8."""
    word = np.uint64(0)
    t = 0
    if _LITTLE and (start & 7) == 0:
        g0 = start >> 3
        for g in range(count >> 3):
            word |= ((b8[g0 + g] * _MAGIC) >> np.uint64(56)) << np.uint64(8 * g)
        t = count & ~7
    for k in range(t, count):
        word |= np.uint64(bits[start + k]) << np.uint64(k)
    return word


@njit(cache=True, inline="always")
def _row_bits(v, kind, a, bits, n):
    """``bits[n]`` = the bit of ``v``; returns 1 for a NaN (kept branch-free, so that the loops vectorize)."""
    if kind == 2:
        bits[n] = v / a > 0.5
    else:
        bits[n] = v >= 0
    return v != v


@njit(cache=True)
def embed(ids, types, bits, scale, pos, tt, out):
    """``out[b, l] = (scale[id] * s(id) + pos[l]) + tt[type]``, s(id) = +-1 from row ``id`` of the packed table."""
    B, L, D = out.shape
    for b in range(B):
        for l in range(L):
            i = ids[b, l]
            s = scale[i]
            o, p, tr, row = out[b, l], pos[l], tt[types[b, l]], bits[i]
            for w in range(row.shape[0]):  # word by word, s * (+-1) (= +-s exactly): the loop vectorizes, 3x faster
                word = row[w]
                for k in range(min(64, D - 64 * w)):
                    on = np.int64((word >> np.uint64(k)) & _ONE)
                    o[64 * w + k] = (s * _like(scale, 2 * on - 1) + p[64 * w + k]) + tr[64 * w + k]


@njit(cache=True)
def embed_split(ids, types, bits1, scale1, bits2, scale2, pos, tt, out):
    """BinaryBERT's split table: ``out[b, l] = ((E_1[id] + E_2[id]) + pos[l]) + tt[type]``, each half's row
    ``E_h[id] = scale_h[id] * s_h(id)`` from its own packed table (the fake-quant model's order of the sums)."""
    B, L, D = out.shape
    for b in range(B):
        for l in range(L):
            i = ids[b, l]
            s1, s2 = scale1[i], scale2[i]
            t = types[b, l]
            for d in range(D):
                sh = np.uint64(d & 63)
                w1 = s1 if (bits1[i, d >> 6] >> sh) & _ONE else -s1
                w2 = s2 if (bits2[i, d >> 6] >> sh) & _ONE else -s2
                out[b, l, d] = ((w1 + w2) + pos[l, d]) + tt[t, d]


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


@njit(cache=True, inline="always")
def _affine_bit(P, c, b, relu, t, kind, a):
    """The bit of one product ``P`` as :func:`affine_binarize` and :func:`qkv_binarize` compute it: ``y = c P + b``,
    ReLU if ``relu``, ``v = y + t``; and ``v`` (to check it is finite)."""
    y = _like(c, P) * c[0] + b[0]
    if relu and y < _like(c, 0):
        y = _like(c, 0)
    v = y + t[0]
    return _bit(v, kind, a), v


@njit(cache=True)
def product_thresholds(k, c, b, relu, kind, alpha, thr, lo, hi):
    """Integer thresholds that give the bits of ``c * P + b`` (ReLU if ``relu``) ``+ thr`` for every product P of
    length ``k``: ``bit(P) = P <= lo[n] or P >= hi[n]``. Returns False (lo, hi unusable) if a value is not finite.

    ``c, b, thr [N]``, ``lo, hi [N]`` int32. Every rounding in y, the ReLU, ``y + t`` and ``v / alpha > 1/2`` (alpha
    > 0) or ``v >= 0`` is nondecreasing in its input, so the bit is nondecreasing in P for c > 0 (found by a binary
    search: hi = its first 1), nonincreasing for c < 0 (lo = its last 1), constant for c = 0. P lies in [-k, k];
    the search runs over every integer there, with the float operations of the kernels it replaces, so the bits
    are theirs. Finite at both ends means finite in between (monotone), so no NaN can occur."""
    a = alpha[0]
    never_lo, never_hi = -k - 1, k + 1
    for n in range(c.shape[0]):
        cn, bn, tn = c[n:n + 1], b[n:n + 1], thr[n:n + 1]
        bit_lo, v_lo = _affine_bit(-k, cn, bn, relu, tn, kind, a)
        bit_hi, v_hi = _affine_bit(k, cn, bn, relu, tn, kind, a)
        if not (v_lo - v_lo == 0 and v_hi - v_hi == 0):
            return False
        if c[n] > 0:  # nondecreasing: the first P whose bit is 1 (k + 1 if none)
            left, right = -k, k + 1
            while left < right:
                mid = (left + right) >> 1
                if _affine_bit(mid, cn, bn, relu, tn, kind, a)[0]:
                    right = mid
                else:
                    left = mid + 1
            lo[n], hi[n] = never_lo, left
        elif c[n] < 0:  # nonincreasing: the last P whose bit is 1 (-k - 1 if none)
            left, right = -k - 1, k
            while left < right:
                mid = (left + right + 1) >> 1
                if _affine_bit(mid, cn, bn, relu, tn, kind, a)[0]:
                    left = mid
                else:
                    right = mid - 1
            lo[n], hi[n] = left, never_hi
        else:
            lo[n], hi[n] = (k if bit_lo else never_lo), never_hi
    return True


@njit(cache=True)
def threshold_bits(prod, lo, hi, out):
    """:func:`affine_binarize` by integer thresholds (:func:`product_thresholds`, :func:`table_thresholds`): bit =
    ``P <= lo or P >= hi``, a byte per bit along the row, then words (:func:`_pack`). No float operation, so no
    NaN."""
    R, N = prod.shape
    bits = _bytes(N)
    b8 = bits.view(np.uint64)
    for r in range(R):
        pr = prod[r]
        for n in range(N):
            bits[n] = (pr[n] <= lo[n]) | (pr[n] >= hi[n])
        for w in range(out.shape[1]):
            out[r, w] = _pack(bits, b8, 64 * w, min(64, N - 64 * w))


@njit(cache=True)
def window_bits(prod, chans, w0, wm, out):
    """The ones :func:`threshold_bits` leaves out on the channels ``chans [C]`` that have a window
    (:func:`table_thresholds`): bit n of row r is set where ``w0 <= P < w0 + 64`` and bit ``P - w0`` of ``wm`` is
    (``w0, wm [C]``, one per listed channel). A pass over those channels only: most layers list none."""
    for r in range(prod.shape[0]):
        for q in range(chans.shape[0]):
            n = chans[q]
            off = np.int64(prod[r, n]) - w0[q]
            if 0 <= off < 64 and (wm[q] >> np.uint64(off)) & _ONE:
                out[r, n >> 6] |= _ONE << np.uint64(n & 63)


@njit(cache=True)
def table_thresholds(bits, k, step, lo, hi, w0, wm):
    """The thresholds of :func:`threshold_bits` and the windows of :func:`window_bits` from a table of bits:
    ``bits [NP, N]`` (0 / 1) holds channel n's bit for the product ``P = -k + step * i`` in row i (every P the
    product can take: ``step`` 2 for an XNOR product, whose P has the parity of k, 1 for an AND product). For any
    function of P, not only a monotone one: lo is the last P of the leading run of ones, hi the first of the
    trailing run, and the ones between them must fit in one 64-wide window (``w0``, ``wm``: ``wm = 0`` for none).
    Returns False if for some channel they do not."""
    NP, N = bits.shape
    for n in range(N):
        lead = 0
        while lead < NP and bits[lead, n]:
            lead += 1
        lo[n], hi[n], w0[n], wm[n] = -k - 1, k + 1, k + 1, np.uint64(0)
        if lead == NP:  # every bit 1
            lo[n] = k
            continue
        trail = 0
        while bits[NP - 1 - trail, n]:
            trail += 1
        if lead:
            lo[n] = -k + step * (lead - 1)
        if trail:
            hi[n] = -k + step * (NP - trail)
        for i in range(lead, NP - trail):
            if bits[i, n]:
                p = -k + step * i
                if wm[n] == 0:  # the first one between lo and hi opens the window
                    w0[n] = p
                if p - w0[n] >= 64:
                    return False
                wm[n] |= _ONE << np.uint64(p - w0[n])
    return True


@njit(cache=True)
def qkv_threshold_units(u0, u1, prod, lo, hi, L, H, d, q_out, k_out, v_out):
    """Units ``u0 <= u < u1`` of :func:`qkv_threshold_bits`: unit u is tokens ``64 t .. 64 t + 63`` of batch row
    ``bb`` (u = bb * ceil(L / 64) + t), so that a run of units writes whole words of V (the parallel form,
    :func:`binlab.infer.rows.qkv_threshold_bits_parallel`, gives each thread such a run)."""
    A = prod.shape[2]
    n_words = (L + 63) // 64
    bits = _bytes(A)
    b8 = bits.view(np.uint64)
    acc = np.zeros(A, np.uint64)
    for u in range(u0, u1):
        bb = u // n_words
        l0 = 64 * (u - bb * n_words)
        for l in range(l0, min(L, l0 + 64)):
            r = bb * L + l
            for j in range(2):
                pr, lj, hj = prod[j, r], lo[j], hi[j]
                for n in range(A):
                    bits[n] = (pr[n] <= lj[n]) | (pr[n] >= hj[n])
                _pack_heads(bits, b8, q_out if j == 0 else k_out, bb, l, H, d)
            sh = np.uint64(l & 63)
            pr, lj, hj = prod[2, r], lo[2], hi[2]
            for n in range(A):
                acc[n] |= np.uint64((pr[n] <= lj[n]) | (pr[n] >= hj[n])) << sh
            _flush_tokens(acc, v_out, bb, l, L, H, d)


@njit(cache=True)
def qkv_threshold_bits(prod, lo, hi, L, H, d, q_out, k_out, v_out):
    """:func:`qkv_binarize` by integer thresholds ``lo, hi [3, A]`` (:func:`product_thresholds` per Q, K, V); the
    same layouts. No float operation."""
    qkv_threshold_units(0, (prod.shape[1] // L) * ((L + 63) // 64), prod, lo, hi, L, H, d, q_out, k_out, v_out)


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


@njit(cache=True, inline="always")
def _pack_heads(bits, b8, out, bb, l, H, d):
    """Token l of batch row bb: a row of bytes per bit (channel h d + e) to ``out[bb, h, l]``, head by head (Q, K)."""
    for h in range(H):
        for w in range(out.shape[3]):
            out[bb, h, l, w] = _pack(bits, b8, h * d + 64 * w, min(64, d - 64 * w))


@njit(cache=True, inline="always")
def _flush_tokens(acc, v_out, bb, l, L, H, d):
    """V: when token l closes a word of 64 tokens (or the sequence), write each channel's word ``acc`` to
    ``v_out[bb, h, e]`` and clear it."""
    if (l & 63) == 63 or l == L - 1:
        lw = l >> 6
        for h in range(H):
            for e in range(d):
                v_out[bb, h, e, lw] = acc[h * d + e]
                acc[h * d + e] = 0


@njit(cache=True)
def qkv_binarize(prod, c, b, kinds, alphas, thr, L, H, d, q_out, k_out, v_out):
    """Q, K, V from their products ``P [3, B*L, H*d]``: ``y_j = c_j * P_j + b_j``, bits of ``y_j + thr_j``.

    Q and K go to ``[B, H, L, ceil(d / 64)]`` (packed along the head dimension, for Q K^T); V to
    ``[B, H, d, ceil(L / 64)]`` (packed along the tokens, for probs @ V). Returns the NaN count.

    Every loop runs along the contiguous channels of a row: Q and K as a byte per bit, then per head up to 64
    bytes to a word (:func:`_pack`); V into one word per channel (``acc``), bit ``l % 64`` for token l, written
    out when 64 tokens (or the sequence) are done.
    """
    R, A = prod.shape[1], prod.shape[2]
    bits = _bytes(A)
    b8 = bits.view(np.uint64)
    n_nan = 0
    for j in range(2):
        kind = kinds[j]
        a = alphas[j]
        out = q_out if j == 0 else k_out
        pj, cj, bj, tj = prod[j], c[j], b[j], thr[j]
        for r in range(R):
            bb = r // L
            l = r - bb * L
            pr = pj[r]
            if kind == 2:
                for n in range(A):
                    n_nan += _row_bits((_like(c, pr[n]) * cj[n] + bj[n]) + tj[n], 2, a, bits, n)
            else:
                for n in range(A):
                    n_nan += _row_bits((_like(c, pr[n]) * cj[n] + bj[n]) + tj[n], 0, a, bits, n)
            _pack_heads(bits, b8, out, bb, l, H, d)
    kind = kinds[2]
    a = alphas[2]
    pj, cj, bj, tj = prod[2], c[2], b[2], thr[2]
    acc = np.zeros(A, np.uint64)
    for r in range(R):
        bb = r // L
        l = r - bb * L
        sh = np.uint64(l & 63)
        pr = pj[r]
        if kind == 2:
            for n in range(A):
                v = (_like(c, pr[n]) * cj[n] + bj[n]) + tj[n]
                n_nan += v != v
                acc[n] |= np.uint64(v / a > 0.5) << sh
        else:
            for n in range(A):
                v = (_like(c, pr[n]) * cj[n] + bj[n]) + tj[n]
                n_nan += v != v
                acc[n] |= np.uint64(v >= 0) << sh
        _flush_tokens(acc, v_out, bb, l, L, H, d)
    return n_nan


@njit(cache=True)
def _softmax_direct(sc, sb, sh, b, h0, h1, cc, sd, mask, kind, a, out, row):
    """:func:`softmax_binarize` for batch row ``b``, heads ``h0 <= h < h1``, computed directly (one exp per score):
    the reference the table path below reproduces bit for bit, and what runs when its conditions do not hold. The
    float types are numba's unification of the expressions, as written: ``top`` and ``total`` float64, ``row`` the
    mask's dtype. The scores of head h are ``sc[sb, sh + h - h0]`` (``scores, b, h0``, or a scratch array)."""
    L = sc.shape[2]
    one = _like(mask, 1)
    n_nan = 0
    for h in range(h0, h1):
        for i in range(L):
            top = -np.inf
            for j in range(L):
                s = (_like(mask, sc[sb, sh + h - h0, i, j]) * cc) / sd + mask[b, j]
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
def _softmax_reference(scores, c, sqrt_d, mask, kind, alpha, out):
    """:func:`softmax_binarize` with one exp per score, every batch row (for the tests)."""
    row = np.empty(scores.shape[3], mask.dtype)
    n_nan = 0
    for b in range(scores.shape[0]):
        n_nan += _softmax_direct(scores, b, 0, b, 0, scores.shape[1], c[0], sqrt_d[0], mask, kind, alpha[0], out,
                                  row)
    return n_nan


_MAX_CLASSES = 4  # distinct mask values of one batch row the table path handles
_MAX_KEYS = 1024  # (mask value, score) pairs of one batch row it handles (tables of nk^2 float64 + nk^2 mask dtype)


@njit(cache=True)
def _mask_classes(mask, b, cls, u):
    """The distinct values of ``mask[b]`` (by bits: +0 and -0 apart) into ``u``, each key's index into ``cls``;
    the number of values, or -1 if there are more than ``len(u)``."""
    nu = 0
    for j in range(mask.shape[1]):
        m = mask[b, j]
        found = -1
        for q in range(nu):
            if m == u[q] and math.copysign(1.0, m) == math.copysign(1.0, u[q]):
                found = q
                break
        if found < 0:
            if nu == u.shape[0]:
                return -1
            u[nu] = m
            found = nu
            nu += 1
        cls[j] = found
    return nu


_NONE = np.int64(-(1 << 40))  # below every int32 score


@njit(cache=True)
def _softmax_heads(sc, sb, sh, b, h0, h1, cc, sd, mask, kind, a, out):
    """:func:`softmax_binarize`'s table path for batch row ``b``, heads ``h0 <= h < h1`` (its table spans the P of
    those heads only: the bits do not depend on the table's range). The scores of head ``h0 + h`` are
    ``sc[sb, sh + h]``: ``scores, b, h0``, or a scratch array the fused kernel filled. Returns the NaN count."""
    L = sc.shape[2]
    H = h1 - h0
    nw = out.shape[3]
    row = np.empty(L, mask.dtype)
    cls = np.empty(L, np.int64)
    u = np.empty(_MAX_CLASSES, mask.dtype)
    pmaxes = np.empty((H, L, _MAX_CLASSES), np.int64)
    tops = np.empty((H, L), np.int64)
    totals = np.empty(L, np.float64)
    pth = np.empty(_MAX_CLASSES, np.int64)
    kth = np.empty(L, np.int64)
    coff = np.empty(L, np.int64)
    zero = np.float64(_like(mask, 0))
    one = _like(mask, 1)
    nu = _mask_classes(mask, b, cls, u)
    if nu < 1 or not (cc > 0 and sd > 0 and a > 0):
        return _softmax_direct(sc, sb, sh, b, h0, h1, cc, sd, mask, kind, a, out, row)
    # the largest P of each class per row (every class has a key), the smallest and largest P
    pmin = np.int64(sc[sb, sh, 0, 0])
    pmax = pmin
    for h in range(H):
        for i in range(L):
            sr = sc[sb, sh + h, i]
            lo = sr[0]  # the row's extremes in the scores' own int type: the loops vectorize (4x at L = 128)
            if nu == 1:
                mx = lo
                for j in range(L):
                    v = sr[j]
                    lo = min(lo, v)
                    mx = max(mx, v)
                pmaxes[h, i, 0] = mx
                pmax = max(pmax, np.int64(mx))
            else:
                for j in range(L):
                    lo = min(lo, sr[j])
                for q in range(nu):
                    mx = _NONE
                    for j in range(L):
                        v = np.int64(sr[j]) if cls[j] == q else _NONE
                        mx = max(mx, v)
                    pmaxes[h, i, q] = mx
                    pmax = max(pmax, mx)
            pmin = min(pmin, np.int64(lo))
    NP = pmax - pmin + 1
    nk = NP * nu
    ok = nk <= _MAX_KEYS
    if ok:
        S = np.empty(nk, mask.dtype)
        for q in range(nu):
            for p in range(NP):
                s = (_like(mask, pmin + p) * cc) / sd + u[q]
                if not (s - s == 0):  # inf or NaN
                    ok = False
                S[q * NP + p] = s
    if ok:
        E = np.empty((nk, nk), np.float64)  # E[t, k] = exp(S[k] - S[t]) as the direct path computes it
        Es = np.empty((nk, nk), mask.dtype)  # ... stored in the mask's dtype, as its row[j]
        done = np.zeros(nk, np.bool_)
        for h in range(H):
            for i in range(L):
                t = -1
                for q in range(nu):
                    kq = q * NP + (pmaxes[h, i, q] - pmin)
                    if t < 0 or S[kq] > S[t]:
                        t = kq
                tops[h, i] = t
                if not done[t]:
                    top = np.float64(S[t])
                    for k in range(nk):
                        e = math.exp(S[k] - top)
                        E[t, k] = e
                        Es[t, k] = e
                    for q in range(nu):
                        for p in range(1, NP):
                            if Es[t, q * NP + p] < Es[t, q * NP + p - 1]:
                                ok = False
                    done[t] = True
    if not ok:
        return _softmax_direct(sc, sb, sh, b, h0, h1, cc, sd, mask, kind, a, out, row)
    for j in range(L):
        coff[j] = cls[j] * NP - pmin
    idx = np.empty((4, L), np.uint32)  # the table index of each key, 4 rows at a time: k = cls NP + P - P_min
    for h in range(H):
        sr = sc[sb, sh + h]
        i = 0
        while i < L:
            n = min(4, L - i)
            for r in range(n):  # a pass of its own (it vectorizes), unsigned (no negative-index fix-up per load)
                pr, ir = sr[i + r], idx[r]
                for j in range(L):
                    ir[j] = np.uint32(coff[j] + pr[j])
            if n == 4:
                e0, e1, e2, e3 = E[tops[h, i]], E[tops[h, i + 1]], E[tops[h, i + 2]], E[tops[h, i + 3]]
                i0, i1, i2, i3 = idx[0], idx[1], idx[2], idx[3]
                s0 = s1 = s2 = s3 = zero
                for j in range(L):
                    s0 += e0[i0[j]]
                    s1 += e1[i1[j]]
                    s2 += e2[i2[j]]
                    s3 += e3[i3[j]]
                totals[i], totals[i + 1], totals[i + 2], totals[i + 3] = s0, s1, s2, s3
            else:
                for r in range(n):
                    e0, i0 = E[tops[h, i + r]], idx[r]
                    s0 = zero
                    for j in range(L):
                        s0 += e0[i0[j]]
                    totals[i + r] = s0
            i += n
        for i in range(L):
            inv = one / totals[i]
            est = Es[tops[h, i]]
            for q in range(nu):  # the first P of class q whose bit is 1 (P_max + 1 if none)
                lo, hi = 0, NP
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if _bit(est[q * NP + mid] * inv, kind, a):
                        hi = mid
                    else:
                        lo = mid + 1
                pth[q] = pmin + lo
            pr, ob = sr[i], out[b, h0 + h, i]
            if nu == 1:
                th = pth[0]
                for w in range(nw):
                    word = np.uint64(0)
                    for jj in range(min(64, L - 64 * w)):
                        word |= np.uint64(np.int64(pr[64 * w + jj]) >= th) << np.uint64(jj)
                    ob[w] = word
            else:
                for j in range(L):
                    kth[j] = pth[cls[j]]
                for w in range(nw):
                    word = np.uint64(0)
                    for jj in range(min(64, L - 64 * w)):
                        j = 64 * w + jj
                        word |= np.uint64(np.int64(pr[j]) >= kth[j]) << np.uint64(jj)
                    ob[w] = word
    return 0  # the table path: every S is finite (checked above), so no NaN


@njit(cache=True)
def softmax_binarize(scores, c, sqrt_d, mask, kind, alpha, out):
    """BiT's attention bits: per query row, ``s = c P / sqrt(d) + mask``, ``p = softmax(s)``, bits of p along keys.

    ``scores [B, H, L, L]`` int32, ``mask [B, L]`` additive (0 or -10000), ``out [B, H, L, ceil(L / 64)]``.
    Softmax as torch computes it: ``exp(s - max s) * (1 / sum)``. Returns the NaN count.

    The bits are exactly those of :func:`_softmax_direct` (one ``exp`` per score, its float types included), from
    far fewer exps and no division per score. Per batch row: a score is an integer P in [P_min, P_max] and a
    key's mask one of a few values (its class q), so s takes the values ``S[q * NP + P - P_min]`` of a small table.
    With c > 0 and sqrt(d) > 0, s is nondecreasing in P (every rounding is), so a row's maximum is the S of the
    largest P of one of its classes (integer maxima), and ``exp(S[k] - S[top])`` is a table, filled once for each
    top that occurs. The sum still runs over the keys in order, in float64 (four rows at a time: independent
    chains). The bit of ``(Es * inv) / alpha > 1/2`` is nondecreasing in Es (inv > 0, alpha > 0), and Es, checked
    once per table, in P within a class: so the bits of a row are ``P >= P*_q``, P*_q found by a binary search
    over the table with the direct path's float operations. A batch row with more than :data:`_MAX_CLASSES` mask
    values, a table over :data:`_MAX_KEYS`, a non-finite S, c, sqrt(d) or alpha not > 0, or a table that is not
    monotone runs the direct path.
    """
    n_nan = 0
    for b in range(scores.shape[0]):
        n_nan += _softmax_heads(scores, b, 0, b, 0, scores.shape[1], c[0], sqrt_d[0], mask, kind, alpha[0], out)
    return n_nan


@njit(cache=True, parallel=True)
def softmax_binarize_parallel(n_chunks, scores, c, sqrt_d, mask, kind, alpha, out):
    """:func:`softmax_binarize` with the ``B * H`` (batch row, head) pairs cut into ``n_chunks`` contiguous ranges
    run under ``prange``; every row is computed as in the serial kernel, so the bits are the same."""
    B, H = scores.shape[0], scores.shape[1]
    n_tasks = B * H
    n_nan = 0
    for ch in prange(n_chunks):
        t = ch * n_tasks // n_chunks
        t1 = (ch + 1) * n_tasks // n_chunks
        while t < t1:
            b = t // H
            h0 = t - b * H
            h1 = min(H, h0 + t1 - t)
            n_nan += _softmax_heads(scores, b, h0, b, h0, h1, c[0], sqrt_d[0], mask, kind, alpha[0], out)
            t += h1 - h0
    return n_nan


#: heads per scratch block of the fused scores + softmax kernel: at least this many, more while the block holds at
#: most :data:`SCORE_BLOCK` scores (4 heads at L = 128, 64 KiB of int32 scores each: 1, 4 and 12 measured within
#: 2 % of each other there). A block shares one exp table, so short sentences want all their heads in one: at
#: 32 SST-2 sentences (L = 46) 12 heads a block took 2.45 ms a layer against 2.99 with 4 (serial).
SCORE_HEADS = 4
SCORE_BLOCK = 1 << 16


@njit(cache=True, inline="always")
def _scores_into(qw, kw, b, h0, h1, d, scratch):
    """``scratch[0, h - h0, i, j] = d - 2 popcount(Q_i xor K_j)`` summed over the words: the XNOR product of head
    h's packed signs (padding bits are 0 in both, so they cancel), the int32 of ``xnor_bmm``."""
    L, dw = qw.shape[2], qw.shape[3]
    for h in range(h0, h1):
        q, k, s = qw[b, h], kw[b, h], scratch[0, h - h0]
        for i in range(L):
            if dw == 1:
                qi = q[i, 0]
                for j in range(L):
                    s[i, j] = d - 2 * popcount(qi ^ k[j, 0])
            else:
                for j in range(L):
                    m = 0
                    for w in range(dw):
                        m += popcount(q[i, w] ^ k[j, w])
                    s[i, j] = d - 2 * m


@njit(cache=True)
def _scores_softmax_range(t0, t1, qw, kw, d, cc, sd, mask, kind, a, out):
    """(batch row, head) pairs ``t0 <= t < t1`` (t = b H + h): scores into a scratch block of
    :data:`SCORE_HEADS` or more heads, then the softmax's table path on it (:func:`_softmax_heads`)."""
    H, L = qw.shape[1], qw.shape[2]
    nh = max(SCORE_HEADS, min(H, SCORE_BLOCK // (L * L)))
    scratch = np.empty((1, nh, L, L), np.int32)
    n_nan = 0
    t = t0
    while t < t1:
        b = t // H
        h0 = t - b * H
        h1 = min(H, h0 + t1 - t, h0 + nh)
        _scores_into(qw, kw, b, h0, h1, d, scratch)
        n_nan += _softmax_heads(scratch, 0, 0, b, h0, h1, cc, sd, mask, kind, a, out)
        t += h1 - h0
    return n_nan


@njit(cache=True)
def scores_softmax_binarize(qw, kw, d, c, sqrt_d, mask, kind, alpha, out):
    """BiT's Q K^T and softmax bits in one pass: ``xnor_bmm(qw, kw, d)`` then :func:`softmax_binarize`, with each
    head's int32 scores in a small scratch block instead of a ``[B, H, L, L]`` array (the same integers, then the
    same operations: the same bits). ``qw, kw [B, H, L, ceil(d / 64)]`` packed signs. Returns the NaN count."""
    B, H = qw.shape[0], qw.shape[1]
    return _scores_softmax_range(0, B * H, qw, kw, d, c[0], sqrt_d[0], mask, kind, alpha[0], out)


@njit(cache=True, parallel=True)
def scores_softmax_binarize_parallel(n_chunks, qw, kw, d, c, sqrt_d, mask, kind, alpha, out):
    """:func:`scores_softmax_binarize` with the (batch row, head) pairs cut into ``n_chunks`` ranges under
    ``prange``, a scratch block per chunk."""
    n_tasks = qw.shape[0] * qw.shape[1]
    n_nan = 0
    for ch in prange(n_chunks):
        n_nan += _scores_softmax_range(ch * n_tasks // n_chunks, (ch + 1) * n_tasks // n_chunks, qw, kw, d, c[0],
                                       sqrt_d[0], mask, kind, alpha[0], out)
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
def scores_bool_binarize(qw, kw, d, zero_to_one, valid, out):
    """BiBERT's Q K^T and Bi-Attention bits in one pass (:func:`bool_binarize` of ``xnor_bmm(qw, kw, d)``, no
    scores array): with ``m = popcount(Q_i xor K_j)`` over the words, ``P = d - 2 m > 0`` is ``2 m < d`` (``<=``
    with ``zero_to_one``), on real keys; a byte per key, then words (:func:`_pack`)."""
    B, H, L, dw = qw.shape
    bits = _bytes(L)
    b8 = bits.view(np.uint64)
    limit = d + 1 if zero_to_one else d  # 2 m < limit
    for b in range(B):
        vb = valid[b]
        for h in range(H):
            q, k = qw[b, h], kw[b, h]
            for i in range(L):
                if dw == 1:
                    qi = q[i, 0]
                    for j in range(L):
                        bits[j] = vb[j] & (2 * popcount(qi ^ k[j, 0]) < limit)
                else:
                    for j in range(L):
                        m = 0
                        for w in range(dw):
                            m += popcount(q[i, w] ^ k[j, w])
                        bits[j] = vb[j] & (2 * m < limit)
                for w in range(out.shape[3]):
                    out[b, h, i, w] = _pack(bits, b8, 64 * w, min(64, L - 64 * w))


@njit(cache=True)
def context_binarize_tokens(r0, r1, ctx, c, kind, alpha, thr, out):
    """Token rows ``r0 <= r < r1`` (r = b L + l) of :func:`context_binarize`, on the whole arrays (a slice along
    the tokens of ``ctx`` would not be contiguous, and numba's loops over it run 3x slower); the NaN count."""
    H, L, d = ctx.shape[1], ctx.shape[2], ctx.shape[3]
    A = H * d
    cc = c[0]
    a = alpha[0]
    bits = _bytes(A)
    b8 = bits.view(np.uint64)
    n_nan = 0
    for r in range(r0, r1):
        b = r // L
        l = r - b * L
        for h in range(H):
            ch = ctx[b, h, l]
            base = h * d
            if kind == 2:
                for e in range(d):
                    n_nan += _row_bits(_like(c, ch[e]) * cc + thr[base + e], 2, a, bits, base + e)
            else:
                for e in range(d):
                    n_nan += _row_bits(_like(c, ch[e]) * cc + thr[base + e], 0, a, bits, base + e)
        for w in range(out.shape[1]):
            out[r, w] = _pack(bits, b8, 64 * w, min(64, A - 64 * w))
    return n_nan


@njit(cache=True)
def context_binarize(ctx, c, kind, alpha, thr, out):
    """The attention output's input bits: ``y = c P`` for ``P [B, H, L, d]`` (heads concatenated: channel h d + e),
    bits of ``y + thr`` into ``out [B * L, ceil(H d / 64)]``. Returns the NaN count.

    Per token: a byte per bit of every channel (contiguous along e), then 64 bytes to a word (:func:`_pack`)."""
    return context_binarize_tokens(0, ctx.shape[0] * ctx.shape[2], ctx, c, kind, alpha, thr, out)
