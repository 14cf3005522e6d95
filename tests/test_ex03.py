"""Exercise 3 (loss landscapes, Hessian-vector products, power iteration) grades itself correctly.

The trio every exercise is held to: the reference solutions get full marks, the shipped stubs get zero,
and each known mistake loses points with a diagnosis the learner can act on. Plus: the shipped notebook
runs clean and grades 0 through ``binlab grade``, a solved copy grades full marks, and the exercise's
reference answers agree with the library the chapter uses (binlab.landscape).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from binlab import landscape as L
from binlab.grader import core
from binlab.grader import ex03_landscape as ex
from binlab.model import BertConfig, BertForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "exercises" / "03_landscape.ipynb"


def stub_namespace() -> dict:
    """The shipped notebook's import and stub cells (not the check cells), executed."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ns: dict = {}
    for c in nb.cells:
        if c.cell_type == "code" and c.source.lstrip().startswith(("def ", "class ", "import ", "from ")):
            exec(compile(c.source, "<03_landscape stub>", "exec"), ns)
    return ns


def test_exercise_is_registered_and_well_formed():
    assert "03_landscape" in core.exercise_names()
    assert core.load_exercise("03") is ex.EXERCISE
    assert [q.name for q in ex.EXERCISE] == ["q1", "q2", "q3", "q4"]
    for q in ex.EXERCISE:
        assert q.reference is not None and q.hints and q.max_points == sum(c.points for c in q.checks)
        assert getattr(ex, q.name) is q
    assert ex.EXERCISE.max_points == 15


@pytest.mark.parametrize("q", list(ex.EXERCISE), ids=lambda q: q.name)
def test_reference_gets_full_marks(q):
    result = q.grade(q.reference)  # forked and time-limited, as in a notebook
    assert result.full_marks and result.status == core.CORRECT, result.feedback()


def test_shipped_stubs_are_not_attempted():
    ns = stub_namespace()
    result = ex.EXERCISE.grade(ns)
    assert result.points == 0
    assert {q.status for q in result.questions} == {core.NOT_ATTEMPTED}


@pytest.mark.parametrize("mistake", ex.MISTAKES, ids=lambda m: f"{m.question}-{m.name}")
def test_each_typical_mistake_loses_points_with_a_diagnosis(mistake):
    result = ex.EXERCISE[mistake.question].grade(mistake.impl)
    assert result.points < result.max_points, f"{mistake.name} got full marks"
    assert result.status != core.NOT_ATTEMPTED
    assert mistake.diagnosis.lower() in result.feedback().lower(), result.feedback()


def test_the_brief_s_mistakes_are_all_covered():
    names = {(m.question, m.name) for m in ex.MISTAKES}
    assert {("q2", "no_restore"), ("q2", "mean_not_abs"), ("q4", "no_normalisation"),
            ("q4", "norm_not_rayleigh")} <= names


def test_shipped_notebook_format():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["binlab"]["exercise"] == "03_landscape"
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
        # the stub's docstring is the reference's: one formula, one place
        assert ex.EXERCISE[q.name].reference.__doc__.strip().splitlines()[0] in stub[0]


def test_binlab_grade_on_the_shipped_notebook_reports_zero():
    proc = subprocess.run([sys.executable, "-m", "binlab", "grade", str(NOTEBOOK), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout.lstrip().startswith("{"), f"binlab grade failed:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["points"] == 0 and result["max_points"] == 15
    assert {q["status"] for q in result["questions"]} == {core.NOT_ATTEMPTED}
    assert result["notes"] == []  # the shipped notebook runs without a single error


def test_a_solved_notebook_gets_full_marks(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for q in ex.EXERCISE:
        cells = [c for c in nb.cells if c.cell_type == "code" and f"def {q.func_name}(" in c.source]
        assert len(cells) == 1
        cells[0].source = q.solution_source()
    path = tmp_path / "my_landscape.ipynb"  # the name does not matter: metadata says which exercise
    nbformat.write(nb, path)
    result = core.grade_notebook(path)
    assert result.exercise == "03_landscape"
    assert result.full_marks and result.points == 15, result.report()
    assert result.notes == []


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
    """What the learner writes is what binlab.landscape computes for the chapter."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, quant="w1a8")
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 40, (4, 6), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
    names = L.value_layers()
    lib = L.loss_grid(model, batch, names, steps=5, progress=False)
    mine = ex.loss_grid(model, lambda m: L.classification_loss(m, batch), list(names), lib.xs.tolist())
    np.testing.assert_allclose(mine.numpy(), lib.losses, rtol=1e-5)
    H = torch.diag(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))
    v0 = torch.ones(3, dtype=torch.float64)
    result, _ = L.power_iteration(lambda v: H @ v, v0, max_iter=500, tol=1e-12)
    assert ex.power_iteration(lambda v: H @ v, v0, max_iter=500, tol=1e-12) == pytest.approx(result.eigenvalue)
