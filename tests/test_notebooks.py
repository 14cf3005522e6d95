"""Notebooks are code: every chapter and exercise runs end to end (fast mode) and is committed clean."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT
from md_tables import check_tables

from binlab.book import execute_notebook, find_notebooks

NOTEBOOKS = find_notebooks()


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert "01_bits_and_popcount.ipynb" in names
    assert "01_popcount.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_stripped(path):
    """No outputs, execution counts or widget state in git (one FigureWidget adds megabytes)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in nb.get("metadata", {}), f"{path} carries widget state: run `make strip`"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path} cell {i} has outputs: run `make strip`"
            assert cell.get("execution_count") is None, f"{path} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_runs_in_fast_mode(path):
    nb = execute_notebook(path, fast=True, timeout=600)
    # every table the notebook shows (its markdown cells and the Markdown it displays) is one GFM table
    for i, cell in enumerate(nb.cells):
        texts = ["".join(cell.source)] if cell.cell_type == "markdown" else [
            "".join(out.get("data", {}).get("text/markdown", "")) for out in cell.get("outputs", [])]
        for text in texts:
            check_tables(text, f"{path.name} cell {i}")


def test_notebooks_import_binlab_instead_of_copying():
    """d2l's rule: the book calls the library; a chapter defines no long functions of its own."""
    for path in NOTEBOOKS:
        if path.parent.name != "book":
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "binlab" in src, f"{path} does not use binlab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_relative_links_open(path):
    """A link in a notebook's text opens in `make lab` (which serves the repository root): the file exists."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", "".join(cell["source"])):
            if re.match(r"[a-z]+:|#", target):
                continue  # a web address or an anchor in the same notebook
            assert (path.parent / target.split("#")[0]).exists(), f"{path.name} cell {i}: link to missing {target}"


def test_the_lab_opens_on_the_start_page_with_every_chapter_and_exercise():
    start = ROOT / "book" / "00_start.ipynb"
    text = "".join("".join(c["source"]) for c in json.loads(start.read_text())["cells"])
    for nb in NOTEBOOKS:
        if nb.name != start.name:
            rel = nb.name if nb.parent.name == "book" else f"../{nb.parent.name}/{nb.name}"
            assert f"]({rel})" in text, f"the start page does not link {rel}"
    assert "book/00_start.ipynb" in (ROOT / "Makefile").read_text() and "root_dir" in (ROOT / "Makefile").read_text()
