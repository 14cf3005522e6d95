"""Check pipe tables the way GitHub and JupyterLab read them: with a GFM table parser (markdown-it-py)."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark").enable("table")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> int:
    """Columns of one table line: the unescaped pipes, less the leading and trailing ones."""
    line = line.strip()
    n = len(_UNESCAPED_PIPE.findall(line)) + 1
    return n - line.startswith("|") - line.endswith("|")


def table_blocks(text: str) -> list[list[str]]:
    """The runs of consecutive lines that start with ``|`` (outside code fences)."""
    blocks, current, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            current.append(line)
            continue
        if current:
            blocks.append(current)
        current = []
    if current:
        blocks.append(current)
    return blocks


def check_tables(text: str, where: str = "") -> int:
    """Every pipe-table block of ``text`` parses as one table whose every line has the header's number of columns;
    returns how many tables there are. Raises AssertionError naming the first line that breaks."""
    blocks = table_blocks(text)
    for block in blocks:
        tokens = _PARSER.parse("\n".join(block))
        assert [t.type for t in tokens].count("table_open") == 1, \
            f"{where}: not parsed as one table: {block[0][:120]!r}"
        header = sum(t.type == "th_open" for t in tokens)
        for line in block:
            assert _cells(line) == header, (f"{where}: {_cells(line)} columns where the header has {header} "
                                            f"(an unescaped | ?): {line[:160]!r}")
    return len(blocks)
