"""GLMHA layers (SPEC section 4): keys and values with C' < C channels, guided by a calibration net.

Each class keeps the forward signature and tensor layout of the CSA module it replaces; the query
path, temperature / rescale, output projection and side branches keep the original weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import CSALayer
from glmha.archs.spectral_blocks import MaskGuidance, positional_branch
from glmha.config import StrictConfig
from glmha.errors import GlmhaError


@dataclass(frozen=True)
class GLMHASettings(StrictConfig):
    """Hyperparameters of every converted layer, saved in the export metadata."""

    alpha: float = 0.6  # strength of the re-weighting X~ = X + alpha * (X * A), the paper's best
    pool: int = 2  # max-pooling window and stride applied to Q before the depthwise conv
    kernel: int = 3  # depthwise conv kernel of the calibration net

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise GlmhaError("GLMHA settings: pool must be >= 1 and kernel an odd number >= 1")


class CalibrationNet(nn.Module):
    """phi: max-pool Q, depthwise kxk + GELU, global average, per-head linear + tanh -> A in R^C.

    The per-head linear is zero-initialised, so A == 0 and X~ == X right after conversion.
    """

    def __init__(self, channels: int, num_heads: int, settings: GLMHASettings) -> None:
        super().__init__()
        self.pool = settings.pool
        self.dwconv = nn.Conv2d(channels, channels, settings.kernel, padding=settings.kernel // 2,
                                groups=channels)
        self.linear = nn.Conv2d(channels, channels, 1, groups=num_heads)  # block-diagonal per head
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) query -> (b, C, 1, 1) calibration vector in (-1, 1)."""
        pooled = F.max_pool2d(query, self.pool, ceil_mode=True) if self.pool > 1 else query
        summary = F.gelu(self.dwconv(pooled)).mean(dim=(2, 3), keepdim=True)  # (b, C, 1, 1)
        return torch.tanh(self.linear(summary))


class GLMHALayer(CSALayer):
    """Common state: C, heads, C' and the calibration net."""

    reduced_channels: int
    alpha: float
    # submodules created by the conversion (the rest is copied from the CSA layer); distillation with
    # `trainable: glmha` trains only these
    NEW_SUBMODULES: tuple[str, ...] = ("calibrate",)

    def new_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name in self.NEW_SUBMODULES for p in getattr(self, name).parameters()]

    def _setup(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        if reduced < num_heads or reduced % num_heads:
            raise GlmhaError(f"C'={reduced} is not a positive multiple of the {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.reduced_channels = reduced
        self.alpha = settings.alpha
        self.calibrate = CalibrationNet(channels, num_heads, settings)

    @property
    def reduced_head_dim(self) -> int:
        return self.reduced_channels // self.num_heads

    def reweight(self, x: torch.Tensor, query_image: torch.Tensor) -> torch.Tensor:
        """X~ = X + alpha (X * A); `x` is NCHW (Restormer) or channels-last (MST) like the query."""
        calibration = self.calibrate(query_image)  # (b, C, 1, 1)
        if x.shape[1] != self.channels:  # channels-last (b, h, w, C)
            calibration = calibration.view(x.shape[0], 1, 1, self.channels)
        return x + self.alpha * (x * calibration)


class GLMHARestormerAttention(GLMHALayer):
    """GLMHA for MDTA: Q as before; K', V' from X~ by a 1x1 conv C -> 2C' and a depthwise 3x3."""

    NEW_SUBMODULES = ("calibrate", "kv", "kv_dwconv")

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
        x = self.reweight(x, q)
        k, v = self.kv_dwconv(self.kv(x)).chunk(2, dim=1)  # 2 x (b, C', h, w)
        q = F.normalize(q.reshape(b, self.num_heads, -1, h * w), dim=-1)  # (b, heads, d, N)
        k = F.normalize(k.reshape(b, self.num_heads, -1, h * w), dim=-1)  # (b, heads, d', N)
        v = v.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d', N)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (b, heads, d, d')
        out = attn.softmax(dim=-1) @ v  # (b, heads, d, N)
        return self.project_out(out.reshape(b, c, h, w))


class GLMHASpectralAttention(GLMHALayer):
    """GLMHA for MS-MSA (MST++): the softmax runs over `to_q`, so (to_q, V) is the reduced pair.

    `to_k` (the query role), `rescale`, `proj` and the positional branch keep their weights. The
    positional branch needs the full-width V_in, so `to_v` stays C -> C and a per-head
    `v_reduce` (d -> d') forms V' from it: the same token set as the reduced keys.
    """

    NEW_SUBMODULES = ("calibrate", "to_q", "v_reduce")

    def __init__(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        super().__init__()
        self._setup(channels, num_heads, reduced, settings)
        self.to_q = nn.Linear(channels, reduced, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.v_reduce = nn.Conv1d(channels, reduced, 1, groups=num_heads, bias=False)
        self.rescale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(channels, channels, bias=True)
        self.pos_emb = positional_branch(channels)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        return self._forward(x_in, None)

    def _forward(self, x_in: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        b, h, w, c = x_in.shape
        n = h * w
        query = self.to_k(x_in.reshape(b, n, c))  # (b, N, C)
        query_image = query.transpose(1, 2).reshape(b, c, h, w)  # (b, C, h, w)
        x = self.reweight(x_in, query_image).reshape(b, n, c)  # (b, N, C)
        v_inp = self.to_v(x)  # (b, N, C)
        guided = v_inp if guide is None else v_inp * guide
        value = self.v_reduce(guided.transpose(1, 2))  # (b, C', N)
        key = self.to_q(x).transpose(1, 2)  # (b, C', N)
        heads = self.num_heads
        query = F.normalize(query.transpose(1, 2).reshape(b, heads, -1, n), dim=-1)  # (b, heads, d, N)
        key = F.normalize(key.reshape(b, heads, -1, n), dim=-1)  # (b, heads, d', N)
        value = value.reshape(b, heads, -1, n)  # (b, heads, d', N)
        attn = (query @ key.transpose(-2, -1)) * self.rescale  # (b, heads, d, d')
        out = attn.softmax(dim=-1) @ value  # (b, heads, d, N)
        out = self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))  # (b, N, C)
        v_img = v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (b, C, h, w)
        return out.view(b, h, w, c) + self.pos_emb(v_img).permute(0, 2, 3, 1)


class GLMHAMaskedSpectralAttention(GLMHASpectralAttention):
    """GLMHA for MST's mask-guided MS-MSA: V_in is multiplied by the mask guidance before v_reduce."""

    def __init__(self, channels: int, num_heads: int, reduced: int, settings: GLMHASettings) -> None:
        super().__init__(channels, num_heads, reduced, settings)
        self.mm = MaskGuidance(channels)

    def forward(self, x_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _, h, w, c = x_in.shape
        guide = self.mm(mask[:1].permute(0, 3, 1, 2))  # (1, C, h, h)
        return self._forward(x_in, guide.permute(0, 2, 3, 1).reshape(1, h * w, c))  # guide (1, N, C)
