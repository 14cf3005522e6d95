"""The ``binlab`` command line: only the chosen subcommand is built, mistakes a user can fix end in one line that
names them (no traceback unless --debug), and every hint names an option the command line really has."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from binlab import cli
from conftest import ROOT


def binlab(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    env = dict(base, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "binlab", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The error of a failed command: exit status 2, no traceback, one line on stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"binlab {command}: error: "), proc.stderr[-2000:]
    return lines[0]


def test_only_the_chosen_subcommand_is_built():
    parser = cli.build_parser(["grade", "--list"])
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert set(sub) == set(cli.SUBCOMMANDS)
    assert any("--list" in a.option_strings for a in sub["grade"]._actions)
    assert not any("--task" in a.option_strings for a in sub["train"]._actions)  # train's module not imported


def test_unknown_task(tmp_path):
    line = one_line_error(binlab("train", "--task", "sst3", "--out", str(tmp_path)), "train")
    assert "sst3" in line and "sst2" in line  # the typo and the names it could have meant


def test_missing_glue_folder(tmp_path):
    missing = tmp_path / "no-glue"
    line = one_line_error(binlab("train", "--task", "sst2", "--source", "local", "--glue-dir", str(missing),
                                 "--out", str(tmp_path / "out")), "train")
    assert str(missing) in line and "does not exist" in line and "--glue-dir" in line


def _bad_sst2(tmp_path):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    good = "".join(f"a {w} film\t{i % 2}\n" for i, w in enumerate(["fine", "dull", "great", "weak"] * 4))
    (glue / "train.tsv").write_text("sentence\tlabel\n" + good + "too\tmany\tfields\n" + good)
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + good)
    return tmp_path / "glue"


def test_malformed_row_names_the_line_and_a_flag_that_skips_it(tmp_path):
    glue = _bad_sst2(tmp_path)
    args = ["train", "--task", "sst2", "--glue-dir", str(glue), "--model", "tiny", "--max-steps", "1",
            "--batch-size", "8", "--max-length", "16", "--threads", "1", "--no-progress"]
    line = one_line_error(binlab(*args, "--out", str(tmp_path / "a")), "train")
    assert "train.tsv:18" in line and "--on-bad-row skip" in line
    ok = binlab(*args, "--on-bad-row", "skip", "--out", str(tmp_path / "b"))
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_debug_shows_the_traceback(tmp_path):
    for extra, env in ((["--debug"], None), ([], {cli.DEBUG_ENV: "1"})):
        proc = binlab(*extra, "train", "--task", "sst3", "--out", str(tmp_path), env=env)
        assert proc.returncode != 0 and "Traceback" in proc.stderr and "sst3" in proc.stderr


def test_a_bad_option_value_is_argparse_s_one_line():
    proc = binlab("train", "--task", "sst2", "--out", "x", "--recipe", "nope")
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def _cli_options() -> set[str]:
    options = set()
    top = cli.build_parser([])
    options |= {o for a in top._actions for o in a.option_strings}
    for name in cli.SUBCOMMANDS:
        parser = cli.build_parser([name])
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        options |= {o for a in sub._actions for o in a.option_strings}
    return options


def _flags_in_error_messages() -> dict[str, list[str]]:
    """Every ``--flag`` written in a string of a ``raise`` statement in binlab/, with where (a ``pip ...`` command
    in an install hint is pip's, not binlab's)."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "binlab").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for sub in ast.walk(node.exc):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and "pip " not in sub.value:
                        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", sub.value):
                            found.setdefault(flag, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_flag_an_error_message_suggests_exists():
    flags = _flags_in_error_messages()
    assert {"--on-bad-row", "--glue-dir", "--chain"} <= set(flags)  # the scan finds what it should
    missing = {f: where for f, where in flags.items() if f not in _cli_options()}
    assert not missing, f"error messages suggest options the CLI does not have: {missing}"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["grade", "--help"]])
def test_help_works(argv):
    proc = binlab(*argv)
    assert proc.returncode == 0 and "usage: binlab" in proc.stdout


@pytest.mark.parametrize("recipe,flag", [("bit", "--chain"), ("binarybert", "--act-bits")])
def test_a_recipe_that_chooses_its_quantization_refuses_quant(recipe, flag, tmp_path):
    res = subprocess.run([sys.executable, "-m", "binlab", "train", "--recipe", recipe, "--task", "sst2", "--quant",
                          "w1a1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert res.returncode == 2 and f"--recipe {recipe} chooses its own quantization ({flag}); drop --quant" in res.stderr
