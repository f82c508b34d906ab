"""Atomic writes: outputs appear complete under their final name or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from glmha.errors import GlmhaError


def check_writable_target(path: str | Path, *, what: str = "output") -> Path:
    """Fail early, before any work, when `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise GlmhaError(f"{what} {path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise GlmhaError(f"{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GlmhaError(f"{what} {path}: folder {parent} is not writable")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename over `path`; the temporary file never survives."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and safetensors) make 0600; outputs get the usual mode
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
