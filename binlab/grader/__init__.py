"""Exercises that grade themselves: ``binlab grade exercises/01_popcount.ipynb``.

Inside an exercise notebook a learner checks one question at a time::

    from binlab.grader.ex01_popcount import q1, q2, q3, q4
    q1.check(pack_signs)     # feedback: what was expected, what came back, on which input
    q1.hint()                # again for the next one (q1.hint(2): hint 2)
    q1.solution()            # prints the reference solution's source

From a terminal, ``binlab grade NOTEBOOK`` executes the whole notebook headless, grades every
question with a time limit, prints points per question and the total, and exits with status 0 only
for full marks (1 otherwise, 2 for a usage error such as a missing file or an unknown exercise).

Exercises: one module ``binlab/grader/exNN_name.py`` per notebook ``exercises/NN_name.ipynb``,
found by its file name. The machinery (and how learners' code is isolated) is in
:mod:`binlab.grader.core`. This package imports only the standard library at import time.
"""

from __future__ import annotations

from binlab.grader.core import (
    CORRECT,
    CRASHED,
    DEFAULT_TIME_LIMIT,
    INCORRECT,
    NOT_ATTEMPTED,
    PARTIAL,
    TIME_LIMIT,
    Check,
    CheckFailed,
    CheckResult,
    Exercise,
    ExerciseResult,
    GraderError,
    Mistake,
    NotAttempted,
    Question,
    QuestionResult,
    UnknownExerciseError,
    call,
    exercise_names,
    grade_notebook,
    load_exercise,
)

__all__ = [
    "CORRECT", "CRASHED", "DEFAULT_TIME_LIMIT", "INCORRECT", "NOT_ATTEMPTED", "PARTIAL", "TIME_LIMIT",
    "Check", "CheckFailed", "CheckResult", "Exercise", "ExerciseResult", "GraderError", "Mistake",
    "NotAttempted", "Question", "QuestionResult", "UnknownExerciseError", "call", "exercise_names",
    "grade_notebook", "load_exercise",
]
