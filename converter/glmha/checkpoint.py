"""Read a checkpoint file into a flat state dict, safely.

Pickled files are read only with `torch.load(weights_only=True)`: a checkpoint that needs code to
unpickle is refused, never retried unsafely. The containers used by the official training code are
unwrapped (`params_ema` preferred over `params`, then `state_dict`, `model`, `net`, a bare dict) and
the `module.` (DataParallel) and `net.` (Lightning) prefixes removed.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmha.errors import CheckpointError

CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model", "net")
STRIPPED_PREFIXES = ("module.", "net.")
MAX_NESTING = 4


@dataclass
class Checkpoint:
    """A flat state dict plus where it came from inside the file."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]  # safetensors __metadata__ ({} for pickles)
    container: str  # e.g. "params" or "state_dict/module." or "bare"
    path: Path


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    _check_file(path)
    with path.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raw, metadata = _read_pickle(path), {}
    elif _looks_like_safetensors(head):
        raw, metadata = _read_safetensors(path)
    else:
        raise CheckpointError(
            f"{path}: not a PyTorch (.pth/.pt) or safetensors checkpoint (unrecognised content)"
        )
    state_dict, container = unwrap_state_dict(raw, path)
    return Checkpoint(state_dict=state_dict, metadata=metadata, container=container, path=path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len < 100_000_000 and head[8:9] == b"{"


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        what = f"it references {found.group(1)}" if found else "it is not a plain weights file"
        if "weights_only" in message or found:
            raise CheckpointError(
                f"{path}: refused to load: the pickle needs code to run ({what}); glmha loads "
                "weights only (torch.load(weights_only=True)). Re-save it as a state dict: "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise CheckpointError(f"{path}: corrupt pickle ({_first_line(message)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch file ({_first_line(str(error))})"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file ({_first_line(str(error))})"
        ) from None
    return tensors, metadata


def unwrap_state_dict(obj: Any, path: Path | str = "<memory>") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside an official container and strip wrapper prefixes."""
    trail = []
    for _ in range(MAX_NESTING):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}: expected a dict of tensors, found {type(obj).__name__}"
                + (f" under '{'/'.join(trail)}'" if trail else "")
            )
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(sorted(map(str, obj))[:8]) or "nothing"
            raise CheckpointError(
                f"{path}: no state dict found (looked for a dict of tensors or one of "
                f"{', '.join(CONTAINER_KEYS)}; top-level keys: {keys})"
            )
        trail.append(inner)
        obj = obj[inner]
    else:
        raise CheckpointError(f"{path}: containers nested too deeply ({'/'.join(trail)})")
    state_dict = {str(k): v for k, v in obj.items()}
    stripped = []
    while True:
        prefix = next((p for p in STRIPPED_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        stripped.append(prefix)
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict, "/".join(trail + stripped) or "bare"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:200]
