"""The grader's machinery: questions, exercises, isolated execution with a time limit, notebooks.

Vocabulary
----------
* A :class:`Question` asks the learner for one object (a function, or a class such as a
  ``torch.autograd.Function``) with a given name, e.g. ``pack_signs``. It owns a list of
  :class:`Check` s (hidden tests, each worth some points), hints and a reference solution.
* An :class:`Exercise` is a notebook's worth of questions (``exercises/01_popcount.ipynb`` is graded
  by ``binlab.grader.ex01_popcount.EXERCISE``).
* A check is a plain function ``check(obj) -> None`` that calls the learner's object on known inputs
  and raises :class:`CheckFailed` with a message written for the learner (what was expected, what
  came back, on which input) when the answer is wrong.
* A question's ``uses`` are the earlier questions whose answers the learner's object may call by name
  (exercise 1's ``xnor_dot`` calls ``popcount64`` from Q2). When such an object loses points and one
  of those earlier answers fails its own checks, the question is graded again with the reference
  versions of the failing earlier answers bound in the learner's namespace: it gets the better of
  the two grades, and the feedback names the earlier answer at fault ("your popcount64 from Q2 fails
  its check; fix it first") instead of blaming a formula that is right.

How a learner's code is run (and why it cannot take the grader down)
--------------------------------------------------------------------
Every question is graded in a **forked child process** (:func:`run_isolated`): the child inherits the
learner's objects exactly as they are in memory (closures, lambdas, classes defined in a notebook
cell; nothing is pickled or re-executed), runs the checks with its output captured, and sends a small
JSON result back through a pipe. The parent waits at most the question's time limit and then kills
the child with SIGKILL. So an exception is a failed check with the error message, an infinite loop
(even one that swallows ``KeyboardInterrupt``, or one inside C code) is "time limit", and a crash of
the interpreter (segfault, ``os._exit``) is "crashed"; in every case the other questions are still
graded. The same path is used by ``q1.check(...)`` inside a notebook, so an infinite loop there
comes back as a message, not as a hung kernel. On platforms without ``os.fork`` (Windows) the checks
run in-process, without a time limit.

``binlab grade NOTEBOOK`` (:func:`grade_notebook`) executes a copy of the notebook headless with
nbclient in a fresh ``python3`` kernel, top to bottom, errors allowed (a cell that raises or runs
past ``cell_timeout`` is noted in the report and execution goes on). A last cell, appended by the
grader, then calls :func:`grade_in_kernel` in that same kernel: it looks up each question's object in
the notebook's namespace and grades it as above, printing one JSON line that the grader parses. A
question whose object is missing, or whose object still raises ``NotImplementedError`` (the shipped
stub), is "not attempted" and scores 0.

Writing a new exercise
----------------------
Add ``binlab/grader/exNN_name.py`` (it is found by its file name; the notebook is
``exercises/NN_name.ipynb``) defining ``q1, q2, ...`` (:class:`Question`), ``EXERCISE``
(:class:`Exercise`) and ``MISTAKES`` (a list of :class:`Mistake`: known wrong answers that the tests
check lose points). In the notebook: ``from binlab.grader.exNN_name import q1, q2`` and one check
cell per question, ``q1.check(my_function)``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import linecache
import os
import pkgutil
import re
import select
import signal
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_TIME_LIMIT = 20.0
"""Seconds a question's checks may run, unless the question or the caller says otherwise."""

TIME_LIMIT_ENV = "BINLAB_GRADER_TIME_LIMIT"
"""Environment variable overriding :data:`DEFAULT_TIME_LIMIT` (``binlab grade --time-limit`` sets it
in the kernel, so that the notebook's own check cells obey the same limit)."""

RESULT_MARKER = "BINLAB-GRADER-RESULT "
GRADER_CELL_TAG = "binlab-grader"
MAX_MESSAGE = 1500  # characters of one check's message kept in a result
MAX_OUTPUT = 2000  # characters of the learner's printed output kept in a result

# question statuses
CORRECT = "correct"
PARTIAL = "partially correct"
INCORRECT = "incorrect"
NOT_ATTEMPTED = "not attempted"
TIME_LIMIT = "time limit"
CRASHED = "crashed"
STATUSES = (CORRECT, PARTIAL, INCORRECT, NOT_ATTEMPTED, TIME_LIMIT, CRASHED)

_GRADER_DIR = str(Path(__file__).resolve().parent)


# --------------------------------------------------------------------------------------- errors
class GraderError(Exception):
    """A problem with what the grader was asked to do (missing file, unknown exercise, ...).

    ``binlab grade`` prints it as one line and exits with status 2.
    """


class UnknownExerciseError(GraderError):
    """No ``binlab.grader.exNN_*`` module matches the requested exercise."""


class CheckFailed(AssertionError):
    """Raised by a check when the learner's answer is wrong; the message is shown to the learner."""


class NotAttempted(Exception):
    """Raised by a check (or by :func:`call`) when the learner's object is still the stub."""


def time_limit_default() -> float:
    """:data:`DEFAULT_TIME_LIMIT`, or the value of ``$BINLAB_GRADER_TIME_LIMIT`` when it is set."""
    value = os.environ.get(TIME_LIMIT_ENV, "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            raise GraderError(f"{TIME_LIMIT_ENV}={value!r} is not a number of seconds") from None
        if seconds > 0:
            return seconds
    return DEFAULT_TIME_LIMIT


# ------------------------------------------------------------------------ helpers for checks
def learner_line(exc: BaseException) -> str:
    """'line N: <code>' for the innermost traceback frame that is the learner's code ('' if none).

    Frames in the grader, the standard library and site-packages (numpy, torch) are skipped, so the
    line shown is the one the learner wrote.
    """
    skip = (_GRADER_DIR, sys.prefix, sys.base_prefix, "site-packages", "<frozen")
    found = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith(skip) or "site-packages" in filename:
            continue
        code = linecache.getline(filename, lineno, frame.f_globals).strip()
        found = f"line {lineno}: {code}" if code else f"line {lineno}"
    return found


def describe_error(exc: BaseException) -> str:
    """``ValueError: message (at line 3: x = y[5])`` — an exception, told to a learner."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    where = learner_line(exc)
    return f"{text} (at {where})" if where else text


def call(obj: Callable, *args: Any, on: str = "", **kwargs: Any) -> Any:
    """Call the learner's ``obj(*args, **kwargs)``; turn its exceptions into learner messages.

    ``on`` describes the input (``"x of shape (3, 70)"``) for the message. ``NotImplementedError``
    becomes :class:`NotAttempted` (the stub); any other exception becomes :class:`CheckFailed` with
    the exception, the learner's line that raised it and the input.
    """
    name = getattr(obj, "__name__", "your function")
    try:
        return obj(*args, **kwargs)
    except NotImplementedError as e:
        raise NotAttempted(f"{name} still raises NotImplementedError: {e}") from e
    except (CheckFailed, NotAttempted):
        raise
    except (Exception, SystemExit) as e:
        where = f" on {on}" if on else ""
        raise CheckFailed(f"{name} raised {describe_error(e)}{where}.") from e


def shorten(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 15] + " ... [truncated]"


# ------------------------------------------------------------------------------ data classes
@dataclasses.dataclass
class Check:
    """One hidden test of a question: ``func(obj)`` raises :class:`CheckFailed` if ``obj`` is wrong."""

    name: str  # what is checked, shown to the learner: "K not a multiple of 64 (padding bits)"
    points: int
    func: Callable[[Any], None]


@dataclasses.dataclass
class Mistake:
    """A known wrong answer to a question, kept next to the question so the tests can use it.

    ``diagnosis`` is a phrase the feedback must contain (case-insensitive), so that the tests check
    not only that the mistake loses points but that the learner is told what went wrong.
    """

    question: str  # "q1"
    name: str  # "msb_first"
    description: str
    impl: Any  # the wrong function / class
    diagnosis: str = ""


@dataclasses.dataclass
class CheckResult:
    name: str
    points: int
    max_points: int
    passed: bool
    message: str = ""


@dataclasses.dataclass
class QuestionResult:
    """What grading one question produced (JSON-serialisable through :meth:`to_dict`)."""

    question: str  # "q1"
    func_name: str
    title: str
    status: str
    points: int
    max_points: int
    message: str = ""
    checks: list[CheckResult] = dataclasses.field(default_factory=list)
    output: str = ""  # what the learner's code printed while being checked
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.question.upper()

    @property
    def full_marks(self) -> bool:
        return self.points == self.max_points

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> QuestionResult:
        d = dict(d)
        d["checks"] = [CheckResult(**c) for c in d.get("checks", [])]
        return cls(**d)

    def feedback(self, hints: bool = True) -> str:
        """The message a learner reads after ``q1.check(...)``."""
        head = f"{self.label} {self.func_name}: "
        if self.status == CORRECT:
            lines = [f"{head}correct! {self.points}/{self.max_points} points."]
            if self.message:
                lines.append(self.message)
            return "\n".join(lines)
        if self.status == NOT_ATTEMPTED:
            lines = [f"{head}not attempted yet (0/{self.max_points} points)."]
            if self.message:
                lines.append(f"  {self.message}")
            lines.append(f"  Write {self.func_name} in its cell, run that cell, then run this one again.")
            return "\n".join(lines)
        lines = [f"{head}{self.status}, {self.points}/{self.max_points} points."]
        if self.message:
            lines.append(textwrap.indent(self.message, "  "))
        for c in self.checks:
            mark = "passed" if c.passed else "FAILED"
            lines.append(f"  [{mark}] {c.name} ({c.points}/{c.max_points})")
            if not c.passed and c.message:
                lines.append(textwrap.indent(c.message, "      "))
        if self.output:
            lines.append("  Your code printed:")
            lines.append(textwrap.indent(self.output.rstrip(), "    | "))
        if hints:
            lines.append(f"  Need a nudge? {self.question}.hint()    Stuck? {self.question}.solution()")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.feedback()


@dataclasses.dataclass
class ExerciseResult:
    """All questions of one exercise, plus notes about the notebook run (cells that raised...)."""

    exercise: str
    title: str
    questions: list[QuestionResult]
    notes: list[str] = dataclasses.field(default_factory=list)
    notebook: str = ""

    @property
    def points(self) -> int:
        return sum(q.points for q in self.questions)

    @property
    def max_points(self) -> int:
        return sum(q.max_points for q in self.questions)

    @property
    def full_marks(self) -> bool:
        return self.points == self.max_points

    def __getitem__(self, key: str) -> QuestionResult:
        for q in self.questions:
            if key in (q.question, q.func_name):
                return q
        raise KeyError(f"no question {key!r} in exercise {self.exercise}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["points"], d["max_points"] = self.points, self.max_points
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ExerciseResult:
        return cls(exercise=d["exercise"], title=d["title"],
                   questions=[QuestionResult.from_dict(q) for q in d["questions"]],
                   notes=list(d.get("notes", [])), notebook=d.get("notebook", ""))

    def report(self, verbose: bool = False) -> str:
        """The text ``binlab grade`` prints: points per question, then the total."""
        where = f"{self.notebook} " if self.notebook else ""
        lines = [f"Grading {where}(exercise {self.exercise}: {self.title})", ""]
        width = max([len(q.func_name) for q in self.questions] + [8])
        for q in self.questions:
            lines.append(f"  {q.label:<4}{q.func_name:<{width}}  {q.points:>3}/{q.max_points:<3} {q.status}")
            if verbose or not q.full_marks:
                details = q.feedback(hints=False).splitlines()[1:]
                details = [d for d in details if not d.strip().startswith("Write ")]
                lines += [textwrap.indent(d, "      ") for d in details]
        if self.notes:
            lines += ["", "Notes on running the notebook:"] + [f"  - {n}" for n in self.notes]
        lines += ["", f"Total: {self.points}/{self.max_points}"]
        if self.full_marks:
            lines.append("Full marks. Well done!")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# --------------------------------------------------------------------------------- isolation
def _child_run(target: Callable[[], dict], write_fd: int) -> None:
    """In the forked child: run ``target`` with its output captured, send JSON, never return."""
    code = 0
    try:
        try:
            if "torch" in sys.modules:  # one thread: no OpenMP pool to rebuild after the fork
                sys.modules["torch"].set_num_threads(1)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                payload = target()
            payload["output"] = shorten(captured.getvalue(), MAX_OUTPUT)
        except BaseException as e:  # noqa: BLE001 - anything at all is reported, not raised
            payload = {"status": CRASHED, "message": f"the grader failed: {describe_error(e)}"}
        data = json.dumps(payload).encode()
        view = memoryview(data)
        while view:
            n = os.write(write_fd, view)
            view = view[n:]
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def run_isolated(target: Callable[[], dict], time_limit: float) -> dict:
    """Run ``target()`` (returning a JSON-able dict) in a forked child, at most ``time_limit`` s.

    Returns ``target``'s dict, with ``"output"`` (captured stdout/stderr) and ``"seconds"`` added;
    or ``{"status": "time limit", ...}`` if the child ran out of time (it is killed), or
    ``{"status": "crashed", ...}`` if it died without answering. Without ``os.fork`` the target runs
    in-process with no limit.
    """
    t0 = time.perf_counter()
    if not hasattr(os, "fork"):
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            payload = target()
        payload["output"] = shorten(captured.getvalue(), MAX_OUTPUT)
        payload["seconds"] = time.perf_counter() - t0
        return payload

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork() in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child_run(target, write_fd)  # never returns
    os.close(write_fd)
    chunks: list[bytes] = []
    timed_out = False
    answered = False  # the child closed the pipe (it is exiting); anything else: kill it
    try:
        deadline = time.monotonic() + time_limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    answered = True
                    break
                chunks.append(chunk)
    finally:  # also on KeyboardInterrupt (the learner interrupted the kernel): never leave the child
        os.close(read_fd)
        if not answered:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    if timed_out:
        return {"status": TIME_LIMIT, "seconds": seconds,
                "message": f"time limit: the checks did not finish within {time_limit:g} s "
                           "(an infinite loop? a very slow loop over every element?)."}
    try:
        payload = json.loads(b"".join(chunks).decode())
    except ValueError:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        return {"status": CRASHED, "seconds": seconds,
                "message": f"the process running your code died without an answer ({how})."}
    payload["seconds"] = seconds
    return payload


# ------------------------------------------------------------------------- earlier answers
def _namespace_of(obj: Any) -> dict | None:
    """The global namespace in which ``obj`` looks names up (a notebook's globals, for a function or class
    defined in it), or None when it has none that can be found."""
    func = getattr(obj, "__func__", obj)  # a bound method: its function
    namespace = getattr(func, "__globals__", None)
    if namespace is None and inspect.isclass(obj):
        namespace = getattr(sys.modules.get(obj.__module__), "__dict__", None)
    return namespace if isinstance(namespace, dict) else None


@contextlib.contextmanager
def _names_bound(namespace: dict | None, objects: Mapping[str, Any]):
    """Bind each name of ``objects`` to its object in ``namespace`` meanwhile (a learner's earlier answer
    replaced by the reference one); the old bindings come back afterwards, a name that was absent goes."""
    if namespace is None or not objects:
        yield
        return
    absent = object()
    old = {name: namespace.get(name, absent) for name in objects}
    namespace.update(objects)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is absent:
                namespace.pop(name, None)
            else:
                namespace[name] = value


_FAULTS = {  # status of an earlier answer's own grade -> what is wrong with it, told to the learner
    NOT_ATTEMPTED: "is not written yet (it still raises NotImplementedError); write it first",
    TIME_LIMIT: "runs past the time limit; fix it first ({check} says more)",
    CRASHED: "crashes the process that runs it; fix it first ({check} says more)",
}
_FAULT = "fails its check; fix it first ({check} says what is wrong)"  # any other status


def _fault(question: Question, obj: Any, result: QuestionResult) -> str:
    """'your popcount64 from Q2 fails its check; fix it first (...)': an earlier answer at fault."""
    if obj is None:
        return f"there is no {question.func_name} (the answer to {question.label}) in the notebook; run its cell first"
    what = _FAULTS.get(result.status, _FAULT).format(check=f"{question.name}.check({question.func_name})")
    return f"your {question.func_name} from {question.label} {what}"


def _outcome(result: QuestionResult) -> tuple:
    """What a grade says (not how long it took or what was printed): two equal outcomes read the same."""
    return (result.status, result.points, result.message,
            [(c.name, c.passed, c.message) for c in result.checks])


# -------------------------------------------------------------------------------- solutions
def _without_docstrings(source: str) -> str:
    """``source`` (a function's or a class's) without the docstrings of it and of what it defines.

    The learner's stub already has the docstring; the solution shows only the code. A docstring that is
    a body's only statement stays (the body would be empty), and so do comments.
    """
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()  # 0-based line numbers
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or len(node.body) < 2:
            continue
        first, after = node.body[0], node.body[1]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            drop.update(range(first.lineno - 1, first.end_lineno))
            start = min([after.lineno] + [d.lineno for d in getattr(after, "decorator_list", [])]) - 1
            drop.update(i for i in range(first.end_lineno, start) if not lines[i].strip())  # blank lines after it
    return "".join(line for i, line in enumerate(lines) if i not in drop)


# ---------------------------------------------------------------------------------- question
class Question:
    """One question: the name of the object to write, hidden checks, hints and the solution.

    In a notebook::

        q1.check(pack_signs)   # grade it now, print feedback (q1.check() finds pack_signs itself)
        q1.hint()              # the first hint; called again, the next one (q1.hint(2): hint 2)
        q1.solution()          # print the reference solution's code

    ``uses`` lists the earlier questions whose answers the learner's object may call by name (see the
    module docstring): ``Question("q3", "xnor_dot", ..., uses=[q2])``.
    """

    def __init__(self, name: str, func_name: str, title: str, checks: Iterable[Check],
                 hints: Iterable[str] = (), solution: Any = None, time_limit: float | None = None,
                 congrats: str = "", uses: Iterable[Question] = ()):
        self.name = name
        self.func_name = func_name
        self.title = title
        self.checks = list(checks)
        self.hints = [inspect.cleandoc(h) for h in hints]  # a docstring's indentation removed
        self.reference = solution
        self.time_limit = time_limit
        self.congrats = congrats
        self.uses = list(uses)
        self._next_hint = 1  # what hint() without a number shows
        if not self.checks:
            raise ValueError(f"question {name} has no checks")
        if any(c.points <= 0 for c in self.checks):
            raise ValueError(f"question {name}: every check must be worth at least one point")

    def __repr__(self) -> str:
        return f"<Question {self.name}: {self.func_name}, {self.max_points} points>"

    @property
    def label(self) -> str:
        return self.name.upper()

    @property
    def max_points(self) -> int:
        return sum(c.points for c in self.checks)

    # -- grading
    def _result(self, status: str, points: int = 0, message: str = "",
                checks: list[CheckResult] | None = None) -> QuestionResult:
        return QuestionResult(self.name, self.func_name, self.title, status, points,
                              self.max_points, message, checks or [])

    def run_checks(self, obj: Any) -> QuestionResult:
        """Run every check on ``obj`` in this process (no isolation, no time limit)."""
        results: list[CheckResult] = []
        for check in self.checks:
            try:
                check.func(obj)
            except NotAttempted as e:
                if not any(r.passed for r in results):
                    return self._result(NOT_ATTEMPTED, 0, shorten(str(e), MAX_MESSAGE))
                results.append(CheckResult(check.name, 0, check.points, False, shorten(str(e), MAX_MESSAGE)))
            except NotImplementedError as e:  # raised outside call(): same meaning
                msg = f"{self.func_name} raised NotImplementedError: {e}"
                if not any(r.passed for r in results):
                    return self._result(NOT_ATTEMPTED, 0, msg)
                results.append(CheckResult(check.name, 0, check.points, False, msg))
            except CheckFailed as e:
                results.append(CheckResult(check.name, 0, check.points, False, shorten(str(e), MAX_MESSAGE)))
            except (Exception, SystemExit) as e:  # the learner's code raised outside call()
                msg = f"{self.func_name} raised {describe_error(e)}."
                results.append(CheckResult(check.name, 0, check.points, False, shorten(msg, MAX_MESSAGE)))
            else:
                results.append(CheckResult(check.name, check.points, check.points, True))
        points = sum(r.points for r in results)
        if points == self.max_points:
            return self._result(CORRECT, points, self.congrats, results)
        failed = [r for r in results if not r.passed]
        status = PARTIAL if points > 0 else INCORRECT
        summary = f"{len(failed)} of {len(results)} checks failed."
        return self._result(status, points, summary, results)

    def grade(self, obj: Any, *, time_limit: float | None = None, isolate: bool = True,
              earlier: Mapping[str, QuestionResult] | None = None) -> QuestionResult:
        """Grade ``obj`` (the learner's function or class) and return a :class:`QuestionResult`.

        ``None`` (nothing defined) is "not attempted". With ``isolate`` (the default) the checks
        run in a forked child killed after ``time_limit`` seconds (default: the question's own limit,
        else ``$BINLAB_GRADER_TIME_LIMIT``, else :data:`DEFAULT_TIME_LIMIT`). When ``obj`` loses points
        and an earlier answer it may call (``uses``) fails its own checks, it is graded again with the
        reference version of that answer (see the module docstring). ``earlier`` holds the grades of
        earlier questions already graded on the same namespace (``{"q2": result}``), so that they are
        not graded twice.
        """
        if obj is None:
            return self._result(NOT_ATTEMPTED, 0,
                                f"there is no {self.func_name} in the notebook: run the cell that defines it.")
        limit = time_limit or self.time_limit or time_limit_default()
        result = self._run(obj, limit, isolate)
        own_stub = result.status == NOT_ATTEMPTED and f"{self.label}: {self.func_name}" in result.message
        if result.full_marks or not self.uses or own_stub:  # own_stub: its NotImplementedError names this question
            return result
        faulty = self._faulty_uses(obj, time_limit, isolate, dict(earlier or {}))
        if not faulty:
            return result
        again = self._run(obj, limit, isolate, {q.func_name: q.reference for q, _ in faulty})
        return self._blame(result, again, faulty)

    def _run(self, obj: Any, limit: float, isolate: bool, bound: Mapping[str, Any] | None = None) -> QuestionResult:
        """Run the checks on ``obj`` (in a child with a time limit, or here), the names of ``bound`` bound to
        its objects in ``obj``'s namespace meanwhile."""
        namespace = _namespace_of(obj) if bound else None

        def target() -> QuestionResult:
            with _names_bound(namespace, bound or {}):
                return self.run_checks(obj)

        if not isolate:
            t0 = time.perf_counter()
            result = target()
            result.seconds = time.perf_counter() - t0
            return result
        payload = run_isolated(lambda: target().to_dict(), limit)
        if payload.get("status") in (TIME_LIMIT, CRASHED) and "question" not in payload:
            result = self._result(payload["status"], 0, payload["message"])
            result.seconds = payload.get("seconds", 0.0)
            return result
        return QuestionResult.from_dict(payload)

    def _faulty_uses(self, obj: Any, time_limit: float | None, isolate: bool,
                     earlier: dict[str, QuestionResult]) -> list[tuple[Question, str]]:
        """The earlier answers ``obj`` may call (``uses``) that fail their own checks, each with what is wrong
        with it, told to the learner. Each is graded as a question of its own (its own earlier answers
        replaced where they fail), unless ``earlier`` already holds its grade; a reference is right."""
        namespace = _namespace_of(obj)
        if namespace is None:
            return []
        faulty = []
        for q in self.uses:
            theirs = namespace.get(q.func_name)
            if theirs is q.reference:
                continue
            if q.name not in earlier:
                earlier[q.name] = q.grade(theirs, time_limit=time_limit, isolate=isolate, earlier=earlier)
            if not earlier[q.name].full_marks:
                faulty.append((q, _fault(q, theirs, earlier[q.name])))
        return faulty

    def _blame(self, result: QuestionResult, again: QuestionResult,
               faulty: list[tuple[Question, str]]) -> QuestionResult:
        """The grade of the learner's object, from its grade as it is (``result``) and with the faulty earlier
        answers replaced by the reference ones (``again``): the better of the two, and the earlier answers
        named when they change the outcome."""
        if _outcome(again) == _outcome(result):  # the object does not depend on them
            return result
        names = " and ".join(q.func_name for q, _ in faulty)
        note = (f"Your {self.func_name} depends on an earlier answer that is wrong: "
                + "; ".join(why for _, why in faulty) + ".")
        if again.full_marks:
            again.message = "\n".join(m for m in (
                note, f"With the reference {names} in its place, your {self.func_name} passes every check: "
                      "it is right.", again.message) if m)
            return again
        if again.points >= result.points:
            chosen, how = again, (f"The checks below ran with the reference {names} in its place, so what "
                                  f"they report is about your {self.func_name} itself.")
        else:
            chosen, how = result, f"The checks below ran with your {names} (the reference one does no better)."
        chosen.message = "\n".join(m for m in (note, how, chosen.message) if m)
        return chosen

    # -- the notebook API
    def check(self, obj: Any = inspect.Parameter.empty, *, time_limit: float | None = None) -> None:
        """Grade ``obj`` now and print feedback for the learner. Never raises for a wrong answer.

        Without an argument the object named ``func_name`` is looked up in the caller's globals
        (the notebook's namespace).
        """
        if obj is inspect.Parameter.empty:
            caller = inspect.currentframe().f_back  # type: ignore[union-attr]
            obj = caller.f_globals.get(self.func_name) if caller is not None else None
        print(self.grade(obj, time_limit=time_limit).feedback())

    def hint(self, n: int | None = None) -> None:
        """Print the next hint: hint 1, then hint 2 on the next call, and so on; ``n`` picks hint ``n`` (1-based)."""
        if not self.hints:
            print(f"{self.label}: no hint for this one; {self.name}.solution() shows an answer.")
            return
        total = len(self.hints)
        if n is None and self._next_hint > total:
            print(f"{self.label}: no more hints, that was all {total}. {self.name}.hint(1) shows the first one "
                  f"again; {self.name}.solution() shows an answer.")
            return
        n = self._next_hint if n is None else n
        if not 1 <= n <= total:
            print(f"{self.label} has hints 1 to {total}; try {self.name}.hint(1).")
            return
        self._next_hint = n + 1
        more = (f"\n(Next: {self.name}.hint() again shows hint {n + 1} of {total}.)" if n < total
                else f"\n(That was the last hint; {self.name}.solution() shows an answer.)")
        print(f"Hint {n} of {total} for {self.label} ({self.func_name}):\n{self.hints[n - 1]}{more}")

    def solution_source(self) -> str:
        """The code of the reference solution, without its docstrings (the stub in the notebook has them)."""
        if self.reference is None:
            return f"# no reference solution stored for {self.label}\n"
        return _without_docstrings(textwrap.dedent(inspect.getsource(self.reference)))

    def solution(self) -> None:
        """Print the reference solution (its code; the docstring is the stub's)."""
        print(f"One solution for {self.label} ({self.func_name}):\n")
        print(self.solution_source())


# ---------------------------------------------------------------------------------- exercise
class Exercise:
    """An ordered set of questions graded together (one exercise notebook)."""

    def __init__(self, name: str, title: str, questions: Iterable[Question]):
        self.name = name
        self.title = title
        self.questions = list(questions)
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError(f"exercise {name}: duplicate question names {names}")

    def __repr__(self) -> str:
        return f"<Exercise {self.name}: {len(self.questions)} questions, {self.max_points} points>"

    def __iter__(self):
        return iter(self.questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, key: str) -> Question:
        for q in self.questions:
            if key in (q.name, q.func_name):
                return q
        raise KeyError(f"exercise {self.name} has no question {key!r} "
                       f"(it has {', '.join(q.name for q in self.questions)})")

    @property
    def max_points(self) -> int:
        return sum(q.max_points for q in self.questions)

    def grade(self, namespace: Mapping[str, Any], *, time_limit: float | None = None,
              isolate: bool = True) -> ExerciseResult:
        """Grade every question on the objects found by name in ``namespace`` (e.g. ``globals()``), in order
        (a question's earlier answers are graded before it)."""
        results: dict[str, QuestionResult] = {}
        for q in self.questions:
            results[q.name] = q.grade(namespace.get(q.func_name), time_limit=time_limit, isolate=isolate,
                                      earlier=results)
        return ExerciseResult(self.name, self.title, list(results.values()))

    def reference_namespace(self) -> dict[str, Any]:
        """``{func_name: reference solution}``: what a notebook with every answer right defines."""
        return {q.func_name: q.reference for q in self.questions}


# ---------------------------------------------------------------------------------- registry
def exercise_names() -> list[str]:
    """Names of the exercises that have a grader module: ``['01_popcount', '02_quantizers', ...]``."""
    import binlab.grader as pkg  # this module's own package (it imports this module first)

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = info.name
        if mod.startswith("ex") and len(mod) > 4 and mod[2:4].isdigit():
            names.append(mod[2:])
    return sorted(names)


def load_exercise(name: str) -> Exercise:
    """The :class:`Exercise` called ``name`` (``'01_popcount'``, ``'ex01_popcount'`` or ``'01'``)."""
    key = str(name).strip()
    if key.endswith(".ipynb"):
        key = Path(key).stem
    if key.startswith("ex") and key[2:4].isdigit():
        key = key[2:]
    known = exercise_names()
    matches = [n for n in known if n == key or n.split("_", 1)[0] == key]
    if len(matches) != 1:
        raise UnknownExerciseError(
            f"unknown exercise {name!r}; known exercises: {', '.join(known) or '(none)'}")
    module = importlib.import_module(f"binlab.grader.ex{matches[0]}")
    exercise = getattr(module, "EXERCISE", None)
    if not isinstance(exercise, Exercise):
        raise GraderError(f"module {module.__name__} defines no EXERCISE")
    return exercise


def exercise_for_notebook(nb: Any, path: Path) -> str:
    """The exercise a notebook belongs to: its ``metadata.binlab.exercise``, else its file name."""
    meta = nb.get("metadata", {}).get("binlab", {})
    name = meta.get("exercise") if isinstance(meta, Mapping) else None
    return str(name) if name else path.stem


# ------------------------------------------------------------------------- notebook grading
def grade_in_kernel(exercise: str, namespace: Mapping[str, Any], time_limit: float | None = None) -> None:
    """Grade ``exercise`` on ``namespace`` and print the result as one JSON line.

    This is what the cell appended by :func:`grade_notebook` runs, inside the learner's kernel.
    """
    result = load_exercise(exercise).grade(namespace, time_limit=time_limit)
    print(RESULT_MARKER + json.dumps(result.to_dict()), flush=True)


def _grader_cell_source(exercise: str, time_limit: float | None) -> str:
    return (
        "import binlab.grader.core as _binlab_grader_core\n"
        f"_binlab_grader_core.grade_in_kernel({exercise!r}, globals(), time_limit={time_limit!r})\n"
    )


_QUESTION_HEADING = re.compile(r"\s*#+\s*Q(\d+)\b")  # "## Q2. Popcount": the section of q2


def _cell_questions(nb: Any, questions: Iterable[Question]) -> list[Question | None]:
    """The question each cell of ``nb`` belongs to: the one it defines or checks (``def popcount64(``,
    ``q2.check(``), else the one whose section (markdown heading ``## Q2. ...``) it is in; None before the
    first section and after a heading that names no question (``## Summary``)."""
    by_name = {q.name: q for q in questions}
    owners: list[Question | None] = []
    section = None
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
            match = _QUESTION_HEADING.match(cell.source)
            section = by_name.get(f"q{match.group(1)}") if match else None
        mentions = [q for q in by_name.values() if cell.cell_type == "code" and any(
            s in cell.source for s in (f"def {q.func_name}(", f"class {q.func_name}(", f"{q.name}.check("))]
        owners.append(mentions[0] if mentions else section)
    return owners


def _cell_notes(nb: Any, cell_timeout: float, questions: Iterable[Question] = ()) -> list[str]:
    """One line per cell that raised or ran too long, naming the cell as a learner finds it: its question
    and its first line (JupyterLab shows no cell numbers)."""
    notes = []
    for cell, question in zip(nb.cells, _cell_questions(nb, questions)):
        if cell.cell_type != "code":
            continue
        if GRADER_CELL_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                what = f"the cell starting {shorten(first, 60)!r}"
                if question is not None:
                    what = f"{question.label} ({question.func_name}): {what}"
                if out.get("ename") in ("KeyboardInterrupt", "CellTimeoutError"):
                    notes.append(f"{what} ran longer than {cell_timeout:g} s and was interrupted")
                else:
                    notes.append(f"{what} raised {out.get('ename')}: {shorten(out.get('evalue', ''), 200)}")
    return notes


def grade_notebook(path: str | os.PathLike, *, exercise: str | None = None,
                   time_limit: float | None = None, cell_timeout: float = 120,
                   kernel_name: str = "python3") -> ExerciseResult:
    """Execute the notebook at ``path`` headless and grade it (see the module docstring).

    ``exercise`` overrides the exercise found from the notebook; ``time_limit`` is the per-question
    limit in seconds; ``cell_timeout`` the limit for each of the notebook's own cells. Raises
    :class:`GraderError` for a missing or unreadable file or an unknown exercise.
    """
    import nbformat  # here, not at the top: a learner's q1.check() inside a kernel needs no notebook machinery

    path = Path(path)
    if not path.exists():
        raise GraderError(f"no such notebook: {path}")
    if not path.is_file():
        raise GraderError(f"{path} is not a file")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
        raise GraderError(f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e})") from None
    name = exercise or exercise_for_notebook(nb, path)
    ex = load_exercise(name)  # raises UnknownExerciseError before any kernel starts
    if time_limit is not None and time_limit <= 0:
        raise GraderError("the time limit must be a positive number of seconds")
    limit = time_limit or time_limit_default()

    from nbclient import NotebookClient  # as nbformat above
    from nbclient.exceptions import DeadKernelError

    cell = nbformat.v4.new_code_cell(_grader_cell_source(ex.name, limit))
    cell.metadata["tags"] = [GRADER_CELL_TAG]
    nb.cells.append(cell)
    # a question with earlier answers may be graded twice (as it is, and with the reference earlier answers)
    grading_timeout = int(sum(2 if q.uses else 1 for q in ex.questions) * (limit + 10) + 60)

    def timeout_func(c: Any) -> int:
        return grading_timeout if c is cell else int(cell_timeout)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[TIME_LIMIT_ENV] = repr(float(limit))
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout_func=timeout_func, allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError",
                          "evalue": f"the cell ran longer than {cell_timeout:g} s and was interrupted",
                          "traceback": []},
        resources={"metadata": {"path": str(path.resolve().parent)}})
    failure = ""
    # The kernel's own stderr (jupyter's start-up warnings, C-level crash messages) goes to a file,
    # not to the learner's terminal; its tail is reported if grading could not run.
    with tempfile.TemporaryFile(mode="w+b") as kernel_log:
        try:
            client.execute(env=env, stderr=kernel_log)
        except DeadKernelError:
            failure = "the notebook's kernel died while running the notebook"
        except Exception as e:  # noqa: BLE001 - report, don't crash
            failure = f"running the notebook failed: {type(e).__name__}: {shorten(str(e), 300)}"
        kernel_log.seek(0)
        log_tail = kernel_log.read()[-2000:].decode(errors="replace").strip()

    notes = _cell_notes(nb, cell_timeout, ex.questions)
    payload = None
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.get("text", "").splitlines():
                if line.startswith(RESULT_MARKER):
                    payload = json.loads(line[len(RESULT_MARKER):])
    if payload is None:
        reason = failure or next((f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", [])
                                  if o.get("output_type") == "error"), "")
        reason = reason or "the grading cell produced no result"
        result = ExerciseResult(ex.name, ex.title, [
            QuestionResult(q.name, q.func_name, q.title, CRASHED, 0, q.max_points,
                           f"not graded: {reason}") for q in ex.questions])
        notes.append(f"grading could not run: {reason}")
        log = [ln for ln in log_tail.splitlines() if "without encryption" not in ln]
        if log:
            notes.append("the kernel's last messages:\n" + textwrap.indent("\n".join(log[-15:]), "      "))
    else:
        result = ExerciseResult.from_dict(payload)
    result.notes = notes + result.notes
    result.notebook = str(path)
    return result
