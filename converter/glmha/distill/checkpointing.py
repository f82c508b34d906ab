"""Atomic, resumable training checkpoints: `checkpoints/step_N/`, complete only with its marker.

Why this layout: a checkpoint is written into `.partial-step_N/` (Accelerate's `save_state`: model,
optimizer, scheduler, RNG of every process), then our `trainer_state.json` and the resolved recipe,
then the `COMPLETE` marker, and only then renamed to `step_N/`. A crash at any point leaves either a
`.partial-*` folder, which is never loaded and is removed by the next run, or a complete one. Only
the last `keep` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from glmha.errors import GlmhaError

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


def read_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise GlmhaError(f"checkpoint {folder}: {STATE_FILE} cannot be read ({error})") from None


def read_saved_recipe(folder: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((folder / RECIPE_FILE).read_text(encoding="utf-8"))


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
