"""Calibration inputs for activation spectra, prepared as each family's official pipeline prepares
its inputs, so the spectra describe the activations the model really sees.

- Restormer family: images in [0, 1], centre crops of at most 256 (multiples of 8).
- MST++: the same images, then one global min-max per image (the NTIRE 2022 reader's normalisation).
- MST / MST-L: CASSI scenes (`.mat`, key `img` or `img_expand`, read as the official test reads the
  KAIST truth: unscaled), centre-cropped to 256x256, measured through the 256x256 mask; the model
  gets shift_back(y * 2 / C) and the shifted mask Phi (glmha.spectral.cassi.mst_inputs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from glmha.archs import RestorationModel
from glmha.errors import GlmhaError

MAX_SIDE = 256
_REFLECTANCE_LIMIT = 1.5  # KAIST truth is reflectance in [0, 1]; CAVE files hold x65536 integers


def calibration_inputs(model: RestorationModel, folder: str | Path, *, mask: str | Path | None = None,
                       limit: int | None = 16, side: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Input tuples for `model(*inputs)` from `folder`: images, or CASSI scenes plus `mask` for MST;
    centre crops of at most `side` (default 256; MST scenes: exactly 256 unless given)."""
    if limit is not None and limit < 1:
        raise GlmhaError(f"calibration limit must be at least 1, got {limit}")
    if side is not None and side < 1:
        raise GlmhaError(f"calibration crop size must be at least 1, got {side}")
    if model.family == "mst":
        if mask is None:
            raise GlmhaError("MST takes CASSI measurements, not images: give a folder of scene .mat files "
                             "and the 256x256 mask.mat (--calib-mask)")
        return _sci_inputs(model, Path(folder), Path(mask), limit, side)
    if mask is not None:
        raise GlmhaError(f"a calibration mask is for MST (CASSI) models only; this model is {model.family}")
    from glmha.data.image_folder import list_images, read_calibration_images

    images = read_calibration_images(Path(folder), model.input_channels, multiple=model.size_multiple,
                                     max_side=side or MAX_SIDE, limit=limit)
    if model.family == "mst_plus_plus":
        from glmha.spectral.readers import minmax_normalise

        names = list_images(Path(folder))
        images = [torch.from_numpy(minmax_normalise(image.numpy(), what=f"calibration image {path}"))
                  for image, path in zip(images, names, strict=False)]
    return [(image,) for image in images]


def _sci_inputs(model: RestorationModel, folder: Path, mask_path: Path,
                limit: int | None, side: int | None) -> list[tuple[torch.Tensor, ...]]:
    from glmha.spectral.cassi import mst_inputs
    from glmha.spectral.readers import SCI_CROP, SciScenes

    scenes = SciScenes(folder, mask_path, training=False, bands=model.output_channels)
    mask2d = torch.from_numpy(scenes.mask())  # (256, 256)
    inputs = []
    for index in range(len(scenes) if limit is None else min(limit, len(scenes))):
        cube = torch.from_numpy(scenes.read(index))  # (bands, H, W), H and W >= 256
        peak = float(cube.max())
        if peak > _REFLECTANCE_LIMIT:
            raise GlmhaError(
                f"{scenes.paths[index]}: values reach {peak:.2f}; calibration scenes must hold reflectance in "
                f"[0, 1] like the KAIST test truth (CAVE training files store it x65536)"
            )
        size = min(side or SCI_CROP, SCI_CROP)
        top = (cube.shape[1] - size) // 2
        left = (cube.shape[2] - size) // 2
        crop = cube[None, :, top:top + size, left:left + size]  # (bands, H, W) -> (1, bands, size, size)
        mask = mask2d[(SCI_CROP - size) // 2:, (SCI_CROP - size) // 2:][:size, :size]  # the mask's centre
        measurement, phi = mst_inputs(crop, mask)  # (1, bands, size, size), (1, bands, size, size + 2*(bands-1))
        inputs.append((measurement, phi))
    return inputs


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
