"""Tiny distillation set-ups for the engine tests: a random small Restormer teacher saved in the
official container, and a recipe on the offline sample images that runs in a few seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from glmha.archs import Restormer
from glmha.distill import Recipe, parse_recipe

from conftest import randomise

TINY_TEACHER = dict(inp_channels=3, out_channels=3, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                    heads=(1, 2, 2, 4), ffn_expansion_factor=2.0, bias=False, layernorm_type="BiasFree")


def write_teacher(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "teacher.pth"
    if not path.exists():
        model = randomise(Restormer(**TINY_TEACHER), seed)
        with torch.no_grad():  # a restoration-like map: the input plus a moderate learned correction
            model.output.weight.mul_(0.02)
        torch.save({"params": model.state_dict()}, path)
    return path


def recipe_dict(folder: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A valid recipe as a mapping; `sections` are merged into the defaults one level deep."""
    noise = {"type": "gaussian_noise", "sigma": 25}
    raw: dict[str, Any] = {
        "version": 1,
        "teacher": str(write_teacher(folder)),
        "student": {"ratio": 0.5},
        "data": {"train": {"samples": "train", "degrade": noise}, "val": {"samples": "test", "degrade": noise},
                 "patch_size": 16, "batch_size": 2, "val_limit": 2, "val_crop": 32},
        "train": {"steps": 6, "lr": 5e-3, "checkpoint_every": 2, "keep_checkpoints": 2, "scheduler": "cosine"},
        "loss": {"output": 1.0, "features": 0.1, "gt": 0.0},
        "eval": {"every": 3, "input_size": [64, 64]},
        "output": {"dir": str(folder / "run"), "tensorboard": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return raw


def tiny_recipe(folder: Path, **sections: dict[str, Any]) -> Recipe:
    return parse_recipe(copy.deepcopy(recipe_dict(folder, **sections)))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the newest checkpoint."""
    steps = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return load_file(str(steps[-1] / "model.safetensors"))
