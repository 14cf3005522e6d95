"""XNOR- and AND-popcount matrix products over packed words, and their backends.

    xnor_gemm(a_words, b_words, k)    C[m, n] = sum_k a[m, k] b[n, k]           (+-1 x +-1)
    and_gemm(p_words, v_words, k)     C[m, n] = sum_k p[m, k] v[n, k]           ({0,1} x +-1)
    xnor_bmm / and_bmm                the same per batch item ([..., M, KW] x [..., N, KW])
    popcount_product(a, b, k, use_and=)  either one as a numpy int32 array [..., M, N]
    product_steps(a, b, k, out)       the kernel calls of one product on fixed buffers (the engine's plans)
    PackedWeight.from_words(words, k) / PackedWeight.from_float(w)   right operand prepacked once
    get_backend() / set_backend(name)  "simd8", "simd1" or "scalar"; every product takes backend=
    xnor_dot_reference, and_dot_reference, xnor_gemm_reference, and_gemm_reference
                                      plain Python/numpy versions to read (and to test against)

The formulas, the bit conventions and how the backends differ are in :mod:`binlab.kernels`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import llvmlite.binding as llvm
import numpy as np
import torch

from binlab.kernels import _gemm
from binlab.kernels.packing import _check_k, _check_padding, _n_chunks, _words_input, pack_signs

__all__ = [
    "xnor_gemm", "and_gemm", "xnor_bmm", "and_bmm", "popcount_product", "product_steps", "PackedWeight", "get_backend",
    "set_backend", "BACKENDS",
    "xnor_dot_reference", "and_dot_reference", "xnor_gemm_reference", "and_gemm_reference",
]

BACKENDS = ("simd8", "simd1", "scalar")

# Below this many (row, column, word) triples a product runs on one core: a parallel launch costs
# more than it saves (measured in docs/benchmarks.md).
_PARALLEL_MIN_WORK = 1 << 17


# ----------------------------------------------------------------------------------------------
# backend selection


def _default_backend() -> str:
    name = os.environ.get("BINLAB_KERNEL_BACKEND", "").strip().lower()
    if name:
        if name not in BACKENDS:
            raise ValueError(f"BINLAB_KERNEL_BACKEND={name!r}: expected one of {BACKENDS}")
        return name


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
    _plans: dict = field(default_factory=dict, init=False, repr=False)  # see _product

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
    """Shared path of the four products and BinaryLinear; returns a numpy array [B, M, N].

    A product with a prepacked weight (a :class:`PackedWeight`) is what a model runs over and over,
    at as few as one row: its plan (the kernel's constants and task count) is kept on the weight per
    (rows, backend, product kind), so such a call only checks the left operand and runs (about
    0.7 us less per call than planning it again, docs/benchmarks.md).
    """
    a = _words_input(name, a, min_dim=3 if batched else 2)
    if not batched and a.ndim != 2:
        raise ValueError(f"{name}: expected left words [M, KW], got shape {a.shape}")
    backend = _resolve(backend)
    if type(b) is PackedWeight and type(k) is int and b.k == k and b.words.shape[2] == a.shape[-1]:
        a3 = a[None] if a.ndim == 2 else a
        if a3.ndim == 3 and a3.shape[0] == b.words.shape[0]:
            _check_padding(name, a, k)
            key = (a3.shape[1], backend, use_and)
            plan = b._plans.get(key)
            if plan is None:
                plan = _plan(a3, b.words, b.blocks, b.col_ones, k, backend, use_and)
                if len(b._plans) < 256:  # a bound, as _constant_column's
                    b._plans[key] = plan
            return _run(plan, a3, b.words, b.blocks, k, use_and, scale, bias)
    k = _check_k(name, k, a.shape[-1])
    _check_padding(name, a, k)
    words, blocks, col_ones = _right_operand(name, b, a, k, batched, use_and)
    a3 = a[None] if a.ndim == 2 else a.reshape(-1, *a.shape[-2:])
    B = a3.shape[0]
    if words.shape[0] != B:
        raise ValueError(f"{name}: batch sizes differ: left {B}, right {words.shape[0]}")
    plan = _plan(a3, words, blocks, col_ones, k, backend, use_and)
    return _run(plan, a3, words, blocks, k, use_and, scale, bias)


def _plan(a3, words, blocks, col_ones, k, backend, use_and) -> tuple:
    """(backend, c0, shift, tile_rows, n_tasks, n_chunks) of a product of checked left words
    ``a3 [B, M, KW]`` with right words ``[B, N, KW]`` (n_chunks 0: one core, below
    :data:`_PARALLEL_MIN_WORK`)."""
    B, M, _ = a3.shape
    N, KW = words.shape[1:]
    if backend == "scalar":
        return backend, None, 0, 1, 0, 0
    if use_and:  # 2 popcount(p & v) - popcount(p) == popcount(v) - popcount(p ^ v), bit by bit
        c0, shift = col_ones, 0
    else:  # K - 2 popcount(a ^ b)
        c0, shift = _constant_column(k, blocks.shape[1] * _gemm.LANES), 1
    tile_rows = _gemm.TILE_ROWS if backend == "simd8" else 1
    n_tasks = _gemm.gemm_tasks(a3, blocks, tile_rows)
    n_chunks = min(_n_chunks(), n_tasks) if B * M * N * KW >= _PARALLEL_MIN_WORK and n_tasks > 1 else 0
    return backend, c0, shift, tile_rows, n_tasks, n_chunks


def _run(plan, a3, words, blocks, k, use_and, scale, bias) -> np.ndarray:
    """Run a planned product of checked left words ``a3 [B, M, KW]``: int32 ``[B, M, N]``, or
    float32 ``scale * P + bias`` when scale is given."""
    backend, c0, shift, tile_rows, n_tasks, n_chunks = plan
    B, M, _ = a3.shape
    N = words.shape[1]
    if backend == "scalar":
        out = np.empty((B, M, N), np.int32)
        if use_and:
            _gemm.and_scalar(a3, words, out)
        else:
            _gemm.xnor_scalar(a3, words, k, out)
        if scale is not None:
            out = out.astype(np.float32) * scale[:N] + bias[:N]
        return out
    out = np.empty((B, M, N), np.int32 if scale is None else np.float32)
    if n_chunks:
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


def popcount_product(a_words: np.ndarray, b_words, k: int, *, use_and: bool = False,
                     backend: str | None = None) -> np.ndarray:
    """:func:`xnor_gemm` / :func:`xnor_bmm` (or the AND products with ``use_and``) as an int32 numpy array.

    For callers that stay in numpy, such as the inference engine: no torch tensor is made around the
    result. ``a_words [..., M, KW]`` with ``b_words`` as the gemm (2-D ``a_words``) or the bmm takes
    it; the result is ``[..., M, N]``.
    """
    batched = isinstance(a_words, np.ndarray) and a_words.ndim > 2
    out = _product("popcount_product", a_words, b_words, k, backend, batched=batched, use_and=use_and)
    return out.reshape(*a_words.shape[:-1], out.shape[-1])


def product_steps(a3: np.ndarray, b, k: int, out: np.ndarray, *, use_and: bool = False,
                  backend: str | None = None) -> list[tuple]:
    """The kernel calls ``[(function, args), ...]`` that write the product of the left words ``a3 [B, M, KW]``
    with ``b`` into ``out`` (int32 ``[B, M, N]``): for a caller that runs the same product on the same buffers
    over and over (the engine's plan per input shape). Everything is checked here, once; ``f(*args)`` checks
    nothing, so the caller keeps the buffers' shapes and their padding bits zero.

    ``b``: a :class:`PackedWeight`, or words ``[B, N, KW]`` in a buffer the caller rewrites between runs (the
    first call then blocks them again, into buffers made here).
    """
    name = "product_steps"
    a3 = _words_input(name, a3, min_dim=3)
    if a3.ndim != 3:
        raise ValueError(f"{name}: expected left words [B, M, KW], got shape {a3.shape}")
    k = _check_k(name, k, a3.shape[-1])
    backend = _resolve(backend)
    steps = []
    if isinstance(b, PackedWeight):
        words, blocks, col_ones = _right_operand(name, b, a3, k, True, use_and)
    else:
        words = _words_input(name, b, min_dim=3)
        if words.ndim != 3 or words.shape[-1] != a3.shape[-1]:
            raise ValueError(f"{name}: expected right words [B, N, {a3.shape[-1]}], got shape {words.shape}")
        blocks, col_ones = _block(words)  # the buffers (their contents now are rewritten by each run)
        if backend != "scalar":
            steps.append((_gemm.block_columns, (words, blocks, col_ones)))
    B, M, _ = a3.shape
    if words.shape[0] != B:
        raise ValueError(f"{name}: batch sizes differ: left {B}, right {words.shape[0]}")
    shape = (B, M, words.shape[1])
    if not (type(out) is np.ndarray and out.dtype == np.int32 and out.shape == shape and out.flags.c_contiguous):
        raise ValueError(f"{name}: out must be a C-contiguous int32 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    backend, c0, shift, tile_rows, n_tasks, n_chunks = _plan(a3, words, blocks, col_ones, k, backend, use_and)
    if backend == "scalar":
        steps.append((_gemm.and_scalar, (a3, words, out)) if use_and else (_gemm.xnor_scalar, (a3, words, k, out)))
    elif n_chunks:
        steps.append((_gemm.gemm_parallel, (n_chunks, n_tasks, a3, blocks, c0, shift, out, None, None, tile_rows)))
    else:
        steps.append((_gemm.gemm_range, (0, n_tasks, a3, blocks, c0, shift, out, None, None, tile_rows)))
    return steps


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
# plain reference versions, for reading and for the tests


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
