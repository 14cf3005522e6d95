"""Helpers that several test files share (import them: ``from conftest import ROOT, close``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: The checkout (the folder holding binlab/, book/, docs/, tests/).
ROOT = Path(__file__).resolve().parent.parent


def as_float64(a) -> np.ndarray:
    """A tensor or array-like as a float64 numpy array (detached)."""
    return np.asarray(a.detach().double().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)


def close(a, b, tol=1e-6):
    """``a`` and ``b`` (tensors or arrays) equal to ``tol``, absolute and relative, compared in float64."""
    np.testing.assert_allclose(as_float64(a), as_float64(b), rtol=tol, atol=tol)


def assert_titled(fig):
    """Every figure has a title and labelled axes (all of its x and y axes)."""
    assert fig.layout.title.text, "figure without a title"
    axes = [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    assert axes
    for k in axes:
        assert fig.layout[k].title.text, f"{k} has no label"
