"""Small helpers the exercise modules share to test a learner's answer and to word what went wrong.

Every failure is a :class:`~binlab.grader.core.CheckFailed` whose message names the function, the input it
failed on (``on``) and what was expected, so that the learner can act on it.
"""

from __future__ import annotations

import torch

from binlab.grader.core import CheckFailed

__all__ = ["generator", "randn", "show", "close", "one_number", "tensor_of_shape"]


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the checks' inputs are the same on every run."""
    return torch.Generator().manual_seed(seed)


def randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal numbers of ``shape`` from :func:`generator` ``(seed)``."""
    return torch.randn(*shape, generator=generator(seed), dtype=dtype)


def show(t, n: int = 6, digits: int = 4) -> str:
    """The first ``n`` values of ``t`` for a message: ``"[0.5, -1, ...]"`` (``-0.0`` shown as ``0``)."""
    t = torch.as_tensor(t).detach().flatten() + 0.0  # + 0.0 turns -0.0 into 0.0
    more = ", ...]" if t.numel() > n else "]"
    return "[" + ", ".join(f"{v:.{digits}g}" for v in t[:n].tolist()) + more


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Same shape and equal within ``rtol`` / ``atol``, compared in float64."""
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def _float64(got, what: str, on: str, expected: str) -> torch.Tensor:
    if got is None:
        raise CheckFailed(f"{what} returned None on {on}: did you forget the return statement?")
    try:
        return torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got, dtype=torch.float64)
    except Exception:  # noqa: BLE001
        raise CheckFailed(f"{what} returned a {type(got).__name__} on {on}; expected {expected}.") from None


def one_number(got, what: str, on: str, expected: str = "one number") -> float:
    """``got`` (a Python number or a one-element tensor) as a float, or :class:`CheckFailed` saying why not.

    ``what`` names the learner's function, ``on`` the input, ``expected`` what the number is
    (``"one number, the eigenvalue"``)."""
    t = _float64(got, what, on, "one number")
    if t.numel() != 1:
        raise CheckFailed(f"{what} returned {t.numel()} numbers (shape {tuple(t.shape)}) on {on}; "
                          f"expected {expected}.")
    return float(t.reshape(()))


def tensor_of_shape(got, what: str, on: str, shape) -> torch.Tensor:
    """``got`` (a tensor, array or nested list) as a float64 tensor of ``shape``, or :class:`CheckFailed`."""
    t = _float64(got, what, on, "a tensor")
    if tuple(t.shape) != tuple(shape):
        raise CheckFailed(f"{what} returned shape {tuple(t.shape)} on {on}; expected {tuple(shape)}.")
    return t
