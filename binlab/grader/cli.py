"""``binlab grade NOTEBOOK``: execute an exercise notebook headless and grade every question.

Prints points per question (with the feedback of every question that is not full marks) and the
total. Exit status: 0 for full marks, 1 when points are missing, 2 when grading could not start
(missing file, not a notebook, unknown exercise, bad option). ``--json`` prints the result as JSON
instead. ``binlab grade --list`` lists the exercises.

The ``binlab`` command imports this module only for ``binlab grade``; it needs no torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from binlab.grader import core


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", nargs="?", help="the exercise notebook, e.g. exercises/01_popcount.ipynb")
    parser.add_argument("--exercise", metavar="NAME",
                        help="grade as this exercise (default: from the notebook's metadata or file name)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="seconds each question's checks may run (default: 20)")
    parser.add_argument("--cell-timeout", type=float, default=120, metavar="SECONDS",
                        help="seconds each notebook cell may run before it is interrupted (default: 120)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every check, also for questions with full marks")
    parser.add_argument("--list", action="store_true", help="list the exercises that can be graded")


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            for name in core.exercise_names():
                ex = core.load_exercise(name)
                print(f"{name:<20} {ex.max_points:>3} points  {ex.title}")
            return 0
        if not args.notebook:
            raise core.GraderError("which notebook? usage: binlab grade exercises/01_popcount.ipynb")
        if args.time_limit is not None and args.time_limit <= 0:
            raise core.GraderError("--time-limit must be a positive number of seconds")
        if args.cell_timeout <= 0:
            raise core.GraderError("--cell-timeout must be a positive number of seconds")
        result = core.grade_notebook(args.notebook, exercise=args.exercise, time_limit=args.time_limit,
                                     cell_timeout=args.cell_timeout)
    except core.GraderError as e:
        print(f"binlab grade: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report(verbose=args.verbose))
    return 0 if result.full_marks else 1
