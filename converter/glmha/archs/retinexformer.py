"""Retinexformer (Cai et al., ICCV 2023): one-stage Retinex-based transformer for low-light enhancement.

Each of the `stage` single-stage models estimates an illumination feature and a 3-channel illumination
map from the image and its channel mean, lights the image up (img * map + img) and restores it with a
2-level MST-style U-Net whose attention is IG-MSA: MS-MSA with V multiplied channel by channel by the
level's illumination feature (down-sampled per level by its own 4x4 stride-2 conv).

Re-implemented from the published description; parameter names and shapes follow the official state
dicts (`caiyuanhao1998/Retinexformer`, `basicsr/models/archs/RetinexFormer_arch.py`, MIT licence,
(c) 2023 Yuanhao Cai) so they load strictly. H and W must be multiples of 4: the official test script
pads outside the model, and so does glmha (`size_multiple`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from glmha.archs.base import IMAGE_RESTORATION, RestorationModel, count_indices, shape_of, unet_level
from glmha.archs.ms_msa import GLMHASpectralAttention, SpectralAdapter
from glmha.archs.spectral_blocks import (
    PreNorm,
    SpectralAttention,
    SpectralFeedForward,
    block_output,
    unet_block_counts,
)
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, InputShapeError
from glmha.layers import CSALayer

LEVELS = 2  # the official RetinexFormer hard-codes two down-samplings per stage
IMAGE_CHANNELS = 3  # the estimator reads RGB + its mean (4 channels) and returns a 3-channel map
ESTIMATOR_GROUPS = 4  # groups of the estimator's 5x5 conv (the official n_fea_in)
# darkening of the calibration photographs, cycled by sample index: low = scale * clean ** gamma
DARK_SCALES = (0.1, 0.15, 0.2, 0.25, 0.3)
DARK_GAMMAS = (1.4, 1.8, 2.2)


@dataclass(frozen=True)
class RetinexformerConfig(StrictConfig):
    in_channels: int = 3
    out_channels: int = 3
    n_feat: int = 40
    stage: int = 1
    num_blocks: tuple[int, ...] = (1, 2, 2)  # level 1, level 2, bottleneck (the decoder mirrors the encoder)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.in_channels != IMAGE_CHANNELS or self.out_channels != IMAGE_CHANNELS:
            raise ArchitectureError("Retinexformer: in_channels and out_channels must be 3 (RGB illumination "
                                    "map and image residual)")
        if self.n_feat < ESTIMATOR_GROUPS or self.n_feat % ESTIMATOR_GROUPS:
            raise ArchitectureError("Retinexformer: n_feat must be a positive multiple of 4 (the illumination "
                                    "estimator's 5x5 conv has 4 groups)")
        if self.stage < 1:
            raise ArchitectureError("Retinexformer: stage must be >= 1")
        if len(self.num_blocks) != LEVELS + 1 or min(self.num_blocks) < 0:
            raise ArchitectureError("Retinexformer: num_blocks needs 3 block counts >= 0 "
                                    "(level 1, level 2, bottleneck)")


class IlluminationGuidedAttention(SpectralAttention):
    """IG-MSA: MS-MSA whose V is multiplied by the illumination feature before the attention; the
    positional branch still reads the unscaled V. Inputs and output channels-last (b, h, w, C)."""

    def forward(self, x_in: torch.Tensor, illu: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x_in and illu (b, h, w, C)."""
        b, h, w, c = x_in.shape
        x = x_in.reshape(b, h * w, c)  # (b, N, C)
        v_inp = self.to_v(x)  # (b, N, C)
        guide = illu.reshape(b, h * w, c)  # (b, N, C)
        out = self._attend(self.to_k(x), self.to_q(x), v_inp * guide, b)  # (b, N, C)
        return out.view(b, h, w, c) + self._positional(v_inp, b, h, w)


class GLMHAIlluminationGuidedAttention(GLMHASpectralAttention):
    """GLMHA for IG-MSA: V_in times the illumination feature (per image) before V' is formed; the positional
    branch keeps the unscaled full-width V_in."""

    def forward(self, x_in: torch.Tensor, illu: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, h, w, c = x_in.shape
        return self._forward(x_in, illu.reshape(b, h * w, c))  # guide (b, N, C)


class IlluminationAdapter(SpectralAdapter):
    """Converts IG-MSA: the MS-MSA adapter with the illumination feature as the guide of V."""

    csa_class = IlluminationGuidedAttention
    glmha_class = GLMHAIlluminationGuidedAttention

    def value_guide(self, layer: CSALayer, *args: torch.Tensor) -> torch.Tensor | None:
        x, illu = args[:2]
        b, h, w, c = x.shape
        return illu.reshape(b, h * w, c)  # (b, h, w, C) -> (b, N, C)


ILLUMINATION_ADAPTER = IlluminationAdapter()


class IlluminationBlocks(nn.Module):
    """IGAB: `num_blocks` x (IG-MSA + residual, pre-normed feed-forward + residual)."""

    def __init__(self, channels: int, head_dim: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([
                IlluminationGuidedAttention(channels, head_dim, channels // head_dim),
                PreNorm(channels, SpectralFeedForward(channels)),
            ])
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, illu: torch.Tensor) -> torch.Tensor:
        """x and illu (b, C, h, w)."""
        x = x.permute(0, 2, 3, 1)  # (b, h, w, C)
        illu = illu.permute(0, 2, 3, 1)  # (b, h, w, C)
        # spectral_blocks.block_output relies on this order: the block's output is ff's input + ff's output
        for attn, ff in self.blocks:
            x = attn(x, illu) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)  # (b, C, h, w)


class IlluminationEstimator(nn.Module):
    """1x1 conv on RGB + channel mean, 5x5 conv in 4 groups (the illumination feature), 1x1 conv to the
    3-channel illumination map."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IMAGE_CHANNELS + 1, n_feat, 1, bias=True)
        self.depth_conv = nn.Conv2d(n_feat, n_feat, 5, padding=2, groups=ESTIMATOR_GROUPS, bias=True)
        self.conv2 = nn.Conv2d(n_feat, IMAGE_CHANNELS, 1, bias=True)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img (b, 3, H, W) -> feature (b, n_feat, H, W), map (b, 3, H, W)."""
        stacked = torch.cat([img, img.mean(dim=1, keepdim=True)], dim=1)  # (b, 4, H, W)
        feature = self.depth_conv(self.conv1(stacked))
        return feature, self.conv2(feature)


class IlluminationUNet(nn.Module):
    """The denoiser: embedding, 2 encoder levels (blocks, feature down conv, illumination down conv),
    bottleneck, decoder (transposed conv, concat with the skip, 1x1 fusion, blocks), mapping + input."""

    def __init__(self, in_dim: int, out_dim: int, dim: int, num_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(in_dim, dim, 3, padding=1, bias=False)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for level in range(LEVELS):
            self.encoder_layers.append(nn.ModuleList([
                IlluminationBlocks(width, dim, num_blocks[level]),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            ]))
            width *= 2
        self.bottleneck = IlluminationBlocks(width, dim, num_blocks[-1])
        self.decoder_layers = nn.ModuleList()
        for level in range(LEVELS):
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2),
                nn.Conv2d(width, width // 2, 1, bias=False),
                IlluminationBlocks(width // 2, dim, num_blocks[LEVELS - 1 - level]),
            ]))
            width //= 2
        self.mapping = nn.Conv2d(dim, out_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, illu: torch.Tensor) -> torch.Tensor:
        fea = self.embedding(x)
        skips, illus = [], []
        for blocks, down, illu_down in self.encoder_layers:
            fea = blocks(fea, illu)
            skips.append(fea)
            illus.append(illu)
            fea = down(fea)
            illu = illu_down(illu)
        fea = self.bottleneck(fea, illu)
        for i, (upsample, fuse, blocks) in enumerate(self.decoder_layers):
            level = LEVELS - 1 - i
            fea = fuse(torch.cat([upsample(fea), skips[level]], dim=1))
            fea = blocks(fea, illus[level])
        return self.mapping(fea) + x


class RetinexStage(nn.Module):
    """One single-stage Retinexformer: estimate the illumination, light the image up, restore it."""

    def __init__(self, cfg: RetinexformerConfig) -> None:
        super().__init__()
        self.estimator = IlluminationEstimator(cfg.n_feat)
        self.denoiser = IlluminationUNet(cfg.in_channels, cfg.out_channels, cfg.n_feat, cfg.num_blocks)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feature, light = self.estimator(img)
        return self.denoiser(img * light + img, feature)


class Retinexformer(RestorationModel):
    family = "retinexformer"
    title = "Retinexformer"
    calibration_kind = "darkened sample photographs"
    licence = "MIT"
    config_class = RetinexformerConfig
    task = IMAGE_RESTORATION
    downsamplings = LEVELS
    channel_fields = ("in_channels", "out_channels")
    attention_adapters = (ILLUMINATION_ADAPTER,)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = RetinexformerConfig(**kwargs)  # type: ignore[arg-type]
        self.body = nn.Sequential(*[RetinexStage(cfg) for _ in range(cfg.stage)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != IMAGE_CHANNELS:
            raise InputShapeError(f"Retinexformer takes (b, 3, H, W) RGB images; got {tuple(x.shape)}")
        self.check_input_size(x.shape[2], x.shape[3])
        return self.body(x)

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        return block_output(csa_name)

    def csa_level(self, name: str) -> str:
        return unet_level(name, LEVELS)

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        keys = set(keys)
        return {"body.0.estimator.conv1.weight", "body.0.denoiser.embedding.weight",
                "body.0.denoiser.mapping.weight"} <= keys

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> RetinexformerConfig:
        keys = list(state_dict)
        n_feat, estimator_in = shape_of(state_dict, "body.0.estimator.conv1.weight")[:2]
        if estimator_in != IMAGE_CHANNELS + 1:
            raise ArchitectureError(f"Retinexformer: the illumination estimator must read 4 channels "
                                    f"(RGB + mean), found {estimator_in}")
        levels = count_indices(keys, "body.0.denoiser.encoder_layers")
        if levels != LEVELS:
            raise ArchitectureError(f"Retinexformer: expected {LEVELS} encoder levels, found {levels}")
        stage = count_indices(keys, "body")
        blocks = unet_block_counts(keys, "body.0.denoiser.")
        for index in range(1, stage):
            other = unet_block_counts(keys, f"body.{index}.denoiser.")
            if other != blocks:
                raise ArchitectureError(f"Retinexformer: stage {index} has blocks {other} but stage 0 has "
                                        f"{blocks}; the official model builds every stage alike")
        return RetinexformerConfig(
            in_channels=shape_of(state_dict, "body.0.denoiser.embedding.weight")[1],
            out_channels=shape_of(state_dict, "body.0.denoiser.mapping.weight")[0],
            n_feat=n_feat,
            stage=stage,
            num_blocks=blocks,
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs (never the held-out ones), darkened to
        scale * clean ** gamma with scale 0.1..0.3 and gamma 1.4..2.2 cycled by index. Why dark: the
        model is trained and run on under-exposed captures (LOL, SID, ...: raw [0, 1] pixels with means
        of about 0.05-0.2), and its illumination map multiplies the image, so well-exposed photographs
        would calibrate the attention on activations it never sees. More samples than photographs reuse
        them with another darkening."""
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        samples = []
        for index, crop in enumerate(training_crops(side, count)):
            scale, gamma = DARK_SCALES[index % len(DARK_SCALES)], DARK_GAMMAS[index % len(DARK_GAMMAS)]
            samples.append(scale * crop.pow(gamma))
        return (torch.stack(samples),)  # (count, 3, side, side)
