"""The ``binlab`` command line (also ``python -m binlab``).

Each subcommand lives in the module that does the work; this file only wires them up, and imports a
module only when its subcommand runs (so ``binlab grade`` does not pay for numba compilation).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). The module provides add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "bench": ("binlab.bench", "time binlab's bitwise kernels against torch on BERT shapes"),
    "grade": ("binlab.grader.cli", "grade an exercise notebook"),
    "book": ("binlab.book", "execute every notebook headless and write HTML"),
    "train": ("binlab.train_cli", "fine-tune a (binarized) BERT on a GLUE task"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
