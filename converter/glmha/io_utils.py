"""Atomic writes: outputs appear complete under their final name or not at all.

A write goes to a temporary file `.NAME.<random>.tmp` next to the final path and is renamed over it.
The writer holds an advisory lock (`fcntl.flock`) on that file from its creation until the rename, so
a later run can tell the leftovers of a killed writer (lock free: the kernel drops it when a process
dies, however it dies) from the file of a writer still at work (lock held), and removes only the
former. A file's age could not tell them apart: a large export on a slow disk is young and alive for
minutes, and a leftover would otherwise sit there until it aged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import torch

from glmha.errors import GlmhaError

_TEMP_SUFFIX = ".tmp"
_RANDOM_PART = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix


def file_label(what: str, path: Path) -> str:
    """How messages name a file: "<what> <path>", or the path alone when `what` is empty."""
    return f"{what} {path}" if what else str(path)


def _folder_problem(error: OSError, parent: Path) -> str:
    """Why no file can be created in `parent`, in words (no traceback, no errno number)."""
    if error.errno == errno.ENOENT:
        return f"folder {parent} does not exist" if not parent.is_dir() else f"folder {parent} takes no new files"
    if error.errno == errno.ENOTDIR:
        return f"{_first_file(parent)} is a file, not a folder"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"folder {parent} is not writable"
    if error.errno == errno.EROFS:
        return f"folder {parent} is on a read-only file system"
    if error.errno == errno.ENAMETOOLONG:
        return "the file name is too long for the file system"
    return f"cannot create a file in {parent} ({error.strerror or error})"


def path_status(path: str | Path, *, what: str = "") -> os.stat_result | None:
    """`os.stat` of `path` (following links), or None where nothing is there; a path that cannot even be
    looked up (a name too long, a loop of symbolic links, a folder without search permission) is a
    GlmhaError naming it, where pathlib's exists() / is_dir() would raise a bare OSError."""
    path = Path(path)
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise GlmhaError(f"{file_label(what, path)}: {_lookup_problem(error)}") from None


def _lookup_problem(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "the file name is too long for the file system"
    if error.errno == errno.ELOOP:
        return "a loop of symbolic links"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "no permission to look it up"
    return f"cannot be looked up ({error.strerror or error})"


def _first_file(folder: Path) -> Path:
    """The first component of `folder` that exists but is not a folder (where a path runs into a file)."""
    for candidate in (*reversed(folder.parents), folder):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


def temporary_name_pattern(path: Path) -> re.Pattern[str]:
    """Names of the temporary files that writes of `path` use: `.NAME.<8 random characters>.tmp`."""
    return re.compile(re.escape(f".{path.name}.") + _RANDOM_PART + re.escape(_TEMP_SUFFIX))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of earlier writes of `path` whose writer is gone (their lock is free);
    return what was removed. Files held by a live writer, and anything not named like a temporary of
    `path`, are left alone; a file that cannot be inspected is skipped, never an error."""
    path = Path(path)
    parent = path.parent
    pattern = temporary_name_pattern(path)
    removed = []
    try:
        names = [entry.name for entry in os.scandir(parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    for name in names:
        if _remove_if_unlocked(parent / name):
            removed.append(parent / name)
    return removed


def _remove_if_unlocked(candidate: Path) -> bool:
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
        if os.stat(candidate, follow_symlinks=False).st_ino != info.st_ino:
            return False  # renamed or replaced meanwhile: not the file that was locked
        candidate.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class PendingFile:
    """A locked temporary file next to `path`, created at once (so an unwritable location fails before
    any work) and either renamed over `path` by `commit` or removed by `discard` / leaving the `with`
    block, whatever ends it. Dead writers' temporaries of the same name are removed first."""

    def __init__(self, path: str | Path, *, what: str = "") -> None:
        self.path = Path(path)
        self.what = what
        status = path_status(self.path, what=what)
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise GlmhaError(f"{file_label(what, self.path)}: is a directory")
        if status is not None and not stat.S_ISREG(status.st_mode):  # never rename over a device, pipe, socket
            raise GlmhaError(f"{file_label(what, self.path)}: is not a regular file")
        self.parent = self.path.parent if str(self.path.parent) else Path(".")
        remove_stale_temporaries(self.path)
        self._fd, self.tmp = self._create()

    def _create(self) -> tuple[int, Path]:
        """mkstemp, then lock; retried if a cleaner removed the file between the two steps."""
        for _attempt in range(8):
            try:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=_TEMP_SUFFIX, dir=self.parent)
            except OSError as error:
                problem = _folder_problem(error, self.parent)
                if error.errno == errno.ENAMETOOLONG:
                    problem += " (the temporary file written first adds 14 characters to it)"
                raise GlmhaError(f"{file_label(self.what, self.path)}: {problem}") from None
            with contextlib.suppress(OSError):  # no locks here (some network file systems): no cleanup either
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(name, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd, Path(name)
            except FileNotFoundError:
                pass
            os.close(fd)
        raise GlmhaError(f"{file_label(self.what, self.path)}: its temporary file keeps disappearing in "
                         f"{self.parent}")

    def commit(self, write: Callable[[Path], None]) -> None:
        """`write(tmp)`, give the file the usual mode, flush it to disk and rename it over `path`."""
        if self._fd is None:
            raise GlmhaError(f"{file_label(self.what, self.path)}: already written or discarded")
        try:
            write(self.tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp (and safetensors) make 0600; outputs get the usual mode
            with self.tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self.tmp, self.path)
        except OSError as error:
            self.discard()
            raise GlmhaError(f"cannot write {self.path}: {error.strerror or error}") from None
        except BaseException:
            self.discard()
            raise
        self._release()

    def discard(self) -> None:
        """Remove the temporary file (if still there) and drop the lock."""
        if self._fd is None:
            return
        self.tmp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.discard()


def check_writable_target(path: str | Path, *, what: str = "output") -> Path:
    """Fail early, before any work, when `path` cannot be written: a temporary file is created next to
    it and removed again (permission bits alone do not tell, e.g. for root or on read-only mounts)."""
    path = Path(path)
    PendingFile(path, what=what).discard()
    return path


def create_folder(folder: str | Path, *, what: str = "folder") -> list[Path]:
    """Create `folder` and its missing parents and prove that files can be written in it; return the
    folders created, outermost first, for `remove_empty_folders` to undo."""
    folder = Path(folder)
    status = path_status(folder, what=what)
    if status is not None and not stat.S_ISDIR(status.st_mode):
        raise GlmhaError(f"{file_label(what, folder)}: exists and is not a folder")
    created = [p for p in (*reversed(folder.parents), folder) if path_status(p, what=what) is None]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        remove_empty_folders([p for p in created if p.is_dir()])
        raise GlmhaError(f"{file_label(what, folder)}: cannot be created ({error.strerror or error})") from None
    try:
        _prove_writable(folder, what)
    except GlmhaError:
        remove_empty_folders(created)
        raise
    return created


def _prove_writable(folder: Path, what: str) -> None:
    """Create and remove a file in `folder` (permission bits alone do not tell, e.g. for root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".glmha-write-test.", suffix=_TEMP_SUFFIX, dir=folder)
    except OSError as error:
        raise GlmhaError(f"{file_label(what, folder)}: {_folder_problem(error, folder)}") from None
    os.close(fd)
    os.unlink(name)


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders `create_folder` made, innermost first, as long as they are empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()  # fails, and keeps the folder, once anything was written into it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename over `path`; the temporary file never survives."""
    with PendingFile(path) as pending:
        pending.commit(write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file with a deterministic header: metadata keys and tensors in sorted order.

    Why not `safetensors.torch.save_file`: its header comes from a hash map, so the same tensors and
    metadata give different bytes in every process, and a rerun could not tell an unchanged export
    from a changed one by its SHA-256. The layout is the format's own (8-byte little-endian header
    length, JSON header padded with spaces to a multiple of 8, then the tensors' bytes), so every
    safetensors reader reads it.
    """
    import json
    import struct

    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": {key: metadata[key] for key in sorted(metadata)}}
    offset = 0
    blobs = []
    for name in names:
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise GlmhaError(f"cannot store tensor {name} of dtype {tensor.dtype} in safetensors")
        raw = tensor.view(torch.uint8) if tensor.numel() else tensor  # bytes in memory order (little endian)
        blob = raw.numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            handle.write(struct.pack("<Q", len(text)))
            handle.write(text)
            for blob in blobs:
                handle.write(blob)

    atomic_write(path, write)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
