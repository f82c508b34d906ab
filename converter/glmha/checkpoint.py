"""Read a checkpoint file into a flat state dict, safely.

Pickled files are read only with `torch.load(weights_only=True)`: a checkpoint that needs code to
unpickle is refused, never retried unsafely. The containers used by the official training code are
unwrapped (`params_ema` preferred over `params`, then `state_dict`, `model`, `net`, a bare dict) and
the `module.` (DataParallel) and `net.` (Lightning) prefixes removed.

Every way a file can be unusable (unreachable, degenerate, truncated, corrupt, non-finite weights) ends
in one `CheckpointError` line naming the file, never in an exception from torch, safetensors or the OS.
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import re
import stat
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmha.errors import CheckpointError

CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model", "net")
STRIPPED_PREFIXES = ("module.", "net.")
MAX_NESTING = 4
HEAD_BYTES = 16
LEGACY_PICKLES = 4  # torch's pre-zip format: magic number, protocol version, system info, then the object
# what torch's weights-only unpickler says when a pickle would need code (classes, function calls) to load
NEEDS_CODE = (r"Unsupported global|unsupported GLOBAL|call reduce for unrecognized function|Can only create new "
              r"object|Can only build Tensor|must be imported to load")
CHECKED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # isfinite runs on these as is


@dataclass
class Checkpoint:
    """A flat state dict plus where it came from inside the file."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]  # safetensors __metadata__ ({} for pickles)
    container: str  # e.g. "params" or "state_dict/module." or "bare"
    path: Path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The state dict of a .pth/.pt or safetensors file; GlmhaError (one line) for every unusable file."""
    path = Path(path)
    _check_file(path)
    head = _read_head(path)
    if head.startswith(b"PK\x05\x06"):
        raise CheckpointError(f"{path}: an empty zip archive, not a PyTorch checkpoint")
    if _looks_like_safetensors(head):  # first: a header length whose low byte is 0x80 looks like a pickle
        raw, metadata = _read_safetensors(path)
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raw, metadata = _read_pickle(path), {}
    else:
        raise CheckpointError(
            f"{path}: not a PyTorch (.pth/.pt) or safetensors checkpoint (unrecognised content)"
        )
    state_dict, container = unwrap_state_dict(raw, path)
    _refuse_unusable_tensors(state_dict, path)
    refuse_non_finite(state_dict, path)
    return Checkpoint(state_dict=state_dict, metadata=metadata, container=container, path=path)


def check_readable(path: str | Path) -> None:
    """Fail in one line, before any other work, when `path` cannot be a readable checkpoint file (missing,
    unreachable, a folder, a pipe, empty, unreadable); what read_checkpoint checks first."""
    _check_file(Path(path))
    _read_head(Path(path))


def _check_file(path: Path) -> None:
    """Refuse a path that is not a readable regular file before torch or safetensors see it (a FIFO
    would block them, a folder or a link loop would surface as a raw OSError)."""
    try:
        info = path.stat()
    except OSError as error:
        raise CheckpointError(f"{path}: {_access_problem(path, error)}") from None
    except ValueError as error:  # only from Python callers: a name with a NUL byte
        raise CheckpointError(f"{str(path)!r}: not a valid file name ({error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket), expected a checkpoint file")
    if info.st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _read_head(path: Path) -> bytes:
    """The first bytes, which tell the formats apart; opening here is also the read-permission check."""
    try:
        with path.open("rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError as error:
        raise CheckpointError(f"{path}: {_access_problem(path, error)}") from None


def _access_problem(path: Path, error: OSError) -> str:
    """What an OSError from stat/open means for the user, in words (no errno numbers)."""
    code = error.errno
    if code == errno.ENOENT:
        return _dangling_link(path) or "no such file"
    if code == errno.ELOOP:
        return "symbolic link loop (the link resolves back to itself), expected a checkpoint file"
    if code in (errno.EACCES, errno.EPERM):
        return _permission_problem(path)
    if code == errno.ENOTDIR:
        return "no such file (a part of the path is a file, not a folder)"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot be read ({error.strerror or type(error).__name__})"


def _dangling_link(path: Path) -> str | None:
    """'dangling symbolic link ...' when the path is a link whose target is missing, else None."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return f"dangling symbolic link (it points to {target}, which does not exist)"


def _permission_problem(path: Path) -> str:
    """Say whether a folder on the way or the file itself is closed: the fixes differ."""
    blocked = next((folder for folder in reversed(path.parents) if not os.access(folder, os.X_OK)), None)
    if blocked is not None:
        return f"permission denied (folder {blocked} cannot be entered)"
    return "permission denied (the file cannot be read)"


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len < 100_000_000 and head[8:9] == b"{"


def _read_pickle(path: Path) -> Any:
    """torch.load with weights_only; every failure becomes 'refused' (needs code) or 'corrupt'."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the CLI's stderr stays one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _pickle_refusal(path, str(error)) from None
    except Exception as error:  # any other failure of the unpickler on these bytes: a bad file
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({_detail(error)})") from None


def _pickle_refusal(path: Path, message: str) -> CheckpointError:
    """Tell a pickle that needs code (a class, a function call) from a damaged or unreadable one: torch
    words both as 'Weights only load failed'."""
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    detail = _first_sentence(reason.group(1)) if reason else _detail(Exception(message))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found and _legacy_pickle_is_cut(path):  # a name cut short by truncation, not a real class
        return CheckpointError(f"{path}: truncated or corrupt PyTorch file (its pickle ends early)")
    if found or re.search(NEEDS_CODE, message):
        what = f"it references {found.group(1)}" if found else detail
        return CheckpointError(
            f"{path}: refused to load: the pickle needs code to run ({what}); glmha loads "
            "weights only (torch.load(weights_only=True)). Re-save it as a state dict: "
            "torch.save(model.state_dict(), path)"
        )
    if "Unsupported operand" in message:
        return CheckpointError(
            f"{path}: corrupt pickle, or one written with a pickle protocol that weights-only loading cannot "
            f"read ({detail}); re-save it with torch.save(model.state_dict(), path)"
        )
    return CheckpointError(f"{path}: corrupt pickle ({detail})")


def _legacy_pickle_is_cut(path: Path) -> bool:
    """Whether a pre-zip torch file ends (or breaks) inside the pickles that hold the object.

    Scanning opcodes with pickletools runs no code. A truncated file can stop in the middle of a
    class name, which weights-only loading reports as an 'unsupported global'."""
    try:
        with path.open("rb") as handle:
            if handle.read(2) == b"PK":
                return False
            handle.seek(0)
            for _ in range(LEGACY_PICKLES):
                for _opcode in pickletools.genops(handle):
                    pass
    except (ValueError, OSError):
        return True
    return False


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # SafetensorError, OSError, ValueError, TypeError, ...: a bad file
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file ({_detail(error)})"
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


def _refuse_unusable_tensors(state_dict: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Weights-only pickles may hold tensors without plain values (meta, sparse, nested, quantized);
    no model of glmha's can take them, and every later step would fail on them with a raw error."""
    for key, tensor in state_dict.items():
        problem = None
        if tensor.is_meta:
            problem = "holds no values (it was saved from the meta device)"
        elif tensor.is_nested or tensor.layout != torch.strided:
            problem = f"is not a dense tensor (layout {tensor.layout})"
        elif tensor.is_quantized:
            problem = f"is quantized ({tensor.dtype})"
        if problem:
            raise CheckpointError(f"{path}: tensor '{key}' {problem}; glmha reads plain dense weights only")


def refuse_non_finite(state_dict: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Refuse NaN/Inf weights when the file is read: later they surface as a linear-algebra failure
    deep in the spectrum analysis, or worse, as an export that silently outputs NaN."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        values = tensor if tensor.dtype in CHECKED_DTYPES else tensor.float()  # float8: no isfinite kernel
        if bool(torch.isfinite(values).all()):
            continue
        raise CheckpointError(
            f"{path}: tensor '{key}' holds {_non_finite_summary(values)}; glmha refuses non-finite weights"
        )


def _non_finite_summary(values: torch.Tensor) -> str:
    """e.g. 'NaN (3 of 1,728 values)' or 'NaN and -Inf (5 of 64 values)'."""
    kinds = (("NaN", torch.isnan(values)), ("+Inf", torch.isposinf(values)), ("-Inf", torch.isneginf(values)))
    counts = {name: int(mask.sum()) for name, mask in kinds}
    found = [name for name, count in counts.items() if count]
    return f"{' and '.join(found)} ({sum(counts.values()):,} of {values.numel():,} values)"


def _detail(error: BaseException) -> str:
    """The first sentence of an error message, for the parenthesis of a one-line error."""
    text = str(error).strip()
    if not text:
        return "the file ends early" if isinstance(error, EOFError) else type(error).__name__
    if isinstance(error, LookupError):  # a bare key or index says nothing alone
        return f"{type(error).__name__} {_first_sentence(text)}"
    return _first_sentence(text)


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return re.split(r"(?<=[^\s.])\.\s", line, maxsplit=1)[0][:200]
