"""X-Restormer (Chen et al., 2023, "A Comparative Study of Image Restoration Networks for General Backbone
Network Design"): Restormer's 4-level U-Net whose blocks run MDTA channel attention and an overlapping
cross-attention (OCA, spatial windows) one after the other, each followed by its own gated feed-forward.

Licence: the official repository (`Andrew0613/X-Restormer`) ships the MIT licence file of the BasicSR-examples
template it was started from. Nothing of it is copied here: this is a re-implementation from the published
equations, whose parameter names and shapes follow the official state dicts so that they load strictly.

The channel attention is exactly Restormer's MDTA (same parameter names, Q|K|V chunks, L2 norms and
temperature), so its layers are `RestormerAttention` and glmha converts them with MDTA's adapter. The spatial
attention is token x token attention inside windows: not channel-wise, so it stays an ordinary module.

Two hyperparameters leave no trace in the weights:
* `window_size`: OCA's relative-position tables only give each level's overlapping window
  window_size + int(window_size * overlap_ratio). Inference assumes the published window size 8 (every
  official option file uses it) and refuses shapes that do not fit it rather than guess another.
* `scale`: the super-resolution models (x4) upsample the input bilinearly inside forward and are otherwise
  the same network; inference reports scale 1, i.e. the network that takes the upsampled image.
The official constructor's `dual_pixel_task` argument is accepted and never used there, so it is not a field.
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
from glmha.archs.restormer import (
    LAYERNORM_TYPES,
    GatedDconvFeedForward,
    LayerNorm,
    _expansion_factor,
    _PatchEmbed,
    _Resample,
)
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, InputShapeError

LEVELS = 4  # three down-samplings, then windows: sides must be multiples of 8 * window_size
PUBLISHED_WINDOW = 8  # the window size of every official option file; assumed by infer_config
# blocks that carry each level's hyperparameters (decoder level 1 and refinement run at 2*dim channels)
LEVEL_BLOCKS = (
    ("encoder_level1.0", "decoder_level1.0", "refinement.0"),
    ("encoder_level2.0", "decoder_level2.0"),
    ("encoder_level3.0", "decoder_level3.0"),
    ("latent.0",),
)
STAGES = frozenset(block.split(".")[0] for blocks in LEVEL_BLOCKS for block in blocks)
DEFAULT_CHANNEL_HEADS = (1, 2, 4, 8)
DEFAULT_SPATIAL_HEADS = (1, 2, 4, 8)
DEFAULT_OVERLAP = 0.5


@dataclass(frozen=True)
class XRestormerConfig(StrictConfig):
    """Defaults: the published models (options/*/00[1-5]_xrestormer_*.yml, all five tasks alike); the
    official class's own defaults (blocks 4,6,6,8, spatial heads 2,2,3,4) are used by none of them."""

    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, ...] = (2, 4, 4, 4)
    num_refinement_blocks: int = 4
    channel_heads: tuple[int, ...] = DEFAULT_CHANNEL_HEADS
    spatial_heads: tuple[int, ...] = DEFAULT_SPATIAL_HEADS
    overlap_ratio: tuple[float, ...] = (DEFAULT_OVERLAP,) * LEVELS
    window_size: int = PUBLISHED_WINDOW
    spatial_dim_head: int = 16
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    scale: int = 1  # >1: the input is upsampled bilinearly by this factor first (the SR models use 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        per_level = (self.num_blocks, self.channel_heads, self.spatial_heads, self.overlap_ratio)
        if any(len(values) != LEVELS for values in per_level):
            raise ArchitectureError("X-Restormer: num_blocks, channel_heads, spatial_heads and overlap_ratio "
                                    "need 4 entries each")
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ArchitectureError(f"X-Restormer: layernorm_type must be one of {LAYERNORM_TYPES}")
        if min(self.num_blocks) < 0 or self.num_refinement_blocks < 0:
            raise ArchitectureError("X-Restormer: block counts must be >= 0")
        if min(self.inp_channels, self.out_channels, self.dim, *self.channel_heads, *self.spatial_heads,
               self.window_size, self.spatial_dim_head, self.scale) < 1:
            raise ArchitectureError("X-Restormer: channels, dim, heads, window_size, spatial_dim_head and scale "
                                    "must be >= 1")
        if self.out_channels != self.inp_channels:
            raise ArchitectureError("X-Restormer: out_channels must equal inp_channels (the input image is "
                                    "added to the output)")
        if self.dim % 2:
            raise ArchitectureError("X-Restormer: dim must be even (the down-samplers halve it)")
        widths = [self.dim * 2**level for level in range(LEVELS)] + [2 * self.dim]
        for width, heads in zip(widths, [*self.channel_heads, self.channel_heads[0]], strict=True):
            if width % heads:
                raise ArchitectureError(f"X-Restormer: {width} channels do not split into {heads} heads")
        for level, ratio in enumerate(self.overlap_ratio, start=1):
            if not math.isfinite(ratio) or ratio < 0:
                raise ArchitectureError(f"X-Restormer: overlap_ratio must be finite and >= 0, got {ratio} "
                                        f"at level {level}")
            extra = int(self.window_size * ratio)
            if extra % 2:
                raise ArchitectureError(f"X-Restormer: overlap_ratio {ratio} at level {level} widens the "
                                        f"{self.window_size}-pixel windows by {extra}; the overlapping key "
                                        f"windows need an even widening")
        factor = self.ffn_expansion_factor
        if not math.isfinite(factor) or int(self.dim * factor) < 1:
            raise ArchitectureError(f"X-Restormer: ffn_expansion_factor {factor} leaves no hidden channel "
                                    f"at {self.dim} channels")

    def overlap_window(self, level: int) -> int:
        """Side of the key/value windows at a level (0-based): the query window plus its overlap."""
        return self.window_size + int(self.window_size * self.overlap_ratio[level])


# -- overlapping cross-attention (spatial, not converted) ---------------------------------------------------


class RelativePositions(nn.Module):
    """Separable relative-position logits: one (2K - 1, D) table per axis, indexed by the key's offset
    from the query inside a query window of side W and a key window of side K (K >= W)."""

    def __init__(self, window: int, overlap_window: int, dim_head: int) -> None:
        super().__init__()
        rows = 2 * overlap_window - 1
        # random like the official initialisation (std D^-1/2), so that training from scratch starts alike
        self.rel_height = nn.Parameter(torch.randn(rows, dim_head) * dim_head**-0.5)
        self.rel_width = nn.Parameter(torch.randn(rows, dim_head) * dim_head**-0.5)
        self.window = window
        self.overlap_window = overlap_window

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """(..., W*W, D) scaled queries -> (..., W*W, K*K) logits q(x, y).(h[i - x] + w[j - y]) for the key
        at (i, j) of the key window, rows and columns counted from its top-left corner."""
        window, big = self.window, self.overlap_window
        # table row of (query p, key k): the offset k - p, shifted to start at 0; built here, not kept as a
        # buffer, so that models built on the meta device and loaded with assign=True have it too
        offsets = torch.arange(big, device=q.device)[None, :] - torch.arange(window, device=q.device)[:, None]
        offsets = offsets + big - 1  # (W, K)
        q = q.unflatten(-2, (window, window))  # (..., W rows x, W columns y, D)
        along_rows = torch.einsum("...xyd,xid->...xyi", q, self.rel_height[offsets])  # (..., W, W, K)
        along_cols = torch.einsum("...xyd,yjd->...xyj", q, self.rel_width[offsets])  # (..., W, W, K)
        logits = along_rows[..., :, None] + along_cols[..., None, :]  # (..., W, W, K i, K j)
        return logits.flatten(-4, -3).flatten(-2)  # (..., W*W, K*K)


class OverlappingCrossAttention(nn.Module):
    """OCA: queries from non-overlapping W x W windows attend to the keys and values of the K x K window
    around theirs (K = W + overlap, zero-padded at the image border), per head of D channels, with the
    separable relative-position logits added. Token x token attention: glmha leaves it unchanged."""

    def __init__(self, channels: int, window: int, overlap_window: int, num_heads: int, dim_head: int,
                 bias: bool) -> None:
        super().__init__()
        self.window = window
        self.overlap_window = overlap_window
        self.num_heads = num_heads
        self.dim_head = dim_head
        inner = num_heads * dim_head
        self.qkv = nn.Conv2d(channels, inner * 3, 1, bias=bias)
        self.project_out = nn.Conv2d(inner, channels, 1, bias=bias)
        self.rel_pos_emb = RelativePositions(window, overlap_window, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        win, big, heads, d = self.window, self.overlap_window, self.num_heads, self.dim_head
        if h % win or w % win:
            raise InputShapeError(f"X-Restormer spatial attention needs sides that are multiples of its "
                                  f"{win}-pixel windows; got {h}x{w}")
        rows, cols = h // win, w // win
        q, k, v = self.qkv(x).chunk(3, dim=1)  # 3 x (b, heads*D, h, w), head-major channels
        q = q.reshape(b, heads, d, rows, win, cols, win)  # (b, heads, D, rows, W, cols, W)
        q = q.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * rows * cols, heads, win * win, d)  # (bL, heads, W*W, D)

        def key_windows(t: torch.Tensor) -> torch.Tensor:
            patches = F.unfold(t, big, padding=(big - win) // 2, stride=win)  # (b, heads*D*K*K, L)
            patches = patches.reshape(b, heads, d, big * big, rows * cols)  # (b, heads, D, K*K, L)
            patches = patches.permute(0, 4, 1, 3, 2)  # (b, L, heads, K*K, D)
            return patches.reshape(b * rows * cols, heads, big * big, d)  # (bL, heads, K*K, D)

        k, v = key_windows(k), key_windows(v)
        q = q * d**-0.5
        logits = q @ k.transpose(-2, -1) + self.rel_pos_emb(q)  # (bL, heads, W*W, K*K)
        out = logits.softmax(dim=-1) @ v  # (bL, heads, W*W, D)
        out = out.reshape(b, rows, cols, heads, win, win, d)  # (b, rows, cols, heads, W, W, D)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, heads * d, h, w)  # (b, heads*D, h, w)
        return self.project_out(out)


class XRestormerBlock(nn.Module):
    """x + MDTA(LN x), + GDFN(LN x), + OCA(LN x), + GDFN(LN x): channel, then spatial mixing."""

    def __init__(self, channels: int, cfg: XRestormerConfig, level: int) -> None:
        super().__init__()
        ln, bias, expansion = cfg.layernorm_type, cfg.bias, cfg.ffn_expansion_factor
        # registered in the official order, so that state_dict() lists the keys as the official one does
        self.spatial_attn = OverlappingCrossAttention(channels, cfg.window_size, cfg.overlap_window(level),
                                                      cfg.spatial_heads[level], cfg.spatial_dim_head, bias)
        self.channel_attn = RestormerAttention(channels, cfg.channel_heads[level], bias)
        self.norm1 = LayerNorm(channels, ln)
        self.norm2 = LayerNorm(channels, ln)
        self.norm3 = LayerNorm(channels, ln)
        self.norm4 = LayerNorm(channels, ln)
        self.channel_ffn = GatedDconvFeedForward(channels, expansion, bias)
        self.spatial_ffn = GatedDconvFeedForward(channels, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.channel_attn(self.norm1(x))
        x = x + self.channel_ffn(self.norm2(x))
        x = x + self.spatial_attn(self.norm3(x))
        return x + self.spatial_ffn(self.norm4(x))


# -- the model -------------------------------------------------------------------------------------------


class XRestormer(RestorationModel):
    family = "xrestormer"
    title = "X-Restormer"
    calibration_kind = "sample photographs"
    config_class = XRestormerConfig
    task = IMAGE_RESTORATION
    downsamplings = 3
    licence = "MIT"
    attention_adapters = (MDTA_ADAPTER,)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = XRestormerConfig(**kwargs)  # type: ignore[arg-type]
        dim = cfg.dim

        def stage(channels: int, level: int, blocks: int) -> nn.Sequential:
            return nn.Sequential(*[XRestormerBlock(channels, cfg, level) for _ in range(blocks)])

        self.patch_embed = _PatchEmbed(cfg.inp_channels, dim)
        self.encoder_level1 = stage(dim, 0, cfg.num_blocks[0])
        self.down1_2 = _Resample(dim, down=True)
        self.encoder_level2 = stage(dim * 2, 1, cfg.num_blocks[1])
        self.down2_3 = _Resample(dim * 2, down=True)
        self.encoder_level3 = stage(dim * 4, 2, cfg.num_blocks[2])
        self.down3_4 = _Resample(dim * 4, down=True)
        self.latent = stage(dim * 8, 3, cfg.num_blocks[3])
        self.up4_3 = _Resample(dim * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=cfg.bias)
        self.decoder_level3 = stage(dim * 4, 2, cfg.num_blocks[2])
        self.up3_2 = _Resample(dim * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=cfg.bias)
        self.decoder_level2 = stage(dim * 2, 1, cfg.num_blocks[1])
        self.up2_1 = _Resample(dim * 2, down=False)
        # level 1 has no reduce conv: the decoder and refinement run at 2*dim channels
        self.decoder_level1 = stage(dim * 2, 0, cfg.num_blocks[0])
        self.refinement = stage(dim * 2, 0, cfg.num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        if self.config.scale > 1:  # SR: the network restores the bilinearly upsampled image
            inp_img = F.interpolate(inp_img, scale_factor=self.config.scale, mode="bilinear", align_corners=False)
        enc1 = self.encoder_level1(self.patch_embed(inp_img))  # (b, dim, H, W)
        enc2 = self.encoder_level2(self.down1_2(enc1))  # (b, 2dim, H/2, W/2)
        enc3 = self.encoder_level3(self.down2_3(enc2))  # (b, 4dim, H/4, W/4)
        latent = self.latent(self.down3_4(enc3))  # (b, 8dim, H/8, W/8)
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.decoder_level3(dec3)  # (b, 4dim, H/4, W/4)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.decoder_level2(dec2)  # (b, 2dim, H/2, W/2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))  # (b, 2dim, H, W)
        dec1 = self.refinement(dec1)
        return self.output(dec1) + inp_img

    def csa_level(self, name: str) -> str:
        group = name.split(".")[0]
        if not name.endswith(".channel_attn") or group not in STAGES:
            raise ArchitectureError(f"{name} is not a CSA layer of X-Restormer")
        if group == "latent":
            return "bottleneck"
        if group == "refinement":
            return "1"
        return group[-1]  # encoder_level2 / decoder_level2 -> "2"

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        parent, _, leaf = csa_name.rpartition(".")
        if leaf != "channel_attn":
            raise ArchitectureError(f"{csa_name} is not the channel attention of an X-Restormer block")
        return parent, False  # the block's output (channel and spatial halves), residuals included

    # -- input sizes -------------------------------------------------------------------------------

    @property
    def size_multiple(self) -> int:
        """Sides s with s * scale a multiple of 8 * window_size (three halvings, then whole windows)."""
        inner = 2**self.downsamplings * self.config.window_size
        return inner // math.gcd(inner, self.config.scale)

    def check_input_size(self, height: int, width: int) -> None:
        multiple, cfg = self.size_multiple, self.config
        if height < multiple or width < multiple or height % multiple or width % multiple:
            steps = f"three 2x down-samplings, then {cfg.window_size}x{cfg.window_size} windows"
            if cfg.scale > 1:
                steps = f"x{cfg.scale} upsampling, {steps}"
            raise InputShapeError(f"X-Restormer needs height and width that are multiples of {multiple} "
                                  f"({steps}); got {height}x{width}")

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        """The patch embedding plus OCA's relative-position tables, which no other family has."""
        keys = set(keys)
        return "patch_embed.proj.weight" in keys and any(
            key.endswith(".spatial_attn.rel_pos_emb.rel_height") for key in keys)

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> XRestormerConfig:
        keys = list(state_dict)
        dim, inp_channels = shape_of(state_dict, "patch_embed.proj.weight")[:2]
        groups = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
        num_blocks = tuple(count_indices(keys, g) for g in groups)
        # each level's heads and windows from its first block present (decoders share their encoder's)
        first = [next((b for b in blocks if f"{b}.channel_attn.temperature" in state_dict), None)
                 for blocks in LEVEL_BLOCKS]
        channel_heads = tuple(shape_of(state_dict, f"{b}.channel_attn.temperature")[0] if b else default
                              for b, default in zip(first, DEFAULT_CHANNEL_HEADS, strict=True))
        tables = [shape_of(state_dict, f"{b}.spatial_attn.rel_pos_emb.rel_height") if b else None for b in first]
        dim_head = next((table[1] for table in tables if table), 16)
        spatial_heads, windows = [], []
        for level, (block, table) in enumerate(zip(first, tables, strict=True)):
            if block is None:
                spatial_heads.append(DEFAULT_SPATIAL_HEADS[level])
                windows.append(None)
                continue
            rows = table[0]
            if len(table) != 2 or rows % 2 == 0:
                raise ArchitectureError(f"X-Restormer: {block}.spatial_attn.rel_pos_emb.rel_height has shape "
                                        f"{list(table)}; expected [2 * window - 1, dim_head]")
            windows.append((rows + 1) // 2)
            inner = shape_of(state_dict, f"{block}.spatial_attn.qkv.weight")[0]  # 3 * heads * dim_head
            if inner % (3 * table[1]) or inner == 0:
                raise ArchitectureError(f"X-Restormer: {block}.spatial_attn.qkv has {inner} output channels; "
                                        f"expected 3 x heads x {table[1]} (the relative-position tables' width)")
            spatial_heads.append(inner // (3 * table[1]))
        seen = sorted({w for w in windows if w is not None})
        if any(w < PUBLISHED_WINDOW or (w - PUBLISHED_WINDOW) % 2 for w in seen):
            raise ArchitectureError(f"X-Restormer: overlapping windows of {seen} pixels do not fit the published "
                                    f"window size {PUBLISHED_WINDOW} (plus an even overlap); the window size "
                                    f"leaves no trace in the weights, so glmha cannot tell which one was used")
        # exact: (w - 8) / 8 is a binary fraction, so int(8 * ratio) gives w - 8 back
        overlap = tuple(DEFAULT_OVERLAP if w is None else (w - PUBLISHED_WINDOW) / PUBLISHED_WINDOW
                        for w in windows)
        hidden = {}
        widths = (dim, 2 * dim, 4 * dim, 8 * dim, 2 * dim)
        for group, width in zip((*groups, "decoder_level1"), widths, strict=True):
            key = f"{group}.0.channel_ffn.project_out.weight"  # (C, F, 1, 1); spatial_ffn has the same shape
            if key in state_dict:
                hidden[width] = shape_of(state_dict, key)[1]
        try:
            expansion = _expansion_factor(hidden)
        except ArchitectureError:
            raise ArchitectureError(f"X-Restormer: feed-forward widths {dict(sorted(hidden.items()))} fit no "
                                    f"single ffn_expansion_factor") from None
        any_norm = next((k for k in keys if k.endswith(".norm1.body.weight")), None)
        with_bias = any_norm is None or any_norm.replace(".weight", ".bias") in state_dict
        return XRestormerConfig(
            inp_channels=inp_channels,
            out_channels=shape_of(state_dict, "output.weight")[0],
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=count_indices(keys, "refinement"),
            channel_heads=channel_heads,
            spatial_heads=tuple(spatial_heads),
            overlap_ratio=overlap,
            window_size=PUBLISHED_WINDOW,
            spatial_dim_head=dim_head,
            ffn_expansion_factor=expansion,
            bias="output.bias" in state_dict,
            layernorm_type="WithBias" if with_bias else "BiasFree",
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs, in [0, 1] as the official pipeline feeds the
        model; an SR model (scale > 1) gets them bicubic-downscaled by its scale, as its low-resolution input.
        Grey models get the luminance."""
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        scale = self.config.scale
        crops = training_crops(side * scale, count)  # (count, 3, side*scale, side*scale)
        if scale > 1:
            crops = F.interpolate(crops, size=(side, side), mode="bicubic", align_corners=False,
                                  antialias=True).clamp(0.0, 1.0)  # (count, 3, side, side)
        return self.grey_or_rgb(crops)
