"""What every GLMHA layer shares (SPEC section 4): keys and values with C' < C channels, guided by a
calibration net. The layer of each attention kind (its forward signature, tensor layout and weights
copied from the CSA module it replaces) lives with that kind in glmha.archs.

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
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from glmha.config import StrictConfig
from glmha.errors import GlmhaError

CALIBRATION_FORMS = ("channel", "lowrank", "full", "none")  # none: no calibration net (plain low-rank K/V)
NORM_EPS = 1e-12  # F.normalize's default
FOLD_MIN_PIXELS_PER_OUTPUT = 8  # fold the calibration scale into a 1x1 conv's weight when N >= 8 x outputs
VALUE_FORMS = ("gather", "mix")


class CSALayer(nn.Module):
    """Base of every channel-wise self-attention module: C channels split head-major into heads."""

    channels: int
    num_heads: int
    # layout of the feature map the layer receives: (b, h, w, C) when True, else (b, C, h, w); declared by
    # each layer kind, never inferred from sizes (a map whose height equals C would fool any guess)
    channels_last: ClassVar[bool] = False

    @property
    def head_dim(self) -> int:
        return self.channels // self.num_heads

    def token_grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(h, w) of an input feature map of this shape."""
        return (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])

    def combine(self, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(b, heads, d, K) logits and (b, heads, K, N) values -> (b, heads, d, N): a softmax over the keys."""
        return logits.softmax(dim=-1) @ value

    def attend_channels(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        temperature: torch.Tensor) -> torch.Tensor:
        """The attention core on L2-normalised queries (b, heads, d, N) and keys (b, heads, K, N) and the values
        (b, heads, K, N) -> (b, heads, d, N). A replacement core (a submodule named `attention_core`, which
        glmha.compare's baseline methods install) computes it instead, given the layer's own `combine`."""
        core = self._modules.get("attention_core")
        if core is not None:
            return core(query, key, value, temperature, self.combine)
        return self.combine((query @ key.transpose(-2, -1)) * temperature, value)  # logits (b, heads, d, K)


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
    if torch.compiler.is_exporting():  # one path for all sizes: export sizes keep h, w multiples of the grid
        gh = gw = grid
        x = x.contiguous()  # the same maxima as the adaptive pooling of a strided view
    else:
        gh, gw = min(grid, h), min(grid, w)
        if not (x.is_contiguous() and h % gh == 0 and w % gw == 0):
            return F.adaptive_max_pool2d(x, (gh, gw))
    rows = x.view(b, c, gh, h // gh, w).amax(dim=3)  # (b, C, gh, w): max over each band of rows
    return rows.view(b, c, gh, gw, w // gw).amax(dim=-1)  # (b, C, gh, gw)


def export_grid(model: nn.Module) -> int:
    """What the sides of a GLMHA layer's input must be multiples of for one pooling path to serve every size
    in an exported program (glmha.deploy): the calibration nets' grid (or pooling window); 1 without any."""
    cells = 1
    for module in model.modules():
        if isinstance(module, CalibrationNet):
            cells = math.lcm(cells, module.grid or module.pool)
    return cells


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
        if not torch.compiler.is_exporting() and x.shape[0] == 1:  # exported: one path for every batch
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
    # exported programs: the scaled map for every size and batch (ONNX has no per-batch groups); the same maths
    if torch.compiler.is_exporting() or h * w < FOLD_MIN_PIXELS_PER_OUTPUT * out:
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
        self.calibrate = CalibrationNet(channels, num_heads, settings) if settings.calibration != "none" else None
        # (heads, 1, d'): added to the attention logits of each reduced token
        self.token_bias = (nn.Parameter(torch.zeros(num_heads, 1, reduced // num_heads))
                           if settings.token_bias else None)

    @property
    def reduced_head_dim(self) -> int:
        return self.reduced_channels // self.num_heads

    def input_scale(self, query_image: torch.Tensor) -> torch.Tensor | None:
        """1 + alpha * A, the per-image channel scale (b, C) of X~ = X + alpha (X * A); None when alpha
        is 0 or the layer has no calibration net (X~ == X)."""
        if self.alpha == 0 or self.calibrate is None:
            return None
        return 1.0 + self.alpha * self.calibrate(query_image)

    def attention(self, query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """softmax over the reduced tokens of temperature * Q^ K^'T (+ token bias): (b, heads, d, N) queries and
        (b, heads, d', N) keys -> (b, heads, d, d')."""
        return self.attention_logits(query, key, temperature).softmax(dim=-1)

    def attention_logits(self, query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """temperature * Q^ K^'T (+ token bias), (b, heads, d, d'), for kinds that do more than a softmax.

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
        return logits


def changed_layers(model: nn.Module) -> list[tuple[str, CSALayer]]:
    """The attention layers a conversion or a compared method changed, in forward order: GLMHA layers and
    CSA layers whose attention core was replaced."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, GLMHALayer)
            or (isinstance(module, CSALayer) and module._modules.get("attention_core") is not None)]


def changed_parameters(layer: CSALayer) -> list[nn.Parameter]:
    """What distillation with `trainable: glmha` trains in a changed layer: what a GLMHA conversion created
    (calibration net, reduced K/V generators); all of a layer whose attention core was replaced."""
    return layer.new_parameters() if isinstance(layer, GLMHALayer) else list(layer.parameters())
