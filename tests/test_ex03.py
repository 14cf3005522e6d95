"""Exercise 3 (loss landscapes, Hessian-vector products, power iteration): what is particular to it.

The trio every exercise is held to (reference full marks, stub zero, typical mistakes lose points, the
shipped notebook graded through ``binlab grade``, a solved copy full marks) is in tests/test_grader.py,
parametrized over every exercise. Here: the docstring examples hold, and the reference answers agree with the library the chapter uses (binlab.analysis.landscape).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from binlab.analysis import landscape as L
from binlab.grader import ex03_landscape as ex
from binlab.model import BertConfig, BertForSequenceClassification
from binlab.train.trainer import default_loss



def test_docstring_examples_hold():
    W = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert ex.perturbation_direction(W).tolist() == [[1.25, 1.25], [1.25, 1.25]]
    assert W.mean().item() == -0.25
    assert ex.power_iteration(lambda v: torch.tensor([5.0, 2, 1]) * v, torch.ones(3)) == pytest.approx(5.0)
    assert ex.power_iteration(lambda v: torch.tensor([-6.0, 3, 1]) * v, torch.ones(3)) == pytest.approx(-6.0)
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([1.0, 2.0], dtype=torch.float64)
    hv = ex.hessian_vector_product(lambda w: 0.5 * w @ A @ w, w, v)
    assert torch.allclose(hv, A @ v)


def test_exercise_answers_agree_with_the_library():
    """What the learner writes is what binlab.analysis.landscape computes for the chapter."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, quant="w1a8")
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 40, (4, 6), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
    names = L.value_layers()
    lib = L.loss_grid(model, batch, names, steps=5, progress=False)
    mine = ex.loss_grid(model, lambda m: default_loss(m, batch), list(names), lib.xs.tolist())
    np.testing.assert_allclose(mine.numpy(), lib.losses, rtol=1e-5)
    H = torch.diag(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))
    v0 = torch.ones(3, dtype=torch.float64)
    result, _ = L.power_iteration(lambda v: H @ v, v0, max_iter=500, tol=1e-12)
    assert ex.power_iteration(lambda v: H @ v, v0, max_iter=500, tol=1e-12) == pytest.approx(result.eigenvalue)
