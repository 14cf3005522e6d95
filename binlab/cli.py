"""The ``binlab`` command line (also ``python -m binlab``).

Each subcommand lives in the module that does the work (it provides ``add_arguments(parser)`` and
``run(args) -> int``); this file only wires them up. Only the chosen subcommand's module is imported and only its
parser is built, so ``binlab grade`` does not pay for torch or numba.

Errors a user can fix (a task name, a path, a file, an option) end the command with one line that names the
problem, and exit status 2; ``--debug`` (or ``BINLAB_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "bench": ("binlab.infer.bench", "time binlab's bitwise kernels (gemm) or whole W1A1 models (model) against torch"),
    "grade": ("binlab.grader.cli", "grade an exercise notebook"),
    "profile": ("binlab.methods.profile", "time one distillation step part by part, before and after the speed-ups"),
    "book": ("binlab.book", "execute every notebook headless and write HTML"),
    "train": ("binlab.methods.finetune", "fine-tune a (binarized) BERT on a GLUE task, or run a recipe"),
    "entropy": ("binlab.analysis.entropy", "entropy of a model's binarized attention maps on GLUE dev sentences"),
    "export": ("binlab.infer.export", "pack a trained W1A1 checkpoint into real bits (uint64 signs + scales)"),
    "predict": ("binlab.infer.predict", "classify a sentence (or pair) with a packed model, run bitwise"),
    "agreement": ("binlab.infer.agreement", "the engine vs the fake-quant model on a dev set, disagreements traced"),
}
DEBUG_ENV = "BINLAB_DEBUG"

#: What a user can fix: bad values, names and options (ValueError, KeyError), missing or unreadable files and
#: folders (OSError: FileNotFoundError, NotADirectoryError, PermissionError, ...).
USER_ERRORS = (ValueError, KeyError, OSError)


def _top_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binlab", description="binlab: learn binarized transformers by building "
                                     "one. `binlab COMMAND --help` shows a command's options.")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show tracebacks (also: {DEBUG_ENV}=1)")
        if name == command:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every subcommand listed, the options of the one ``argv`` names."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    return _top_parser(command if command in SUBCOMMANDS else None)


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in str(text):
        text = f"{e.strerror or text}: {e.filename}"
    return " ".join(str(text).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"binlab {args.command}: error: {_message(e)} (--debug for the traceback)", file=sys.stderr)
        return 2
