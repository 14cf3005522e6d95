"""docs/methods.md is cited by section number (``methods.md §2.5``) from the package, the book and the
exercises. These tests check that every cited number is a heading of docs/methods.md, and that the document
keeps the numbering of the spec it was written from (sections 0-7, subsections 2.1-2.9, 3.1-3.7, 4.1-4.6).

A citation starts at ``methods.md`` and runs over a chain of section marks separated by commas, slashes,
"and"/"or" or a short quoted word, e.g. ``methods.md §2.1, §2.6, §2.7``, ``methods.md §3.5 / §4.5``,
``methods.md §0 "Efficiency", §2.9, §3.7``. A range ``§2-§4`` (or ``§2–4``) cites both ends and, for whole
sections, everything between them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

DOC = ROOT / "docs" / "methods.md"

#: where citations are looked for: (folder, file patterns)
SOURCES = (("binlab", ("*.py",)), ("book", ("*.ipynb", "*.md", "*.py")), ("exercises", ("*.ipynb", "*.md", "*.py")))

HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]")
_NUM = r"\d+(?:\.\d+)*"
#: one section mark or a range of them: §2.1   § 2.1   §2-§4   §2–4
_REF = rf"§\s?{_NUM}(?:\s*[-–—]\s*§?\s?{_NUM})?"
#: between two marks of one citation: a comma, slash, "and"/"or"/"&", optionally after a short quoted word
_SEP = r"""\s*(?:"[^"\n]{0,40}"|“[^”\n]{0,40}”)?\s*(?:,|/|&|\band\b|\bor\b)?\s*"""
CITATION = re.compile(rf"methods\.md`*[\s,:]*\(?\s*({_REF}(?:{_SEP}{_REF})*)")
REF = re.compile(rf"§\s?({_NUM})(?:\s*[-–—]\s*§?\s?({_NUM}))?")
#: a module that declares "the sections of methods.md are cited as §x.y" uses bare § marks for methods.md
DECLARES_BARE = re.compile(r"methods\.md`*\s+are\s+cited\s+as\s+§")
BARE = re.compile(_REF)



# ----------------------------------------------------------------------------------------------------------
# parsing


def heading_numbers(text: str) -> list[str]:
    """The section numbers of the markdown headings of ``text``, in order (fenced code blocks skipped)."""
    numbers, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            m = HEADING.match(line)
            if m:
                numbers.append(m.group(1))
    return numbers


def expand(ref: str) -> list[str]:
    """The section numbers one mark stands for: ``§2.1`` -> [2.1]; ``§2-§4`` -> [2, 3, 4]; ``§2.1-§2.3`` ->
    [2.1, 2.2, 2.3]; any other range -> its two ends."""
    m = REF.fullmatch(ref.strip())
    if m is None:
        raise ValueError(f"not a section mark: {ref!r}")
    start, end = m.group(1), m.group(2)
    if end is None:
        return [start]
    a, b = start.split("."), end.split(".")
    if len(a) == len(b) and a[:-1] == b[:-1] and int(a[-1]) <= int(b[-1]):
        prefix = ".".join(a[:-1])
        return [f"{prefix}.{i}" if prefix else str(i) for i in range(int(a[-1]), int(b[-1]) + 1)]
    return [start, end]


def sections_in(chain: str) -> list[str]:
    """Every section number of one citation chain (the text after ``methods.md``)."""
    return [n for m in BARE.finditer(chain) for n in expand(m.group(0))]


def citations_in_text(text: str) -> list[tuple[int, str]]:
    """(line, section) for every section that ``text`` cites as ``methods.md §...``; line is 1-based."""
    out = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        out += [(line, n) for n in sections_in(m.group(1))]
    if DECLARES_BARE.search(text):  # e.g. the quantizers module: "§3.2" alone means methods.md §3.2
        for m in BARE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out += [(line, n) for n in expand(m.group(0))]
    return sorted(set(out))


def _notebook_texts(path: Path) -> list[tuple[str, str]]:
    """(location prefix, text) per cell of a notebook: its source and any text output. Raw text if not JSON."""
    raw = path.read_text(encoding="utf-8")
    try:
        nb = json.loads(raw)
        cells = nb["cells"]
    except (ValueError, KeyError, TypeError):
        return [("", raw)]
    texts = []
    for i, cell in enumerate(cells):
        src = cell.get("source", "")
        parts = ["".join(src) if isinstance(src, list) else str(src)]
        for output in cell.get("outputs", []) or []:
            for value in (output.get("text"), (output.get("data") or {}).get("text/plain")):
                if value:
                    parts.append("".join(value) if isinstance(value, list) else str(value))
        texts.append((f"cell {i}, ", "\n".join(parts)))
    return texts


def source_files() -> list[Path]:
    files = []
    for folder, patterns in SOURCES:
        base = ROOT / folder
        if base.is_dir():
            for pattern in patterns:
                files += [p for p in base.rglob(pattern) if ".ipynb_checkpoints" not in p.parts]
    return sorted(set(files))


def all_citations() -> list[tuple[str, str]]:
    """("file:line", section) for every citation of methods.md in the package, the book and the exercises."""
    found = []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.suffix == ".ipynb":
            for prefix, text in _notebook_texts(path):
                found += [(f"{rel}:{prefix}line {line}", n) for line, n in citations_in_text(text)]
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [(f"{rel}:{line}", n) for line, n in citations_in_text(text)]
    return found


# ----------------------------------------------------------------------------------------------------------
# the extractor itself


@pytest.mark.parametrize("text, expected", [
    ("see methods.md §2.5 for the split", ["2.5"]),
    ("(methods.md §2.1, §2.6, §2.7) as a chain", ["2.1", "2.6", "2.7"]),
    ("presets (methods.md §2-§4)::", ["2", "3", "4"]),
    ("methods.md §2–4 en dash", ["2", "3", "4"]),
    ("methods.md §3.5 / §4.5 style per-task settings", ["3.5", "4.5"]),
    ('Conventions (methods.md §0 "Efficiency", §2.9, §3.7):', ["0", "2.9", "3.7"]),
    ("methods.md §0/§2.9: parameters", ["0", "2.9"]),
    ("``methods.md`` §1 and §5", ["1", "5"]),
    ("methods.md §2.1-§2.3", ["2.1", "2.2", "2.3"]),
    ("methods.md §4.6).", ["4.6"]),
    ("methods.md §2.8; the W1A8 row, see chapter §4.1", ["2.8"]),  # a chain does not jump over ';'
    ("chapter 4 §4.6 shows it", []),  # a bare § is a book section, not a citation
    ("the sections of methods.md are listed", []),
])
def test_extractor(text, expected):
    assert [n for _, n in citations_in_text(text)] == sorted(set(expected)), text


def test_bare_marks_count_only_in_modules_that_declare_them():
    declared = "The sections of ``methods.md`` are cited as §x.y.\n\nBiBERT (§3.2), BiT (§4.1)\n"
    assert [n for _, n in citations_in_text(declared)] == ["3.2", "4.1"]


def test_heading_parser():
    text = "# Title\n## 0. Summary\n### 2.1 Pipeline\n```\n# 9 not a heading\n```\n#### 2.5.1. Deeper\n##No\n"
    assert heading_numbers(text) == ["0", "2.1", "2.5.1"]


# ----------------------------------------------------------------------------------------------------------
# the document


def _doc_sections() -> list[str]:
    assert DOC.is_file(), f"{DOC.relative_to(ROOT)} is missing"
    return heading_numbers(DOC.read_text(encoding="utf-8"))


def test_methods_doc_has_the_spec_numbering():
    numbers = _doc_sections()
    top = [n for n in numbers if "." not in n]
    assert top == [str(i) for i in range(8)], f"top-level sections of docs/methods.md: {top}, expected 0-7 in order"
    expected_sub = [f"2.{i}" for i in range(1, 10)] + [f"3.{i}" for i in range(1, 8)] + [f"4.{i}" for i in range(1, 7)]
    missing = [n for n in expected_sub if n not in numbers]
    assert not missing, f"docs/methods.md lacks the subsections {missing}"
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not dupes, f"docs/methods.md numbers these sections twice: {dupes}"


def test_every_cited_section_exists():
    sections = set(_doc_sections())
    cites = all_citations()
    # the extractor must find the citations that exist (the package alone cites methods.md dozens of times),
    # so that this test cannot pass by finding none
    assert len(cites) >= 20, f"only {len(cites)} citations of methods.md found: is the extractor broken?"
    missing = [f"{where}: methods.md §{n}" for where, n in cites if n not in sections]
    assert not missing, ("sections cited but not headings of docs/methods.md:\n  " + "\n  ".join(missing))
