"""Small helpers the chapters share: show library code, read the docs' markdown, and build tables.

Chapter-specific figures and explorers live in :mod:`binlab.explorers`; this module stays generic::

    show_source(obj)                      the real source of a binlab function/class, highlighted
    markdown_section(path, heading)       the text under one heading of a markdown file
    parse_markdown_table(text)            the first pipe table of a markdown text, as dicts
    markdown_table(rows, columns)         rows of dicts -> a pipe table (display with ``Markdown``)
    parse_number(cell)                    "11.4×", "1,013", "–" -> 11.4, 1013.0, None

Interactive figures follow one pattern (see ``make_xnor_explorer`` in
:mod:`binlab.explorers.bits`): ``make_xxx_explorer(...) -> (ui, fig, controls)``, where ``fig`` is a
plotly ``FigureWidget``, ``controls`` the ipywidgets whose ``.observe`` callbacks update ``fig``
inside ``fig.batch_update()``, and ``ui`` the ``VBox`` to display. Tests set ``control.value`` in
Python and read ``fig.data``; no browser is needed.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

from IPython.display import Code


def source_of(obj) -> str:
    """The source code of a function, class, method or module, dedented."""

    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as e:
        raise TypeError(f"show_source: no Python source for {obj!r} ({e})") from None


def show_source(obj):
    """Display the source of ``obj`` in a notebook (syntax highlighted), as the library has it.

    The book shows library code this way instead of copying it (d2l's rule): what the reader sees
    is what they import. Returns an ``IPython.display.Code`` object (the cell shows it).
    """

    return Code(source_of(obj), language="python")


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_section(source: str | Path, heading: str) -> str:
    """The body of the section titled ``heading`` in a markdown file (or text), without the heading.

    The section runs to the next heading of the same or a higher level. Headings are compared
    without their ``#`` marks and case-insensitively; fenced code blocks are not mistaken for
    headings. Raises ``KeyError`` listing the headings when there is no such section.
    """
    if isinstance(source, Path) or ("\n" not in source and Path(source).is_file()):
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source
    lines = text.splitlines()
    found, level, body, fenced, seen = False, 0, [], False, []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            seen.append(m.group(2))
            if found and len(m.group(1)) <= level:
                break
            if not found and m.group(2).strip().lower() == heading.strip().lower():
                found, level = True, len(m.group(1))
                continue
        if found:
            body.append(line)
    if not found:
        raise KeyError(f"no heading {heading!r}; headings: {seen}")
    return "\n".join(body).strip("\n")


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [cell.strip() for cell in line.split("|")]


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first pipe table in ``text`` as a list of ``{header: cell}`` dicts (cells as strings)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        sep = lines[i + 1].strip()
        if lines[i].strip().startswith("|") and re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", sep):
            header = _split_row(lines[i])
            rows = []
            for line in lines[i + 2:]:
                if not line.strip().startswith("|"):
                    break
                cells = _split_row(line)
                rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
            return rows
    raise ValueError("no markdown table found")


def parse_number(cell: str) -> float | None:
    """A number from a table cell: ``"11.4×"`` -> 11.4, ``"1,013"`` -> 1013.0; ``None`` for a dash
    or an empty cell."""
    cleaned = cell.replace(",", "").replace("*", "").strip().rstrip("×x").strip()
    if cleaned in ("", "-", "–", "—"):
        return None
    try:
        return float(cleaned)
    except ValueError:
        raise ValueError(f"not a number: {cell!r}") from None


def markdown_table(rows: list[dict], columns: list[str] | dict[str, str] | None = None,
                   formats: dict[str, str] | None = None) -> str:
    """A pipe table from dicts. ``columns``: the keys to show (a dict maps key -> header);
    ``formats``: a format spec per key (``{"MiB": ".1f"}``). Numbers are right-aligned. A ``|`` inside a header
    or a cell ("mean |λ|") is escaped as ``\\|`` (GFM), a line break becomes a space, so that the table stays one
    table with its own number of columns."""
    if not rows:
        raise ValueError("markdown_table: no rows")
    if columns is None:
        columns = list(rows[0])
    headers = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
    formats = formats or {}

    def escape(text) -> str:
        return " ".join(str(text).replace("\\|", "|").replace("|", "\\|").splitlines())

    def cell(row, key):
        value = row.get(key, "")
        if key in formats and value not in ("", None):
            return escape(format(value, formats[key]))
        return escape(value)

    numeric = {k: all(isinstance(r.get(k), (int, float)) for r in rows) for k in headers}
    out = ["| " + " | ".join(escape(h) for h in headers.values()) + " |",
           "|" + "|".join("---:" if numeric[k] else "---" for k in headers) + "|"]
    out += ["| " + " | ".join(cell(r, k) for k in headers) + " |" for r in rows]
    return "\n".join(out)
