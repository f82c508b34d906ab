"""Restormer (Zamir et al., CVPR 2022): MDTA channel-wise attention in a 4-level U-Net.

Re-implemented from the published equations; parameter names and shapes follow the official
state dicts so they load strictly. Variants: WithBias / BiasFree LayerNorm, any channel count,
the dual-pixel defocus model (6 input channels, a skip conv, no image residual).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import IMAGE_RESTORATION, RestorationModel, count_indices, shape_of
from glmha.archs.mdta import MDTA_ADAPTER, RestormerAttention
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError

LEVELS = 4  # three down-samplings, so H and W must be multiples of 8
LAYERNORM_TYPES = ("WithBias", "BiasFree")


@dataclass(frozen=True)
class RestormerConfig(StrictConfig):
    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    dual_pixel_task: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.num_blocks) != LEVELS or len(self.heads) != LEVELS:
            raise ArchitectureError("Restormer: num_blocks and heads need 4 entries each")
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ArchitectureError(f"Restormer: layernorm_type must be one of {LAYERNORM_TYPES}")
        if min(self.num_blocks) < 0 or self.num_refinement_blocks < 0:
            raise ArchitectureError("Restormer: block counts must be >= 0")
        if min(self.inp_channels, self.out_channels, self.dim, *self.heads) < 1:
            raise ArchitectureError("Restormer: channels, dim and heads must be >= 1")
        widths = [self.dim * 2**level for level in range(LEVELS)] + [2 * self.dim]
        for width, heads in zip(widths, [*self.heads, self.heads[0]], strict=True):
            if width % heads:
                raise ArchitectureError(f"Restormer: {width} channels do not split into {heads} heads")
        if self.dim % 2:
            raise ArchitectureError("Restormer: dim must be even (the down-samplers halve it)")


class LayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels (eps 1e-5, biased variance).

    The BiasFree variant scales by 1/sqrt(var + eps) without subtracting the mean, exactly as the
    official model does; a textbook LayerNorm there gives a different function.
    """

    def __init__(self, channels: int, layernorm_type: str) -> None:
        super().__init__()
        self.body = _LayerNormParams(channels, with_bias=layernorm_type == "WithBias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.body.weight.view(1, -1, 1, 1)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        if self.body.bias is None:
            return x / torch.sqrt(var + 1e-5) * weight
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * weight + self.body.bias.view(1, -1, 1, 1)


class _LayerNormParams(nn.Module):
    """Holds the weights under the official names `body.weight` / `body.bias`."""

    def __init__(self, channels: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if with_bias else None


class GatedDconvFeedForward(nn.Module):
    """GDFN: 1x1 to 2F, depthwise 3x3, GELU(x1) * x2, 1x1 back to C."""

    def __init__(self, channels: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """x + attention(LN(x)), then + feed-forward(LN(x)); relatives swap the attention or the feed-forward."""

    def __init__(self, channels: int, heads: int, expansion: float, bias: bool, ln: str, *,
                 attention: type[nn.Module] = RestormerAttention,
                 feed_forward: type[nn.Module] = GatedDconvFeedForward) -> None:
        super().__init__()
        self.norm1 = LayerNorm(channels, ln)
        self.attn = attention(channels, heads, bias)
        self.norm2 = LayerNorm(channels, ln)
        self.ffn = feed_forward(channels, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Resample(nn.Module):
    """3x3 conv then PixelUnshuffle (down: C -> 2C at half size) or PixelShuffle (up: C -> C/2)."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__()
        out = channels // 2 if down else channels * 2
        shuffle = nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2)
        self.body = nn.Sequential(nn.Conv2d(channels, out, 3, padding=1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(RestorationModel):
    family = "restormer"
    title = "Restormer"
    calibration_kind = "sample photographs"
    config_class = RestormerConfig
    task = IMAGE_RESTORATION
    downsamplings = 3
    licence = "Academic Public License (non-commercial)"
    attention_adapters = (MDTA_ADAPTER,)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = RestormerConfig(**kwargs)  # type: ignore[arg-type]
        dim = cfg.dim

        def stage(channels: int, heads: int, blocks: int) -> nn.Sequential:
            return nn.Sequential(*[
                TransformerBlock(channels, heads, cfg.ffn_expansion_factor, cfg.bias, cfg.layernorm_type)
                for _ in range(blocks)
            ])

        self.patch_embed = _PatchEmbed(cfg.inp_channels, dim)
        self.encoder_level1 = stage(dim, cfg.heads[0], cfg.num_blocks[0])
        self.down1_2 = _Resample(dim, down=True)
        self.encoder_level2 = stage(dim * 2, cfg.heads[1], cfg.num_blocks[1])
        self.down2_3 = _Resample(dim * 2, down=True)
        self.encoder_level3 = stage(dim * 4, cfg.heads[2], cfg.num_blocks[2])
        self.down3_4 = _Resample(dim * 4, down=True)
        self.latent = stage(dim * 8, cfg.heads[3], cfg.num_blocks[3])
        self.up4_3 = _Resample(dim * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=cfg.bias)
        self.decoder_level3 = stage(dim * 4, cfg.heads[2], cfg.num_blocks[2])
        self.up3_2 = _Resample(dim * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=cfg.bias)
        self.decoder_level2 = stage(dim * 2, cfg.heads[1], cfg.num_blocks[1])
        self.up2_1 = _Resample(dim * 2, down=False)
        # level 1 has no reduce conv: the decoder and refinement run at 2*dim channels
        self.decoder_level1 = stage(dim * 2, cfg.heads[0], cfg.num_blocks[0])
        self.refinement = stage(dim * 2, cfg.heads[0], cfg.num_refinement_blocks)
        if cfg.dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=cfg.bias)
        self.output = nn.Conv2d(dim * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        embedded = self.patch_embed(inp_img)
        enc1 = self.encoder_level1(embedded)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.decoder_level3(dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.decoder_level2(dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self.refinement(dec1)
        if self.config.dual_pixel_task:
            return self.output(dec1 + self.skip_conv(embedded))
        return self.output(dec1) + inp_img

    def csa_level(self, name: str) -> str:
        group = name.split(".")[0]
        if group == "latent":
            return "bottleneck"
        if group == "refinement":
            return "1"
        return group[-1]  # encoder_level2 / decoder_level2 -> "2"

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        keys = set(keys)
        return {"patch_embed.proj.weight", "down1_2.body.0.weight", "output.weight"} <= keys

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> RestormerConfig:
        keys = list(state_dict)
        dim, inp_channels = shape_of(state_dict, "patch_embed.proj.weight")[:2]
        out_channels = shape_of(state_dict, "output.weight")[0]
        groups = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
        num_blocks = tuple(count_indices(keys, g) for g in groups)
        refinement = count_indices(keys, "refinement")
        # heads come from the temperature shape; the decoders share them with their encoder level
        head_sources = (
            ("encoder_level1", "decoder_level1", "refinement"),
            ("encoder_level2", "decoder_level2"),
            ("encoder_level3", "decoder_level3"),
            ("latent",),
        )
        heads = []
        for sources in head_sources:
            found = [state_dict[f"{s}.0.attn.temperature"].shape[0]
                     for s in sources if f"{s}.0.attn.temperature" in state_dict]
            heads.append(found[0] if found else 1)
        hidden = {}
        widths = (dim, 2 * dim, 4 * dim, 8 * dim, 2 * dim)
        for group, width in zip((*groups, "decoder_level1"), widths, strict=True):
            key = f"{group}.0.ffn.project_out.weight"
            if key in state_dict:
                hidden[width] = shape_of(state_dict, key)[1]
        expansion = _expansion_factor(hidden)
        any_block = next((k for k in keys if k.endswith(".norm1.body.weight")), None)
        with_bias = any_block is None or any_block.replace(".weight", ".bias") in state_dict
        return RestormerConfig(
            inp_channels=inp_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=refinement,
            heads=tuple(heads),
            ffn_expansion_factor=expansion,
            bias="output.bias" in state_dict,
            layernorm_type="WithBias" if with_bias else "BiasFree",
            dual_pixel_task="skip_conv.weight" in state_dict,
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs, in [0, 1]: grey models get the luminance,
        dual-pixel models the same view twice."""
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        rgb = training_crops(side, count)  # (count, 3, side, side)
        if self.config.inp_channels == 6 and self.config.dual_pixel_task:
            return (torch.cat([rgb, rgb], dim=1),)
        return self.grey_or_rgb(rgb)

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        parent, _, leaf = csa_name.rpartition(".")
        if leaf != "attn":
            raise ArchitectureError(f"{csa_name} is not the attention of a Restormer transformer block")
        return parent, False  # TransformerBlock returns x + attn + ffn: the block output itself


def _expansion_factor(hidden_by_width: dict[int, int]) -> float:
    """Recover ffn_expansion_factor f from hidden = int(width * f) observed at several widths.

    Any f in the intersection of [h/w, (h+1)/w) rebuilds the same shapes; prefer the published 2.66,
    else the number with the fewest decimals.
    """
    if not hidden_by_width:
        return 2.66

    def fits(f: float) -> bool:
        return all(int(w * f) == h for w, h in hidden_by_width.items())

    if fits(2.66):
        return 2.66
    low = max(h / w for w, h in hidden_by_width.items())
    for decimals in range(7):
        scale = 10**decimals
        candidate = math.ceil(low * scale) / scale
        for f in (candidate, candidate + 1 / scale):
            if fits(f):
                return f
    raise ArchitectureError(
        "Restormer: feed-forward widths "
        f"{dict(sorted(hidden_by_width.items()))} fit no single ffn_expansion_factor"
    )
