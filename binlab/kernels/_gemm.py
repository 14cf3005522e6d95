"""The numba kernels behind :mod:`binlab.kernels` (private: the checks live in the public wrappers).

Layouts (all C-contiguous numpy arrays):
* words ``[rows, KW]`` uint64: row r's signs, element k in bit ``k % 64`` of word ``k // 64``.
* blocks ``[B, NB, KW, 8]`` uint64: the right operand cut into blocks of 8 columns; for each
  word index w the 8 columns' words are adjacent, so one 512-bit load fetches word w of 8 columns.
  NB is a multiple of ``BLOCK_ALIGN``; missing columns are zero words.

The SIMD GEMM is an *outer-product* micro-kernel: for each word index w it broadcasts one word of
each of 8 activation rows, XORs it with word w of 16 weight columns (two ``Words8`` loads),
popcounts and accumulates, so 16 accumulators of 8 lanes each stay in registers for the whole
reduction (the inner loop is 2 loads, 8 broadcasts and 16 x (xor, popcount, add)). That needs
32 vector registers (AVX-512); with 16 (AVX2) the one-row kernel (4 accumulators) runs instead.

Every kernel comes in a serial form ``*_range(first, last, ...)`` that works on a range of tasks,
and a parallel form that splits the tasks into ``n_chunks`` contiguous ranges and runs them under
``prange`` (tiny problems skip the thread launch). ``cache=True`` keeps the compiled code on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from binlab.kernels._simd import (
    affine,
    finish16,
    lane8,
    load8,
    nan_bits64,
    nan_lanes8,
    popcount,
    popcount8,
    positive_bits64,
    positive_lanes8,
    shl8,
    sign_bits64,
    sign_lanes8,
    splat8,
    zeros8,
)

LANES = 8  # words per Words8 register: one block holds 8 columns
TILE_ROWS = 8  # activation rows of the main micro-kernel (8 rows x 2 blocks)
BLOCK_ALIGN = 4  # stored blocks are a multiple of this (the one-row kernel takes 4 blocks)
PANEL_BLOCKS = 16  # column blocks per task (128 columns)


# ----------------------------------------------------------------------------------------------
# packing


@njit(cache=True)
def pack_range(r0, r1, x, out, positive):
    """Pack rows ``r0 <= r < r1`` of ``x [R, K]`` into ``out [R, KW]``; return the NaN count.

    Bit j of word w of row r is ``x[r, 64 w + j] >= 0`` (``> 0`` when ``positive``); padding bits 0.
    """
    K = x.shape[1]
    KW = out.shape[1]
    full = K // 64
    n_nan = 0
    for r in range(r0, r1):
        base = r * K
        for w in range(full):
            i = base + 64 * w
            out[r, w] = positive_bits64(x, i) if positive else sign_bits64(x, i)
            n_nan += popcount(nan_bits64(x, i))
        if full < KW:  # the last, partial word
            word = np.uint64(0)
            for j in range(K - 64 * full):
                value = x[r, 64 * full + j]
                if value != value:
                    n_nan += 1
                if (value > 0) if positive else (value >= 0):
                    word |= np.uint64(1) << np.uint64(j)
            out[r, full] = word
    return n_nan


@njit(cache=True, parallel=True)
def pack_parallel(n_chunks, x, out, positive):
    rows = x.shape[0]
    n_nan = 0
    for c in prange(n_chunks):
        n_nan += pack_range(c * rows // n_chunks, (c + 1) * rows // n_chunks, x, out, positive)
    return n_nan


@njit(cache=True)
def pack_columns_range(r0, r1, y, out, positive):
    """Pack along the *second-to-last* axis: ``y [R, T, D]`` -> ``out [R, D, ceil(T / 64)]``.

    ``out[r, d]`` holds the signs of the column ``y[r, :, d]``: the layout ``pack_signs`` gives
    for ``y.transpose(-1, -2)``, without making that transposed copy. Eight columns at a time:
    lane c of a ``Words8`` collects the bits of column d0 + c while j walks down the rows.
    Rows ``r0 <= r < r1``; returns the NaN count.
    """
    R, T, D = y.shape
    TW = out.shape[2]
    D8 = D - D % LANES
    n_nan = 0
    for r in range(r0, r1):
        for w in range(TW):
            rows = min(64, T - 64 * w)
            for d0 in range(0, D8, LANES):
                word = zeros8()
                nans = zeros8()
                i = (r * T + 64 * w) * D + d0  # flat index of y[r, 64 w, d0]
                if positive:
                    for j in range(rows):
                        word |= shl8(positive_lanes8(y, i + j * D), j)
                        nans += nan_lanes8(y, i + j * D)
                else:
                    for j in range(rows):
                        word |= shl8(sign_lanes8(y, i + j * D), j)
                        nans += nan_lanes8(y, i + j * D)
                for c in range(LANES):
                    out[r, d0 + c, w] = lane8(word, c)
                    n_nan += lane8(nans, c)
            for d in range(D8, D):  # the last D % 8 columns, one at a time
                bits = np.uint64(0)
                for j in range(rows):
                    value = y[r, 64 * w + j, d]
                    n_nan += value != value
                    if (value > 0) if positive else (value >= 0):
                        bits |= np.uint64(1) << np.uint64(j)
                out[r, d, w] = bits
    return n_nan


@njit(cache=True, parallel=True)
def pack_columns_parallel(n_chunks, y, out, positive):
    rows = y.shape[0]
    n_nan = 0
    for c in prange(n_chunks):
        n_nan += pack_columns_range(c * rows // n_chunks, (c + 1) * rows // n_chunks, y, out,
                                    positive)
    return n_nan


@njit(cache=True)
def block_columns(words, blocks, col_ones):
    """Copy ``words [B, N, KW]`` into the column-blocked ``blocks [B, NB, KW, 8]`` (zero padded)
    and count each column's ones into ``col_ones [B, 8 NB]`` (int32; 0 for padding columns)."""
    B, N, KW = words.shape
    NB = blocks.shape[1]
    for b in range(B):
        for jb in range(NB):
            for c in range(LANES):
                n = jb * LANES + c
                ones = 0
                if n < N:
                    for w in range(KW):
                        blocks[b, jb, w, c] = words[b, n, w]
                        ones += popcount(words[b, n, w])
                else:
                    for w in range(KW):
                        blocks[b, jb, w, c] = 0
                col_ones[b, n] = ones


# ----------------------------------------------------------------------------------------------
# SIMD GEMM: out[b, m, n] = c0[b, n] - (sum_w popcount(a[b, m, w] ^ col[b, n, w]) << shift)
#   XNOR product of +-1 operands: c0 = K, shift = 1            (K - 2 popcount(a ^ b))
#   AND product {0,1} x +-1:      c0 = popcount(col), shift = 0 (see products.and_gemm)
# and, when scale is given, out = scale[n] * that + bias[n] in float.
#
# A task is one batch item x one row unit x one panel of PANEL_BLOCKS column blocks. A row unit is
# either 8 rows (micro-kernel 8 x 16: 16 accumulators) or a single row (micro-kernel 1 x 32:
# 4 accumulators): the M % 8 rows left over, or every row when tile_rows == 1. Everything is
# written out in one function: numba reference-counts arrays passed to helper functions, which
# costs more than the epilogue itself (measured: 3x slower at K = 768).


def n_blocks_for(n: int) -> int:
    """Column blocks stored for n columns: ceil(n / 8) rounded up to a multiple of BLOCK_ALIGN."""
    blocks = -(-n // LANES)
    return -(-blocks // BLOCK_ALIGN) * BLOCK_ALIGN


def gemm_tasks(a, blocks, tile_rows: int = TILE_ROWS) -> int:
    """Number of tasks of :func:`gemm_range` for these operands."""
    B, M, _ = a.shape
    full = M // TILE_ROWS if tile_rows == TILE_ROWS else 0
    units = full + M - full * TILE_ROWS
    return B * units * (-(-blocks.shape[1] // PANEL_BLOCKS))


@njit(cache=True)
def gemm_range(t0, t1, a, blocks, c0, shift, out, scale, bias, tile_rows):
    """Tasks ``t0 <= t < t1`` of the SIMD GEMM.

    a [B, M, KW] words; blocks [B, NB, KW, 8] with NB a multiple of BLOCK_ALIGN; c0 [B or 1, 8 NB]
    int32; out [B, M, N] int32, or float32 with scale and bias float32 [8 NB].
    """
    B, M, KW = a.shape
    NB = blocks.shape[1]
    N = out.shape[2]
    n_used = (N + LANES - 1) // LANES  # blocks holding real columns
    full_units = M // TILE_ROWS if tile_rows == TILE_ROWS else 0  # 8-row units; the rest: 1 row
    units = full_units + M - full_units * TILE_ROWS
    n_panels = (NB + PANEL_BLOCKS - 1) // PANEL_BLOCKS
    per_item = units * n_panels
    rows = a.reshape(B * M, KW)
    bw = KW * LANES  # words per column block
    tile = np.empty(TILE_ROWS * 2 * LANES, np.int32)  # results of a tile at the right edge
    for t in range(t0, t1):
        b = t // per_item
        unit = (t - b * per_item) // n_panels
        panel = t - b * per_item - unit * n_panels
        c0_base = (b if c0.shape[0] > 1 else 0) * c0.shape[1]
        jb_end = min((panel + 1) * PANEL_BLOCKS, n_used)
        if unit < full_units:
            # ---- 8 rows x 16 columns per step -------------------------------------------------
            m0 = unit * TILE_ROWS
            r0 = b * M + m0
            o0 = (b * M + m0) * N  # flat offset of out[b, m0, 0]
            for jb in range(panel * PANEL_BLOCKS, jb_end, 2):
                lo = (b * NB + jb) * bw
                hi = lo + bw
                acc0l = zeros8()
                acc0h = zeros8()
                acc1l = zeros8()
                acc1h = zeros8()
                acc2l = zeros8()
                acc2h = zeros8()
                acc3l = zeros8()
                acc3h = zeros8()
                acc4l = zeros8()
                acc4h = zeros8()
                acc5l = zeros8()
                acc5h = zeros8()
                acc6l = zeros8()
                acc6h = zeros8()
                acc7l = zeros8()
                acc7h = zeros8()
                for w in range(KW):
                    bl = load8(blocks, lo + LANES * w)  # word w of columns n .. n + 7
                    bh = load8(blocks, hi + LANES * w)  # word w of columns n + 8 .. n + 15
                    x = splat8(rows[r0, w])
                    acc0l += popcount8(x ^ bl)
                    acc0h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 1, w])
                    acc1l += popcount8(x ^ bl)
                    acc1h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 2, w])
                    acc2l += popcount8(x ^ bl)
                    acc2h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 3, w])
                    acc3l += popcount8(x ^ bl)
                    acc3h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 4, w])
                    acc4l += popcount8(x ^ bl)
                    acc4h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 5, w])
                    acc5l += popcount8(x ^ bl)
                    acc5h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 6, w])
                    acc6l += popcount8(x ^ bl)
                    acc6h += popcount8(x ^ bh)
                    x = splat8(rows[r0 + 7, w])
                    acc7l += popcount8(x ^ bl)
                    acc7h += popcount8(x ^ bh)
                n = jb * LANES
                c = c0_base + n
                if n + 2 * LANES <= N:  # interior: one 16-column store per row
                    finish16(out, o0 + n, acc0l, acc0h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + N + n, acc1l, acc1h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 2 * N + n, acc2l, acc2h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 3 * N + n, acc3l, acc3h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 4 * N + n, acc4l, acc4h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 5 * N + n, acc5l, acc5h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 6 * N + n, acc6l, acc6h, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + 7 * N + n, acc7l, acc7h, c0, c, shift, scale, bias, n)
                else:  # right edge of the matrix: finish into the scratch tile, copy what exists
                    finish16(tile, 0, acc0l, acc0h, c0, c, shift, None, None, 0)
                    finish16(tile, 16, acc1l, acc1h, c0, c, shift, None, None, 0)
                    finish16(tile, 32, acc2l, acc2h, c0, c, shift, None, None, 0)
                    finish16(tile, 48, acc3l, acc3h, c0, c, shift, None, None, 0)
                    finish16(tile, 64, acc4l, acc4h, c0, c, shift, None, None, 0)
                    finish16(tile, 80, acc5l, acc5h, c0, c, shift, None, None, 0)
                    finish16(tile, 96, acc6l, acc6h, c0, c, shift, None, None, 0)
                    finish16(tile, 112, acc7l, acc7h, c0, c, shift, None, None, 0)
                    for r in range(TILE_ROWS):
                        for j in range(N - n):
                            out[b, m0 + r, n + j] = affine(tile[16 * r + j], scale, bias, n + j)
        else:
            # ---- one row x 32 columns per step (the M % 8 rows left over) ----------------------
            m = full_units * TILE_ROWS + unit - full_units
            r0 = b * M + m
            o0 = (b * M + m) * N
            for jb in range(panel * PANEL_BLOCKS, jb_end, 4):
                base = (b * NB + jb) * bw
                acc0 = zeros8()
                acc1 = zeros8()
                acc2 = zeros8()
                acc3 = zeros8()
                for w in range(KW):
                    x = splat8(rows[r0, w])
                    acc0 += popcount8(x ^ load8(blocks, base + LANES * w))
                    acc1 += popcount8(x ^ load8(blocks, base + bw + LANES * w))
                    acc2 += popcount8(x ^ load8(blocks, base + 2 * bw + LANES * w))
                    acc3 += popcount8(x ^ load8(blocks, base + 3 * bw + LANES * w))
                n = jb * LANES
                c = c0_base + n
                if n + 4 * LANES <= N:
                    finish16(out, o0 + n, acc0, acc1, c0, c, shift, scale, bias, n)
                    finish16(out, o0 + n + 16, acc2, acc3, c0, c + 16, shift, scale, bias, n + 16)
                else:
                    finish16(tile, 0, acc0, acc1, c0, c, shift, None, None, 0)
                    finish16(tile, 16, acc2, acc3, c0, c + 16, shift, None, None, 0)
                    for j in range(N - n):
                        out[b, m, n + j] = affine(tile[j], scale, bias, n + j)


@njit(cache=True, parallel=True)
def gemm_parallel(n_chunks, n_tasks, a, blocks, c0, shift, out, scale, bias, tile_rows):
    for c in prange(n_chunks):
        gemm_range(c * n_tasks // n_chunks, (c + 1) * n_tasks // n_chunks,
                   a, blocks, c0, shift, out, scale, bias, tile_rows)


# ----------------------------------------------------------------------------------------------
# portable scalar kernels: one output at a time, scalar popcount, plain [B, N, KW] layout


@njit(cache=True, parallel=True)
def xnor_scalar(a, b, k, out):
    """out[i, m, n] = k - 2 * sum_w popcount(a[i, m, w] ^ b[i, n, w])."""
    B, M, KW = a.shape
    N = b.shape[1]
    for t in prange(B * M):
        i = t // M
        m = t - i * M
        for n in range(N):
            differ = 0
            for w in range(KW):
                differ += popcount(a[i, m, w] ^ b[i, n, w])
            out[i, m, n] = k - 2 * differ


@njit(cache=True, parallel=True)
def and_scalar(p, v, out):
    """out[i, m, n] = 2 * sum_w popcount(p[i, m, w] & v[i, n, w]) - sum_w popcount(p[i, m, w])."""
    B, M, KW = p.shape
    N = v.shape[1]
    for t in prange(B * M):
        i = t // M
        m = t - i * M
        ones = 0
        for w in range(KW):
            ones += popcount(p[i, m, w])
        for n in range(N):
            both = 0
            for w in range(KW):
                both += popcount(p[i, m, w] & v[i, n, w])
            out[i, m, n] = 2 * both - ones


# ----------------------------------------------------------------------------------------------
# the machine's limit: xor + popcount + add on registers only, no memory traffic

PEAK_CHAINS = 12  # independent accumulators: enough to hide the popcount latency


@njit(cache=True)
def popcount_peak_range(n_iter, seed):
    """``n_iter`` x 12 (xor, popcount, add) steps on ``Words8`` registers; returns a checksum.

    Each step is the micro-kernel's inner operation with the loads taken away, so
    ``12 * n_iter * 512`` bit pairs per call over the wall time is the core's popcount limit.
    """
    x = splat8(seed)
    one = splat8(1)
    k0 = splat8(seed * 3 + 1)
    k1 = splat8(seed * 5 + 2)
    k2 = splat8(seed * 7 + 3)
    k3 = splat8(seed * 11 + 4)
    k4 = splat8(seed * 13 + 5)
    k5 = splat8(seed * 17 + 6)
    k6 = splat8(seed * 19 + 7)
    k7 = splat8(seed * 23 + 8)
    k8 = splat8(seed * 29 + 9)
    k9 = splat8(seed * 31 + 10)
    k10 = splat8(seed * 37 + 11)
    k11 = splat8(seed * 41 + 12)
    a0 = zeros8()
    a1 = zeros8()
    a2 = zeros8()
    a3 = zeros8()
    a4 = zeros8()
    a5 = zeros8()
    a6 = zeros8()
    a7 = zeros8()
    a8 = zeros8()
    a9 = zeros8()
    a10 = zeros8()
    a11 = zeros8()
    for _ in range(n_iter):
        a0 += popcount8(x ^ k0)
        a1 += popcount8(x ^ k1)
        a2 += popcount8(x ^ k2)
        a3 += popcount8(x ^ k3)
        a4 += popcount8(x ^ k4)
        a5 += popcount8(x ^ k5)
        a6 += popcount8(x ^ k6)
        a7 += popcount8(x ^ k7)
        a8 += popcount8(x ^ k8)
        a9 += popcount8(x ^ k9)
        a10 += popcount8(x ^ k10)
        a11 += popcount8(x ^ k11)
        x = x + one
    total = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7) + (a8 + a9) + (a10 + a11)
    checksum = np.uint64(0)
    for j in range(LANES):
        checksum += lane8(total, j)
    return checksum


@njit(cache=True, parallel=True)
def popcount_peak_parallel(n_chunks, n_iter, seed):
    checksum = np.uint64(0)
    for c in prange(n_chunks):
        checksum += popcount_peak_range(n_iter, seed + c)
    return checksum
