"""Files that survive a crash: written atomically, tensors in safetensors (no pickle).

Every checkpoint, result and summary binlab writes goes through these helpers, so that a run killed at any
moment leaves either the old file or the new one, never half of one.

    atomic_write_bytes(path, data)      temporary file in the same folder, fsync, os.replace, fsync the folder
    atomic_write_text(path, text)       the same for UTF-8 text
    atomic_save_tensors(tensors, path)  a safetensors file, written atomically
    load_tensors(path)                  read one back (no pickle), with a clear error when it is missing
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save_tensors", "load_tensors", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside folder ``path`` durable (a no-op where a folder cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half of one:
    a temporary file in the same directory, flushed and fsync'ed, then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (no pickle), written atomically."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle is executed)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    return load_file(str(path))
