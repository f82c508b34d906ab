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
                       limit: int | None = 16) -> list[tuple[torch.Tensor, ...]]:
    """Input tuples for `model(*inputs)` from `folder`: images, or CASSI scenes plus `mask` for MST."""
    if limit is not None and limit < 1:
        raise GlmhaError(f"calibration limit must be at least 1, got {limit}")
    if model.family == "mst":
        if mask is None:
            raise GlmhaError("MST takes CASSI measurements, not images: give a folder of scene .mat files "
                             "and the 256x256 mask.mat (--calib-mask)")
        return _sci_inputs(model, Path(folder), Path(mask), limit)
    if mask is not None:
        raise GlmhaError(f"a calibration mask is for MST (CASSI) models only; this model is {model.family}")
    from glmha.data.image_folder import list_images, read_calibration_images

    images = read_calibration_images(Path(folder), model.input_channels, multiple=model.size_multiple,
                                     max_side=MAX_SIDE, limit=limit)
    if model.family == "mst_plus_plus":
        from glmha.spectral.readers import minmax_normalise

        names = list_images(Path(folder))
        images = [torch.from_numpy(minmax_normalise(image.numpy(), what=f"calibration image {path}"))
                  for image, path in zip(images, names, strict=False)]
    return [(image,) for image in images]


def _sci_inputs(model: RestorationModel, folder: Path, mask_path: Path,
                limit: int | None) -> list[tuple[torch.Tensor, ...]]:
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
        top = (cube.shape[1] - SCI_CROP) // 2
        left = (cube.shape[2] - SCI_CROP) // 2
        crop = cube[None, :, top:top + SCI_CROP, left:left + SCI_CROP]  # (bands, H, W) -> (1, bands, 256, 256)
        measurement, phi = mst_inputs(crop, mask2d)  # (1, bands, 256, 256), (1, bands, 256, 256 + 2*(bands-1))
        inputs.append((measurement, phi))
    return inputs
