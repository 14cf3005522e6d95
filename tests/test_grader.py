"""The exercise grader is tested like the exercises it grades: the reference solutions get full marks,
the shipped stubs get zero, known mistakes lose points with the right diagnosis, and a learner's
exception, infinite loop or crash costs one question, never the grader.

Kernel runs (the slow part): the shipped notebooks are graded once (a module-scoped fixture); each exercise
is graded once solved; one notebook mixes right answers, an exception and an infinite loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import nbformat
import numpy as np
import pytest
import torch
from conftest import ROOT

from binlab.grader import (cli, core, ex01_popcount, ex02_quantizers, ex03_landscape, ex04_splitting, ex05_elastic,
                           ex06_bi_attention, ex08_bitwise_bert)

#: every shipped exercise; each test parametrized over it holds for all of them (tests/test_ex03.py and
#: tests/test_ex04.py add what is particular to one exercise).
EXERCISES = {"01_popcount": ex01_popcount, "02_quantizers": ex02_quantizers,
             "03_landscape": ex03_landscape, "04_splitting": ex04_splitting, "05_elastic": ex05_elastic,
             "06_bi_attention": ex06_bi_attention, "08_bitwise_bert": ex08_bitwise_bert}
NOTEBOOKS = {name: ROOT / "exercises" / f"{name}.ipynb" for name in EXERCISES}


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def notebook_with(name: str, replacements: dict[str, str], extra_cells: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    """The shipped notebook with the stub cell of each question in ``replacements`` replaced."""
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    for func_name, source in replacements.items():
        cells = [c for c in nb.cells if c.cell_type == "code"
                 and (f"def {func_name}(" in c.source or f"class {func_name}(" in c.source)]
        assert len(cells) == 1, f"no unique stub cell for {func_name}"
        cells[0].source = source
    for src in extra_cells:
        nb.cells.insert(2, nbformat.v4.new_code_cell(src))
    return nb


def stub_namespace(name: str) -> dict:
    """Execute the shipped notebook's import and stub cells (not the check cells) in a namespace."""
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    ns: dict = {}
    for c in nb.cells:
        if c.cell_type == "code" and c.source.lstrip().startswith(("def ", "class ", "import ", "from ")):
            exec(compile(c.source, f"<{name} stub>", "exec"), ns)
    return ns


# ----------------------------------------------------------------------------------- registry
def test_exercises_are_found_by_module_name():
    assert set(EXERCISES) <= set(core.exercise_names())
    for name, module in EXERCISES.items():
        assert core.load_exercise(name[:2]) is module.EXERCISE
    for key in ("01_popcount", "ex01_popcount", "01", "01_popcount.ipynb"):
        assert core.load_exercise(key) is ex01_popcount.EXERCISE


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(core.UnknownExerciseError, match="known exercises: .*01_popcount.*02_quantizers"):
        core.load_exercise("99_nothing")


@pytest.mark.parametrize("name", EXERCISES)
def test_exercise_structure(name):
    ex = EXERCISES[name].EXERCISE
    assert ex.name == name and len(ex) >= 3
    assert [q.name for q in ex] == [f"q{i}" for i in range(1, len(ex) + 1)]
    for q in ex:
        assert q.reference is not None and q.hints and q.max_points == sum(c.points for c in q.checks)
        assert getattr(EXERCISES[name], q.name) is q
        assert ex[q.func_name] is q


def test_question_rejects_bad_definitions():
    with pytest.raises(ValueError, match="no checks"):
        core.Question("q1", "f", "t", checks=[])
    with pytest.raises(ValueError, match="at least one point"):
        core.Question("q1", "f", "t", checks=[core.Check("c", 0, lambda f: None)])


# ------------------------------------------------------------------ reference, stubs, mistakes
@pytest.mark.parametrize("name", EXERCISES)
def test_reference_solution_scores_full_marks(name):
    ex = EXERCISES[name].EXERCISE
    result = ex.grade(ex.reference_namespace())
    assert [q.status for q in result.questions] == [core.CORRECT] * len(ex)
    assert result.points == result.max_points == ex.max_points and result.full_marks


@pytest.mark.parametrize("name", EXERCISES)
def test_printed_solution_is_a_working_answer(name, capsys):
    """What q.solution() shows, pasted into a notebook, must score full marks."""
    ex = EXERCISES[name].EXERCISE
    ns: dict = {"np": np, "torch": torch}
    for q in ex:
        q.solution()
        shown = capsys.readouterr().out
        assert q.func_name in shown and q.solution_source() in shown
        exec(compile(q.solution_source(), f"<solution {q.name}>", "exec"), ns)
    result = ex.grade(ns)
    assert result.full_marks, result.report()


@pytest.mark.parametrize("name", EXERCISES)
def test_shipped_stubs_score_zero_as_not_attempted(name):
    ns = stub_namespace(name)
    ex = EXERCISES[name].EXERCISE
    result = ex.grade(ns)
    assert result.points == 0
    for q, r in zip(ex, result.questions):
        assert ns[q.func_name] is not None
        assert r.status == core.NOT_ATTEMPTED, r.feedback()
        assert q.label in r.message and "not implemented yet" in r.message


@pytest.mark.parametrize("name", EXERCISES)
def test_missing_function_is_not_attempted(name):
    result = EXERCISES[name].EXERCISE.grade({})
    assert result.points == 0
    assert {q.status for q in result.questions} == {core.NOT_ATTEMPTED}
    assert "there is no" in result.questions[0].message


REQUIRED_MISTAKES = {
    "01_popcount": {"msb_first", "padding_garbage", "off_by_one_words", "sign_zero_negative", "popcount_only"},
    "02_quantizers": {"per_tensor_when_per_row", "no_clip", "mean_of_all", "wrong_constant"},
    "03_landscape": {"no_restore", "mean_not_abs", "no_normalisation", "norm_not_rayleigh"},
    "04_splitting": {"printed_a"},  # the paper's printed coefficient (J and K swapped), in q2 and q3
    "05_elastic": {"threshold_alpha", "no_grad_scale", "signed_for_probabilities", "sign_zero"},
    "06_bi_attention": {"padded_keys", "padded_rows", "bool_zero_one", "softmax_kept", "mask_forgotten", "squared",
                        "per_row_norm"},
    "08_bitwise_bert": {"padded_length", "k_minus_popcount", "and_for_xnor", "alpha_per_column", "bias_before_scale",
                        "uint64_wrap", "act_alpha_twice", "msb_first", "xnor_for_and", "ones_term_missing",
                        "v_along_d"},
}


@pytest.mark.parametrize("name", EXERCISES)
def test_required_mistakes_are_listed(name):
    mistakes = EXERCISES[name].MISTAKES
    assert REQUIRED_MISTAKES[name] <= {m.name for m in mistakes}
    assert len({(m.question, m.name) for m in mistakes}) == len(mistakes)


ALL_MISTAKES = [(name, m) for name, mod in EXERCISES.items() for m in mod.MISTAKES]


@pytest.mark.parametrize("name,mistake", ALL_MISTAKES, ids=[f"{n}-{m.question}-{m.name}" for n, m in ALL_MISTAKES])
def test_typical_mistake_loses_points_with_a_diagnosis(name, mistake):
    q = EXERCISES[name].EXERCISE[mistake.question]
    result = q.grade(mistake.impl, time_limit=2)
    assert result.points < result.max_points, f"{mistake.name} got full marks"
    assert result.status != core.NOT_ATTEMPTED
    assert mistake.diagnosis.lower() in result.feedback().lower(), result.feedback()


def test_partial_credit_counts_the_checks_that_pass():
    r = ex02_quantizers.q4.grade(dict((m.name, m.impl) for m in ex02_quantizers.MISTAKES)["strict_boundary"])
    assert r.status == core.PARTIAL and r.points == r.max_points - 1
    assert [c.passed for c in r.checks] == [True, True, False]


# ------------------------------------------------------------ isolation: errors, loops, crashes
def test_learner_exception_costs_the_question_with_its_message():
    def pack_signs(x):
        raise ValueError("my packing broke")

    r = ex01_popcount.q1.grade(pack_signs)
    assert r.points == 0 and r.status == core.INCORRECT
    text = r.feedback()
    assert "ValueError: my packing broke" in text and 'raise ValueError("my packing broke")' in text
    assert "x of shape" in text  # on which input


def test_infinite_loop_hits_the_time_limit():
    def popcount64(words):
        while True:
            try:
                pass
            except BaseException:  # even swallowing interrupts does not help
                pass

    t0 = time.perf_counter()
    r = ex01_popcount.q2.grade(popcount64, time_limit=1)
    assert time.perf_counter() - t0 < 10
    assert r.status == core.TIME_LIMIT and r.points == 0
    assert "time limit" in r.feedback()


def test_crash_of_the_learner_process_is_reported():
    def twn_threshold(W):
        os._exit(3)

    r = ex02_quantizers.q2.grade(twn_threshold)
    assert r.status == core.CRASHED and r.points == 0 and "exit status 3" in r.message


def test_learner_output_is_captured_and_grader_survives_sys_exit():
    def bwn(W, per_row=False):
        print("debugging bwn")
        sys.exit(1)

    r = ex02_quantizers.q1.grade(bwn)
    assert r.points == 0 and "debugging bwn" in r.output and "SystemExit" in r.feedback()


def test_check_prints_feedback_and_finds_the_function_itself(capsys):
    ns = {"q1": ex01_popcount.q1, "pack_signs": ex01_popcount.pack_signs}
    exec("q1.check()", ns)  # no argument: looked up in the caller's (the notebook's) globals
    assert "Q1 pack_signs: correct! 3/3 points." in capsys.readouterr().out
    ex01_popcount.q1.check(dict((m.name, m.impl) for m in ex01_popcount.MISTAKES)["msb_first"])
    out = capsys.readouterr().out
    assert "0/3 points" in out and "reverse order" in out and "q1.hint()" in out


def test_hints(capsys):
    q = ex01_popcount.q1
    q.hint(1)
    out = capsys.readouterr().out
    assert out.startswith("Hint 1 of 2 for Q1") and "q1.hint() again shows hint 2" in out
    q.hint()  # the next one, not hint 1 again
    assert capsys.readouterr().out.startswith("Hint 2 of 2 for Q1")
    q.hint()
    assert "no more hints" in capsys.readouterr().out
    q.hint(9)
    assert "hints 1 to 2" in capsys.readouterr().out


def test_results_round_trip_through_json():
    ex = ex02_quantizers.EXERCISE
    ns = ex.reference_namespace()
    ns["twn"] = dict((m.name, m.impl) for m in ex02_quantizers.MISTAKES)["mean_of_all"]
    result = ex.grade(ns)
    again = core.ExerciseResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.report() == result.report() and again.points == result.points == ex.max_points - 2


# ------------------------------------------------------------------------ shipped notebooks
@pytest.mark.parametrize("name", EXERCISES)
def test_shipped_notebook_format(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["binlab"]["exercise"] == name
    assert "widgets" not in nb.metadata
    assert nb.cells[0].cell_type == "markdown"
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
    for q in EXERCISES[name].EXERCISE:
        stub = [s for s in sources if f"def {q.func_name}(" in s or f"class {q.func_name}(" in s]
        assert len(stub) == 1 and f'NotImplementedError("{q.label}: {q.func_name}' in stub[0]
        assert f"{q.name}.check({q.func_name})" in sources
        # the stub's docstring is the reference's: one formula, one place
        assert q.reference.__doc__.strip().splitlines()[0] in stub[0]


# --------------------------------------------------------------- notebooks graded end to end
@pytest.fixture(scope="module")
def stub_grades(tmp_path_factory):
    """``binlab grade --json`` on both shipped notebooks, as a learner would run it."""
    out = {}
    for name, path in NOTEBOOKS.items():
        proc = subprocess.run([sys.executable, "-m", "binlab", "grade", str(path), "--json"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        out[name] = proc
    return out


@pytest.mark.parametrize("name", EXERCISES)
def test_binlab_grade_on_shipped_notebook_reports_zero(name, stub_grades):
    proc = stub_grades[name]
    assert proc.stdout.lstrip().startswith("{"), f"binlab grade failed:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["points"] == 0 and result["max_points"] == EXERCISES[name].EXERCISE.max_points
    assert {q["status"] for q in result["questions"]} == {core.NOT_ATTEMPTED}
    assert result["notes"] == []  # the shipped notebook runs without a single error


@pytest.mark.parametrize("name", EXERCISES)
def test_solved_notebook_gets_full_marks(name, tmp_path):
    ex = EXERCISES[name].EXERCISE
    nb = notebook_with(name, {q.func_name: q.solution_source() for q in ex})
    path = tmp_path / "my_answers.ipynb"  # the name does not matter: the metadata says which exercise
    nbformat.write(nb, path)
    result = core.grade_notebook(path)
    assert result.exercise == name
    assert result.full_marks and result.points == ex.max_points, result.report()
    assert f"Total: {ex.max_points}/{ex.max_points}" in result.report() and result.notes == []


MIXED = {
    "pack_signs": ex01_popcount.q1.solution_source(),
    "popcount64": "def popcount64(words):\n    raise ValueError('popcount exploded')\n",
    "xnor_dot": "def xnor_dot(a_words, b_words, K):\n    while True:\n        pass\n",
    "xnor_matmul": ex01_popcount.q4.solution_source(),
}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    nb = notebook_with("01_popcount", MIXED, extra_cells=("undefined_name + 1", "while True:\n    pass"))
    path = tmp_path_factory.mktemp("mixed") / "01_popcount.ipynb"
    nbformat.write(nb, path)
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    # 5 s per question: enough for the right answers on two busy cores, short for the one that never returns; 15 s
    # per cell (a check cell of the right answers took over 6 s with six processes on the two cores)
    args = parser.parse_args([str(path), "--time-limit", "5", "--cell-timeout", "15", "--json"])
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.run(args)
    return code, json.loads(buf.getvalue()), time.perf_counter() - t0


def test_mixed_notebook_grades_each_question_on_its_own(mixed_run):
    code, result, seconds = mixed_run
    assert code == 1
    by_name = {q["func_name"]: q for q in result["questions"]}
    assert by_name["pack_signs"]["points"] == 3 and by_name["xnor_matmul"]["points"] == 3
    assert by_name["popcount64"]["points"] == 0
    assert "ValueError: popcount exploded" in json.dumps(by_name["popcount64"])
    assert by_name["xnor_dot"]["status"] == core.TIME_LIMIT and by_name["xnor_dot"]["points"] == 0
    assert result["points"] == 6 and result["max_points"] == 10
    assert any("NameError" in n and "undefined_name" in n for n in result["notes"])
    assert any("'while True:'" in n and "longer than 15 s" in n for n in result["notes"])
    assert not any("code cell" in n for n in result["notes"])  # JupyterLab shows no cell numbers
    assert seconds < 120


def test_report_text():
    result = core.ExerciseResult("01_popcount", "Bits", [
        core.QuestionResult("q1", "pack_signs", "t", core.CORRECT, 3, 3),
        core.QuestionResult("q2", "popcount64", "t", core.TIME_LIMIT, 0, 2, "time limit: 2 s"),
    ], notes=["code cell 3 raised NameError"], notebook="nb.ipynb")
    text = result.report()
    assert "Q1  pack_signs" in text and "3/3" in text and "0/2" in text and "time limit: 2 s" in text
    assert text.rstrip().endswith("Total: 3/5") and "code cell 3 raised NameError" in text


# ------------------------------------------------------------------------- CLI errors
def test_cli_missing_file(capsys, tmp_path):
    assert run_cli(str(tmp_path / "nope.ipynb")) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_cli_unknown_exercise(capsys, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    path = tmp_path / "my_notes.ipynb"
    nbformat.write(nb, path)
    assert run_cli(str(path)) == 2
    err = capsys.readouterr().err
    assert "unknown exercise 'my_notes'" in err and "01_popcount" in err
    assert run_cli(str(path), "--exercise", "nope") == 2


def test_cli_not_a_notebook(capsys, tmp_path):
    path = tmp_path / "01_popcount.ipynb"
    path.write_text("this is not json")
    assert run_cli(str(path)) == 2
    assert "not a readable Jupyter notebook" in capsys.readouterr().err


def test_cli_usage_errors_and_list(capsys):
    assert run_cli() == 2
    assert "which notebook?" in capsys.readouterr().err
    assert run_cli(str(NOTEBOOKS["01_popcount"]), "--time-limit", "0") == 2
    assert run_cli("--list") == 0
    out = capsys.readouterr().out
    assert "01_popcount" in out and "02_quantizers" in out


def test_cli_module_imports_are_light():
    code = ("import sys, binlab.grader.cli; "
            "heavy = {'torch', 'numpy', 'nbclient', 'nbformat'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_time_limit_environment_variable(monkeypatch):
    monkeypatch.setenv(core.TIME_LIMIT_ENV, "3.5")
    assert core.time_limit_default() == 3.5
    monkeypatch.setenv(core.TIME_LIMIT_ENV, "soon")
    with pytest.raises(core.GraderError):
        core.time_limit_default()
    monkeypatch.delenv(core.TIME_LIMIT_ENV)
    assert core.time_limit_default() == core.DEFAULT_TIME_LIMIT


def test_docstring_examples_hold():
    """The worked examples in the reference docstrings (and the notebooks' markdown) are right."""
    assert ex01_popcount.pack_signs(np.array([0.5, -1.0, 0.0, -2.0])).tolist() == [5]
    assert ex01_popcount.pack_signs(np.ones(70)).tolist() == [2**64 - 1, 63]
    assert ex01_popcount.popcount64(np.array([0, 1, 0b1011, 2**64 - 1], dtype=np.uint64)).tolist() == [0, 1, 3, 64]
    a, b = ex01_popcount.pack_signs(np.array([1.0, -1, 1])), ex01_popcount.pack_signs(np.array([1.0, 1, -1]))
    assert ex01_popcount.xnor_dot(a, b, 3) == -1
    A = ex01_popcount.pack_signs(np.array([[1.0, -1, 1], [-1, -1, -1]]))
    assert ex01_popcount.xnor_matmul(A, b[None], 3).tolist() == [[-1], [-1]]
    W = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert ex02_quantizers.bwn(W).tolist() == [[1.25, -1.25], [1.25, 1.25]]
    assert ex02_quantizers.bwn(W, per_row=True).tolist() == [[2, -2], [0.5, 0.5]]
    assert ex02_quantizers.twn_threshold(W).item() == pytest.approx(0.875)
    assert ex02_quantizers.twn(W).tolist() == [[2, -2], [0, 0]]
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], requires_grad=True)
    y = ex02_quantizers.ClippedSignSTE.apply(x)
    y.sum().backward()
    assert y.tolist() == [-1, -1, 1, 1, 1] and x.grad.tolist() == [0, 1, 1, 1, 0]
    assert textwrap.dedent(ex01_popcount.q1.solution_source()).startswith("def pack_signs(x):")
    ex6 = ex06_bi_attention
    A = torch.tensor([[[[1, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]]]])
    assert ex6.map_entropy(A, torch.tensor([[1, 1, 1, 0]])).item() == pytest.approx(0.6122, abs=1e-4)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    y = ex6.BoolSTE.apply(x)
    y.sum().backward()
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1] and x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]
    q, k, v = (torch.tensor([[[[a], [b]]]]) for a, b in ((1.0, -1.0), (2.0, -3.0), (0.5, -0.5)))
    assert ex6.bi_attention(q, k, v, torch.ones(1, 2)).flatten().tolist() == [1, -1]
    f = torch.tensor([[[[1.0], [0.0]]]])
    assert ex6.dmd_distance(f, f.flip(-2)).item() == pytest.approx(2 ** 0.5)
    assert ex6.dmd_distance(f + 0.3, 2 * (f + 0.3)).item() == pytest.approx(0.0, abs=1e-6)
    ex8 = ex08_bitwise_bert
    x = ex01_popcount.pack_signs(np.array([[1.0, -1, 1]]))
    w = ex01_popcount.pack_signs(np.array([[1.0, 1, -1], [-1, -1, -1]]))
    assert x.tolist() == [[0b101]] and w.tolist() == [[0b011], [0b000]]
    assert ex8.binary_linear(x, w, 3, torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0])).tolist() == [[0.5, -2.0]]
    y = ex8.bit_linear(torch.tensor([[0.5, -1.0, 0.0]]), w, 2.0, torch.tensor([0.5, 0.25]), torch.tensor([1.0, 0.0]))
    assert y.dtype == torch.float32 and y.tolist() == [[0.0, -0.5]]
    p, v = ex8._pack(np.array([[1, 0, 1, 1]])), ex01_popcount.pack_signs(np.array([[1.0, 1, -1, 1]]))
    assert p.tolist() == [[0b1101]] and v.tolist() == [[0b1011]] and ex8.and_product(p, v, 4).tolist() == [[1]]
    ctx = ex8.bit_attention(torch.tensor([[[[0.7, 0.3], [0.45, 0.55]]]]), torch.tensor([[[[0.5, 1.0], [-2.0, 0.0]]]]),
                            0.8, 1.5)
    assert ctx.flatten().tolist() == pytest.approx([1.2, 1.2, 0.0, 2.4])


def test_exercise_convention_matches_binlab_kernels():
    """Exercise 1 teaches the packing binlab's kernels use: same words, same products."""
    packing = pytest.importorskip("binlab.kernels.packing")
    products = pytest.importorskip("binlab.kernels.products")
    rng = np.random.default_rng(7)
    for shape in [(3, 70), (2, 64), (1, 1), (4, 200)]:
        x = rng.standard_normal(shape).astype(np.float32)
        x[:, ::5] = 0.0
        assert np.array_equal(packing.pack_signs(torch.from_numpy(x)), ex01_popcount.pack_signs(x))
    A = ex01_popcount.pack_signs(rng.standard_normal((5, 130)))
    B = ex01_popcount.pack_signs(rng.standard_normal((7, 130)))
    assert np.array_equal(products.xnor_gemm(A, B, 130).numpy(), ex01_popcount.xnor_matmul(A, B, 130))


def test_ex08_matches_binlab_kernels():
    """Exercise 8's reference answers are binlab's BinaryLinear, and_gemm and the engine's and_bmm context."""
    from binlab.kernels.linear import BinaryLinear
    from binlab.kernels.packing import pack_bits01, pack_signs
    from binlab.kernels.products import and_bmm, and_gemm

    ex8 = ex08_bitwise_bert
    g = torch.Generator().manual_seed(8)
    for K in (1, 70, 128, 300):
        W, b, x = torch.randn(24, K, generator=g), torch.randn(24, generator=g), torch.randn(16, K, generator=g)
        layer = BinaryLinear.from_float(W, b, alpha="row")
        mine = ex8.binary_linear(pack_signs(x), pack_signs(W), K, layer.alpha, layer.bias)
        assert mine.dtype == torch.float32 and torch.allclose(mine, layer(x), rtol=1e-6, atol=1e-5)
        engine = BinaryLinear.from_float(W, b, alpha=0.6 * layer.alpha)
        assert torch.allclose(ex8.bit_linear(x, pack_signs(W), 0.6, layer.alpha, b), engine(x), rtol=1e-6, atol=1e-5)
        p, v = torch.rand(16, K, generator=g) < 0.3, torch.randn(8, K, generator=g)
        pw, vw = pack_bits01(p), pack_signs(v)
        assert np.array_equal(ex8.and_product(pw, vw, K), and_gemm(pw, vw, K).numpy())
    probs, v = torch.softmax(2 * torch.randn(2, 3, 70, 70, generator=g), -1), torch.randn(2, 3, 70, 16, generator=g)
    context = 0.05 * 0.8 * and_bmm(pack_bits01(probs / 0.05 > 0.5), pack_signs(v.transpose(-1, -2)), 70)
    assert torch.allclose(ex8.bit_attention(probs, v, 0.05, 0.8), context, rtol=1e-6, atol=1e-6)


def test_interrupting_a_check_kills_the_child(monkeypatch):
    """Interrupting the kernel during q.check() must not leave the learner's loop running."""
    import signal

    pids = []
    real_fork = os.fork

    def recording_fork():
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def loop_forever():
        while True:
            pass

    monkeypatch.setattr(os, "fork", recording_fork)
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            core.run_isolated(loop_forever, time_limit=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):  # killed and already reaped by run_isolated
        os.waitpid(pids[0], os.WNOHANG)


def test_shared_check_helpers():
    from binlab.grader import checks

    assert checks.show(torch.tensor([-0.0, 1.5, 2.0])) == "[0, 1.5, 2]"
    assert checks.show(torch.arange(8.0), n=2) == "[0, 1, ...]"
    assert checks.one_number(torch.tensor([2.5]), "f", "x") == 2.5 and checks.one_number(3, "f", "x") == 3.0
    with pytest.raises(core.CheckFailed, match="f returned None on x: did you forget the return"):
        checks.one_number(None, "f", "x")
    with pytest.raises(core.CheckFailed, match=r"f returned 2 numbers \(shape \(2,\)\) on x; expected the eigenvalue"):
        checks.one_number(torch.ones(2), "f", "x", "the eigenvalue")
    with pytest.raises(core.CheckFailed, match="f returned a str on x; expected one number"):
        checks.one_number("many", "f", "x")
    assert torch.equal(checks.randn(3, 2, 2), checks.randn(3, 2, 2)) and checks.randn(3, 2, dtype=torch.float64).dtype == torch.float64
    assert checks.close(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7])) and not checks.close(torch.ones(2), torch.ones(3))
