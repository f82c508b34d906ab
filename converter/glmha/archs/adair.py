"""AdaIR (Cui et al., ICLR 2025): all-in-one restoration by frequency mining and modulation, a Restormer U-Net
whose decoder is steered by the degraded image's low- and high-frequency content.

Re-implemented from the published description; parameter names and shapes follow the official state dicts
(c-yn/AdaIR `net/model.py`, `AdaIR(decoder=True)`, 28,784,824 parameters) so they load strictly. The
repository's LICENSE is MIT (© 2024 Yuning Cui); its network file carries Restormer's blocks, which Restormer
publishes under its Academic Public License. Nothing of the official code is copied here.

What differs from Restormer: after the latent stage and after decoder levels 3 and 2, an adaptive frequency
learning block (`fre1/2/3` at 8/4/2 * dim channels, always heads[2] heads) modulates the features y:
* the RGB image is resized to y (bilinear, align_corners=False), projected by a 3x3 conv (`conv1`), and split
  by an FFT mask into a low band (|inverse FFT| of the kept frequencies) and a high band (of the rest). The
  kept band is the centred rectangle of half-sides int(h // 128 * t_h) x int(w // 128 * t_w), with t from a
  per-image sigmoid (`rate_conv` on the global mean): empty unless the map is at least 256 pixels on both
  sides (input sides >= 512 at fre3), so the low band is zero at the usual crop sizes (training uses 128);
* three channel-wise *cross* attentions: high band -> queries against keys/values of y (`channel_cross_l`),
  low band likewise (`channel_cross_h`), then y -> queries against the modulated mix of both (`channel_cross_agg`);
  the mix (`frequency_refine`) gates the high band per channel by the low band's pooled statistics and the low
  band per pixel by the high band's channel max/mean;
* the result is added back: out * para1 + y * para2 (para1 starts at zero, so a fresh block is the identity).
A decoder-less AdaIR (`decoder=False`) has exactly Restormer's keys and computation; it loads as Restormer.

Why the cross attentions stay ordinary modules (glmha leaves them as they are): each is a C x C softmax over
channels, but its keys and values come from another tensor than its queries. glmha's CSA layers and adapters
describe self-attention, one input from which the GLMHA layer forms Q, the calibration vector and the reduced
K', V'; converting these would need a two-input GLMHA layer and its own adapter (weight spectra, refit and
calibration on the key/value input), not a reuse of MDTA's. The transformer blocks' attention is exactly MDTA,
so those layers are RestormerAttention and convert with MDTA_ADAPTER.

Two official modules of each frequency block, `conv` and `score_gen`, are built but never called; they exist
here only so that strict loading succeeds. The frequency blocks read the image through a 3-channel conv
whatever `inp_channels` says, so only RGB AdaIR runs officially and is offered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import IMAGE_RESTORATION, RestorationModel, count_indices, shape_of
from glmha.archs.mdta import MDTA_ADAPTER
from glmha.archs.restormer import LAYERNORM_TYPES, TransformerBlock, _expansion_factor, _PatchEmbed, _Resample
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError

LEVELS = 4  # three down-samplings, so H and W must be multiples of 8
IMAGE_CHANNELS = 3  # the frequency blocks' `conv1` takes the RGB image (official in_dim=3)
BAND_UNIT = 128  # official literal: the kept band's half-side is int(side // 128 * t)
GATE_REDUCTION = 16  # channel gate hidden width: C // 16
RATE_REDUCTION = 8  # rate_conv hidden width: C // 8
MIN_DIM = 8  # fre3 runs at 2 * dim channels and needs 2 * dim // 16 >= 1 gate channels
DEFAULT_HEADS = (1, 2, 4, 8)  # what a level without blocks reports: its heads leave no trace in the weights
FREQUENCY_BLOCKS = ("fre1", "fre2", "fre3")  # after the latent, decoder level 3, decoder level 2

GROUP_LEVELS = {
    "encoder_level1": "1", "decoder_level1": "1", "refinement": "1",
    "encoder_level2": "2", "decoder_level2": "2",
    "encoder_level3": "3", "decoder_level3": "3",
    "latent": "bottleneck",
}


@dataclass(frozen=True)
class AdaIRConfig(StrictConfig):
    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.num_blocks) != LEVELS or len(self.heads) != LEVELS:
            raise ArchitectureError("AdaIR: num_blocks and heads need 4 entries each")
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ArchitectureError(f"AdaIR: layernorm_type must be one of {LAYERNORM_TYPES}")
        if min(self.num_blocks) < 0 or self.num_refinement_blocks < 0:
            raise ArchitectureError("AdaIR: block counts must be >= 0")
        if min(self.inp_channels, self.out_channels, self.dim, *self.heads) < 1:
            raise ArchitectureError("AdaIR: channels, dim and heads must be >= 1")
        if self.inp_channels != IMAGE_CHANNELS:
            raise ArchitectureError(f"AdaIR: inp_channels must be {IMAGE_CHANNELS} (the frequency blocks read the "
                                    f"RGB image through a 3-channel conv); got {self.inp_channels}")
        if self.out_channels != self.inp_channels:
            raise ArchitectureError("AdaIR: out_channels must equal inp_channels (the input image is added "
                                    "to the output)")
        if self.dim % 2:
            raise ArchitectureError("AdaIR: dim must be even (the down-samplers halve it)")
        if self.dim < MIN_DIM:
            raise ArchitectureError(f"AdaIR: dim must be >= {MIN_DIM} (fre3's channel gate has 2*dim // 16 "
                                    f"hidden channels); got dim {self.dim}")
        dim, heads = self.dim, self.heads
        split = [(dim, heads[0]), (2 * dim, heads[0]), (2 * dim, heads[1]), (4 * dim, heads[2]),
                 (8 * dim, heads[3]), (2 * dim, heads[2])]  # the last: fre3's cross attentions
        for width, count in split:
            if width % count:
                raise ArchitectureError(f"AdaIR: {width} channels do not split into {count} heads")
        factor = self.ffn_expansion_factor
        if not math.isfinite(factor) or int(dim * factor) < 1:
            raise ArchitectureError(f"AdaIR: ffn_expansion_factor {factor} leaves no hidden channel "
                                    f"at {dim} channels")


# -- the adaptive frequency learning block ------------------------------------------------------------------


class ChannelCrossAttention(nn.Module):
    """softmax(temperature * Q^ K^T) V per head over channels, Q from `x`, K and V from `y` (C x C per image).

    Not a CSALayer: keys and values come from another tensor than the queries (see the module docstring)."""

    def __init__(self, channels: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(channels, channels, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=bias)
        self.kv = nn.Conv2d(channels, channels * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(channels * 2, channels * 2, 3, padding=1, groups=channels * 2, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_dwconv(self.q(x)).reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)  # 2 x (b, C, h, w)
        k = k.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        v = v.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (b, heads, d, d)
        out = attn.softmax(dim=-1) @ v  # (b, heads, d, N)
        return self.project_out(out.reshape(b, c, h, w))


class SpatialGate(nn.Module):
    """Per-pixel weight in (0, 1): 7x7 conv over the channel max and mean, then a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # (b, 2, h, w)
        return self.spatial(pooled).sigmoid()  # (b, 1, h, w)


class ChannelGate(nn.Module):
    """Per-channel weight in (0, 1): one bottleneck MLP on the global mean and on the global max, summed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // GATE_REDUCTION
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))  # (b, C, 1, 1)
        return scale.sigmoid()


class FrequencyRefine(nn.Module):
    """Bidirectional modulation: the high band gated per channel by the low band, the low band per pixel by
    the high band, summed and projected (1x1 with bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.SpatialGate = SpatialGate()  # official attribute names, for the state-dict keys
        self.ChannelGate = ChannelGate(channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.proj(low * self.SpatialGate(high) + high * self.ChannelGate(low))


class FrequencyBlock(nn.Module):
    """AFLB: mines the image's low/high frequency bands at the feature map's size and merges them into y."""

    def __init__(self, channels: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.band_unit = BAND_UNIT  # >= 2 keeps the band inside the spectrum; tests lower it to exercise the mask
        # `conv` and `score_gen` are never called (as officially): present for strict loading only
        self.conv = nn.Conv2d(IMAGE_CHANNELS, channels, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(IMAGE_CHANNELS, channels, 3, padding=1, bias=False)
        self.score_gen = nn.Conv2d(2, 2, 7, padding=3)
        self.para1 = nn.Parameter(torch.zeros(channels, 1, 1))
        self.para2 = nn.Parameter(torch.ones(channels, 1, 1))
        self.channel_cross_l = ChannelCrossAttention(channels, num_heads, bias)  # takes the high band (sic)
        self.channel_cross_h = ChannelCrossAttention(channels, num_heads, bias)  # takes the low band (sic)
        self.channel_cross_agg = ChannelCrossAttention(channels, num_heads, bias)
        self.frequency_refine = FrequencyRefine(channels)
        self.rate_conv = nn.Sequential(nn.Conv2d(channels, channels // RATE_REDUCTION, 1, bias=False), nn.GELU(),
                                       nn.Conv2d(channels // RATE_REDUCTION, 2, 1, bias=False))

    def forward(self, image: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        image = F.interpolate(image, size=y.shape[-2:], mode="bilinear", align_corners=False)  # (b, 3, h, w)
        high, low = self.bands(self.conv1(image))  # (b, C, h, w) each
        high = self.channel_cross_l(high, y)
        low = self.channel_cross_h(low, y)
        out = self.channel_cross_agg(y, self.frequency_refine(low, high))
        return out * self.para1 + y * self.para2

    def bands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(high, low): |inverse FFT| of the spectrum outside / inside the adaptive low-frequency band."""
        h, w = x.shape[-2:]
        rate = self.rate_conv(F.adaptive_avg_pool2d(x, 1)).sigmoid()  # (b, 2, 1, 1)
        half_h = (h // self.band_unit * rate[:, 0, 0, 0]).int()  # (b,): truncated, as the official slice bound
        half_w = (w // self.band_unit * rate[:, 1, 0, 0]).int()  # (b,)
        # The official mask is the centred rectangle [h//2 - half_h, h//2 + half_h) of the spectrum rolled by
        # (h//2, w//2); rolled back, that is the frequencies k < half or k >= side - half along each axis.
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        keep_rows = (rows < half_h[:, None]) | (rows >= h - half_h[:, None])  # (b, h)
        keep_cols = (cols < half_w[:, None]) | (cols >= w - half_w[:, None])  # (b, w)
        mask = (keep_rows[:, None, :, None] & keep_cols[:, None, None, :]).to(x.dtype)  # (b, 1, h, w)
        spectrum = torch.fft.fft2(x, norm="forward", dim=(-2, -1))
        high = torch.fft.ifft2(spectrum * (1 - mask), norm="forward", dim=(-2, -1)).abs()
        low = torch.fft.ifft2(spectrum * mask, norm="forward", dim=(-2, -1)).abs()
        return high, low


# -- the model ---------------------------------------------------------------------------------------------


class AdaIR(RestorationModel):
    family = "adair"
    title = "AdaIR"
    calibration_kind = "sample photographs"
    config_class = AdaIRConfig
    task = IMAGE_RESTORATION
    downsamplings = 3
    licence = "MIT (its network reuses Restormer's blocks, published under the Academic Public License)"
    attention_adapters = (MDTA_ADAPTER,)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = AdaIRConfig(**kwargs)  # type: ignore[arg-type]
        dim, bias = cfg.dim, cfg.bias

        def stage(channels: int, heads: int, blocks: int) -> nn.Sequential:
            return nn.Sequential(*[
                TransformerBlock(channels, heads, cfg.ffn_expansion_factor, bias, cfg.layernorm_type)
                for _ in range(blocks)
            ])

        # registration order = the official one, so state_dict() lists the keys in the official order
        self.patch_embed = _PatchEmbed(cfg.inp_channels, dim)
        self.fre1 = FrequencyBlock(8 * dim, cfg.heads[2], bias)
        self.fre2 = FrequencyBlock(4 * dim, cfg.heads[2], bias)
        self.fre3 = FrequencyBlock(2 * dim, cfg.heads[2], bias)
        self.encoder_level1 = stage(dim, cfg.heads[0], cfg.num_blocks[0])
        self.down1_2 = _Resample(dim, down=True)
        self.encoder_level2 = stage(2 * dim, cfg.heads[1], cfg.num_blocks[1])
        self.down2_3 = _Resample(2 * dim, down=True)
        self.encoder_level3 = stage(4 * dim, cfg.heads[2], cfg.num_blocks[2])
        self.down3_4 = _Resample(4 * dim, down=True)
        self.latent = stage(8 * dim, cfg.heads[3], cfg.num_blocks[3])
        self.up4_3 = _Resample(8 * dim, down=False)
        self.reduce_chan_level3 = nn.Conv2d(8 * dim, 4 * dim, 1, bias=bias)
        self.decoder_level3 = stage(4 * dim, cfg.heads[2], cfg.num_blocks[2])
        self.up3_2 = _Resample(4 * dim, down=False)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=bias)
        self.decoder_level2 = stage(2 * dim, cfg.heads[1], cfg.num_blocks[1])
        self.up2_1 = _Resample(2 * dim, down=False)
        # level 1 has no reduce conv: the decoder and refinement run at 2*dim channels
        self.decoder_level1 = stage(2 * dim, cfg.heads[0], cfg.num_blocks[0])
        self.refinement = stage(2 * dim, cfg.heads[0], cfg.num_refinement_blocks)
        self.output = nn.Conv2d(2 * dim, cfg.out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        enc1 = self.encoder_level1(self.patch_embed(inp_img))  # (b, dim, H, W)
        enc2 = self.encoder_level2(self.down1_2(enc1))  # (b, 2dim, H/2, W/2)
        enc3 = self.encoder_level3(self.down2_3(enc2))  # (b, 4dim, H/4, W/4)
        latent = self.fre1(inp_img, self.latent(self.down3_4(enc3)))  # (b, 8dim, H/8, W/8)
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.fre2(inp_img, self.decoder_level3(dec3))  # (b, 4dim, H/4, W/4)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.fre3(inp_img, self.decoder_level2(dec2))  # (b, 2dim, H/2, W/2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))  # (b, 2dim, H, W)
        dec1 = self.refinement(dec1)
        return self.output(dec1) + inp_img

    def csa_level(self, name: str) -> str:
        group = name.split(".")[0]
        if group not in GROUP_LEVELS:
            raise ArchitectureError(f"{name} is not a CSA layer of AdaIR")
        return GROUP_LEVELS[group]

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        parent, _, leaf = csa_name.rpartition(".")
        if leaf != "attn":
            raise ArchitectureError(f"{csa_name} is not the attention of an AdaIR transformer block")
        return parent, False  # TransformerBlock returns x + attn + ffn: the block output itself

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        """The patch embedding plus the frequency block's own keys (its cross attention and band rate)."""
        keys = set(keys)
        return {"patch_embed.proj.weight", "fre1.channel_cross_agg.kv.weight", "fre1.rate_conv.0.weight",
                "output.weight"} <= keys

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> AdaIRConfig:
        keys = list(state_dict)
        dim, inp_channels = shape_of(state_dict, "patch_embed.proj.weight")[:2]
        for name, width in zip(FREQUENCY_BLOCKS, (8 * dim, 4 * dim, 2 * dim), strict=True):
            shape = shape_of(state_dict, f"{name}.conv1.weight")
            if shape != (width, IMAGE_CHANNELS, 3, 3):
                raise ArchitectureError(f"AdaIR: {name}.conv1.weight has shape {list(shape)}; expected "
                                        f"[{width}, {IMAGE_CHANNELS}, 3, 3] for dim {dim}")
        groups = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
        num_blocks = tuple(count_indices(keys, g) for g in groups)
        refinement = count_indices(keys, "refinement")
        # heads come from the temperature shapes; heads[2] is always visible in the frequency blocks
        head_sources = (
            ("encoder_level1.0.attn", "decoder_level1.0.attn", "refinement.0.attn"),
            ("encoder_level2.0.attn", "decoder_level2.0.attn"),
            ("fre1.channel_cross_agg",),
            ("latent.0.attn",),
        )
        heads = []
        for sources, default in zip(head_sources, DEFAULT_HEADS, strict=True):
            found = [shape_of(state_dict, f"{s}.temperature")[0]
                     for s in sources if f"{s}.temperature" in state_dict]
            heads.append(found[0] if found else default)
        block_widths = {"encoder_level1.0": dim, "encoder_level2.0": 2 * dim, "encoder_level3.0": 4 * dim,
                        "latent.0": 8 * dim, "decoder_level1.0": 2 * dim, "refinement.0": 2 * dim}
        hidden = {width: shape_of(state_dict, f"{block}.ffn.project_out.weight")[1]
                  for block, width in block_widths.items() if f"{block}.ffn.project_out.weight" in state_dict}
        try:
            expansion = _expansion_factor(hidden)
        except ArchitectureError:
            raise ArchitectureError(f"AdaIR: feed-forward widths {dict(sorted(hidden.items()))} fit no single "
                                    "ffn_expansion_factor") from None
        any_block = next((k for k in keys if k.endswith(".norm1.body.weight")), None)
        with_bias = any_block is None or any_block.replace(".weight", ".bias") in state_dict
        return AdaIRConfig(
            inp_channels=inp_channels,
            out_channels=shape_of(state_dict, "output.weight")[0],
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=refinement,
            heads=tuple(heads),
            ffn_expansion_factor=expansion,
            bias="output.bias" in state_dict,
            layernorm_type="WithBias" if with_bias else "BiasFree",
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs, in [0, 1] as the official pipeline feeds the
        model (AdaIR is RGB only)."""
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        return self.grey_or_rgb(training_crops(side, count))
