"""MST++ (Cai et al., NTIRE 2022 winner): RGB to 31-band spectral reconstruction.

`stage` MST U-Nets in sequence between a 3x3 input and output conv, with a global residual; the
input is reflect-padded to a multiple of 8 and the output cropped back. The official code ignores
`n_feat` inside its stages (hard-coded 31); here the stages use `n_feat`, which is the same model
for every published checkpoint (n_feat = 31).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import RGB_TO_SPECTRUM, ExportSizes, RestorationModel, count_indices, shape_of, unet_level
from glmha.archs.ms_msa import SPECTRAL_ADAPTER
from glmha.archs.spectral_blocks import SpectralUNet, block_output, unet_block_counts
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, InputShapeError
from glmha.layers import export_grid

PAD_MULTIPLE = 8
CALIBRATION_SEED = 7000  # synthetic calibration scenes: seeds 7000, 7001, ...


@dataclass(frozen=True)
class MSTPlusPlusConfig(StrictConfig):
    in_channels: int = 3
    out_channels: int = 31
    n_feat: int = 31
    stage: int = 3
    stage_blocks: tuple[int, ...] = (1, 1, 1)  # blocks per level of each inner MST (official: fixed)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.in_channels, self.out_channels, self.n_feat, self.stage) < 1:
            raise ArchitectureError("MST++: channels and stage must be >= 1")
        if self.out_channels != self.n_feat:
            raise ArchitectureError("MST++: out_channels must equal n_feat (global residual)")
        if not 1 <= len(self.stage_blocks) <= 4 or min(self.stage_blocks) < 0:
            raise ArchitectureError("MST++: stage_blocks needs 1 to 4 block counts >= 0")


class MSTPlusPlus(RestorationModel):
    family = "mst_plus_plus"
    title = "MST++"
    calibration_kind = "synthetic RGB scenes"
    task = RGB_TO_SPECTRUM
    channel_fields = ("in_channels", "out_channels")
    selection_metric = "mrae"  # NTIRE 2022's ranking metric, which the official training keeps its best by
    licence = "MIT"
    attention_adapters = (SPECTRAL_ADAPTER,)
    config_class = MSTPlusPlusConfig

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = MSTPlusPlusConfig(**kwargs)  # type: ignore[arg-type]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.n_feat, 3, padding=1, bias=False)
        self.body = nn.Sequential(*[
            SpectralUNet(cfg.n_feat, cfg.n_feat, cfg.n_feat, cfg.stage_blocks, masked=False)
            for _ in range(cfg.stage)
        ])
        self.conv_out = nn.Conv2d(cfg.n_feat, cfg.out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = (PAD_MULTIPLE - height % PAD_MULTIPLE) % PAD_MULTIPLE
        pad_w = (PAD_MULTIPLE - width % PAD_MULTIPLE) % PAD_MULTIPLE
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        x = self.conv_in(x)
        out = self.conv_out(self.body(x)) + x
        return out[:, :, :height, :width]

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        return block_output(csa_name)

    def csa_level(self, name: str) -> str:
        return unet_level(name, len(self.config.stage_blocks) - 1)

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Synthetic scenes as the synthetic camera writes them (sRGB, 8 bit), then one min-max per image
        as the NTIRE 2022 reader normalises its RGB."""
        from glmha.data.degrade import seeded_generator
        from glmha.spectral.synthetic import camera_response, capture_rgb, default_wavelengths, reflectance_cube

        self.check_input_size(side, side)
        if self.config.in_channels != 3:
            raise ArchitectureError(f"MST++ with {self.config.in_channels} input channels has no offline "
                                    f"calibration scenes; give some with --calib")
        bands = self.config.out_channels
        response = camera_response(default_wavelengths(bands))
        images = []
        for index in range(count):
            cube = reflectance_cube(side, side, bands, seeded_generator(CALIBRATION_SEED + index))
            rgb = capture_rgb(cube, response)  # (3, side, side)
            images.append((rgb - rgb.min()) / (rgb.max() - rgb.min()).clamp_min(1e-12))
        return (torch.stack(images),)

    def calibration_from_folder(self, folder: Path, *, mask: Path | None, limit: int | None,
                                side: int) -> list[tuple[torch.Tensor, ...]]:
        """The images as every family reads them, then one global min-max per image (the NTIRE 2022 reader's
        normalisation)."""
        from glmha.data.image_folder import list_images
        from glmha.spectral.readers import minmax_normalise

        inputs = super().calibration_from_folder(folder, mask=mask, limit=limit, side=side)
        names = list_images(folder)
        return [(torch.from_numpy(minmax_normalise(image.numpy(), what=f"calibration image {path}")),)
                for (image,), path in zip(inputs, names, strict=False)]

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        return {"conv_in.weight", "conv_out.weight", "body.0.embedding.weight"} <= set(keys)

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> MSTPlusPlusConfig:
        keys = list(state_dict)
        n_feat, in_channels = shape_of(state_dict, "conv_in.weight")[:2]
        return MSTPlusPlusConfig(
            in_channels=in_channels,
            out_channels=shape_of(state_dict, "conv_out.weight")[0],
            n_feat=n_feat,
            stage=count_indices(keys, "body"),
            stage_blocks=unet_block_counts(keys, "body.0."),
        )

    @property
    def export_sizes(self) -> ExportSizes:
        """Multiples of 8 (times the GLMHA grid, as for every family): the padding depends on height % 8, which
        tracing cannot keep symbolic; at multiples of 8 it pads nothing, for every such size alike."""
        return ExportSizes(multiple=PAD_MULTIPLE * export_grid(self))

    def check_input_size(self, height: int, width: int) -> None:
        # reflect padding needs the pad (up to 7) to be smaller than the side
        for side in (height, width):
            if side < 1 or (PAD_MULTIPLE - side % PAD_MULTIPLE) % PAD_MULTIPLE >= side:
                raise InputShapeError(
                    f"MST++ reflect-pads to a multiple of 8, which needs sides of at least 5 "
                    f"pixels; got {height}x{width}"
                )

