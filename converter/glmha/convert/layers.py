"""GLMHA layers (SPEC section 4): keys and values with C' < C channels, guided by a calibration net.

Each class keeps the forward signature and tensor layout of the CSA module it replaces; the query
path, temperature / rescale, output projection and side branches keep the original weights.

Why the layers look the way they do (measured in bench/latency.py and bench/calibration_forms.py):
* The calibration vector A is one scale per channel, so X~ = X (1 + alpha A) is never formed as a
  feature map: the scale is folded into the 1x1 / linear weights of the key/value generators, per
  image (a (2C' x C) multiply instead of a C x N one).
* The query is max-pooled to a fixed grid of at most `grid` x `grid` cells (still max pooling, but
  its cost no longer grows with the resolution of the depthwise conv that follows).
* The calibration net's last layer is per channel (`channel`, 2C parameters) by default; the
  paper's per-head d x d map (`full`, C*d + C) and a low-rank C -> r -> C map (`lowrank`) remain
  selectable. The per-head map alone costs more parameters than a 1-head layer can save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import CSALayer
from glmha.archs.spectral_blocks import MaskGuidance, positional_branch
from glmha.config import StrictConfig
from glmha.errors import GlmhaError

CALIBRATION_FORMS = ("channel", "lowrank", "full")
NORM_EPS = 1e-12  # F.normalize's default
FOLD_MIN_PIXELS_PER_OUTPUT = 8  # fold the calibration scale into a 1x1 conv's weight when N >= 8 x outputs
VALUE_FORMS = ("gather", "mix")


@dataclass(frozen=True)
class GLMHASettings(StrictConfig):
    """Hyperparameters of every converted layer, saved in the export metadata."""

    alpha: float = 0.6  # strength of the re-weighting X~ = X + alpha * (X * A), the paper's best
    calibration: str = "channel"  # last layer of the calibration net: channel | lowrank | full (per head)
    rank: int = 4  # lowrank only: C -> rank -> C
    grid: int = 8  # max-pool Q to at most grid x grid cells; 0: a fixed `pool` x `pool` window instead
    pool: int = 2  # window of the format-1 pooling (grid 0)
    kernel: int = 3  # depthwise conv kernel of the calibration net
    values: str = "gather"  # MST family: V' gathers the kept channels of V (gather) or mixes them (mix)
    token_bias: bool = True  # a learnable logit bias per reduced token (merge starts it at log group size)

    def __post_init__(self) -> None:
        """The one check of these values: glmha-convert's options, recipes (`student.*`, via
        glmha.convert.plan.in_recipe_terms) and export metadata all build this class."""
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise GlmhaError(f"--alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.pool < 1 or self.kernel < 1 or self.kernel % 2 == 0 or self.grid < 0:
            raise GlmhaError("GLMHA settings: pool must be >= 1, grid >= 0 and kernel an odd number >= 1")
        if self.calibration not in CALIBRATION_FORMS:
            raise GlmhaError(f"--calibration must be one of {', '.join(CALIBRATION_FORMS)}, "
                             f"got '{self.calibration}'")
        if self.rank < 1:
            raise GlmhaError(f"GLMHA settings: rank must be >= 1, got {self.rank}")
        if self.values not in VALUE_FORMS:
            raise GlmhaError(f"GLMHA settings: values must be one of {', '.join(VALUE_FORMS)}")


# What exports of format 1 (before calibration forms existed) were built with.
LEGACY_SETTINGS = {"calibration": "full", "grid": 0, "values": "mix", "token_bias": False}


def max_pool_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Max pooling of (b, C, h, w) to (b, C, min(grid, h), min(grid, w)) cells as
    `adaptive_max_pool2d` defines them; a fast two-step reduction when the cells tile the map."""
    b, c, h, w = x.shape
    gh, gw = min(grid, h), min(grid, w)
    if x.is_contiguous() and h % gh == 0 and w % gw == 0:
        rows = x.view(b, c, gh, h // gh, w).amax(dim=3)  # (b, C, gh, w): max over each band of rows
        return rows.view(b, c, gh, gw, w // gw).amax(dim=-1)  # (b, C, gh, gw)
    return F.adaptive_max_pool2d(x, (gh, gw))


class CalibrationNet(nn.Module):
    """phi: max-pool Q, depthwise kxk + GELU, global average, a linear map + tanh -> A in R^C.

    The linear map's output side starts at zero, so A == 0 and X~ == X right after conversion.
    """

    def __init__(self, channels: int, num_heads: int, settings: GLMHASettings) -> None:
        super().__init__()
        self.grid, self.pool, self.form = settings.grid, settings.pool, settings.calibration
        self.dwconv = nn.Conv2d(channels, channels, settings.kernel, padding=settings.kernel // 2,
                                groups=channels)
        if self.form == "full":
            self.linear = nn.Conv2d(channels, channels, 1, groups=num_heads)  # block-diagonal per head
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        elif self.form == "lowrank":
            self.down = nn.Linear(channels, min(settings.rank, channels), bias=False)
            self.up = nn.Linear(min(settings.rank, channels), channels)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            self.weight = nn.Parameter(torch.zeros(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) query (any memory layout) -> (b, C) calibration vector in (-1, 1)."""
        if self.grid:
            pooled = max_pool_to_grid(query, self.grid)
        else:
            pooled = F.max_pool2d(query, self.pool, ceil_mode=True) if self.pool > 1 else query
        summary = F.gelu(self.dwconv(pooled)).mean(dim=(2, 3))  # (b, C)
        if self.form == "full":
            return torch.tanh(self.linear(summary[:, :, None, None]).flatten(1))  # (b, C, 1, 1) -> (b, C)
        if self.form == "lowrank":
            return torch.tanh(self.up(self.down(summary)))
        return torch.tanh(summary * self.weight + self.bias)


class FoldedLinear(nn.Linear):
    """A linear layer whose input channels are scaled per image, with the scale folded into the weight:
    (x * s) W^T == x (W diag(s))^T costs out x C multiplies per image instead of N x C."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, N, C), scale (b, C) or None -> (b, N, out)."""
        if scale is None:
            return F.linear(x, self.weight, self.bias)
        weight = self.weight.unsqueeze(0) * scale.unsqueeze(1)  # (b, out, C)
        if x.shape[0] == 1:
            return F.linear(x, weight[0], self.bias)
        out = torch.bmm(x, weight.transpose(1, 2))  # (b, N, C) x (b, C, out) -> (b, N, out)
        return out if self.bias is None else out + self.bias


def folded_pointwise_conv(x: torch.Tensor, conv: nn.Conv2d, scale: torch.Tensor | None) -> torch.Tensor:
    """conv(x * scale) for a 1x1 convolution and a per-image channel scale (b, C): folded into the weight
    on large maps (a C x out multiply instead of C x N), applied to the map on small ones, where a fresh
    weight costs the convolution library more than scaling the few pixels (bench/latency.py)."""
    if scale is None:
        return conv(x)
    b, c, h, w = x.shape
    out = conv.out_channels
    if h * w < FOLD_MIN_PIXELS_PER_OUTPUT * out:
        return conv(x * scale.view(b, c, 1, 1))
    weight = conv.weight.view(1, out, c) * scale.unsqueeze(1)  # (b, out, C)
    if b == 1:
        return F.conv2d(x, weight.view(out, c, 1, 1), conv.bias)
    bias = None if conv.bias is None else conv.bias.repeat(b)
    # one grouped conv for the batch: (1, b*C, h, w) with b groups of (out, C) -> (1, b*out, h, w)
    folded = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * out, c, 1, 1), bias, groups=b)
    return folded.view(b, out, h, w)


class GLMHALayer(CSALayer):
    """Common state: C, heads, C', the calibration net and the optional per-token logit bias."""

    reduced_channels: int
    alpha: float
    # submodules and parameters created by the conversion (the rest is copied from the CSA layer);
    # distillation with `trainable: glmha` trains only these
    NEW_SUBMODULES: tuple[str, ...] = ("calibrate", "token_bias")

    def new_parameters(self) -> list[torch.nn.Parameter]:
        found = []
        for name in self.NEW_SUBMODULES:
            item = getattr(self, name, None)
            if isinstance(item, nn.Parameter):
                found.append(item)
            elif isinstance(item, nn.Module):
                found.extend(item.parameters())
        return found

    def _setup(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        if reduced < num_heads or reduced % num_heads:
            raise GlmhaError(f"C'={reduced} is not a positive multiple of the {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.reduced_channels = reduced
        self.alpha = settings.alpha
        self.calibrate = CalibrationNet(channels, num_heads, settings)
        # (heads, 1, d'): added to the attention logits of each reduced token
        self.token_bias = (nn.Parameter(torch.zeros(num_heads, 1, reduced // num_heads))
                           if settings.token_bias else None)

    @property
    def reduced_head_dim(self) -> int:
        return self.reduced_channels // self.num_heads

    def input_scale(self, query_image: torch.Tensor) -> torch.Tensor | None:
        """1 + alpha * A, the per-image channel scale (b, C) of X~ = X + alpha (X * A); None when alpha
        is 0 (X~ == X)."""
        if self.alpha == 0:
            return None
        return 1.0 + self.alpha * self.calibrate(query_image)

    def attention(self, query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """softmax over the reduced tokens of temperature * Q^ K^'T (+ token bias): (b, heads, d, N) queries and
        (b, heads, d', N) keys -> (b, heads, d, d').

        Q^ and K^ are L2-normalised along N as F.normalize does (x / max(|x|, eps)), but the norms are
        applied to the small d x d' product instead of to the C x N and C' x N maps: the same maths,
        two passes over the feature maps fewer.
        """
        logits = query @ key.transpose(-2, -1)  # (b, heads, d, d')
        row = temperature / query.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)  # (b, heads, d, 1)
        column = key.norm(dim=-1).clamp_min(NORM_EPS).reciprocal().unsqueeze(-2)  # (b, heads, 1, d')
        logits = logits * row * column
        if self.token_bias is not None:
            logits = logits + self.token_bias
        return logits.softmax(dim=-1)


class GLMHARestormerAttention(GLMHALayer):
    """GLMHA for MDTA: Q as before; K', V' from X~ by a 1x1 conv C -> 2C' and a depthwise 3x3."""

    NEW_SUBMODULES = ("calibrate", "token_bias", "kv", "kv_dwconv")

    def __init__(self, channels: int, num_heads: int, reduced: int, bias: bool,
                 settings: GLMHASettings) -> None:
        super().__init__()
        self._setup(channels, num_heads, reduced, settings)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(channels, channels, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=bias)
        self.kv = nn.Conv2d(channels, 2 * reduced, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(2 * reduced, 2 * reduced, 3, padding=1, groups=2 * reduced, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_dwconv(self.q(x))  # (b, C, h, w)
        kv = self.kv_dwconv(folded_pointwise_conv(x, self.kv, self.input_scale(q)))  # (b, 2C', h, w) from X~
        k, v = kv.reshape(b, 2, self.num_heads, -1, h * w).unbind(1)  # 2 x (b, heads, d', N)
        attn = self.attention(q.reshape(b, self.num_heads, -1, h * w), k, self.temperature)  # (b, heads, d, d')
        out = attn @ v  # (b, heads, d, N)
        return self.project_out(out.view(b, c, h, w))


class GLMHASpectralAttention(GLMHALayer):
    """GLMHA for MS-MSA (MST++): the softmax runs over `to_q`, so (to_q, V) is the reduced pair.

    `to_k` (the query role), `rescale`, `proj` and the positional branch keep their weights. The
    positional branch needs the full-width V_in, so `to_v` stays C -> C and V' is formed from it per
    head: the kept channels (`values: gather`, an index buffer, no parameters) or a learned d -> d'
    mix (`values: mix`, `v_reduce`); either way the same token set as the reduced keys.
    """

    channels_last = True  # (b, h, w, C), as the MS-MSA it replaces

    def __init__(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        super().__init__()
        self._setup(channels, num_heads, reduced, settings)
        self.to_q = FoldedLinear(channels, reduced, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = FoldedLinear(channels, channels, bias=False)
        self.value_form = settings.values
        if self.value_form == "mix":
            self.v_reduce = nn.Conv1d(channels, reduced, 1, groups=num_heads, bias=False)
        else:  # channel h*d + j of V for each kept token, head-major
            self.register_buffer("v_index", torch.arange(reduced, dtype=torch.int64))
        self.NEW_SUBMODULES = ("calibrate", "token_bias", "to_q") + (("v_reduce",) if self.value_form == "mix"
                                                                     else ())
        self.rescale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(channels, channels, bias=True)
        self.pos_emb = positional_branch(channels)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        return self._forward(x_in, None)

    def _forward(self, x_in: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        b, h, w, c = x_in.shape
        n = h * w
        x = x_in.reshape(b, n, c)  # (b, N, C)
        query = self.to_k(x)  # (b, N, C)
        scale = self.input_scale(query.view(b, h, w, c).permute(0, 3, 1, 2))  # NCHW view of channels-last
        v_inp = self.to_v(x, scale)  # (b, N, C) from X~
        key = self.to_q(x, scale)  # (b, N, C') from X~
        guided = v_inp if guide is None else v_inp * guide
        if self.value_form == "mix":
            value = self.v_reduce(guided.transpose(1, 2)).transpose(1, 2)  # (b, C, N) -> (b, C', N) -> (b, N, C')
        else:
            value = guided.index_select(-1, self.v_index)  # (b, N, C')
        heads = self.num_heads
        query = query.reshape(b, n, heads, -1).permute(0, 2, 3, 1)  # (b, heads, d, N)
        key = key.reshape(b, n, heads, -1).permute(0, 2, 3, 1)  # (b, heads, d', N)
        value = value.reshape(b, n, heads, -1).permute(0, 2, 3, 1)  # (b, heads, d', N)
        attn = self.attention(query, key, self.rescale)  # (b, heads, d, d')
        out = attn @ value  # (b, heads, d, N)
        out = self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))  # (b, N, C)
        v_img = v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (b, C, h, w)
        return out.view(b, h, w, c) + self.pos_emb(v_img).permute(0, 2, 3, 1)


class GLMHAMaskedSpectralAttention(GLMHASpectralAttention):
    """GLMHA for MST's mask-guided MS-MSA: V_in is multiplied by the mask guidance before V' is formed."""

    def __init__(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        super().__init__(channels, num_heads, reduced, settings)
        self.mm = MaskGuidance(channels)

    def forward(self, x_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _, h, w, c = x_in.shape
        guide = self.mm(mask[:1].permute(0, 3, 1, 2))  # (1, C, h, h)
        return self._forward(x_in, guide.permute(0, 2, 3, 1).reshape(1, h * w, c))  # guide (1, N, C)
