"""Atomic, resumable training checkpoints: `checkpoints/step_N/`, complete only with its marker.

Why this layout: a checkpoint is written into `.partial-step_N/` (Accelerate's `save_state`: model,
optimizer, scheduler, RNG of every process), then our `trainer_state.json` and the resolved recipe,
then the `COMPLETE` marker, and only then renamed to `step_N/`. A crash at any point leaves either a
`.partial-*` folder, which is never loaded and is removed by the next run, or a complete one. Only
the last `keep` complete checkpoints are kept. Before a resume, the files of the checkpoint are
checked (present, whole, well-formed), so a damaged one is refused in one line that names the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from glmha.errors import CheckpointError

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
PARTIAL_PREFIX = ".partial-"
_STEP_DIR = re.compile(r"step_(\d+)")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.fullmatch(entry.name)
        if match and entry.is_dir() and (entry / MARKER).is_file() and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_partials(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves; returns what was removed."""
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(PARTIAL_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


MODEL_FILE = "model.safetensors"
TORCH_FILES = ("optimizer.bin", "scheduler.bin")  # torch.save zip archives written by Accelerate
_STATE_TYPES: dict[str, tuple[type, ...]] = {  # trainer_state.json: key -> allowed JSON types
    "step": (int,), "history": (list,), "file_sha256": (dict,), "num_processes": (int,),
    "best_step": (int, type(None)), "best": (dict, type(None)), "teacher_scores": (dict, type(None)),
    "converted_scores": (dict, type(None)),
}
_OPTIONAL_STATE = frozenset({"best_step", "best", "teacher_scores", "converted_scores"})
_JSON_NAMES = {int: "an integer", list: "a list", dict: "an object", type(None): "null"}


class DamagedCheckpoint(CheckpointError):
    """A complete-looking checkpoint whose files are missing, cut off or corrupt."""


def damaged(path: Path, problem: str) -> DamagedCheckpoint:
    """The one-line refusal for a damaged checkpoint file, with the way out."""
    return DamagedCheckpoint(f"cannot resume from {path}: {problem}; rerun with --restart to start over "
                             f"(this deletes the run's checkpoints)")


def read_state(folder: Path) -> dict[str, Any]:
    """trainer_state.json, checked key by key (a hand-edited or damaged file would otherwise fail
    deep in training with a TypeError)."""
    path = folder / STATE_FILE
    state = _read_document(path, json.loads, json.JSONDecodeError, "JSON", "a JSON object")
    for key, types in _STATE_TYPES.items():
        if key not in state and key in _OPTIONAL_STATE:
            continue
        value = state.get(key)
        if key not in state or isinstance(value, bool) or not isinstance(value, types):
            found = "nothing" if key not in state else f"{type(value).__name__} {value!r}"[:60]
            raise damaged(path, f"{key!r} should be {' or '.join(_JSON_NAMES[t] for t in types)}, found {found}")
    match = _STEP_DIR.fullmatch(folder.name)
    if match and state["step"] != int(match.group(1)):
        raise damaged(path, f"records step {state['step']}, but the folder is {folder.name}")
    return state


def read_saved_recipe(folder: Path) -> dict[str, Any]:
    """The recipe a checkpoint was written with (a mapping), for comparing with the current one."""
    import yaml

    return _read_document(folder / RECIPE_FILE, yaml.safe_load, yaml.YAMLError, "YAML", "a mapping")


def _read_document(path: Path, parse: Any, syntax_error: type[Exception], language: str, shape: str) -> dict:
    """A JSON or YAML file of a checkpoint that must hold a mapping, or one `damaged` line saying why not."""
    try:
        document = parse(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise damaged(path, f"cannot be read ({error.strerror or error})") from None
    except (UnicodeDecodeError, syntax_error) as error:
        raise damaged(path, f"not valid {language} ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise damaged(path, f"expected {shape}, found {type(document).__name__}")
    return document


def check_files(folder: Path, processes: int) -> None:
    """Every file `accelerator.load_state` will read is present and whole: the model's safetensors
    header must cover the file exactly (what a cut-off write breaks), and the optimizer, scheduler
    and per-process random states must be intact zip archives (torch.save's format)."""
    from safetensors import SafetensorError, safe_open

    names = [MODEL_FILE, *TORCH_FILES, *(f"random_states_{rank}.pkl" for rank in range(processes))]
    for name in names:
        path = folder / name
        if not path.is_file():
            raise damaged(path, "missing")
        if path.stat().st_size == 0:
            raise damaged(path, "empty file")
    model = folder / MODEL_FILE
    try:
        with safe_open(str(model), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        detail = str(error).replace("Error while deserializing header: ", "").splitlines()[0]
        raise damaged(model, f"truncated or corrupt ({detail})") from None
    for name in names[1:]:
        if not zipfile.is_zipfile(folder / name):
            raise damaged(folder / name, "truncated or corrupt (not a complete torch.save archive)")


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(accelerator, root: Path, step: int, state: dict[str, Any], recipe_yaml: str,
                    keep: int) -> Path:
    """Write `root/step_<step>` atomically (every process must call this); returns its path."""
    final = root / f"step_{step}"
    partial = root / f"{PARTIAL_PREFIX}step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_synced(partial / STATE_FILE, json.dumps(state, indent=2))
        _write_synced(partial / RECIPE_FILE, recipe_yaml)
        _write_synced(partial / MARKER, json.dumps({"step": step}) + "\n")  # last: the folder is complete
        _sync_dir(partial)
        if final.exists():  # the same step saved before (e.g. a rerun stopped at the same place)
            stale = root / f"{PARTIAL_PREFIX}old-step_{step}"
            os.replace(final, stale)
            os.replace(partial, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(partial, final)
        _sync_dir(root)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints."""
    found = complete_checkpoints(root)
    for _step, folder in found[:-keep] if keep > 0 else found:
        shutil.rmtree(folder, ignore_errors=True)
