"""Bit packing and XNOR/AND-popcount matrix products: the arithmetic of a binarized network.

A binarized layer multiplies matrices whose entries are -1 or +1. Store each entry as one bit
(1 for +1, 0 for -1) and a dot product of length K becomes

    dot(a, b) = sum_k a_k b_k = (#agreements) - (#disagreements) = K - 2 * popcount(a XOR b)

so 64 multiply-adds cost one XOR and one popcount. Binarized attention also needs a {0,1} operand
(probabilities binarized to "attend or not", BiBERT's bool(A)) times a +-1 operand; with p the
{0,1} bits and v the sign bits,

    dot(p, v) = sum_{k: p_k = 1} v_k = 2 * popcount(p AND v) - popcount(p).

Conventions (shared by the whole book; exercise 1 uses the same):

* ``sign(0) = +1`` (larq's choice): the bit is 1 iff ``x >= 0``, so a binarized tensor really has
  two values. ``-0.0`` counts as 0, hence +1. NaN has no sign: packing a NaN raises ``ValueError``.
* Signs are packed along the **last axis** (the reduction axis K) into little-endian ``uint64``
  words: element k goes to bit ``k % 64`` of word ``k // 64``. The padding bits of the last word are
  0 in every operand, so they XOR to 0 and AND to 0 and K need not be a multiple of 64.
* A {0,1} tensor packs with bit 1 iff the value is ``> 0`` (:func:`pack_bits01`).
* **Packed words are numpy ``uint64`` arrays** (C-contiguous, shape ``[..., ceil(K / 64)]``).
  Float tensors go in as torch tensors; products come out as torch ``int32`` (exact) or, for
  :class:`BinaryLinear`, ``float32`` tensors.

Public API::

    pack_signs(x) -> words            unpack_signs(words, k) -> +-1 float32 tensor
    pack_bits01(x) -> words           unpack_bits01(words, k) -> {0,1} float32 tensor
    xnor_gemm(a_words, b_words, k)    C[m, n] = sum_k a[m, k] b[n, k]           (+-1 x +-1)
    and_gemm(p_words, v_words, k)     C[m, n] = sum_k p[m, k] v[n, k]           ({0,1} x +-1)
    xnor_bmm / and_bmm                the same per batch item ([..., M, KW] x [..., N, KW])
    PackedWeight.from_words(words, k) / PackedWeight.from_float(w)   right operand prepacked once
    BinaryLinear.from_float(weight, bias=None, alpha=None | 'tensor' | 'row')
    get_backend() / set_backend(name)  "simd8", "simd1" or "scalar"; every product takes backend=
    pack_signs_reference, xnor_dot_reference, and_dot_reference, xnor_gemm_reference,
    and_gemm_reference                plain Python/numpy versions to read (and to test against)

Attention: ``scores = sign(Q) sign(K)^T`` is ``xnor_bmm(pack_signs(q), pack_signs(k), head_dim)``.
For ``probs01 @ sign(V)`` the reduction runs over the *key* axis, so V is packed along tokens:
``and_bmm(pack_bits01(p), pack_signs(v.transpose(-1, -2)), n_keys)``.

How it runs. The kernels are numba functions (``binlab._gemm``) compiled once and cached on disk
(``cache=True``). numba has no popcount builtin; ``binlab._simd`` emits LLVM's ``ctpop`` through
``numba.extending.intrinsic``, which is a ``popcnt`` instruction, a ``vpopcntq`` (AVX512-VPOPCNTDQ)
or a ``vpshufb`` nibble-table popcount (AVX2) once vectorized. Three backends:

* ``"simd8"``: a register-tiled outer-product micro-kernel, 8 rows x 16 columns (16 accumulators
  of eight 64-bit lanes: one ``zmm`` each with AVX-512), over a column-blocked copy of the right
  operand (:class:`PackedWeight`). Rows left over (M % 8) go through the one-row kernel.
* ``"simd1"``: the same layout, one row x 32 columns at a time (4 accumulators), for CPUs with
  16 vector registers (AVX2), where the 8-row tile would spill.
* ``"scalar"``: plain loops, one output at a time, scalar popcount. Portable and easy to read.

The default is ``"simd8"`` with AVX-512, ``"simd1"`` with AVX2 or off x86, else ``"scalar"``;
the environment variable ``BINLAB_KERNEL_BACKEND`` or :func:`set_backend` overrides it, and every
product takes ``backend=``. All use every core (``numba.set_num_threads`` limits them); problems
too small to pay for a thread launch run on one core.

Debugging: run with ``NUMBA_DISABLE_JIT=1`` and every kernel, intrinsics included, runs as plain
Python/numpy (slowly), so ``pdb`` and ``print`` work inside it. Use small shapes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from binlab import _gemm

__all__ = [
    "pack_signs",
    "unpack_signs",
    "pack_bits01",
    "unpack_bits01",
    "xnor_gemm",
    "and_gemm",
    "xnor_bmm",
    "and_bmm",
    "PackedWeight",
    "BinaryLinear",
    "words_for",
    "get_backend",
    "set_backend",
    "BACKENDS",
    "pack_signs_reference",
    "xnor_dot_reference",
    "and_dot_reference",
    "xnor_gemm_reference",
    "and_gemm_reference",
]

BACKENDS = ("simd8", "simd1", "scalar")

# Below this many (row, column, word) triples a product runs on one core: a parallel launch costs
# more than it saves (measured in docs/benchmarks.md).
_PARALLEL_MIN_WORK = 1 << 17
_PACK_PARALLEL_MIN_ELEMENTS = 1 << 16


def words_for(k: int) -> int:
    """Number of uint64 words that hold k bits: ``ceil(k / 64)``."""
    return (k + 63) // 64


# ----------------------------------------------------------------------------------------------
# backend selection


def _default_backend() -> str:
    name = os.environ.get("BINLAB_KERNEL_BACKEND", "").strip().lower()
    if name:
        if name not in BACKENDS:
            raise ValueError(f"BINLAB_KERNEL_BACKEND={name!r}: expected one of {BACKENDS}")
        return name
    import platform

    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features:
        return "simd8"  # 32 vector registers hold the 8 x 16 tile's 16 accumulators
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686") or "+avx2" in features:
        return "simd1"
    return "scalar"


_backend: str | None = None


def get_backend() -> str:
    """The backend products use without ``backend=``: ``"simd8"``, ``"simd1"`` or ``"scalar"``."""
    global _backend
    if _backend is None:
        _backend = _default_backend()
    return _backend


def set_backend(name: str) -> None:
    """Choose the default backend for this process: one of :data:`BACKENDS`."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
    _backend = name


def _resolve(backend: str | None) -> str:
    if backend is None:
        return get_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    return backend


_threads: int | None = None


def _n_chunks() -> int:
    """Work is cut into this many chunks: numba's thread pool size (``NUMBA_NUM_THREADS``).

    ``numba.set_num_threads(n)`` still limits how many threads run them.
    """
    global _threads
    if _threads is None:
        import numba

        _threads = numba.config.NUMBA_NUM_THREADS
    return _threads


# ----------------------------------------------------------------------------------------------
# packing


def _pack(name: str, x, positive: bool) -> np.ndarray:
    """Shared path of pack_signs / pack_bits01 (written for a small per-call overhead)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    dtype = x.dtype
    if dtype is not torch.float32 and dtype is not torch.float64:
        if x.is_floating_point() or (positive and dtype is torch.bool):
            x = x.to(torch.float32)
        else:
            raise TypeError(f"{name}: expected a floating point tensor, got dtype {dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a tensor with at least one dimension, got a scalar")
    if not x.is_cpu:
        raise ValueError(f"{name}: the kernels run on the CPU; got a tensor on {x.device}")
    if x.requires_grad:
        x = x.detach()
    if not x.is_contiguous():
        if x.ndim >= 2 and x.transpose(-1, -2).is_contiguous():
            return _pack_transposed(name, x, positive)
        x = x.contiguous()
    array = x.numpy()
    if array.size == 0:
        raise ValueError(f"{name}: empty input of shape {array.shape}")
    k = array.shape[-1]
    out = np.empty((*array.shape[:-1], (k + 63) // 64), np.uint64)
    if array.ndim != 2:
        array = array.reshape(-1, k)
    rows = array.shape[0]
    if array.size >= _PACK_PARALLEL_MIN_ELEMENTS and rows > 1:
        n_nan = _gemm.pack_parallel(min(_n_chunks(), rows), array, out.reshape(rows, -1), positive)
    else:
        n_nan = _gemm.pack_range(0, rows, array, out if out.ndim == 2 else out.reshape(rows, -1),
                                 positive)
    if n_nan:
        raise ValueError(f"{name}: input contains {n_nan} NaN value(s); NaN has no sign")
    return out


def _pack_transposed(name: str, x: torch.Tensor, positive: bool) -> np.ndarray:
    """Pack ``x [..., D, T]`` that is the transpose of a contiguous ``[..., T, D]`` tensor."""
    y = x.transpose(-1, -2).numpy()  # contiguous [..., T, D]
    if y.size == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(x.shape)}")
    t, d = y.shape[-2:]
    y3 = y.reshape(-1, t, d)
    out = np.empty((*x.shape[:-1], (t + 63) // 64), np.uint64)
    out3 = out.reshape(y3.shape[0], d, -1)
    if y.size >= _PACK_PARALLEL_MIN_ELEMENTS and y3.shape[0] > 1:
        n_nan = _gemm.pack_columns_parallel(min(_n_chunks(), y3.shape[0]), y3, out3, positive)
    else:
        n_nan = _gemm.pack_columns_range(0, y3.shape[0], y3, out3, positive)
    if n_nan:
        raise ValueError(f"{name}: input contains {n_nan} NaN value(s); NaN has no sign")
    return out


def pack_signs(x: torch.Tensor) -> np.ndarray:
    """Pack the signs of ``x`` along its last axis into uint64 words.

    Bit ``k % 64`` of word ``k // 64`` is 1 iff ``x[..., k] >= 0`` (sign(0) = +1); the padding bits
    of the last word are 0.

    Args:
        x: a float tensor ``[..., K]`` (any float dtype, any strides). A transposed view such as
            ``v.transpose(-1, -2)`` of a contiguous ``v`` is packed without a transposed copy;
            other non-contiguous tensors are copied first.

    Returns:
        a C-contiguous numpy uint64 array ``[..., ceil(K / 64)]``.

    Raises:
        TypeError: ``x`` is not a floating point tensor. ValueError: empty input, or NaN in ``x``.
    """
    return _pack("pack_signs", x, positive=False)


def pack_bits01(x: torch.Tensor) -> np.ndarray:
    """Pack a {0,1} operand along its last axis: bit 1 iff ``x[..., k] > 0``.

    Use it for binarized attention probabilities (values in {0, 1}) or BiBERT's ``bool(A)``.
    Accepts float or bool tensors; otherwise as :func:`pack_signs`.
    """
    return _pack("pack_bits01", x, positive=True)


_U64 = np.dtype(np.uint64)


def _words_input(name: str, words, min_dim: int = 1) -> np.ndarray:
    """``words`` if it is a non-empty C-contiguous uint64 array with >= min_dim dims; else raise."""
    if (type(words) is np.ndarray and words.dtype is _U64 and words.ndim >= min_dim
            and words.size and words.flags.c_contiguous):
        return words  # the common case, checked cheaply
    if isinstance(words, torch.Tensor):
        raise TypeError(f"{name}: packed words are numpy uint64 arrays (from pack_signs), "
                        f"got a torch.Tensor; use pack_signs/pack_bits01 to pack a float tensor")
    if not isinstance(words, np.ndarray):
        raise TypeError(f"{name}: expected a numpy uint64 array of packed words, "
                        f"got {type(words).__name__}")
    if words.dtype != np.uint64:
        raise TypeError(f"{name}: packed words must have dtype uint64, got {words.dtype}")
    if words.ndim < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimension(s), "
                         f"got shape {words.shape}")
    if words.size == 0:
        raise ValueError(f"{name}: empty input of shape {words.shape}")
    if not words.flags.c_contiguous:
        raise ValueError(f"{name}: packed words must be C-contiguous (shape {words.shape}, "
                         f"strides {words.strides}); pass np.ascontiguousarray(words)")
    return words


def _check_k(name: str, k, n_words: int) -> int:
    if type(k) is int and (n_words - 1) * 64 < k <= n_words * 64:
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name}: k must be an int (the number of packed elements), got {k!r}")
    k = int(k)
    if not (n_words - 1) * 64 < k <= n_words * 64:
        raise ValueError(f"{name}: k={k} does not fit {n_words} word(s) per row "
                         f"({n_words} words hold {(n_words - 1) * 64 + 1}..{n_words * 64} bits)")
    return k


def _check_padding(name: str, words: np.ndarray, k: int) -> None:
    """Padding bits past k must be 0, or they would enter the popcounts."""
    if k % 64:
        if np.any(words[..., -1] >> np.uint64(k % 64)):
            raise ValueError(f"{name}: padding bits past k={k} are set in the last word; "
                             f"pack with pack_signs/pack_bits01 or clear them")


def _unpack(name: str, words, k: int) -> torch.Tensor:
    words = _words_input(name, words)
    k = _check_k(name, k, words.shape[-1])
    if sys.byteorder == "little":
        as_bytes = words.view(np.uint8)
    else:  # pragma: no cover - no big-endian machine to test on
        as_bytes = words.astype("<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes.reshape(*words.shape[:-1], -1), axis=-1, bitorder="little")
    return torch.from_numpy(bits[..., :k].astype(np.float32))


def unpack_signs(words: np.ndarray, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: a float32 tensor ``[..., k]`` of -1 and +1."""
    return _unpack("unpack_signs", words, k) * 2 - 1


def unpack_bits01(words: np.ndarray, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits01`: a float32 tensor ``[..., k]`` of 0 and 1."""
    return _unpack("unpack_bits01", words, k)


# ----------------------------------------------------------------------------------------------
# the right operand, column-blocked once


def _block(words3: np.ndarray, with_ones: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Column-blocked layout and per-column popcounts of checked words ``[B, N, KW]``.

    With one word per column and N a multiple of the block alignment the blocked layout *is* the
    plain one (word 0 of 8 adjacent columns is adjacent): then, when the popcounts are not
    needed, no copy is made at all.
    """
    B, N, KW = words3.shape
    n_blocks = _gemm.n_blocks_for(N)
    if not with_ones and KW == 1 and n_blocks * _gemm.LANES == N:
        return words3.reshape(B, n_blocks, 1, _gemm.LANES), None
    blocks = np.empty((B, n_blocks, KW, _gemm.LANES), np.uint64)
    col_ones = np.empty((B, n_blocks * _gemm.LANES), np.int32)
    _gemm.block_columns(words3, blocks, col_ones)
    return blocks, col_ones


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """The right operand of a product ``[B, N, K]``, packed once in both layouts the kernels use.

    Attributes:
        words: ``[B, N, KW]`` uint64, the plain layout (scalar backend, :func:`unpack_signs`).
        blocks: ``[B, NB, KW, 8]`` uint64, columns in blocks of 8 with word w of the 8 columns
            adjacent (SIMD backend); NB is a multiple of 4, missing columns are zero.
        col_ones: ``[B, 8 NB]`` int32, popcount of each column (used by the AND product).
        k: the number of packed elements per column.
    """

    words: np.ndarray
    blocks: np.ndarray
    col_ones: np.ndarray
    k: int

    @property
    def n(self) -> int:
        """Number of columns N (rows of the packed matrix)."""
        return self.words.shape[1]

    @classmethod
    def from_words(cls, words: np.ndarray, k: int) -> PackedWeight:
        """Block packed words ``[N, KW]`` (one matrix) or ``[..., N, KW]`` (a batch, flattened)."""
        words = _words_input("PackedWeight.from_words", words, min_dim=2)
        k = _check_k("PackedWeight.from_words", k, words.shape[-1])
        _check_padding("PackedWeight.from_words", words, k)
        words3 = words.reshape(-1, *words.shape[-2:])
        blocks, col_ones = _block(words3)
        return cls(words3, blocks, col_ones, k)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> PackedWeight:
        """Pack the signs of a float weight ``[N, K]`` (an ``nn.Linear`` weight) and block them."""
        return cls.from_words(pack_signs(weight), weight.shape[-1])


# ----------------------------------------------------------------------------------------------
# products


def _right_operand(name: str, b, a: np.ndarray, k: int, batched: bool, use_and: bool):
    """(words [B, N, KW], blocks, col_ones) of the right operand, blocked here if need be."""
    if isinstance(b, PackedWeight):
        if b.k != k or b.words.shape[-1] != a.shape[-1]:
            raise ValueError(f"{name}: operands disagree on K: left has k={k} "
                             f"({a.shape[-1]} words), right was packed with k={b.k}")
        return b.words, b.blocks, b.col_ones
    b = _words_input(name, b, min_dim=3 if batched else 2)
    if not batched and b.ndim != 2:
        raise ValueError(f"{name}: expected right words [N, KW], got shape {b.shape}")
    if b.shape[-1] != a.shape[-1]:
        raise ValueError(f"{name}: operands disagree on K: left has {a.shape[-1]} words per row, "
                         f"right has {b.shape[-1]}")
    if batched and b.shape[:-2] != a.shape[:-2]:
        raise ValueError(f"{name}: batch shapes differ: left {a.shape[:-2]}, right {b.shape[:-2]}")
    _check_padding(name, b, k)
    words3 = b[None] if b.ndim == 2 else b.reshape(-1, *b.shape[-2:])
    return (words3, *_block(words3, with_ones=use_and))


def _product(name, a, b, k, backend, batched, use_and, scale=None, bias=None) -> np.ndarray:
    """Shared path of the four products and BinaryLinear; returns a numpy array [B, M, N]."""
    a = _words_input(name, a, min_dim=3 if batched else 2)
    if not batched and a.ndim != 2:
        raise ValueError(f"{name}: expected left words [M, KW], got shape {a.shape}")
    k = _check_k(name, k, a.shape[-1])
    _check_padding(name, a, k)
    words, blocks, col_ones = _right_operand(name, b, a, k, batched, use_and)
    a3 = a[None] if a.ndim == 2 else a.reshape(-1, *a.shape[-2:])
    B, M, KW = a3.shape
    if words.shape[0] != B:
        raise ValueError(f"{name}: batch sizes differ: left {B}, right {words.shape[0]}")
    N = words.shape[1]
    backend = _resolve(backend)
    if backend == "scalar":
        out = np.empty((B, M, N), np.int32)
        if use_and:
            _gemm.and_scalar(a3, words, out)
        else:
            _gemm.xnor_scalar(a3, words, k, out)
        if scale is not None:
            out = out.astype(np.float32) * scale[:N] + bias[:N]
        return out
    if use_and:  # 2 popcount(p & v) - popcount(p) == popcount(v) - popcount(p ^ v), bit by bit
        c0, shift = col_ones, 0
    else:  # K - 2 popcount(a ^ b)
        c0, shift = _constant_column(k, blocks.shape[1] * _gemm.LANES), 1
    out = np.empty((B, M, N), np.int32 if scale is None else np.float32)
    tile_rows = _gemm.TILE_ROWS if backend == "simd8" else 1
    full = M // _gemm.TILE_ROWS if backend == "simd8" else 0
    n_tasks = B * (full + M - full * _gemm.TILE_ROWS) * (
        -(-blocks.shape[1] // _gemm.PANEL_BLOCKS))  # as _gemm.gemm_tasks
    if B * M * N * KW >= _PARALLEL_MIN_WORK and n_tasks > 1:
        n_chunks = min(_n_chunks(), n_tasks)
        _gemm.gemm_parallel(n_chunks, n_tasks, a3, blocks, c0, shift, out, scale, bias, tile_rows)
    else:
        _gemm.gemm_range(0, n_tasks, a3, blocks, c0, shift, out, scale, bias, tile_rows)
    return out


_constants: dict[tuple[int, int], np.ndarray] = {}


def _constant_column(k: int, width: int) -> np.ndarray:
    """A ``[1, width]`` int32 row of k's (the XNOR product's offset), cached; do not modify."""
    key = (k, width)
    row = _constants.get(key)
    if row is None:
        row = np.full((1, width), k, np.int32)
        if len(_constants) < 256:
            _constants[key] = row
    return row


def xnor_gemm(a_words: np.ndarray, b_words, k: int, *, backend: str | None = None) -> torch.Tensor:
    """``C[m, n] = sum_k a[m, k] b[n, k]`` for +-1 matrices given by their packed signs; exact.

    Computed as ``K - 2 * popcount(a XOR b)`` summed over the words.

    Args:
        a_words: ``[M, KW]`` uint64 words of the left matrix ``a [M, K]`` (:func:`pack_signs`).
        b_words: ``[N, KW]`` uint64 words of ``b [N, K]`` (so ``C = a @ b.T``, like ``nn.Linear``),
            or a :class:`PackedWeight` built once from them (faster when ``b`` is reused).
        k: K, the number of packed elements per row.
        backend: ``"simd8"``, ``"simd1"``, ``"scalar"`` or None for :func:`get_backend`.

    Returns:
        a torch.int32 tensor ``[M, N]``.
    """
    out = _product("xnor_gemm", a_words, b_words, k, backend, batched=False, use_and=False)
    return torch.from_numpy(out[0])


def and_gemm(p_words: np.ndarray, v_words, k: int, *, backend: str | None = None) -> torch.Tensor:
    """``C[m, n] = sum_k p[m, k] v[n, k]`` for p in {0,1} and v in {-1,+1}; exact.

    The product is ``2 * popcount(p AND v) - popcount(p)``. The SIMD backend uses the identity
    ``2 popcount(p & v) - popcount(p) = popcount(v) - popcount(p ^ v)`` (it holds bit by bit) so
    that one micro-kernel serves both products; the scalar backend computes the AND form.

    Args:
        p_words: ``[M, KW]`` words of the {0,1} matrix (:func:`pack_bits01`).
        v_words: ``[N, KW]`` sign words of the +-1 matrix (:func:`pack_signs`), or a PackedWeight.
        k: the number of packed elements per row.

    Returns:
        a torch.int32 tensor ``[M, N]``.
    """
    out = _product("and_gemm", p_words, v_words, k, backend, batched=False, use_and=True)
    return torch.from_numpy(out[0])


def xnor_bmm(a_words: np.ndarray, b_words, k: int, *, backend: str | None = None) -> torch.Tensor:
    """Batched :func:`xnor_gemm`: ``[..., M, KW] x [..., N, KW] -> int32 [..., M, N]``.

    The leading (batch) dimensions must be equal; e.g. attention scores
    ``sign(Q) @ sign(K)^T`` for ``q, k: [batch, heads, T, head_dim]`` are
    ``xnor_bmm(pack_signs(q), pack_signs(k), head_dim)``. ``b_words`` may be a PackedWeight built
    from ``[B, N, KW]`` words with B the product of the batch dimensions.
    """
    out = _product("xnor_bmm", a_words, b_words, k, backend, batched=True, use_and=False)
    return torch.from_numpy(out.reshape(*a_words.shape[:-1], out.shape[-1]))


def and_bmm(p_words: np.ndarray, v_words, k: int, *, backend: str | None = None) -> torch.Tensor:
    """Batched :func:`and_gemm`: ``[..., M, KW] x [..., N, KW] -> int32 [..., M, N]``.

    For ``probs01 @ sign(V)`` per head the reduction axis is the key axis, so V is packed along
    tokens: ``and_bmm(pack_bits01(p), pack_signs(v.transpose(-1, -2)), n_keys)``.
    """
    out = _product("and_bmm", p_words, v_words, k, backend, batched=True, use_and=True)
    return torch.from_numpy(out.reshape(*p_words.shape[:-1], out.shape[-1]))


# ----------------------------------------------------------------------------------------------
# inference layer


class BinaryLinear(nn.Module):
    """Inference-only binarized linear layer: ``y = alpha * (sign(x) @ sign(W).T) + b``.

    The input is binarized (sign(0) = +1) and packed on every call; the weight signs are packed
    once, at construction. ``alpha`` is one scale per output feature (a per-tensor scale is
    repeated). The output is float32, equal to the float formula up to float rounding; no
    gradients flow through it (train with the quantizers, then convert with :meth:`from_float`).

    Build it with :meth:`from_float`. Buffers (saved in ``state_dict``): ``weight_words``
    ``[N, KW]`` (the packed signs as int64 words; the bits are what counts), ``alpha`` ``[N]`` and
    ``bias`` ``[N]`` (zeros when there is none).
    """

    def __init__(self, in_features: int, out_features: int, backend: str | None = None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"BinaryLinear: features must be positive, got in={in_features}, "
                             f"out={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        kw = words_for(in_features)
        self.register_buffer("weight_words", torch.zeros(out_features, kw, dtype=torch.int64))
        self.register_buffer("alpha", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features))
        self._packed: PackedWeight | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   alpha: str | float | torch.Tensor | None = None,
                   backend: str | None = None) -> BinaryLinear:
        """Binarize a float weight ``[out_features, in_features]``.

        Args:
            weight: the float weight (e.g. ``linear.weight``).
            bias: optional float ``[out_features]``.
            alpha: the weight scale. None: 1 (plain signs). ``"tensor"``: ``mean(|W|)`` (XNOR-Net's
                per-tensor scale). ``"row"``: ``mean(|W[n, :]|)`` per output feature. A number or
                a tensor of shape ``[]`` or ``[out_features]``: that scale.
            backend: kernel backend for this layer (None: :func:`get_backend` at call time).
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = (tuple(weight.shape) if isinstance(weight, torch.Tensor)
                   else type(weight).__name__)
            raise ValueError(f"BinaryLinear.from_float: expected a 2-D weight tensor "
                             f"[out_features, in_features], got {got}")
        weight = weight.detach()
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, backend=backend)
        w = weight.float()
        if alpha is None:
            scale = torch.ones(out_features)
        elif isinstance(alpha, str):
            if alpha == "tensor":
                scale = w.abs().mean().expand(out_features)
            elif alpha == "row":
                scale = w.abs().mean(dim=1)
            else:
                raise ValueError(f"BinaryLinear.from_float: alpha must be None, 'tensor', 'row', "
                                 f"a number or a tensor, got {alpha!r}")
        else:
            scale = torch.as_tensor(alpha, dtype=torch.float32).detach()
            if scale.dim() == 0:
                scale = scale.expand(out_features)
            if scale.shape != (out_features,):
                raise ValueError(f"BinaryLinear.from_float: alpha has shape {tuple(scale.shape)}, "
                                 f"expected [] or [{out_features}]")
        if bias is not None:
            bias = bias.detach().float()
            if bias.shape != (out_features,):
                raise ValueError(f"BinaryLinear.from_float: bias has shape {tuple(bias.shape)}, "
                                 f"expected [{out_features}]")
            layer.bias.copy_(bias)
        if torch.isnan(scale).any():
            raise ValueError("BinaryLinear.from_float: alpha contains NaN")
        layer.alpha.copy_(scale)
        layer.weight_words.copy_(torch.from_numpy(pack_signs(w).view(np.int64)))
        return layer

    def _prepared(self) -> tuple[PackedWeight, np.ndarray, np.ndarray]:
        """The blocked weight and padded scale/bias, rebuilt when the buffers changed."""
        key = (self.weight_words._version, self.alpha._version, self.bias._version,
               self.weight_words.data_ptr(), self.alpha.data_ptr(), self.bias.data_ptr())
        if self._packed is None or self._packed_key != key:
            words = np.ascontiguousarray(self.weight_words.numpy().view(np.uint64))
            packed = PackedWeight.from_words(words, self.in_features)
            width = packed.col_ones.shape[1]
            scale = np.zeros(width, np.float32)
            bias = np.zeros(width, np.float32)
            scale[: self.out_features] = self.alpha.numpy()
            bias[: self.out_features] = self.bias.numpy()
            self._packed, self._scale, self._bias, self._packed_key = packed, scale, bias, key
        return self._packed, self._scale, self._bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"BinaryLinear: expected input [..., {self.in_features}], got {shape}")
        packed, scale, bias = self._prepared()
        words = pack_signs(x).reshape(-1, packed.words.shape[-1])
        out = _product("BinaryLinear", words, packed, self.in_features, self.backend,
                       batched=False, use_and=False, scale=scale, bias=bias)
        return torch.from_numpy(out.reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


# ----------------------------------------------------------------------------------------------
# plain reference versions, for reading and for the tests


def pack_signs_reference(values) -> list[int]:
    """Pack a 1-D sequence of numbers into a list of Python ints, 64 signs per word."""
    words = []
    for start in range(0, len(values), 64):
        word = 0
        for j, value in enumerate(values[start : start + 64]):
            if value >= 0:  # sign(0) = +1
                word |= 1 << j
        words.append(word)
    return words


def xnor_dot_reference(a_words, b_words, k: int) -> int:
    """Dot product of two +-1 vectors from their packed words: ``k - 2 * popcount(a XOR b)``."""
    differ = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(a_words, b_words))
    return k - 2 * differ


def and_dot_reference(p_words, v_words) -> int:
    """Dot product of a {0,1} vector with a +-1 vector: ``2 popcount(p AND v) - popcount(p)``."""
    both = sum(bin(int(p) & int(v)).count("1") for p, v in zip(p_words, v_words))
    ones = sum(bin(int(p)).count("1") for p in p_words)
    return 2 * both - ones


def xnor_gemm_reference(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """:func:`xnor_gemm` in numpy: every row pair XORed, popcounted, summed. int64 ``[M, N]``."""
    differ = np.bitwise_count(a_words[:, None, :] ^ b_words[None, :, :]).astype(np.int64)
    return k - 2 * differ.sum(axis=-1)


def and_gemm_reference(p_words: np.ndarray, v_words: np.ndarray) -> np.ndarray:
    """:func:`and_gemm` in numpy. int64 ``[M, N]``."""
    both = np.bitwise_count(p_words[:, None, :] & v_words[None, :, :]).astype(np.int64).sum(-1)
    ones = np.bitwise_count(p_words).astype(np.int64).sum(-1)
    return 2 * both - ones[:, None]
