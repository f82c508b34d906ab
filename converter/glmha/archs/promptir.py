"""PromptIR (Potlapalli et al., NeurIPS 2023): all-in-one blind restoration, a Restormer U-Net whose decoder
is steered by learned prompts.

Re-implemented from the published description; parameter names and shapes follow the official state dicts
(va1shn9v/PromptIR `net/model.py`, `PromptIR(decoder=True)`, 35,592,263 parameters) so they load strictly.
The official code is under the non-commercial Academic Public License (like Restormer's): it is not copied
here, and published weights stay under the authors' terms.

What differs from Restormer:
* After the latent stage and after decoder levels 3 and 2, a prompt block turns the feature map into a
  prompt (global mean -> linear -> softmax over `prompt_len` learned prompts -> their weighted sum -> bilinear
  resize to the map, align_corners=False -> 3x3 conv), which is concatenated to the features and passed
  through one extra transformer block (`noise_level3/2/1`, 704/320/160 channels, heads[2] heads: their MDTA
  mixes feature and prompt channels inside a head) and a 1x1 reduction.
* The official widths are literals that only fit dim 48, so `dim` must be 48; a decoder-less PromptIR does
  not run officially and is not offered.
* Six 1x1 convs (`chnl_reduce1..3`, `reduce_noise_channel_1..3`) are built but never called by the official
  forward; they exist here only so that strict loading succeeds, and are never called either.
* `prompt_len` and `prompt_sizes` are literals too (5 and 64/32/16); they are read from the prompt shapes so
  that smaller prompts load, since the forward is the same function for any of them.
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
from glmha.archs.restormer import TransformerBlock, _expansion_factor, _PatchEmbed, _Resample
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError

LEVELS = 4  # three down-samplings, so H and W must be multiples of 8
LAYERNORM_TYPES = ("WithBias", "BiasFree")
DIM = 48  # the only width the official literals fit
PROMPT_WIDTHS = (64, 128, 320)  # channels of prompt1..3 (official literals)
DEFAULT_HEADS = (1, 2, 4, 8)  # what a level without blocks reports: its heads leave no trace in the weights

# Resolution level of each group, as Table 9 of the GLMHA paper counts them (1 = full size, "bottleneck" = 1/8).
# The fusion blocks are named after the decoder step they precede, not after their resolution: noise_level3
# runs on the latent (1/8), noise_level2 after decoder_level3 (1/4), noise_level1 after decoder_level2 (1/2).
GROUP_LEVELS = {
    "encoder_level1": "1", "decoder_level1": "1", "refinement": "1",
    "encoder_level2": "2", "decoder_level2": "2", "noise_level1": "2",
    "encoder_level3": "3", "decoder_level3": "3", "noise_level2": "3",
    "latent": "bottleneck", "noise_level3": "bottleneck",
}


def fusion_widths(dim: int) -> tuple[int, int, int]:
    """Channels of noise_level1..3: the features of their level plus the prompt concatenated to them."""
    return 2 * dim + PROMPT_WIDTHS[0], 4 * dim + PROMPT_WIDTHS[1], 8 * dim + PROMPT_WIDTHS[2]


@dataclass(frozen=True)
class PromptIRConfig(StrictConfig):
    inp_channels: int = 3
    out_channels: int = 3
    dim: int = DIM
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    prompt_len: int = 5  # learned prompts per prompt block (official: fixed 5)
    prompt_sizes: tuple[int, ...] = (64, 32, 16)  # side of the stored prompts of prompt1..3 (official: fixed)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim != DIM:
            raise ArchitectureError(f"PromptIR: the official prompt and fusion widths only fit dim {DIM}; "
                                    f"got dim {self.dim}")
        if len(self.num_blocks) != LEVELS or len(self.heads) != LEVELS:
            raise ArchitectureError("PromptIR: num_blocks and heads need 4 entries each")
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ArchitectureError(f"PromptIR: layernorm_type must be one of {LAYERNORM_TYPES}")
        if min(self.num_blocks) < 0 or self.num_refinement_blocks < 0:
            raise ArchitectureError("PromptIR: block counts must be >= 0")
        if min(self.inp_channels, self.out_channels, *self.heads) < 1:
            raise ArchitectureError("PromptIR: channels and heads must be >= 1")
        if self.out_channels != self.inp_channels:
            raise ArchitectureError("PromptIR: out_channels must equal inp_channels (the input image is added "
                                    "to the output)")
        dim, heads = self.dim, self.heads
        split = [(dim, heads[0]), (2 * dim, heads[0]), (2 * dim, heads[1]), (4 * dim, heads[2]),
                 (8 * dim, heads[3])] + [(width, heads[2]) for width in fusion_widths(dim)]
        for width, count in split:
            if width % count:
                raise ArchitectureError(f"PromptIR: {width} channels do not split into {count} heads")
        factor = self.ffn_expansion_factor
        if not math.isfinite(factor) or int(dim * factor) < 1:
            raise ArchitectureError(f"PromptIR: ffn_expansion_factor {factor} leaves no hidden channel "
                                    f"at {dim} channels")
        if len(self.prompt_sizes) != len(PROMPT_WIDTHS):
            raise ArchitectureError("PromptIR: prompt_sizes needs 3 entries (prompt1..3)")
        if min(self.prompt_len, *self.prompt_sizes) < 1:
            raise ArchitectureError("PromptIR: prompt_len and prompt_sizes must be >= 1")


class PromptBlock(nn.Module):
    """Prompt generation: image-adaptive weights over `length` learned prompts, resized to the feature map."""

    def __init__(self, width: int, length: int, size: int, in_channels: int) -> None:
        super().__init__()
        # uniform [0, 1) like the official initialisation, so that training from scratch starts alike
        self.prompt_param = nn.Parameter(torch.rand(1, length, width, size, size))
        self.linear_layer = nn.Linear(in_channels, length)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        weights = self.linear_layer(x.mean(dim=(-2, -1))).softmax(dim=1)  # (b, length)
        # (b, length, 1, 1, 1) * (1, length, width, size, size), summed over the prompts
        prompt = (weights[:, :, None, None, None] * self.prompt_param).sum(dim=1)  # (b, prompt width, size, size)
        prompt = F.interpolate(prompt, size=(height, width), mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)  # (b, prompt width, height, width)


class PromptIR(RestorationModel):
    family = "promptir"
    title = "PromptIR"
    calibration_kind = "sample photographs"
    config_class = PromptIRConfig
    task = IMAGE_RESTORATION
    downsamplings = 3
    licence = "Academic Public License (non-commercial)"
    attention_adapters = (MDTA_ADAPTER,)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = PromptIRConfig(**kwargs)  # type: ignore[arg-type]
        dim, bias = cfg.dim, cfg.bias
        fused1, fused2, fused3 = fusion_widths(dim)

        def block(channels: int, heads: int) -> TransformerBlock:
            return TransformerBlock(channels, heads, cfg.ffn_expansion_factor, bias, cfg.layernorm_type)

        def stage(channels: int, heads: int, blocks: int) -> nn.Sequential:
            return nn.Sequential(*[block(channels, heads) for _ in range(blocks)])

        # registration order = the official one, so state_dict() lists the keys in the official order
        self.patch_embed = _PatchEmbed(cfg.inp_channels, dim)
        self.prompt1 = PromptBlock(PROMPT_WIDTHS[0], cfg.prompt_len, cfg.prompt_sizes[0], 2 * dim)
        self.prompt2 = PromptBlock(PROMPT_WIDTHS[1], cfg.prompt_len, cfg.prompt_sizes[1], 4 * dim)
        self.prompt3 = PromptBlock(PROMPT_WIDTHS[2], cfg.prompt_len, cfg.prompt_sizes[2], 8 * dim)
        # never called (as officially): present for strict loading only
        self.chnl_reduce1 = nn.Conv2d(64, 64, 1, bias=bias)
        self.chnl_reduce2 = nn.Conv2d(128, 128, 1, bias=bias)
        self.chnl_reduce3 = nn.Conv2d(320, 256, 1, bias=bias)
        self.reduce_noise_channel_1 = nn.Conv2d(dim + 64, dim, 1, bias=bias)
        self.encoder_level1 = stage(dim, cfg.heads[0], cfg.num_blocks[0])
        self.down1_2 = _Resample(dim, down=True)
        self.reduce_noise_channel_2 = nn.Conv2d(2 * dim + 128, 2 * dim, 1, bias=bias)
        self.encoder_level2 = stage(2 * dim, cfg.heads[1], cfg.num_blocks[1])
        self.down2_3 = _Resample(2 * dim, down=True)
        self.reduce_noise_channel_3 = nn.Conv2d(4 * dim + 256, 4 * dim, 1, bias=bias)
        self.encoder_level3 = stage(4 * dim, cfg.heads[2], cfg.num_blocks[2])
        self.down3_4 = _Resample(4 * dim, down=True)
        self.latent = stage(8 * dim, cfg.heads[3], cfg.num_blocks[3])
        # the latent is reduced to 4*dim after its fusion block, so this up-sampler starts from 4*dim
        self.up4_3 = _Resample(4 * dim, down=False)
        self.reduce_chan_level3 = nn.Conv2d(2 * dim + 4 * dim, 4 * dim, 1, bias=bias)
        self.noise_level3 = block(fused3, cfg.heads[2])
        self.reduce_noise_level3 = nn.Conv2d(fused3, 4 * dim, 1, bias=bias)
        self.decoder_level3 = stage(4 * dim, cfg.heads[2], cfg.num_blocks[2])
        self.up3_2 = _Resample(4 * dim, down=False)
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=bias)
        self.noise_level2 = block(fused2, cfg.heads[2])
        self.reduce_noise_level2 = nn.Conv2d(fused2, 4 * dim, 1, bias=bias)  # 4*dim: up3_2 takes it next
        self.decoder_level2 = stage(2 * dim, cfg.heads[1], cfg.num_blocks[1])
        self.up2_1 = _Resample(2 * dim, down=False)
        self.noise_level1 = block(fused1, cfg.heads[2])
        self.reduce_noise_level1 = nn.Conv2d(fused1, 2 * dim, 1, bias=bias)
        # level 1 has no reduce conv: the decoder and refinement run at 2*dim channels
        self.decoder_level1 = stage(2 * dim, cfg.heads[0], cfg.num_blocks[0])
        self.refinement = stage(2 * dim, cfg.heads[0], cfg.num_refinement_blocks)
        self.output = nn.Conv2d(2 * dim, cfg.out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        enc1 = self.encoder_level1(self.patch_embed(inp_img))  # (b, dim, H, W)
        enc2 = self.encoder_level2(self.down1_2(enc1))  # (b, 2dim, H/2, W/2)
        enc3 = self.encoder_level3(self.down2_3(enc2))  # (b, 4dim, H/4, W/4)
        latent = self.latent(self.down3_4(enc3))  # (b, 8dim, H/8, W/8)
        latent = self._fuse(latent, self.prompt3, self.noise_level3, self.reduce_noise_level3)  # (b, 4dim, ..)
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.decoder_level3(dec3)  # (b, 4dim, H/4, W/4)
        dec3 = self._fuse(dec3, self.prompt2, self.noise_level2, self.reduce_noise_level2)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.decoder_level2(dec2)  # (b, 2dim, H/2, W/2)
        dec2 = self._fuse(dec2, self.prompt1, self.noise_level1, self.reduce_noise_level1)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))  # (b, 2dim, H, W)
        dec1 = self.refinement(dec1)
        return self.output(dec1) + inp_img

    @staticmethod
    def _fuse(x: torch.Tensor, prompt: PromptBlock, block: TransformerBlock, reduce: nn.Conv2d) -> torch.Tensor:
        """Prompt fusion: features and their prompt side by side through one transformer block, then 1x1."""
        return reduce(block(torch.cat([x, prompt(x)], 1)))

    def csa_level(self, name: str) -> str:
        group = name.split(".")[0]
        if group not in GROUP_LEVELS:
            raise ArchitectureError(f"{name} is not a CSA layer of PromptIR")
        return GROUP_LEVELS[group]

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        keys = set(keys)
        return {"patch_embed.proj.weight", "prompt1.prompt_param", "noise_level1.attn.qkv.weight"} <= keys

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> PromptIRConfig:
        keys = list(state_dict)
        dim, inp_channels = shape_of(state_dict, "patch_embed.proj.weight")[:2]
        if dim != DIM:  # checked here too, before any width below is computed from it
            raise ArchitectureError(f"PromptIR: the official prompt and fusion widths only fit dim {DIM}; "
                                    f"patch_embed has {dim} channels")
        out_channels = shape_of(state_dict, "output.weight")[0]
        groups = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
        num_blocks = tuple(count_indices(keys, g) for g in groups)
        refinement = count_indices(keys, "refinement")
        # heads come from the temperature shape; decoders and fusion blocks share them with an encoder level
        head_sources = (
            ("encoder_level1.0", "decoder_level1.0", "refinement.0"),
            ("encoder_level2.0", "decoder_level2.0"),
            ("encoder_level3.0", "decoder_level3.0", "noise_level1", "noise_level2", "noise_level3"),
            ("latent.0",),
        )
        heads = []
        for sources, default in zip(head_sources, DEFAULT_HEADS, strict=True):
            found = [shape_of(state_dict, f"{s}.attn.temperature")[0]
                     for s in sources if f"{s}.attn.temperature" in state_dict]
            heads.append(found[0] if found else default)
        fused1, fused2, fused3 = fusion_widths(dim)
        block_widths = {"encoder_level1.0": dim, "encoder_level2.0": 2 * dim, "encoder_level3.0": 4 * dim,
                        "latent.0": 8 * dim, "decoder_level1.0": 2 * dim,
                        "noise_level1": fused1, "noise_level2": fused2, "noise_level3": fused3}
        hidden = {width: shape_of(state_dict, f"{block}.ffn.project_out.weight")[1]
                  for block, width in block_widths.items() if f"{block}.ffn.project_out.weight" in state_dict}
        try:
            expansion = _expansion_factor(hidden)
        except ArchitectureError:
            raise ArchitectureError(f"PromptIR: feed-forward widths {dict(sorted(hidden.items()))} fit no single "
                                    "ffn_expansion_factor") from None
        lengths, sizes = set(), []
        for index, width in enumerate(PROMPT_WIDTHS, start=1):
            shape = shape_of(state_dict, f"prompt{index}.prompt_param")
            if len(shape) != 5 or shape[0] != 1 or shape[2] != width or shape[3] != shape[4]:
                raise ArchitectureError(f"PromptIR: prompt{index}.prompt_param has shape {list(shape)}; "
                                        f"expected [1, length, {width}, size, size]")
            lengths.add(shape[1])
            sizes.append(shape[3])
        if len(lengths) > 1:
            raise ArchitectureError(f"PromptIR: the three prompt blocks hold different numbers of prompts "
                                    f"{sorted(lengths)}; the model has one prompt_len")
        return PromptIRConfig(
            inp_channels=inp_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=refinement,
            heads=tuple(heads),
            ffn_expansion_factor=expansion,
            bias="output.bias" in state_dict,
            layernorm_type="WithBias" if "noise_level1.norm1.body.bias" in state_dict else "BiasFree",
            prompt_len=lengths.pop(),
            prompt_sizes=tuple(sizes),
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs, in [0, 1] as the official pipeline feeds the
        model; grey models get the luminance."""
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        return self.grey_or_rgb(training_crops(side, count))

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        parent, _, leaf = csa_name.rpartition(".")
        if leaf != "attn":
            raise ArchitectureError(f"{csa_name} is not the attention of a PromptIR transformer block")
        return parent, False  # TransformerBlock returns x + attn + ffn: the block output itself
