"""Run-wide settings read from the environment.

``BINLAB_FAST=1`` puts every notebook in *fast mode*: small sizes, few steps, so that the whole book
executes in the test suite in seconds per chapter. Notebooks read it through :func:`fast_mode`.
:func:`project_root` is the checkout whose ``docs/`` and ``runs/`` the book reads (``BINLAB_ROOT`` overrides it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT_ENV = "BINLAB_ROOT"


def fast_mode() -> bool:
    """True when ``BINLAB_FAST`` is set to something other than '', '0', 'false' or 'no'."""
    return os.environ.get("BINLAB_FAST", "").strip().lower() not in ("", "0", "false", "no")


def pick(full, fast):
    """``fast`` in fast mode, ``full`` otherwise: ``n_steps = pick(2000, 20)``."""
    return fast if fast_mode() else full


@contextlib.contextmanager
def torch_threads(n: int):
    """``with torch_threads(1): ...``: torch uses ``n`` threads inside the block; the count before comes back after,
    also when the block raises. Tiny models train fastest on one thread, and the same on every machine."""
    import torch  # here, not at the top: importing settings stays free of torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The binlab checkout whose ``docs/``, ``runs/``, ``book/`` and ``exercises/`` the book reads and writes.

    ``$BINLAB_ROOT`` if set; else the nearest folder at or above ``start`` (default: the current directory, which
    is ``book/`` or ``exercises/`` in a running notebook) that holds both ``book/`` and ``docs/``; else ``start``
    itself. Never the installed package's location, so an installed (non-editable) binlab works from anywhere.
    """
    env = os.environ.get(ROOT_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "book").is_dir() and (folder / "docs").is_dir():
            return folder
    return here
