"""The two ways to install binlab name the same packages, and nothing can pull a newer torch."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    project = _pyproject()
    py = {_name(r) for r in project["dependencies"]} | {
        _name(r) for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = {_name(r) for r in pip_list if not r.startswith("-e")}
    assert py == conda, f"only in pyproject: {sorted(py - conda)}; only in environment.yml: {sorted(conda - py)}"


def test_torch_is_pinned_to_the_local_cpu_wheel():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "PIP_CONSTRAINT" in makefile and '"torch==2.13.0"' in makefile
    torch_req = next(r for r in _pyproject()["dependencies"] if _name(r) == "torch")
    assert "==" not in torch_req and "<" not in torch_req, "no hard pin in pyproject (2.13.0 must satisfy it)"


def test_readme_lists_every_dependency():
    readme = (ROOT / "README.md").read_text().lower()
    project = _pyproject()
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert f"`{_name(req)}`" in readme, f"README's dependency section does not explain {_name(req)}"


def test_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
