"""DRSformer (Chen et al., CVPR 2023, sparse transformer for image deraining): top-k sparse channel-wise
attention (TKSA) and a mixed-scale feed-forward network (MSFN) in Restormer's 4-level U-Net, with two
mixture-of-experts feature compensators (MEFC) around the first level.

Licence: the official repository (`cschenxiang/DRSformer`) has no licence file, so its code and weights
are all rights reserved by default. Nothing of it is copied here: this is a re-implementation from the
published equations, whose parameter names and shapes follow the official state dicts so that they load
strictly. It covers both official architecture files with one class:
* `DRSformer_arch.py`: MEFC sub-networks `encoder_level0` (dim channels, before encoder level 1) and
  `refinement` (2*dim, after decoder level 1); config `mefc=True`.
* `DRSformer_arch_200L+SPA.py` (the Rain200L and SPA-Data models): the same without both; `mefc=False`.
Older checkpoints without the branch weights `attn1..attn4` (the repository's issue #4: rain100l) come
from an attention class that was never published; they are refused with one line naming the keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.adapter import Tokens
from glmha.archs.base import IMAGE_RESTORATION, RestorationModel, count_indices, shape_of
from glmha.archs.mdta import GLMHARestormerAttention, MDTAAdapter, RestormerAttention
from glmha.archs.restormer import (
    LAYERNORM_TYPES,
    TransformerBlock,
    _expansion_factor,
    _PatchEmbed,
    _Resample,
)
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, InputShapeError
from glmha.layers import CSALayer, GLMHALayer, GLMHASettings

LEVELS = 4  # three down-samplings, so H and W must be multiples of 8
# Fractions a/b of the d keys that the four sparse branches keep: k = int(d * a / b) in the official code
TOPK_FRACTIONS = ((1, 2), (2, 3), (3, 4), (4, 5))
BRANCH_INIT = 0.2  # initial value of the branch weights attn1..attn4
# MEFC: a softmax over these eight operations weights their outputs, per image and per step
MEFC_OPERATIONS = (
    ("separable", 1), ("separable", 3), ("separable", 5), ("separable", 7),
    ("dilated", 3), ("dilated", 5), ("dilated", 7), ("avg_pool", 3),
)
MEFC_STEPS = 4  # operation layers per MEFC (the official class's default, which DRSformer never changes)
MEFC_GROUPS = ("encoder_level0", "refinement")
CALIBRATION_SEED = 9100  # synthetic rain of calibration sample i is drawn with seed 9100 + i


@dataclass(frozen=True)
class DRSformerConfig(StrictConfig):
    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    mefc: bool = True  # False: DRSformer_arch_200L+SPA.py (no encoder_level0 / refinement sub-networks)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.num_blocks) != LEVELS or len(self.heads) != LEVELS:
            raise ArchitectureError("DRSformer: num_blocks and heads need 4 entries each")
        if self.layernorm_type not in LAYERNORM_TYPES:
            raise ArchitectureError(f"DRSformer: layernorm_type must be one of {LAYERNORM_TYPES}")
        if min(self.num_blocks) < 0:
            raise ArchitectureError("DRSformer: block counts must be >= 0")
        if min(self.inp_channels, self.out_channels, self.dim, *self.heads) < 1:
            raise ArchitectureError("DRSformer: channels, dim and heads must be >= 1")
        if self.out_channels != self.inp_channels:
            raise ArchitectureError("DRSformer: out_channels must equal inp_channels (the input image is "
                                    "added to the output)")
        if self.dim % 2:
            raise ArchitectureError("DRSformer: dim must be even (the down-samplers halve it)")
        widths = [self.dim * 2**level for level in range(LEVELS)] + [2 * self.dim]
        for width, heads in zip(widths, [*self.heads, self.heads[0]], strict=True):
            if width % heads:
                raise ArchitectureError(f"DRSformer: {width} channels do not split into {heads} heads")
            if width // heads < 2:
                raise ArchitectureError(f"DRSformer: {width} channels in {heads} heads leave "
                                        f"{width // heads} per head; top-k attention needs at least 2")


# -- top-k sparse attention ----------------------------------------------------------------------------


def topk_counts(keys: int) -> tuple[int, int, int, int]:
    """How many of `keys` keys each sparse branch keeps per query: int(keys/2), int(keys*2/3),
    int(keys*3/4), int(keys*4/5) as the official code writes them. Integer floor division gives the
    same numbers (keys*a is exact and a correctly rounded quotient by b <= 5 never reaches the next
    integer). A converted layer passes its own key count, so it keeps the same fractions of fewer keys."""
    if keys < 2:
        raise ArchitectureError(f"DRSformer top-k attention needs at least 2 keys per head (a branch keeping "
                                f"int(d/2) of them would keep none), got {keys}")
    first, second, third, fourth = (keys * a // b for a, b in TOPK_FRACTIONS)
    return first, second, third, fourth


def sparse_attention(logits: torch.Tensor, value: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i weights[i] * softmax_i(logits) @ value, where softmax_i keeps the topk_counts(K)[i] largest
    logits of each row and gives the others weight 0 (they are set to -inf first).

    logits: (..., queries, K); value: (..., K, N); weights: four tensors broadcastable against the output
    (the (1,)-shaped attn1..attn4). Returns (..., queries, N).

    The entries are chosen by torch.topk, called as the official code calls it, so ties are broken the same
    way on the same device. torch does not specify which of several equal logits it keeps: on the CPU the
    choice comes from a selection algorithm and is neither the first nor the last of them (torch 2.13: a
    zero row of 4 keeps indices 2 and 3, of 8 with k=5 keeps 2, 4, 5, 6, 7), and CUDA uses another
    algorithm. Which one is kept changes the output only when the tied keys' value rows differ.
    """
    keys = logits.shape[-1]
    if value.shape[-2] != keys:
        raise InputShapeError(f"sparse_attention: the logits have {keys} keys but the value has "
                              f"{value.shape[-2]} rows")
    if len(weights) != len(TOPK_FRACTIONS):
        raise ArchitectureError(f"sparse_attention needs {len(TOPK_FRACTIONS)} branch weights, got {len(weights)}")
    out = None
    for count, weight in zip(topk_counts(keys), weights, strict=True):
        index = torch.topk(logits, k=count, dim=-1, largest=True).indices  # (..., queries, count)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, True)  # (..., queries, K)
        probs = logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)  # (..., queries, K)
        branch = (probs @ value) * weight  # (..., queries, N)
        out = branch if out is None else out + branch  # summed in branch order, as the official code does
    return out


class TopKAttention(RestormerAttention):
    """TKSA: MDTA (Restormer's Q, K, V, L2 norms and temperature) whose logits go through four top-k sparse
    softmax branches mixed by the learnable scalars attn1..attn4. A kind of its own for the converter: its
    adapter (TOPK_ADAPTER) is registered for this exact class."""

    def __init__(self, channels: int, num_heads: int, bias: bool) -> None:
        if channels % num_heads:
            raise ArchitectureError(f"DRSformer: {channels} channels do not split into {num_heads} heads")
        topk_counts(channels // num_heads)  # refuses heads of fewer than 2 channels here, not at run time
        super().__init__(channels, num_heads, bias)
        add_branch_weights(self)

    def combine(self, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return sparse_attention(logits, value, (self.attn1, self.attn2, self.attn3, self.attn4))


def add_branch_weights(layer: nn.Module) -> None:
    """The four learnable branch weights attn1..attn4 (shape [1], the official initial 0.2)."""
    for index in range(1, len(TOPK_FRACTIONS) + 1):
        setattr(layer, f"attn{index}", nn.Parameter(torch.tensor([BRANCH_INIT])))


# -- mixed-scale feed-forward network ------------------------------------------------------------------



class GLMHATopKAttention(GLMHARestormerAttention):
    """GLMHA for TKSA: MDTA's GLMHA layer whose d x d' logits go through the four top-k branches; each branch
    keeps the same fraction of the d' reduced keys as of the d original ones (topk_counts(d')), so the layer
    is exact at C' = C."""

    def __init__(self, channels: int, num_heads: int, reduced: int, bias: bool, settings: GLMHASettings) -> None:
        super().__init__(channels, num_heads, reduced, bias, settings)
        topk_counts(reduced // num_heads)  # refuses d' < 2 here, not at the first forward pass
        add_branch_weights(self)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        logits = self.attention_logits(query, key, self.temperature)  # (b, heads, d, d')
        return sparse_attention(logits, value, (self.attn1, self.attn2, self.attn3, self.attn4))


class TopKAdapter(MDTAAdapter):
    """Converts TKSA: MDTA's conversion plus the four branch weights, copied. `refit` fits values to a
    dense softmax, which TKSA does not compute, so it is refused."""

    csa_class = TopKAttention
    glmha_class = GLMHATopKAttention
    min_head_width = 2  # the int(d'/2) branch needs at least one key
    unsupported_inits: ClassVar[dict[str, str]] = {
        "refit": "its value fit assumes a dense softmax, and TKSA keeps only the top-k logits"}

    def initialise(self, old: CSALayer, new: GLMHALayer, tokens: Tokens, bases: list[torch.Tensor],
                   method: str) -> None:
        super().initialise(old, new, tokens, bases, method)
        for name in ("attn1", "attn2", "attn3", "attn4"):
            getattr(new, name).copy_(getattr(old, name))


TOPK_ADAPTER = TopKAdapter()

class MixedScaleFeedForward(nn.Module):
    """MSFN: 1x1 to 2F; depthwise 3x3 and 5x5 in parallel, each ReLU'd and halved into (a, b); the a halves
    of both scales (2F channels) go through a grouped 3x3 (F groups of 2) and the b halves through a grouped
    5x5, each ReLU'd to F channels; both concatenated (2F) and projected back to C by a 1x1."""

    def __init__(self, channels: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(hidden * 2, hidden * 2, 5, padding=2, groups=hidden * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hidden * 2, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(hidden * 2, hidden, 5, padding=2, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden * 2, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(x)  # (b, 2F, h, w)
        a3, b3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)  # 2 x (b, F, h, w)
        a5, b5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)  # 2 x (b, F, h, w)
        a = F.relu(self.dwconv3x3_1(torch.cat([a3, a5], dim=1)))  # (b, F, h, w)
        b = F.relu(self.dwconv5x5_1(torch.cat([b3, b5], dim=1)))  # (b, F, h, w)
        return self.project_out(torch.cat([a, b], dim=1))


# -- mixture-of-experts feature compensator ----------------------------------------------------------


class _Sequence(nn.Module):
    """A module whose layers sit under `op.<i>`, the official parameter names of every MEFC operation."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _operation(kind: str, kernel: int, channels: int) -> nn.Module:
    """One MEFC operation, C -> C at the same size, no biases: separable = (depthwise k x k, 1x1) twice
    with a ReLU between; dilated = depthwise k x k with dilation 2, then 1x1; avg_pool = 3x3 average
    that counts only pixels inside the image."""
    if kind == "avg_pool":
        return nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)

    def depthwise(dilation: int) -> nn.Conv2d:
        return nn.Conv2d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                         groups=channels, bias=False)

    def pointwise() -> nn.Conv2d:
        return nn.Conv2d(channels, channels, 1, bias=False)

    if kind == "separable":
        return _Sequence(depthwise(1), pointwise(), nn.ReLU(), depthwise(1), pointwise())
    if kind == "dilated":
        return _Sequence(depthwise(2), pointwise())
    raise ArchitectureError(f"DRSformer: unknown MEFC operation '{kind}'")


class _OperationWeights(nn.Module):
    """Per image: global average -> Linear(C, 2*S*O) -> ReLU -> Linear(., S*O) -> (b, S, O) logits for
    O operations in each of S steps (softmaxed by the caller)."""

    def __init__(self, channels: int, steps: int, operations: int) -> None:
        super().__init__()
        self.steps = steps
        self.operations = operations
        outputs = steps * operations
        self.ca_fc = nn.Sequential(nn.Linear(channels, outputs * 2), nn.ReLU(), nn.Linear(outputs * 2, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (b, C)
        return self.ca_fc(pooled).reshape(-1, self.steps, self.operations)  # (b, S, O)


class _MixedOperation(nn.Module):
    """Every operation on x, each scaled by its per-image weight, concatenated (O*C channels), then a
    1x1 back to C and a ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self._ops = nn.ModuleList([_operation(kind, kernel, channels) for kind, kernel in MEFC_OPERATIONS])
        self._out = nn.Sequential(nn.Conv2d(channels * len(MEFC_OPERATIONS), channels, 1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # weights: (b, O); each (b,) column scales one operation's (b, C, h, w) output
        states = [op(x) * weights[:, i].view(-1, 1, 1, 1) for i, op in enumerate(self._ops)]
        return self._out(torch.cat(states, dim=1))  # (b, O*C, h, w) -> (b, C, h, w)


class _OperationSteps(nn.Module):
    """1x1 conv + ReLU, then S residual steps x <- ReLU(mixed_operation_s(x) + x)."""

    def __init__(self, channels: int, steps: int) -> None:
        super().__init__()
        self.preprocess = _Sequence(nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU())
        self._ops = nn.ModuleList([_MixedOperation(channels) for _ in range(steps)])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        for step, layer in enumerate(self._ops):
            x = F.relu(layer(x, weights[:, step, :]) + x)  # weights (b, S, O) -> (b, O) of this step
        return x


class MEFC(nn.Module):
    """Mixture-of-experts feature compensator: the image's own softmax mixture of eight convolution
    experts, over MEFC_STEPS residual steps. Under `layers.0` (weights) and `layers.1` (steps)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            _OperationWeights(channels, MEFC_STEPS, len(MEFC_OPERATIONS)),
            _OperationSteps(channels, MEFC_STEPS),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weigher, steps = self.layers
        return steps(x, weigher(x).softmax(dim=-1))  # softmax over the operations of each step


# -- the model -------------------------------------------------------------------------------------------


class DRSformer(RestorationModel):
    family = "drsformer"
    title = "DRSformer"
    calibration_kind = "sample photographs with synthetic rain"
    config_class = DRSformerConfig
    task = IMAGE_RESTORATION
    downsamplings = 3
    attention_adapters = (TOPK_ADAPTER,)
    licence = "none stated (no licence file: all rights reserved)"

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        cfg = self.config = DRSformerConfig(**kwargs)  # type: ignore[arg-type]
        dim = cfg.dim

        def stage(channels: int, heads: int, blocks: int) -> nn.Sequential:
            return nn.Sequential(*[
                TransformerBlock(channels, heads, cfg.ffn_expansion_factor, cfg.bias, cfg.layernorm_type,
                                 attention=TopKAttention, feed_forward=MixedScaleFeedForward)
                for _ in range(blocks)
            ])

        self.patch_embed = _PatchEmbed(cfg.inp_channels, dim)
        if cfg.mefc:
            self.encoder_level0 = MEFC(dim)
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
        # level 1 has no reduce conv: the decoder (and MEFC refinement) run at 2*dim channels
        self.decoder_level1 = stage(dim * 2, cfg.heads[0], cfg.num_blocks[0])
        if cfg.mefc:
            self.refinement = MEFC(dim * 2)
        self.output = nn.Conv2d(dim * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        embedded = self.patch_embed(inp_img)
        if self.config.mefc:
            embedded = self.encoder_level0(embedded)
        enc1 = self.encoder_level1(embedded)  # the skip to decoder level 1 is taken after MEFC and level 1
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.decoder_level3(dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.decoder_level2(dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        if self.config.mefc:
            dec1 = self.refinement(dec1)
        return self.output(dec1) + inp_img

    def csa_level(self, name: str) -> str:
        group = name.split(".")[0]
        if group == "latent":
            return "bottleneck"
        return group[-1]  # encoder_level2 / decoder_level2 -> "2"

    def block_output(self, csa_name: str) -> tuple[str, bool]:
        parent, _, leaf = csa_name.rpartition(".")
        if leaf != "attn":
            raise ArchitectureError(f"{csa_name} is not the attention of a DRSformer transformer block")
        return parent, False  # the block returns x + attn + ffn: the block output itself

    # -- detection and inference ---------------------------------------------------------------

    @classmethod
    def detect(cls, keys: Iterable[str]) -> bool:
        """The patch embedding plus a key of DRSformer's own: a top-k branch weight, or MSFN's 5x5
        depthwise conv (which also catches checkpoints without the branch weights, to name them)."""
        keys = set(keys)
        return "patch_embed.proj.weight" in keys and any(
            key.endswith((".attn.attn1", ".ffn.dwconv5x5.weight")) for key in keys
        )

    @classmethod
    def infer_config(cls, state_dict: Mapping[str, torch.Tensor]) -> DRSformerConfig:
        keys = list(state_dict)
        _check_branch_weights(keys)
        dim, inp_channels = shape_of(state_dict, "patch_embed.proj.weight")[:2]
        groups = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
        num_blocks = tuple(count_indices(keys, g) for g in groups)
        head_sources = (  # the decoders share their encoder level's heads
            ("encoder_level1", "decoder_level1"),
            ("encoder_level2", "decoder_level2"),
            ("encoder_level3", "decoder_level3"),
            ("latent",),
        )
        heads = []
        for sources in head_sources:
            found = [shape_of(state_dict, f"{s}.0.attn.temperature")[0]
                     for s in sources if f"{s}.0.attn.temperature" in state_dict]
            heads.append(found[0] if found else 1)
        hidden = {}
        widths = (dim, 2 * dim, 4 * dim, 8 * dim, 2 * dim)
        for group, width in zip((*groups, "decoder_level1"), widths, strict=True):
            key = f"{group}.0.ffn.dwconv3x3_1.weight"  # (F, 2, 3, 3)
            if key in state_dict:
                hidden[width] = shape_of(state_dict, key)[0]
        try:
            expansion = _expansion_factor(hidden)
        except ArchitectureError:
            raise ArchitectureError(f"DRSformer: feed-forward widths {dict(sorted(hidden.items()))} fit no "
                                    f"single ffn_expansion_factor") from None
        any_block = next((k for k in keys if k.endswith(".norm1.body.weight")), None)
        with_bias = any_block is None or any_block.replace(".weight", ".bias") in state_dict
        return DRSformerConfig(
            inp_channels=inp_channels,
            out_channels=shape_of(state_dict, "output.weight")[0],
            dim=dim,
            num_blocks=num_blocks,
            heads=tuple(heads),
            ffn_expansion_factor=expansion,
            bias="output.bias" in state_dict,
            layernorm_type="WithBias" if with_bias else "BiasFree",
            mefc=_has_mefc(keys),
        )

    # -- inputs --------------------------------------------------------------------------------

    def calibration_samples(self, side: int, count: int) -> tuple[torch.Tensor, ...]:
        """Centre crops of the offline training photographs with synthetic rain streaks (glmha.data.degrade's
        default RainSpec, seed CALIBRATION_SEED + i), in [0, 1] as the official test script feeds rainy
        images. Grey models get the luminance."""
        from glmha.data.degrade import RainSpec, degrade, seeded_generator
        from glmha.data.sample_images import training_crops

        self.check_input_size(side, side)
        rain = RainSpec()
        rainy = [degrade(rain, crop, seeded_generator(CALIBRATION_SEED + index))
                 for index, crop in enumerate(training_crops(side, count))]
        return self.grey_or_rgb(torch.stack(rainy))  # (count, 3, side, side)


def _check_branch_weights(keys: Sequence[str]) -> None:
    """Every attention must carry attn1..attn4: a checkpoint without them was saved from an older,
    unpublished attention class (cschenxiang/DRSformer issue #4), whose output cannot be reproduced."""
    present = set(keys)
    attentions = sorted(k[: -len(".temperature")] for k in keys if k.endswith(".attn.temperature"))
    names = [f"attn{i}" for i in range(1, len(TOPK_FRACTIONS) + 1)]
    missing = [f"{a}.{n}" for a in attentions for n in names if f"{a}.{n}" not in present]
    if missing:
        layers = len({key.rpartition(".")[0] for key in missing})
        raise ArchitectureError(
            f"DRSformer: the top-k branch weights {names[0]}..{names[-1]} are missing in {layers} of "
            f"{len(attentions)} attention layers ({len(missing)} keys, e.g. {missing[0]}); this checkpoint comes "
            f"from an older attention class (see cschenxiang/DRSformer issue #4) that glmha cannot reproduce"
        )


def _has_mefc(keys: Sequence[str]) -> bool:
    """Whether both MEFC sub-networks are present (DRSformer_arch.py) or neither (200L+SPA), with the
    one-layer, MEFC_STEPS-step structure the official class builds."""
    found = [g for g in MEFC_GROUPS if any(k.startswith(f"{g}.") for k in keys)]
    if not found:
        return False
    if len(found) != len(MEFC_GROUPS):
        raise ArchitectureError(f"DRSformer: the MEFC sub-networks {' and '.join(MEFC_GROUPS)} come together, "
                                f"but only {found[0]} is in the state dict")
    for group in MEFC_GROUPS:
        layers = count_indices(keys, f"{group}.layers")
        steps = count_indices(keys, f"{group}.layers.1._ops")
        if (layers, steps) != (2, MEFC_STEPS):
            raise ArchitectureError(f"DRSformer: {group} has {layers} MEFC sub-layers and {steps} steps; the "
                                    f"official model has 2 and {MEFC_STEPS}")
    return True
