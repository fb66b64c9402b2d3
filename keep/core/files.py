"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

The bytes go to a temporary file in the same folder, are fsynced, then ``os.replace``d over
the target, and the folder is fsynced so the rename itself survives a power loss.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_replace(tmp: str | Path, path: Path) -> None:
    """``os.replace(tmp, path)``, then fsync the folder (the rename is durable)."""
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fsync_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` verbatim to a file readable by its owner only (mode 0600 from its
    creation: ``mkstemp`` makes it so), atomically; nothing is written if it holds ``text``."""
    if path.is_file() and path.read_text() == text:
        return
    atomic_write_text(path, text)
