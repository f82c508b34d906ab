"""MST (Cai et al., CVPR 2022) for CASSI snapshot compressive imaging: MST-S/M/L.

`model(x, mask)`: x is the shifted-back measurement (b, 28, H, H), mask the shifted 3-D mask
"Phi" (b, 28, H, W'), e.g. 256x310 at 256x256. The network's shift-back hard-codes 256, so inputs
must be square and at most 256 pixels high.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from glmha.archs.base import SNAPSHOT_COMPRESSIVE_IMAGING, ExportSizes, RestorationModel, shape_of, unet_level
from glmha.archs.ms_msa import MASKED_SPECTRAL_ADAPTER
from glmha.archs.spectral_blocks import (
    SHIFT_REFERENCE,
    SpectralUNet,
    block_output,
    shift_back_offsets,
    unet_block_counts,
)
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, GlmhaError, InputShapeError

CALIBRATION_SEED = 7100  # synthetic calibration scenes: seeds 7100, 7101, ...; the mask 7099
REFLECTANCE_LIMIT = 1.5  # KAIST truth is reflectance in [0, 1]; CAVE files hold x65536 integers


@dataclass(frozen=True)
class MSTConfig(StrictConfig):
    dim: int = 28
    stage: int = 2
    num_blocks: tuple[int, ...] = (4, 7, 5)  # MST-L; MST-S is (2, 2, 2), MST-M (2, 4, 4)
    bands: int = 28  # channels of the measurement and of the output (official: fixed 28)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.dim, self.bands) < 1 or self.stage < 0:
            raise ArchitectureError("MST: dim and bands must be >= 1, stage >= 0")
        if len(self.num_blocks) != self.stage + 1 or min(self.num_blocks) < 0:
            raise ArchitectureError("MST: num_blocks needs stage + 1 block counts >= 0")


class MST(SpectralUNet, RestorationModel):
    family = "mst"
    title = "MST"
    calibration_kind = "synthetic CASSI scenes"
    task = SNAPSHOT_COMPRESSIVE_IMAGING
    licence = "MIT"
    attention_adapters = (MASKED_SPECTRAL_ADAPTER,)
    config_class = MSTConfig

    def __init__(self, **kwargs: object) -> None:
        cfg = MSTConfig(**kwargs)  # type: ignore[arg-type]
        super().__init__(cfg.bands, cfg.bands, cfg.dim, cfg.num_blocks, masked=True)
        self.config = cfg

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, bands, H, H), mask (b, dim, H, W'); a missing mask is all zeros, as officially."""
        height, width = x.shape[-2:]
        self.check_input_size(height, width)
        if mask is None:
            mask = x.new_zeros(1, self.config.dim, height, self.mask_width(height))
        elif mask.shape[1] != self.config.dim or mask.shape[2] != height:
            raise InputShapeError(
                f"MST mask must be (b, {self.config.dim}, {height}, W'); got {tuple(mask.shape)}"
            )
        return super().forward(x, mask)

    def mask_width(self, height: int) -> int:
        """Narrowest shifted-mask width W' that every level's shift-back can read (310 at 256)."""
        cfg = self.config
        width = height + shift_back_offsets(height, cfg.dim)[-1]
        while True:
            level_width, ok = width, True
            for level in range(cfg.stage + 1):
                side = height >> level
                channels = cfg.dim << level
                if level_width < side + shift_back_offsets(side, channels)[-1]:
                    ok = False
                    break
                level_width //= 2  # 4x4 stride-2 pad-1 conv
            if ok:
                return width
            width += 1

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        return block_output(csa_name)

    def csa_level(self, name: str) -> str:
        return unet_level(name, self.config.stage)

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Synthetic reflectance scenes measured through a random binary mask as the CASSI simulation
        does: shift_back(y * 2 / C) and the shifted mask Phi (one mask for the batch, as MST uses)."""
        from glmha.data.degrade import seeded_generator
        from glmha.spectral.cassi import mst_inputs
        from glmha.spectral.synthetic import reflectance_cube

        self.check_input_size(side, side)
        bands = self.config.bands
        if self.config.dim != bands:
            raise ArchitectureError(f"MST with dim {self.config.dim} != {bands} bands has no offline "
                                    f"calibration scenes; give some with --calib and --calib-mask")
        cubes = torch.stack([reflectance_cube(side, side, bands, seeded_generator(CALIBRATION_SEED + index))
                             for index in range(count)])  # (count, bands, side, side)
        mask = (torch.rand(side, side, generator=seeded_generator(CALIBRATION_SEED - 1)) > 0.5).float()
        measurement, phi = mst_inputs(cubes, mask)  # (count, bands, side, side), (count, bands, side, W')
        if phi.shape[-1] < self.mask_width(side):
            phi = torch.nn.functional.pad(phi, (0, self.mask_width(side) - phi.shape[-1]))
        return measurement, phi

    def calibration_from_folder(self, folder: Path, *, mask: Path | None, limit: int | None,
                                side: int) -> list[tuple[torch.Tensor, ...]]:
        """CASSI scenes (`.mat`, key `img` or `img_expand`, read as the official test reads the KAIST truth:
        unscaled), centre-cropped to at most 256x256, measured through the centre of the 256x256 mask; the
        model gets shift_back(y * 2 / C) and the shifted mask Phi."""
        from glmha.spectral.cassi import mst_inputs
        from glmha.spectral.readers import SCI_CROP, SciScenes

        if mask is None:
            raise GlmhaError("MST takes CASSI measurements, not images: give a folder of scene .mat files "
                             "and the 256x256 mask.mat (--calib-mask)")
        scenes = SciScenes(folder, mask, training=False, bands=self.output_channels)
        mask2d = torch.from_numpy(scenes.mask())  # (256, 256)
        inputs = []
        for index in range(len(scenes) if limit is None else min(limit, len(scenes))):
            cube = torch.from_numpy(scenes.read(index))  # (bands, H, W), H and W >= 256
            peak = float(cube.max())
            if peak > REFLECTANCE_LIMIT:
                raise GlmhaError(
                    f"{scenes.paths[index]}: values reach {peak:.2f}; calibration scenes must hold reflectance "
                    f"in [0, 1] like the KAIST test truth (CAVE training files store it x65536)"
                )
            size = min(side, SCI_CROP)
            top = (cube.shape[1] - size) // 2
            left = (cube.shape[2] - size) // 2
            crop = cube[None, :, top:top + size, left:left + size]  # (bands, H, W) -> (1, bands, size, size)
            centre = (SCI_CROP - size) // 2
            window = mask2d[centre:, centre:][:size, :size]  # the mask's centre
            measurement, phi = mst_inputs(crop, window)  # (1, bands, s, s), (1, bands, s, s + 2*(bands-1))
            inputs.append((measurement, phi))
        return inputs

    def check_patch_size(self, size: int) -> None:
        if size > SHIFT_REFERENCE:
            raise GlmhaError(f"MST's design hard-codes {SHIFT_REFERENCE}; got {size}")
        super().check_patch_size(size)

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        keys = set(keys)
        masked = "encoder_layers.0.2.weight" in keys or any(".mm.conv1.weight" in k for k in keys)
        return {"embedding.weight", "mapping.weight"} <= keys and masked

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> MSTConfig:
        dim, bands = shape_of(state_dict, "embedding.weight")[:2]
        blocks = unet_block_counts(list(state_dict), "")
        return MSTConfig(dim=dim, stage=len(blocks) - 1, num_blocks=blocks, bands=bands)

    def check_input_size(self, height: int, width: int) -> None:
        factor = 2**self.config.stage
        if height != width or height > 256 or height < factor or height % factor:
            raise InputShapeError(
                f"MST needs square inputs of at most 256x256 with sides divisible by {factor} "
                f"(its shift-back hard-codes 256); got {height}x{width}"
            )

    @property
    def input_channels(self) -> int:
        return self.config.bands

    @property
    def output_channels(self) -> int:
        return self.config.bands

    @property
    def size_multiple(self) -> int:
        return 2**self.config.stage

    @property
    def export_sizes(self) -> ExportSizes:
        """One size, 256x256 unless chosen: the shift-back computes its offsets from the height as plain
        numbers, so a traced program holds them for the size it was traced at."""
        return ExportSizes(multiple=self.size_multiple, static=(SHIFT_REFERENCE, SHIFT_REFERENCE))

    def example_inputs(self, height, width, *, batch=1, device="cpu", dtype=torch.float32):
        self.check_input_size(height, width)
        x = torch.zeros(batch, self.config.bands, height, width, device=device, dtype=dtype)
        mask = torch.zeros(batch, self.config.dim, height, self.mask_width(height), device=device, dtype=dtype)
        return (x, mask)
