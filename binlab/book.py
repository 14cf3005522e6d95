"""Run the book headless: ``binlab book`` (and ``make book``).

Executes every notebook in ``book/`` and ``exercises/`` in order with nbclient, as a learner's
JupyterLab would, and writes one HTML page per notebook to ``build/`` (widget state included, so
the pages show the figures). A notebook that raises stops nothing else: every failure is listed at
the end and the exit code is non-zero. ``--fast`` sets ``BINLAB_FAST=1`` (small sizes), which is
what the test suite uses.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from binlab.settings import project_root

NOTEBOOK_DIRS = ("book", "exercises")


def find_notebooks(root: str | os.PathLike | None = None) -> list[Path]:
    """All chapter and exercise notebooks under ``root`` (default: :func:`binlab.settings.project_root`), in
    reading order (book first, then exercises)."""
    root = project_root() if root is None else Path(root)
    found = []
    for d in NOTEBOOK_DIRS:
        found += sorted(p for p in (root / d).glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return found


def execute_notebook(path: str | os.PathLike, fast: bool = True, timeout: int = 900,
                     store_widget_state: bool = False):
    """Execute ``path`` top to bottom in a fresh ``python3`` kernel; return the executed notebook.

    The kernel runs in the notebook's own folder with ``BINLAB_FAST`` set as asked. Raises
    ``nbclient.exceptions.CellExecutionError`` (with the failing cell and traceback) on any error.
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, BINLAB_FAST="1" if fast else "0", PYTHONUNBUFFERED="1")
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if store_widget_state:  # rendering to HTML: static plotly figures must carry plotly.js, not only their JSON
        env.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=store_widget_state)
    # nbclient passes extra keyword arguments to the kernel manager's start_kernel.
    client.execute(env=env)
    return nb


def add_arguments(parser) -> None:
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all of book/ and exercises/)")
    parser.add_argument("--out", default="build", help="folder for the HTML pages (default: build)")
    parser.add_argument("--fast", action="store_true", help="fast mode: BINLAB_FAST=1, small sizes")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")


def run(args) -> int:
    notebooks = [Path(p) for p in args.notebooks] or find_notebooks()
    if not notebooks:
        raise FileNotFoundError(f"no notebooks in {project_root()}/book or /exercises: run binlab book in the "
                                "repository, set BINLAB_ROOT to it, or name the notebooks")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    for path in notebooks:
        t0 = time.perf_counter()
        print(f"running {path} ...", flush=True)
        try:
            nb = execute_notebook(path, fast=args.fast, timeout=args.timeout, store_widget_state=True)
        except Exception as e:  # report every notebook, then fail at the end
            failures.append((path, e))
            print(f"  FAILED after {time.perf_counter() - t0:.0f} s: {type(e).__name__}", file=sys.stderr)
            print(str(e)[-3000:], file=sys.stderr)
            continue
        html, _ = HTMLExporter().from_notebook_node(nb)
        target = out / f"{path.parent.name}-{path.stem}.html"
        tmp = target.with_suffix(".html.tmp")
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, target)
        print(f"  ok in {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
    if failures:
        print(f"{len(failures)} of {len(notebooks)} notebooks failed: "
              + ", ".join(str(p) for p, _ in failures), file=sys.stderr)
        return 1
    print(f"all {len(notebooks)} notebooks ran; HTML in {out}/")
    return 0
