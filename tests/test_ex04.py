"""Exercise 4 (ternary weight splitting) grades itself correctly.

The trio every exercise is held to: the reference solutions get full marks, the shipped stubs get zero, and
each known mistake loses points with a diagnosis the learner can act on (the paper's printed coefficient,
J and K swapped, among them). Plus: the shipped notebook runs clean and grades 0 through ``binlab grade``, a
solved copy grades full marks, and the reference answers agree with the library (binlab.splitting).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from binlab.grader import core
from binlab.grader import ex04_splitting as ex
from binlab.quantizers import bwn, twn
from binlab.splitting import tws_a, tws_a_as_printed, tws_b, tws_split

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "exercises" / "04_splitting.ipynb"


def stub_namespace() -> dict:
    """The shipped notebook's import and stub cells (not the check cells), executed."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ns: dict = {}
    for c in nb.cells:
        if c.cell_type == "code" and c.source.lstrip().startswith(("def ", "class ", "import ", "from ")):
            exec(compile(c.source, "<04_splitting stub>", "exec"), ns)
    return ns


def test_exercise_is_registered_and_well_formed():
    assert "04_splitting" in core.exercise_names()
    assert core.load_exercise("04") is ex.EXERCISE
    assert [q.name for q in ex.EXERCISE] == ["q1", "q2", "q3"]
    for q in ex.EXERCISE:
        assert q.reference is not None and q.hints and q.max_points == sum(c.points for c in q.checks)
        assert getattr(ex, q.name) is q
    assert ex.EXERCISE.max_points == 12


@pytest.mark.parametrize("q", list(ex.EXERCISE), ids=lambda q: q.name)
def test_reference_gets_full_marks(q):
    result = q.grade(q.reference)  # forked and time-limited, as in a notebook
    assert result.full_marks and result.status == core.CORRECT, result.feedback()


def test_shipped_stubs_are_not_attempted():
    result = ex.EXERCISE.grade(stub_namespace())
    assert result.points == 0
    assert {q.status for q in result.questions} == {core.NOT_ATTEMPTED}


@pytest.mark.parametrize("mistake", ex.MISTAKES, ids=lambda m: f"{m.question}-{m.name}")
def test_each_typical_mistake_loses_points_with_a_diagnosis(mistake):
    result = ex.EXERCISE[mistake.question].grade(mistake.impl)
    assert result.points < result.max_points, f"{mistake.name} got full marks"
    assert result.status != core.NOT_ATTEMPTED
    assert mistake.diagnosis.lower() in result.feedback().lower(), result.feedback()


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


def test_shipped_notebook_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["binlab"]["exercise"] == "04_splitting"
    assert "widgets" not in nb.metadata
    assert nb.cells[0].cell_type == "markdown"
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
    for q in ex.EXERCISE:
        stub = [s for s in sources if f"def {q.func_name}(" in s]
        assert len(stub) == 1 and f'NotImplementedError("{q.label}: {q.func_name}' in stub[0]
        assert f"{q.name}.check({q.func_name})" in sources
        assert ex.EXERCISE[q.name].reference.__doc__.strip().splitlines()[0] in stub[0]


def test_binlab_grade_on_the_shipped_notebook_reports_zero():
    proc = subprocess.run([sys.executable, "-m", "binlab", "grade", str(NOTEBOOK), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout.lstrip().startswith("{"), f"binlab grade failed:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["points"] == 0 and result["max_points"] == 12
    assert {q["status"] for q in result["questions"]} == {core.NOT_ATTEMPTED}
    assert result["notes"] == []  # the shipped notebook runs without a single error


def test_a_solved_notebook_gets_full_marks(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for q in ex.EXERCISE:
        cells = [c for c in nb.cells if c.cell_type == "code" and f"def {q.func_name}(" in c.source]
        assert len(cells) == 1
        cells[0].source = q.solution_source()
    path = tmp_path / "my_splitting.ipynb"
    nbformat.write(nb, path)
    result = core.grade_notebook(path)
    assert result.exercise == "04_splitting"
    assert result.full_marks and result.points == 12, result.report()
    assert result.notes == []
