"""What the grader tells a learner (issue 11, "The grader"): an earlier answer at fault is named instead of the
formula that uses it, hints advance, solutions show only code, and a cell that raised is named as JupyterLab
shows it (its question and first line, not a cell number).

Exercise 4's own diagnoses (the sets, a and b) are in tests/test_ex04.py.
"""

from __future__ import annotations

import nbformat
import numpy as np
import pytest
import torch

from binlab.grader import core, ex01_popcount, ex04_splitting, ex06_bi_attention

EXERCISES = {name: core.load_exercise(name) for name in core.exercise_names()}

POPCOUNT_LOW32 = """
def popcount64(words):  # counts only the low 32 bits: fails Q2
    return np.bitwise_count(np.asarray(words, dtype=np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.int64)
"""
POPCOUNT_STUB = """
def popcount64(words):
    raise NotImplementedError("Q2: popcount64 is not implemented yet")
"""
XNOR_DOT = """
def xnor_dot(a_words, b_words, K):  # right, with the learner's popcount64
    return int(K - 2 * int(popcount64(a_words ^ b_words).sum()))
"""
XNOR_MATMUL_POPCOUNT_ONLY = """
def xnor_matmul(A_words, B_words, K):  # wrong: forgets K - 2*popcount
    return popcount64(A_words[:, None, :] ^ B_words[None, :, :]).sum(-1)
"""
SETS_JK_SWAPPED = """
def ternary_sets(W):  # J and K swapped: fails Q1
    I = W.abs() > 0.7 * W.abs().mean()
    return I, ~I & (W <= 0), ~I & (W > 0)
"""


def notebook(*sources: str, **objects) -> dict:
    """A learner's namespace: the cells ``sources`` run in it, as in a notebook."""
    ns: dict = {"np": np, "torch": torch, **objects}
    for src in sources:
        exec(compile(src, "<learner's cell>", "exec"), ns)
    return ns


# ------------------------------------------------------------------------- earlier answers at fault
def test_right_xnor_dot_on_a_wrong_popcount64_is_right_and_q2_is_blamed():
    ns = notebook(POPCOUNT_LOW32, XNOR_DOT)
    r = ex01_popcount.q3.grade(ns["xnor_dot"])
    assert r.status == core.CORRECT and r.full_marks, r.feedback()
    assert "your popcount64 from Q2 fails its check; fix it first" in r.feedback()


def test_wrong_formula_on_a_wrong_earlier_answer_is_diagnosed_with_the_reference():
    """The formula's own mistake is told (as checked with the reference popcount64), and Q2 is named too."""
    ns = notebook(POPCOUNT_LOW32, XNOR_MATMUL_POPCOUNT_ONLY)
    r = ex01_popcount.q4.grade(ns["xnor_matmul"])
    text = r.feedback()
    assert r.points == 0 and "your popcount64 from Q2 fails its check" in text
    assert "ran with the reference popcount64" in text and "That is the popcount itself" in text


def test_earlier_answer_called_through_another_one():
    """xnor_matmul calls xnor_dot, which calls a popcount64 that is still the stub: Q4 is right all the same."""
    loop = ("def xnor_matmul(A_words, B_words, K):\n"
            "    return np.array([[xnor_dot(a, b, K) for b in B_words] for a in A_words])\n")
    ns = notebook(POPCOUNT_STUB, XNOR_DOT, loop)
    r = ex01_popcount.q4.grade(ns["xnor_matmul"])
    assert r.full_marks, r.feedback()
    assert "your popcount64 from Q2 is not written yet" in r.feedback()
    assert "xnor_dot from Q3" not in r.feedback()  # xnor_dot is right once popcount64 is


def test_right_coefficients_on_swapped_sets_are_not_the_printed_a():
    """Exercise 4: Q2's formula is right, Q1's J and K are swapped: not "the paper's printed a"."""
    q = ex04_splitting
    ns = notebook(SETS_JK_SWAPPED, q.q2.solution_source(), q.q3.solution_source())
    for question in (q.q2, q.q3):
        r = question.grade(ns[question.func_name])
        assert r.full_marks, r.feedback()
        assert "your ternary_sets from Q1 fails its check; fix it first" in r.feedback()
        assert "printed a" not in r.feedback()


def test_exercise_grade_names_the_earlier_answer_in_the_report():
    ns = notebook(POPCOUNT_LOW32, XNOR_DOT, ex01_popcount.q4.solution_source(),
                  pack_signs=ex01_popcount.pack_signs)
    result = ex01_popcount.EXERCISE.grade(ns)
    assert [q.points for q in result.questions] == [3, 0, 2, 3]
    assert "your popcount64 from Q2 fails its check" in result.report(verbose=True)
    assert "popcount64" not in result["q4"].message  # the reference xnor_matmul does not call it


def test_an_answer_that_does_not_call_the_wrong_one_is_not_told_about_it():
    wrong_alone = "def xnor_dot(a_words, b_words, K):\n    return int(np.bitwise_count(a_words ^ b_words).sum())\n"
    r = ex01_popcount.q3.grade(notebook(POPCOUNT_LOW32, wrong_alone)["xnor_dot"])
    assert r.points == 0 and "popcount64 from Q2" not in r.feedback()
    assert "K - 2*popcount" in r.feedback()


def test_a_missing_earlier_answer_is_named():
    ns = notebook(XNOR_DOT)  # no popcount64 cell was run
    r = ex01_popcount.q3.grade(ns["xnor_dot"])
    assert r.full_marks and "there is no popcount64 (the answer to Q2) in the notebook" in r.feedback()


def test_grading_in_process_leaves_the_learners_namespace_as_it_was():
    ns = notebook(POPCOUNT_LOW32, XNOR_DOT)
    mine = ns["popcount64"]
    r = ex01_popcount.q3.grade(ns["xnor_dot"], isolate=False)
    assert r.full_marks and ns["popcount64"] is mine
    ns = notebook(XNOR_DOT)
    ex01_popcount.q3.grade(ns["xnor_dot"], isolate=False)
    assert "popcount64" not in ns


def test_questions_name_their_earlier_answers():
    assert ex01_popcount.q3.uses == [ex01_popcount.q2]
    assert ex01_popcount.q4.uses == [ex01_popcount.q2, ex01_popcount.q3]
    assert ex04_splitting.q2.uses == [ex04_splitting.q1]
    assert ex04_splitting.q3.uses == [ex04_splitting.q1, ex04_splitting.q2]
    assert ex06_bi_attention.q3.uses == [ex06_bi_attention.q2]


BOOL_ZERO_ONE = """
class BoolSTE(torch.autograd.Function):  # bool(0) = 1: fails Q2
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)
"""
BI_ATTENTION = """
def bi_attention(q, k, v, attention_mask):  # right, with the learner's BoolSTE
    sq, sk, sv = (torch.where(x >= 0, 1.0, -1.0).to(q.dtype) for x in (q, k, v))
    mask = (1.0 - attention_mask[:, None, None, :].to(q.dtype)) * -10000.0
    return BoolSTE.apply(sq @ sk.transpose(-1, -2) / q.shape[-1] ** 0.5 + mask) @ sv
"""


def test_right_bi_attention_on_a_wrong_bool_ste_is_right_and_q2_is_blamed():
    """Exercise 6: Q3's formula is right, the learner's BoolSTE (Q2) maps 0 to 1: Q2 is named, not Q3."""
    ns = notebook(BOOL_ZERO_ONE, BI_ATTENTION)
    r = ex06_bi_attention.q3.grade(ns["bi_attention"])
    assert r.full_marks, r.feedback()
    assert "your BoolSTE from Q2 fails its check; fix it first" in r.feedback()


# ----------------------------------------------------------------------------- hints and solutions
def question_with_hints(*hints: str) -> core.Question:
    return core.Question("q1", "f", "t", checks=[core.Check("c", 1, lambda f: None)], hints=hints)


def test_hint_advances_on_each_call(capsys):
    q = question_with_hints("first", "second", "third")
    shown = []
    for _ in range(4):
        q.hint()
        shown.append(capsys.readouterr().out)
    assert [s.splitlines()[1] for s in shown[:3]] == ["first", "second", "third"]
    assert shown[0].startswith("Hint 1 of 3") and "q1.hint() again shows hint 2 of 3" in shown[0]
    assert "That was the last hint" in shown[2]
    assert "no more hints" in shown[3] and "q1.solution()" in shown[3]
    q.hint(2)  # a number picks one; the next call goes on from there
    q.hint()
    out = capsys.readouterr().out
    assert "Hint 2 of 3" in out and "Hint 3 of 3" in out


@pytest.mark.parametrize("name", EXERCISES)
def test_hints_are_dedented(name):
    for q in EXERCISES[name]:
        for h in q.hints:
            assert not any(line.startswith(" " * 4) for line in h.splitlines()), (q.name, h)


@pytest.mark.parametrize("name", EXERCISES)
def test_solution_prints_the_code_not_the_docstring(name, capsys):
    for q in EXERCISES[name]:
        q.solution()
        out = capsys.readouterr().out
        assert f" {q.func_name}(" in out
        assert q.reference.__doc__.strip().splitlines()[0] not in out, out
        assert '"""' not in out


def test_solution_source_keeps_comments_and_method_bodies():
    src = core._without_docstrings('class A:\n    """Doc."""\n\n    @staticmethod\n    def f(x):\n'
                                   '        """More doc,\n        on two lines."""\n        # a comment\n'
                                   '        return x\n\n    def g(self):\n        """Only a docstring."""\n')
    assert src == ('class A:\n    @staticmethod\n    def f(x):\n        # a comment\n        return x\n\n'
                   '    def g(self):\n        """Only a docstring."""\n')


# ---------------------------------------------------------------------------- cells that raised
def test_a_cell_that_raised_is_named_by_its_question_and_first_line():
    ex = ex01_popcount.EXERCISE
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    error = nbformat.v4.new_output("error", ename="ValueError", evalue="bad words", traceback=[])
    cells = [md("# Exercise 1"), code("undefined + 1"), md("## Q2. Popcount"),
             code("def popcount64(words):\n    return words.bits"), code("popcount64(np.zeros(3))"),
             md("## Summary"), code("\n\nprint(done)")]
    for i in (1, 4, 6):
        cells[i].outputs = [error]
    nb = nbformat.v4.new_notebook(cells=cells)
    notes = core._cell_notes(nb, 120, ex.questions)
    assert notes == ["the cell starting 'undefined + 1' raised ValueError: bad words",
                     "Q2 (popcount64): the cell starting 'popcount64(np.zeros(3))' raised ValueError: bad words",
                     "the cell starting 'print(done)' raised ValueError: bad words"]
    assert core._cell_questions(nb, ex.questions)[3] is ex01_popcount.q2
