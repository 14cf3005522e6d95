"""Packing signs and {0,1} values into uint64 words, and back (the conventions are in :mod:`binlab.kernels`).

    pack_signs(x) -> words            unpack_signs(words, k) -> +-1 float32 tensor
    pack_bits01(x) -> words           unpack_bits01(words, k) -> {0,1} float32 tensor
    words_for(k)                      ceil(k / 64)
    pack_signs_reference(values)      the same in plain Python, to read and to test against
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import torch

from binlab.kernels import _gemm

__all__ = ["pack_signs", "unpack_signs", "pack_bits01", "unpack_bits01", "words_for", "pack_signs_reference"]

_PACK_PARALLEL_MIN_ELEMENTS = 1 << 16


def words_for(k: int) -> int:
    """Number of uint64 words that hold k bits: ``ceil(k / 64)``."""
    return (k + 63) // 64



_threads: int | None = None


def _n_chunks() -> int:
    """Work is cut into this many chunks: numba's thread pool size (``NUMBA_NUM_THREADS``).

    ``numba.set_num_threads(n)`` still limits how many threads run them.
    """
    global _threads
    if _threads is None:
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
# a plain reference version, for reading and for the tests


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
