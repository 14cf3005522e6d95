"""Exercise 4 (ternary weight splitting): what is particular to it.

The trio every exercise is held to (reference full marks, stub zero, typical mistakes lose points, the
shipped notebook graded through ``binlab grade``, a solved copy full marks) is in tests/test_grader.py,
parametrized over every exercise. Here: the paper's printed coefficient (J and K swapped) loses points on inputs that really separate the two
formulas, the worked example's numbers, and the reference answers are the library's split (binlab.methods.splitting).
"""

from __future__ import annotations

import pytest
import torch

from binlab.grader import ex04_splitting as ex
from binlab.methods.splitting import tws_a, tws_a_as_printed, tws_b, tws_split
from binlab.quant.quantizers import bwn, twn



def test_the_printed_coefficient_loses_points_in_both_questions():
    """The brief's must: the paper's printed a (J and K swapped) is a wrong answer, on skewed weights."""
    names = {(m.question, m.name) for m in ex.MISTAKES}
    assert {("q2", "printed_a"), ("q3", "printed_a")} <= names
    a_check = ex.q2.grade(dict((m.name, m.impl) for m in ex.MISTAKES if m.question == "q2")["printed_a"])
    assert not a_check.checks[0].passed and "J and K swapped" in a_check.checks[0].message
    # the grader's inputs really separate the two formulas: S_J - S_K is far from 0 on the skewed ones
    skewed = [W for on, W in ex._inputs() if "skewed" in on]
    assert len(skewed) == 2
    for W in skewed:
        s = ex._sums(W)
        assert abs(s["S_J"] - s["S_K"]) > 0.02 * s["S_I"]  # the two a differ by (S_J - S_K) / S_I
        code, printed = (f(torch.tensor(s["S_I"]), torch.tensor(s["S_J"]), torch.tensor(s["S_K"]))
                         for f in (tws_a, tws_a_as_printed))
        assert abs(float(code - printed)) > 0.02  # the checks compare to 1e-6


@pytest.mark.parametrize("on, W", ex._inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_reference_answers_are_the_library_split(on, W):
    I, J, K = ex.ternary_sets(W)
    assert torch.equal(I, twn(W) != 0)
    s = ex._sums(W)
    a, b = ex.tws_coefficients(W)
    t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    assert a == pytest.approx(float(tws_a(t(s["S_I"]), t(s["S_J"]), t(s["S_K"]))))
    assert b == pytest.approx(float(tws_b(t(s["S_I"]), t(s["S_all"]), s["n"], t(s["|I|"]), t(s["|J|"] + s["|K|"]))))
    W1, W2 = ex.tws_split(W)
    L1, L2 = tws_split(W)
    assert torch.allclose(W1, L1, atol=1e-12) and torch.allclose(W2, L2, atol=1e-12)
    assert torch.allclose(bwn(W1) + bwn(W2), twn(W), atol=1e-12)
    # the grader's own BWN / TWN are binlab's
    assert torch.allclose(ex._bwn(W1), bwn(W1)) and torch.allclose(ex._twn(W), twn(W))


def test_worked_example_numbers():
    W = torch.tensor(ex.WORKED_EXAMPLE, dtype=torch.float64)
    a, b = ex.tws_coefficients(W)
    assert a == pytest.approx(4.2 / 9) and b == pytest.approx(0.64)
    W1, W2 = ex.tws_split(W)
    assert float(W1.abs().mean()) == pytest.approx(0.75) and float(W2.abs().mean()) == pytest.approx(0.75)


