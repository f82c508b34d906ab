"""What every supported architecture provides: the plugin interface of a family.

Each family lives in one module of glmha.archs with its model class, which is the plugin: key-set
detection, hyperparameter inference from tensor shapes, the task it solves (so data pipelines and
metrics know what it takes), example and calibration inputs, distillation feature taps, and the
adapters of its attention kinds (glmha.archs.adapter). Nothing outside glmha.archs names a family;
adding one is one module and one line in glmha.archs' registry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, GlmhaError, InputShapeError
from glmha.layers import CSALayer, export_grid
from glmha.record import ORIGINAL, ModelRecord


@dataclass(frozen=True)
class Task:
    """What a family's models do, as data pipelines, metrics and messages see it."""

    name: str
    data_forms: tuple[str, ...]  # data a recipe may give: "image", "rgb-spectral", "sci" (glmha.distill.engine)
    spectral: bool  # outputs are spectral cubes: spectral metrics (MRAE, RMSE, PSNR, SAM)
    other_data: str  # what to say when a recipe gives another form ({title} is the family's title)


IMAGE_RESTORATION = Task("image restoration", ("image",), False,
                         "{title} restores images; spectral data needs a spectral model")
RGB_TO_SPECTRUM = Task("RGB to spectrum", ("rgb-spectral", "image"), True,  # images: pure teacher distillation
                       "{title} reconstructs spectra from RGB; use {{format: ntire2022, ...}} or "
                       "{{format: synthetic, kind: rgb, ...}}")
SNAPSHOT_COMPRESSIVE_IMAGING = Task("snapshot compressive imaging", ("sci",), True,
                                    "{title} takes CASSI measurements and masks; use {{format: sci, ...}} or "
                                    "{{format: synthetic, kind: sci, ...}}")


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class ExportSizes:
    """Which input sizes a program exported from a model (torch.export, ONNX) takes; its batch is always
    dynamic. Tracing keeps a side symbolic only where the forward pass computes with it symbolically, so
    this can be narrower than what the PyTorch model takes (check_input_size)."""

    multiple: int  # height and width stay dynamic in multiples of this
    static: tuple[int, int] | None = None  # or: one (height, width), fixed at export (this one by default)


class RestorationModel(nn.Module):
    """Base of the project's model classes: a config, detection and inference from state dicts."""

    family: ClassVar[str]
    title: ClassVar[str]
    config_class: ClassVar[type[StrictConfig]]
    task: ClassVar[Task] = IMAGE_RESTORATION
    calibration_kind: ClassVar[str] = "inputs"  # what calibration_samples makes, for messages
    selection_metric: ClassVar[str] = "psnr"  # what the official training keeps its best model by
    licence: ClassVar[str] = ""  # of the official code and weights, for README and reports
    attention_adapters: ClassVar[tuple[Any, ...]] = ()  # AttentionAdapter of each CSA layer class used
    channel_fields: ClassVar[tuple[str, str]] = ("inp_channels", "out_channels")  # config fields of C in / out
    downsamplings: ClassVar[int] = 0  # 2x down-samplings of the U-Net: sides must be multiples of 2**this
    record: ModelRecord = ORIGINAL  # replaced (never mutated) by glmha.load and by conversions
    config: Any

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        """Cheap test on key names: could this state dict belong to the family?"""
        raise NotImplementedError

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> StrictConfig:
        """Read every hyperparameter from tensor shapes and counts."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: StrictConfig) -> RestorationModel:
        return cls(**config.to_dict())

    def check_input_size(self, height: int, width: int) -> None:
        """Raise InputShapeError when the model cannot take an image of this size; by default a U-Net's
        rule: sides that are positive multiples of `size_multiple`."""
        multiple = self.size_multiple
        if height < multiple or width < multiple or height % multiple or width % multiple:
            count = multiple.bit_length() - 1
            raise InputShapeError(f"{self.title} needs height and width that are multiples of {multiple} "
                                  f"({NUMBER_WORDS.get(count, count)} 2x down-samplings); got {height}x{width}")

    @property
    def input_channels(self) -> int:
        return getattr(self.config, self.channel_fields[0])

    @property
    def output_channels(self) -> int:
        return getattr(self.config, self.channel_fields[1])

    @property
    def size_multiple(self) -> int:
        """Whole images are padded to a multiple of this before the forward pass (1: any size)."""
        return 2**self.downsamplings

    @property
    def export_sizes(self) -> ExportSizes:
        """Input sizes of an exported program (glmha.deploy): height and width dynamic in multiples of
        `size_multiple` and, in converted models, of the grid GLMHA layers pool to at every level."""
        return ExportSizes(multiple=math.lcm(self.size_multiple, 2**self.downsamplings * export_grid(self)))

    def grey_or_rgb(self, rgb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Offline calibration photographs (b, 3, h, w) as this model's input: RGB, or the luminance for a
        grey model; other channel counts have no offline images."""
        if self.input_channels == 3:
            return (rgb,)
        if self.input_channels == 1:
            return (rgb.mean(dim=1, keepdim=True),)
        raise ArchitectureError(f"{self.title} with {self.input_channels} input channels has no offline "
                                f"calibration images; give some with --calib")

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        """Where the output of the block around a CSA layer can be observed by a forward hook:
        (module name, whether that module's input must be added to its output, for a residual
        that lives outside any module). Feature distillation compares these points."""
        raise NotImplementedError

    def example_inputs(
        self, height: int, width: int, *, batch: int = 1, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, ...]:
        """Zero tensors shaped like the forward arguments for an image of this size."""
        self.check_input_size(height, width)
        return (torch.zeros(batch, self.input_channels, height, width, device=device, dtype=dtype),)

    def csa_level(self, name: str) -> str:
        """Depth level of a CSA layer ("1", "2", ... or "bottleneck"), as in the paper's Table 9."""
        raise NotImplementedError

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """`count` offline inputs of side x side, batched as the forward arguments, shaped and scaled as
        the family's official pipeline feeds the model: what budget planning measures on when the user
        gives no calibration data. Deterministic."""
        raise NotImplementedError

    def calibration_from_folder(self, folder: Path, *, mask: Path | None, limit: int | None,
                                side: int) -> list[tuple[torch.Tensor, ...]]:
        """Input tuples for `model(*inputs)` read from a folder the user gives (`--calib`), prepared as the
        family's official pipeline prepares its inputs: here images in [0, 1], centre crops of at most
        `side` in the model's size multiple."""
        if mask is not None:
            raise GlmhaError(f"a calibration mask is for CASSI models only; this model is {self.title}")
        from glmha.data.image_folder import read_calibration_images

        images = read_calibration_images(folder, self.input_channels, multiple=self.size_multiple,
                                         max_side=side, limit=limit)
        return [(image,) for image in images]

    def check_patch_size(self, size: int) -> None:
        """Raise GlmhaError when training patches of size x size cannot be used (default: the input rule)."""
        self.check_input_size(size, size)

    def csa_layers(self) -> list[tuple[str, CSALayer]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CSALayer)]

    def replace_layers(self, replacements: Mapping[str, nn.Module]) -> None:
        """Put each module in place of the named one, through its parent."""
        for name, new in replacements.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent_name), child, new)


def unet_level(name: str, stage: int) -> str:
    """Level of a layer inside an MST-style U-Net (encoder_layers.l / decoder_layers.i / bottleneck)."""
    if match := re.search(r"encoder_layers\.(\d+)\.", name):
        return str(int(match.group(1)) + 1)
    if match := re.search(r"decoder_layers\.(\d+)\.", name):
        return str(stage - int(match.group(1)))
    return "bottleneck"


def count_indices(keys: Iterable[str], prefix: str) -> int:
    """Number of consecutive children `prefix.0`, `prefix.1`, ... present in the keys."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    count = 0
    while count in found:
        count += 1
    if found and count != len(found):
        raise ArchitectureError(f"indices under '{prefix}' are not consecutive: {sorted(found)}")
    return count


def shape_of(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ArchitectureError(f"missing key '{key}'") from None
