"""What every supported architecture provides.

Each family lives in one file with its model class. The class carries its own key-set detector and
its hyperparameter inference (read from tensor shapes), so adding a family means adding one file and
one line in the registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from glmha.config import StrictConfig
from glmha.errors import ArchitectureError


class CSALayer(nn.Module):
    """Base of every channel-wise self-attention module: C channels split head-major into heads."""

    channels: int
    num_heads: int
    # layout of the feature map the layer receives: (b, h, w, C) when True, else (b, C, h, w); declared by
    # each layer kind, never inferred from sizes (a map whose height equals C would fool any guess)
    channels_last: ClassVar[bool] = False

    @property
    def head_dim(self) -> int:
        return self.channels // self.num_heads

    def token_grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(h, w) of an input feature map of this shape."""
        return (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])


class RestorationModel(nn.Module):
    """Base of the project's model classes: a config, detection and inference from state dicts."""

    family: ClassVar[str]
    title: ClassVar[str]
    config_class: ClassVar[type[StrictConfig]]
    calibration_kind: ClassVar[str] = "inputs"  # what calibration_samples makes, for messages
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
        """Raise InputShapeError when the model cannot take an image of this size."""
        raise NotImplementedError

    @property
    def input_channels(self) -> int:
        raise NotImplementedError

    @property
    def output_channels(self) -> int:
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Whole images are padded to a multiple of this before the forward pass (1: any size)."""
        return 1

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

    def csa_layers(self) -> list[tuple[str, CSALayer]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CSALayer)]


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
