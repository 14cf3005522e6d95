"""The package's layers, enforced: import-linter's contracts in pyproject.toml (every import points down, no cycles
between the modules of one package, no exceptions), and proof that they fail when an import points up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")



def lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with the contracts of ``root/pyproject.toml``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_the_contracts_make_no_exceptions_and_cover_every_module():
    assert [c["type"] for c in contracts()] == ["layers", "acyclic_siblings"]
    assert not any("ignore_imports" in c for c in contracts())
    listed = {m.strip() for layer in contracts()[0]["layers"] for m in layer.split("|")}
    tops = {f"binlab.{p.stem}" for p in (ROOT / "binlab").iterdir()
            if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()}
    assert tops == listed, f"modules outside every layer: {sorted(tops - listed)}; listed but gone: {sorted(listed - tops)}"


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """binlab and pyproject.toml copied to a temporary folder, to break on purpose."""
    shutil.copytree(ROOT / "binlab", tmp_path / "binlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(root: Path, module: str, line: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")


def test_an_upward_import_breaks_the_layers_and_names_both_modules(package_copy):
    _add_import(package_copy, "binlab.kernels.packing", "from binlab.explorers import bits")
    result = lint(package_copy)
    assert result.returncode != 0
    assert "binlab layers: every import points down BROKEN" in result.stdout
    assert "binlab.kernels.packing -> binlab.explorers.bits" in result.stdout


def test_an_import_between_independent_siblings_breaks_the_layers(package_copy):
    _add_import(package_copy, "binlab.grader.checks", "from binlab.explorers import viz")
    result = lint(package_copy)
    assert result.returncode != 0
    assert "binlab.grader.checks -> binlab.explorers.viz" in result.stdout


def test_a_cycle_inside_one_package_breaks_the_acyclic_contract(package_copy):
    _add_import(package_copy, "binlab.methods.binarybert", "from binlab.methods import finetune")
    result = lint(package_copy)
    assert result.returncode != 0
    assert "no import cycles between the modules of one package BROKEN" in result.stdout
    assert "binlab.methods" in result.stdout and ".finetune -> .binarybert" in result.stdout
