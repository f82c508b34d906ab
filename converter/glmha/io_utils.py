"""Atomic writes: outputs appear complete under their final name or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

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
