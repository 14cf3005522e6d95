"""Helpers that several test files share (import them: ``from conftest import ROOT, close``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
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


def recipe_config(cls, **kw):
    """A recipe config (``cls``: BinaryBertConfig, BitConfig, ...) from flat keyword arguments: the TrainConfig
    fields among them go into its ``train``."""
    from binlab.train.trainer import TrainConfig

    train = {k: kw.pop(k) for k in [f.name for f in dataclasses.fields(TrainConfig)] if k in kw}
    return cls(**kw, train=TrainConfig(**train))


def run_quietly(run, cfg, resume=False) -> tuple[dict, str]:
    """``run(cfg, resume=resume)`` (a recipe's run function) with its printing and warnings captured:
    ``(summary, printed text)``."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run(cfg, resume=resume)
    return summary, buf.getvalue()
