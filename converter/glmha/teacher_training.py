"""Pieces the project's teacher-training scripts share (examples/train_teacher.py and
examples/train_spectral_teacher.py): the learning-rate curve, the loss log kept for the card, random
dihedral crops, and the checkpoint write with the card fields that describe it.

Why here: both shipped teachers are reproduced bit for bit from the commands on their cards, so the
draws and the arithmetic below must not drift between the two scripts.
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from glmha.io_utils import atomic_write
from glmha.runtime import environment


def cosine_lr(step: int, total: int, peak: float, floor: float, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` at the first step after it to
    `floor` at the last step (CosineAnnealingLR with T_max = total - warmup - 1)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LossLog:
    """The mean loss over every `every` steps (and the last, partial window), printed and kept."""

    def __init__(self, total: int, every: int, label: str = "loss") -> None:
        self.total, self.every, self.label = total, every, label
        self.entries: list[dict[str, float | int]] = []
        self._running = 0.0
        self._started = time.perf_counter()

    def add(self, step: int, loss: float, lr: float) -> None:
        """Record the loss of 0-based `step`, trained at `lr`."""
        self._running += loss
        if (step + 1) % self.every and step + 1 != self.total:
            return
        mean = self._running / ((step % self.every) + 1)
        elapsed = time.perf_counter() - self._started
        self.entries.append({"step": step + 1, "loss": mean, "lr": lr, "elapsed_s": round(elapsed, 1)})
        print(f"step {step + 1:6d}/{self.total}  {self.label} {mean:.5f}  lr {lr:.2e}  {elapsed:7.1f} s",
              flush=True)
        self._running = 0.0


def random_dihedral_crop(image: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """A random patch x patch window of a (C, H, W) tensor under one of the 8 rotations/flips.

    Draws, in this order: top, left, then the transform (0-3 rotations by 90 degrees, 4-7 the same
    followed by a left-right flip)."""

    def randint(high: int) -> int:
        return int(torch.randint(high, (1,), generator=generator))

    height, width = image.shape[-2:]
    top = randint(height - patch + 1)
    left = randint(width - patch + 1)
    crop = image[:, top:top + patch, left:left + patch]
    transform = randint(8)
    crop = torch.rot90(crop, transform % 4, dims=(1, 2))
    return torch.flip(crop, dims=(2,)) if transform >= 4 else crop


def save_teacher(model: torch.nn.Module, out: Path, *, family: str, container_key: str) -> dict[str, Any]:
    """Write `{container_key: state_dict}` atomically (the official container of the family) and
    return the card fields that describe the model and the file."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out, lambda tmp: torch.save({container_key: state}, tmp))
    return {
        "architecture": family,
        "hyperparameters": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint": {"file": out.name, "container": f"{{'{container_key}': state_dict}}",
                       "bytes": out.stat().st_size},
    }


def run_record(script: str, argv: list[str], train_seconds: float, wall_seconds: float) -> dict[str, Any]:
    """The card fields that say how the run went: software, the exact command, and the time taken."""
    return {
        "environment": environment(),
        "command": f"python examples/{script} " + shlex.join(argv),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall_seconds, 1),
    }
