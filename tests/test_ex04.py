"""Exercise 4 (ternary weight splitting): what is particular to it.

The trio every exercise is held to (reference full marks, stub zero, typical mistakes lose points, the
shipped notebook graded through ``binlab grade``, a solved copy full marks) is in tests/test_grader.py,
parametrized over every exercise. Here: the paper's printed coefficient (J and K swapped) loses points on inputs that really separate the two
formulas, the worked example's numbers, and the reference answers are the library's split (binlab.methods.splitting);
the diagnoses of Q1 and Q2 (J and K swapped, >= for TWN's threshold, a without its factor 2), and the notebook lets the
learner derive a and b (the conditions are given, the result only in the last hint).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
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


def mistake(question, name):
    return next(m.impl for m in ex.MISTAKES if (m.question, m.name) == (question, name))


def test_jk_swap_is_reported_under_the_check_of_j_and_k():
    r = ex.q1.grade(mistake("q1", "jk_swapped"))
    kept, split = r.checks[0], r.checks[1]
    assert kept.passed and kept.name.startswith("I: the entries TWN keeps")
    assert not split.passed and "J and K" in split.name and "J and K are swapped" in split.message


def test_greater_equal_threshold_is_caught():
    """|W| >= Delta keeps the entries exactly at the threshold, which TWN zeroes; the checks hold such a tie."""
    r = ex.q1.grade(mistake("q1", "i_greater_equal"))
    kept = r.checks[0]
    assert not kept.passed and "exactly at the threshold" in kept.message and "not >=" in kept.message
    assert all(c.passed for c in r.checks[1:])
    W = ex._tie()
    for delta in (0.7 * W.abs().mean(), W.abs().mean() * 0.7, 0.7 * W.abs().sum() / W.numel()):
        assert int((W.abs() == delta).sum()) == 2  # a tie, whichever way a learner computes Delta
    assert torch.equal(ex.ternary_sets(W)[0], twn(W) != 0)


def test_a_without_its_factor_two_is_diagnosed():
    r = ex.q2.grade(mistake("q2", "a_no_factor_two"))
    a_check = r.checks[0]
    assert not a_check.passed and "factor 2 is missing" in a_check.message and r.checks[1].passed


NOTEBOOK = Path(__file__).resolve().parent.parent / "exercises" / "04_splitting.ipynb"
#: a and b as the learner derives them (and the paper's printed a, which gives a away by a swap), without spaces
RESULTS = ("S_I+S_K-S_J", "S_I+S_J-S_K", "2(|J|+|K|)")


def squeezed(text: str) -> str:
    """``text`` without spaces, LaTeX thin spaces and braces: formulas compare however they are typeset."""
    return re.sub(r"\s|\\,|[{}]", "", text).replace("\\frac", "")


def test_the_notebook_gives_the_conditions_and_the_last_hint_the_result():
    """"Derive a and b": neither the markdown nor the stub gives the result; the conditions are there, and the
    last hint shows the result to compare with."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        assert not any(f in squeezed(cell.source) for f in RESULTS), cell.source
    text = "\n".join(c.source for c in nb.cells)
    assert "\\alpha_1 = \\overline{|W_1|}" in text and "alpha_1 = alpha_2" in text and "alpha_1 + alpha_2 = alpha_t" in text
    shown = [ex.q2.title] + [c.name for c in ex.q2.checks] + ex.q2.hints[:-1] + [ex.tws_coefficients.__doc__]
    assert not any(f in squeezed(t) for f in RESULTS for t in shown)
    assert all(f in squeezed(ex.q2.hints[-1]) for f in RESULTS[::2])


def test_a_wrong_coefficient_is_told_by_its_condition_not_by_the_result():
    r = ex.q2.grade(lambda W: (0.5, 0.5))
    text = r.feedback()
    assert r.points == 0 and "a must make them equal" in text and "b must make them equal" in text
    assert not any(f in squeezed(text) for f in RESULTS)
