"""What a model's files look like, by the kind of data its task takes (never by family).

- "image": PNG/JPEG/TIFF (8 or 16 bit, grey or RGB) in [0, 1]; the output keeps the input's container and bit
  depth (JPEG inputs are written as PNG: a second lossy compression would undo part of the restoration) and is
  clamped to [0, 1] and rounded as the file stores it; PSNR/SSIM are taken on exactly what is saved.
- "rgb-spectral": RGB image files, min-max normalised over all pixels and channels as the NTIRE 2022 (MST++)
  pipeline does; the cube is clamped to [0, 1] and written as a MATLAB v7.3 file (`cube`, H x W x bands in
  MATLAB) as the official test code saves its predictions; MRAE/RMSE/PSNR/SAM against ground-truth cubes, on
  the saved cube (the official validation scores the raw output: where it leaves [0, 1] the two differ).
- "sci": CASSI test scenes (`.mat`, key `img` / `img_expand`, H x W x bands, reflectance) with the coded
  aperture `--mask`; the measurement is simulated as the official MST test does and the reconstruction is
  written like the spectral cubes but unclamped, as that test saves it. The scene itself is the ground truth
  (`--gt` may name its own folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from glmha.archs import RestorationModel
from glmha.data.image_folder import IMAGE_SUFFIXES
from glmha.errors import GlmhaError
from glmha.metrics import IMAGE_METRICS
from glmha.spectral.metrics import SPECTRAL_METRICS

MAT_SUFFIXES = (".mat",)


@dataclass
class Sample:
    """One input file made ready for the model: `inputs` are the forward arguments, batch 1."""

    path: Path
    inputs: tuple[torch.Tensor, ...]
    details: Any = None  # what writing the output needs to know about the input (its container, bit depth)


@dataclass
class FileKind:
    """Reading inputs, writing outputs and scoring them for one kind of data."""

    model: RestorationModel
    mask: Path | None = None
    input_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    truth_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    metrics: ClassVar[tuple[str, ...]] = IMAGE_METRICS
    tileable: ClassVar[bool] = True
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def check(self) -> None:
        """Fail before any file is read when the model cannot take this kind of file."""
        if self.mask is not None:
            raise GlmhaError(f"--mask is for CASSI models; this model is {self.model.title} "
                             f"({self.model.task.name})")

    def output_path(self, folder: Path, source: Path) -> Path:
        raise NotImplementedError

    def read(self, path: Path) -> Sample:
        raise NotImplementedError

    def write(self, path: Path, output: torch.Tensor, sample: Sample) -> torch.Tensor:
        """Save (1, C, H, W) `output`; return it as saved (rounded and clamped for images), for scoring."""
        raise NotImplementedError

    def read_saved(self, path: Path) -> torch.Tensor:
        """An output written earlier (reruns with --skip-existing score it again)."""
        raise NotImplementedError

    def read_truth(self, path: Path) -> torch.Tensor:
        raise NotImplementedError

    def score(self, output: torch.Tensor, truth: torch.Tensor, source: Path) -> dict[str, float]:
        from glmha.distill.evaluate import metric_functions

        if output.shape != truth.shape:
            raise GlmhaError(f"{source}: ground truth is {_size(truth)} but the output is {_size(output)}")
        functions = metric_functions(self.metrics, self.model.task.spectral)
        return {name: float(fn(output, truth)[0]) for name, fn in functions.items()}


def _size(x: torch.Tensor) -> str:
    return f"{x.shape[1]} x {x.shape[2]}x{x.shape[3]} (channels x HxW)"


def _batched(chw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32)).unsqueeze(0)  # (C, H, W) -> (1, C, H, W)


class ImageFiles(FileKind):
    def check(self) -> None:
        super().check()
        for role, channels in (("input", self.model.input_channels), ("output", self.model.output_channels)):
            if channels not in (1, 3):
                raise GlmhaError(f"this {self.model.title} model has {channels} {role} channels; glmha-restore "
                                 f"reads and writes grey (1) or RGB (3) images")

    def output_path(self, folder: Path, source: Path) -> Path:
        from glmha.restore.files import output_container, output_suffix

        return folder / (source.stem + output_suffix(output_container(_container(source))))

    def read(self, path: Path) -> Sample:
        from glmha.restore.files import read_image_file

        image = read_image_file(path, channels=self.model.input_channels)
        return Sample(path, (_batched(image.pixels.transpose(2, 0, 1)),), image)  # (H, W, C) -> (C, H, W)

    def write(self, path: Path, output: torch.Tensor, sample: Sample) -> torch.Tensor:
        from glmha.restore.files import quantise, write_image_file

        pixels = output[0].permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
        depth = sample.details.bit_depth  # the container follows the output's name (`output_path`)
        write_image_file(path, pixels, bit_depth=depth, container=_container(path))
        return _batched(quantise(pixels, depth).transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)

    def read_saved(self, path: Path) -> torch.Tensor:
        from glmha.restore.files import read_image_file

        return _batched(read_image_file(path, channels=self.model.output_channels).pixels.transpose(2, 0, 1))

    def read_truth(self, path: Path) -> torch.Tensor:
        return self.read_saved(path)


class SpectralFromRGB(FileKind):
    """RGB images in, spectral cubes out (NTIRE 2022 conventions)."""

    truth_suffixes: ClassVar[tuple[str, ...]] = MAT_SUFFIXES
    metrics: ClassVar[tuple[str, ...]] = SPECTRAL_METRICS
    clamp_saved: ClassVar[bool] = True

    def check(self) -> None:
        super().check()
        if self.model.input_channels != 3:
            raise GlmhaError(f"this {self.model.title} model takes {self.model.input_channels} input channels; "
                             f"glmha-restore feeds it RGB images (3)")

    def output_path(self, folder: Path, source: Path) -> Path:
        return folder / (source.stem + ".mat")

    def read(self, path: Path) -> Sample:
        from glmha.restore.files import read_image_file
        from glmha.spectral.readers import minmax_normalise

        rgb = read_image_file(path, channels=3).pixels.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return Sample(path, (_batched(minmax_normalise(rgb, what=str(path))),))

    def write(self, path: Path, output: torch.Tensor, sample: Sample) -> torch.Tensor:
        from glmha.restore.files import write_cube_mat

        if self.clamp_saved:
            output = output.clamp(0.0, 1.0)
        write_cube_mat(path, output[0].numpy())
        return output

    def read_saved(self, path: Path) -> torch.Tensor:
        from glmha.restore.files import read_cube_mat

        return _batched(read_cube_mat(path, bands=self.model.output_channels))

    def read_truth(self, path: Path) -> torch.Tensor:
        return self.read_saved(path)


class CassiScenes(SpectralFromRGB):
    """CASSI test scenes and the coded aperture in, reconstructions out (the official MST test's simulation)."""

    input_suffixes: ClassVar[tuple[str, ...]] = MAT_SUFFIXES
    tileable: ClassVar[bool] = False
    clamp_saved: ClassVar[bool] = False

    def check(self) -> None:
        if self.mask is None:
            raise GlmhaError(f"{self.model.title} reconstructs CASSI measurements: give the coded aperture with "
                             f"--mask mask.mat (key 'mask', 256x256)")

    def _mask(self) -> torch.Tensor:
        if "mask" not in self._cache:
            from glmha.spectral.readers import read_mask

            self._cache["mask"] = torch.from_numpy(read_mask(self.mask, side=None))  # (H, W)
        return self._cache["mask"]

    def read(self, path: Path) -> Sample:
        from glmha.restore.files import read_scene_mat
        from glmha.spectral.cassi import mst_inputs

        scene = _batched(read_scene_mat(path, bands=self.model.output_channels))  # (1, bands, H, W)
        mask = self._mask()
        if tuple(scene.shape[-2:]) != tuple(mask.shape):
            raise GlmhaError(f"{path}: scene is {scene.shape[-2]}x{scene.shape[-1]} but the mask is "
                             f"{mask.shape[0]}x{mask.shape[1]}; CASSI test scenes must match the mask")
        self.model.check_input_size(*scene.shape[-2:])
        return Sample(path, mst_inputs(scene, mask))  # measurement (1, bands, H, W), Phi (1, bands, H, W')


KINDS: dict[str, type[FileKind]] = {"image": ImageFiles, "rgb-spectral": SpectralFromRGB, "sci": CassiScenes}


def file_kind(model: RestorationModel, *, mask: Path | None) -> FileKind:
    """The file handling for `model`'s task, checked against the model."""
    kind = KINDS[model.task.data_forms[0]](model, mask)
    kind.check()
    return kind


def _container(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}[suffix]
