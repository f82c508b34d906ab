"""Calibration inputs for activation spectra and budgets: a folder the user gives, read as the family's
official pipeline prepares its inputs (RestorationModel.calibration_from_folder), or the family's offline
samples, at a size whose forward pass stays affordable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from glmha.archs import RestorationModel
from glmha.errors import GlmhaError

MAX_SIDE = 256


def calibration_inputs(model: RestorationModel, folder: str | Path, *, mask: str | Path | None = None,
                       limit: int | None = 16, side: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Input tuples for `model(*inputs)` from `folder` (plus `mask` for models that take one), centre crops
    of at most `side` (default 256)."""
    if limit is not None and limit < 1:
        raise GlmhaError(f"calibration limit must be at least 1, got {limit}")
    if side is not None and side < 1:
        raise GlmhaError(f"calibration crop size must be at least 1, got {side}")
    return model.calibration_from_folder(Path(folder), mask=None if mask is None else Path(mask), limit=limit,
                                         side=side or MAX_SIDE)


# (count, side) of calibration inputs, tried in this order; the first whose forward pass stays within
# CALIBRATION_MACS is used. Measured (bench/budget_fidelity.py): 8 inputs at 96x96 generalise better to
# held-out images than 4 at 128x128 for the same cost.
CALIBRATION_SHAPES = ((8, 128), (8, 96), (4, 128), (4, 96), (2, 128), (4, 64), (2, 96), (2, 64), (2, 48),
                      (2, 32), (1, 32), (1, 16))
CALIBRATION_MACS = 12e9  # MACs (b) of one forward pass over all calibration inputs, at most


def calibration_size(model: RestorationModel, *, count: int | None = None,
                     side: int | None = None) -> tuple[int, int]:
    """(side, count) of calibration inputs: those given, else the first of CALIBRATION_SHAPES (with the given
    count or side) whose forward pass stays within CALIBRATION_MACS: 8 at 96x96 for the shipped teacher, 2 at
    48x48 for the full-size Restormer, so that measuring every layer's sensitivity takes a minute or two."""
    from glmha.counting import count_macs
    from glmha.errors import InputShapeError

    if count is not None and count < 1:
        raise GlmhaError(f"calibration count must be at least 1, got {count}")
    if side is not None:
        model.check_input_size(side, side)
        if count is not None:
            return side, count
    shapes = [(n if count is None else count, s if side is None else side) for n, s in CALIBRATION_SHAPES]
    valid = []
    for number, size in dict.fromkeys(shapes):
        try:
            model.check_input_size(size, size)
        except InputShapeError:
            continue
        valid.append((number, size))
    if not valid:
        raise GlmhaError("no offline calibration size suits this model; give calibration inputs with --calib")
    per_input: dict[int, int] = {}
    for number, size in valid:
        if size not in per_input:
            per_input[size] = count_macs(model, model.example_inputs(size, size, device="meta")).macs.total
        if number * per_input[size] <= CALIBRATION_MACS:
            return size, number
    return valid[-1][1], valid[-1][0]


def default_calibration(model: RestorationModel, *, count: int | None = None,
                        side: int | None = None) -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """The family's offline calibration inputs (one batched tuple) and a description of them."""
    size, number = calibration_size(model, count=count, side=side)
    inputs = model.calibration_samples(size, number)
    kind = model.calibration_kind if number != 1 else model.calibration_kind.removesuffix("s")  # plural nouns
    return [inputs], f"{number} offline {kind} at {size}x{size}"
