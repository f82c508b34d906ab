"""Spectral data for distillation: NTIRE 2022 (RGB -> 31 bands, MST++), CASSI simulation (MST-L), and
synthetic cubes for tests and demos.

Samples are built the way the official pipelines build them (glmha.spectral.readers and .cassi;
see shared/docs/spectral_data.md): RGB min-max normalised, cubes as stored (CAVE /65536), the
MST-L input `shift_back(y * 2 / C)` and the shifted mask Phi computed from the *augmented* cube, so
measurement and ground truth always agree. As for images, training item i is a pure function of
(seed, i), which is what exact resumption relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from glmha.data.degrade import seeded_generator
from glmha.distill.data import EpochOrder, stable_seed
from glmha.errors import GlmhaError
from glmha.spectral.cassi import mst_inputs

SYNTHETIC_MASK_TAG = "glmha.spectral.synthetic.mask"


@dataclass
class SpectralSource:
    """Indexed scenes: `kind` "rgb" (input RGB, target cube) or "sci" (cube and a fixed 2-D mask)."""

    where: str
    kind: str
    names: list[str]
    bands: int
    reader: Any  # read(i) -> (rgb, cube) for "rgb", cube for "sci"
    mask2d: torch.Tensor | None = None
    has_target: bool = True

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(rgb (3, H, W) or None, cube (bands, H, W)), float32."""
        try:
            item = self.reader.read(index)
        except GlmhaError as error:
            raise GlmhaError(f"{self.where}: {error}") from None
        except Exception as error:  # a reader library's own exception type (h5py, scipy, Pillow)
            raise GlmhaError(f"{self.where}: {self.files(index)}: cannot be read {_failure(error)}") from None
        if self.kind == "rgb":
            rgb, cube = item
            return torch.as_tensor(np.ascontiguousarray(rgb)), torch.as_tensor(np.ascontiguousarray(cube))
        return None, torch.as_tensor(np.ascontiguousarray(item))

    def files(self, index: int) -> str:
        """The file(s) scene `index` is read from, for messages: the readers differ in what they keep."""
        name = self.names[index]
        if hasattr(self.reader, "paths"):  # SCI scenes: one .mat each
            return str(self.reader.paths[index])
        if hasattr(self.reader, "cube_path"):  # NTIRE 2022: an RGB image and a cube
            return f"{self.reader.rgb_path(name)} and {self.reader.cube_path(name)}"
        return f"scene {name}"

    def verify(self) -> None:
        """Check every scene before the run starts, so a damaged file stops it with one line instead of
        failing mid-training (or inside a DataLoader worker). CAVE/KAIST scenes are read whole (a
        MATLAB v5 file shows a cut-off only when read; such sets hold tens of scenes). NTIRE 2022
        has hundreds of 30 MB cubes, so each RGB image is decoded and each cube's HDF5 header checked:
        HDF5 compares the file's length with the length it recorded, so a cut-off file fails to
        open. Synthetic scenes have no files."""
        from glmha.spectral.readers import Ntire2022Split

        if isinstance(self.reader, _SyntheticScenes):
            return
        for index in range(len(self)):
            if isinstance(self.reader, Ntire2022Split):
                self._check_ntire_scene(index)
            else:
                self.read(index)

    def _check_ntire_scene(self, index: int) -> None:
        """The RGB image decoded, the cube's header read: dataset `cube`, bands first, same size."""
        name = self.names[index]
        try:
            rgb = self.reader.read_rgb(name)  # (3, H, W)
            cube_path = self.reader.cube_path(name)
            height, width = _hdf5_cube_size(cube_path, self.bands)
        except GlmhaError as error:
            raise GlmhaError(f"{self.where}: {error}") from None
        except Exception as error:  # Pillow's rarer exception types
            raise GlmhaError(f"{self.where}: {self.files(index)}: cannot be read {_failure(error)}") from None
        if tuple(rgb.shape[1:]) != (height, width):
            raise GlmhaError(f"{self.where}: {self.reader.rgb_path(name)} is {rgb.shape[1]}x{rgb.shape[2]} but "
                             f"{cube_path} is {height}x{width} (H x W)")


def _hdf5_cube_size(path: Path, bands: int) -> tuple[int, int]:
    """(H, W) of the `cube` dataset of an NTIRE 2022 MATLAB v7.3 file, from its header (h5py sees
    MATLAB's H x W x C as (C, W, H)); the messages match glmha.spectral.readers."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            dataset = handle.get("cube")
            found = ", ".join(sorted(handle)) or "none"
            shape = tuple(dataset.shape) if isinstance(dataset, h5py.Dataset) else None
    except OSError as error:
        raise GlmhaError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from None
    if shape is None:
        raise GlmhaError(f"{path}: no dataset 'cube' (found: {found})")
    if len(shape) != 3 or shape[0] != bands:
        raise GlmhaError(f"{path}: 'cube' has shape {shape} as stored (C, W, H); expected {bands} bands first")
    return shape[2], shape[1]


def _failure(error: Exception) -> str:
    """A library exception as a short parenthesis: its type and first line."""
    first = str(error).splitlines()[0] if str(error) else "no details"
    return f"({type(error).__name__}: {first})"


class _SyntheticScenes:
    """`scenes` synthetic reflectance cubes of size x size (seeds seed, seed+1, ...) and their camera RGB."""

    def __init__(self, scenes: int, size: int, bands: int, seed: int, kind: str) -> None:
        from glmha.spectral.synthetic import camera_response, default_wavelengths

        self.scenes, self.size, self.bands, self.seed, self.kind = scenes, size, bands, seed, kind
        self.response = camera_response(default_wavelengths(bands))
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def read(self, index: int):
        from glmha.spectral.synthetic import capture_rgb, reflectance_cube

        if index not in self._cache:
            generator = seeded_generator(self.seed + index)
            cube = reflectance_cube(self.size, self.size, self.bands, generator)  # (bands, H, W)
            self._cache[index] = (capture_rgb(cube, self.response), cube)
        rgb, cube = self._cache[index]
        return (rgb.numpy(), cube.numpy()) if self.kind == "rgb" else cube.numpy()


def synthetic_mask(size: int, seed: int) -> torch.Tensor:
    """A random binary coded aperture (about half open), like the real 256x256 mask."""
    generator = seeded_generator(stable_seed(SYNTHETIC_MASK_TAG, seed, size))
    return (torch.rand(size, size, generator=generator) > 0.5).float()  # (H, W)


def open_spectral_source(spec: Any, *, where: str, bands: int, training: bool) -> SpectralSource:
    """A spectral source from a recipe's {format: ...} form; `bands` is what the teacher outputs."""
    from glmha.spectral.readers import Ntire2022Split, SciScenes

    try:
        if spec.format == "ntire2022":
            reader = Ntire2022Split(spec.root, spec.split, bands=bands)
            return SpectralSource(where, "rgb", list(reader.names), bands, reader)
        if spec.format == "sci":
            reader = SciScenes(spec.root, spec.mask, training=training, bands=bands)
            mask = torch.as_tensor(np.ascontiguousarray(reader.mask()))
            return SpectralSource(where, "sci", list(reader.names), bands, reader, mask2d=mask)
    except GlmhaError as error:
        raise GlmhaError(f"{where}: {error}") from None
    kind = spec.kind
    reader = _SyntheticScenes(spec.scenes, spec.size, bands, spec.seed, kind)
    names = [f"synthetic_{spec.seed + i}" for i in range(spec.scenes)]
    mask = synthetic_mask(spec.size, spec.seed) if kind == "sci" else None
    return SpectralSource(where, kind, names, bands, reader, mask2d=mask)


def _dihedral(tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """The same random rotation by k x 90 degrees and flips for every (C, H, W) tensor."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip_w, flip_h = (torch.rand(2, generator=generator) < 0.5).tolist()
    out = []
    for x in tensors:
        x = torch.rot90(x, k, dims=(1, 2))
        if flip_w:
            x = x.flip(2)
        if flip_h:
            x = x.flip(1)
        out.append(x.contiguous())
    return out


def _sample(source: SpectralSource, rgb: torch.Tensor | None, cube: torch.Tensor) -> dict[str, torch.Tensor]:
    if source.kind == "rgb":
        return {"input": rgb, "target": cube}
    assert source.mask2d is not None
    size = cube.shape[-1]
    mask = source.mask2d[:size, :size]  # the fixed mask's top-left corner for crops below its size
    try:
        measurement, phi = mst_inputs(cube[None], mask)  # (1, C, H, W), (1, C, H, W')
    except GlmhaError as error:
        raise GlmhaError(f"{source.where}: {error}") from None
    return {"input": measurement[0], "mask": phi[0], "target": cube}


class SpectralPatches(Dataset):
    """Training crops: random patch_size x patch_size windows (+ the 8 dihedral symmetries when
    `flips`); item i is a pure function of (seed, i), as in glmha.distill.data.TrainPatches."""

    def __init__(self, source: SpectralSource, *, patch_size: int, length: int, seed: int, flips: bool = True):
        if length < 1:
            raise GlmhaError(f"{source.where}: the run needs at least one sample")
        self.source, self.patch_size, self.length, self.seed, self.flips = source, patch_size, length, seed, flips
        self.image_index = EpochOrder(len(source), seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        generator = seeded_generator(stable_seed("glmha.distill.patch", self.seed, int(i)))
        index = self.image_index(int(i))
        rgb, cube = self.source.read(index)
        height, width = cube.shape[-2:]
        size = self.patch_size
        if height < size or width < size:
            raise GlmhaError(f"{self.source.where}: scene {self.source.names[index]} is {width}x{height} pixels, "
                             f"smaller than patch_size {size}")
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        crops = [x[:, top:top + size, left:left + size] for x in ((cube,) if rgb is None else (cube, rgb))]
        if self.flips:
            crops = _dihedral(crops, generator)
        return _sample(self.source, None if rgb is None else crops[1], crops[0])


class SpectralScenes(Dataset):
    """Whole validation scenes (`limit`: the first N), with `index` for the evaluator's cache."""

    def __init__(self, source: SpectralSource, *, limit: int | None = None) -> None:
        self.source = source
        self.count = len(source) if limit is None else min(limit, len(source))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rgb, cube = self.source.read(int(i))
        return {**_sample(self.source, rgb, cube), "index": torch.tensor(int(i))}
