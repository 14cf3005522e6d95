"""Run-wide settings read from the environment.

``BINLAB_FAST=1`` puts every notebook in *fast mode*: small sizes, few steps, so that the whole book
executes in the test suite in seconds per chapter. Notebooks read it through :func:`fast_mode`.
"""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """True when ``BINLAB_FAST`` is set to something other than '', '0', 'false' or 'no'."""
    return os.environ.get("BINLAB_FAST", "").strip().lower() not in ("", "0", "false", "no")


def pick(full, fast):
    """``fast`` in fast mode, ``full`` otherwise: ``n_steps = pick(2000, 20)``."""
    return fast if fast_mode() else full
