"""One model applied to one input: device, precision, padding to the model's multiple, whole or tiled.

Precision is autocast, not a cast of the weights: matrix products and convolutions run in bf16/fp16 while
normalisations, softmax and reductions stay in float32, as PyTorch's autocast lists decide. A model cast to
half precision wholesale loses LayerNorm and attention-temperature accuracy, and the saving in weight memory is
irrelevant next to the activations of a large image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from glmha.archs import RestorationModel
from glmha.errors import GlmhaError
from glmha.restore.tiling import TileSettings, crop_to, pad_to_multiple, run_tiled

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise GlmhaError(f"--precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return PRECISIONS[name]


@dataclass
class Restorer:
    """`restorer(inputs)` -> the model's float32 output on the CPU, for the forward arguments `inputs` (batch
    first, any size the padding can fix). `tiles` None runs whole images."""

    model: RestorationModel
    device: torch.device
    precision: str = "fp32"
    tiles: TileSettings | None = None

    def __post_init__(self) -> None:
        self.dtype = precision_dtype(self.precision)
        if self.tiles is not None:
            self.tiles.check(self.model.size_multiple)
        self.model = self.model.to(self.device).eval()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def __call__(self, inputs: tuple[torch.Tensor, ...],
                 on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        inputs = tuple(x.to(self.device) for x in inputs)
        with torch.inference_mode(), self._autocast():
            if len(inputs) > 1:  # several forward arguments (a measurement and its mask): fixed sizes, no tiles
                if self.tiles is not None:
                    raise GlmhaError(f"--tile is for models that take one image; {self.model.title} takes "
                                     f"{len(inputs)} inputs of a fixed size")
                out = self.model(*inputs)
            else:
                padded, size = pad_to_multiple(inputs[0], self.model.size_multiple)  # (1, C, H', W')
                if self.tiles is None:
                    self.model.check_input_size(*padded.shape[-2:])
                    out = self.model(padded)
                else:
                    out = run_tiled(self.model, padded, self.tiles, multiple=self.model.size_multiple,
                                    on_tile=on_tile)
                out = crop_to(out, size)  # (1, C_out, H, W)
        return out.float().cpu()
