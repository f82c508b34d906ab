"""MDTA, the channel-wise attention of Restormer (and PromptIR): its CSA layer, its GLMHA version and the
adapter that converts one into the other.

MDTA: softmax(temperature * Q^ K^T) V per head, tokens are channels; Q, K and V come from one 1x1 conv
C -> 3C (chunks Q|K|V) and a depthwise 3x3 on all 3C channels. A channel's key or value is therefore
the 3x3 operator w (x) f of its 1x1 row w and its own depthwise filter f; the inner product of two such
operators is <w_a, w_b> <f_a, f_b>, which is how the weight spectra below are formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.adapter import AttentionAdapter, LayerInputs, Tokens
from glmha.layers import CSALayer, GLMHALayer, GLMHASettings, folded_pointwise_conv
from glmha.linalg import rank_one, ridge_solve, value_targets

REFIT_PIXELS = 4096  # pixels sampled per calibration input for the value-generator regressions


class RestormerAttention(CSALayer):
    """MDTA: softmax(temperature * Q^ K^T) V per head, tokens are channels (C x C per image)."""

    def __init__(self, channels: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(
            channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=bias
        )
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)  # 3 x (b, C, h, w)
        q = q.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        k = k.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        v = v.reshape(b, self.num_heads, -1, h * w)  # (b, heads, d, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        out = self.attend_channels(q, k, v, self.temperature)  # (b, heads, d, N)
        return self.project_out(out.reshape(b, c, h, w))


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
        out = self.attend(q.reshape(b, self.num_heads, -1, h * w), k, v)  # (b, heads, d, N)
        return self.project_out(out.view(b, c, h, w))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(b, heads, d, N) queries, (b, heads, d', N) keys and values -> (b, heads, d, N)."""
        return self.attention(query, key, self.temperature) @ value  # (b, heads, d, d') @ (b, heads, d', N)


class MDTAAdapter(AttentionAdapter):
    """Converts MDTA: (K, V) are the chunks C..3C-1 of `qkv` / `qkv_dwconv`; Q, the temperature and
    `project_out` keep their weights."""

    csa_class = RestormerAttention
    glmha_class = GLMHARestormerAttention

    def empty_glmha(self, layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
        return self.glmha_class(layer.channels, layer.num_heads, reduced, layer.qkv.bias is not None, settings)

    def weight_grams(self, layer: CSALayer, mode: str) -> list[torch.Tensor]:
        c, heads, d = layer.channels, layer.num_heads, layer.head_dim
        w = layer.qkv.weight.detach().double().reshape(3 * c, c)  # (3C, C)
        f = layer.qkv_dwconv.weight.detach().double().reshape(3 * c, 9)  # (3C, 9)
        if mode == "pointwise":
            f = torch.ones_like(f)  # <f_a, f_b> == 9 everywhere: G is 9 [W_K | W_V][W_K | W_V]^T
        blocks = [(w[o:o + d], f[o:o + d]) for h in range(heads) for o in (c + h * d, 2 * c + h * d)]
        return [(wk @ wk.T) * (fk @ fk.T) + (wv @ wv.T) * (fv @ fv.T)  # kernel w (x) f inner products
                for (wk, fk), (wv, fv) in zip(blocks[0::2], blocks[1::2], strict=True)]

    def key_value_activations(self, layer: CSALayer, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = args[0]
        b, c = x.shape[:2]
        _, k, v = layer.qkv_dwconv(layer.qkv(x)).chunk(3, dim=1)  # (b, C, h, w) each
        return k.reshape(b, c, -1), v.reshape(b, c, -1)  # (b, C, N) each

    def key_value_generators(self, layer: CSALayer) -> list[tuple[nn.Module, list[int]]]:
        c = layer.channels
        keys, values = list(range(c, 2 * c)), list(range(2 * c, 3 * c))  # the K and V chunks of the 3C outputs
        return [(layer.qkv, keys), (layer.qkv_dwconv, keys), (layer.qkv, values), (layer.qkv_dwconv, values)]

    def operator_rows(self, layer: CSALayer) -> tuple[torch.Tensor, torch.Tensor]:
        c = layer.channels
        w = layer.qkv.weight.detach().double().reshape(3 * c, c)  # (3C, C)
        f = layer.qkv_dwconv.weight.detach().double().reshape(3 * c, 9)  # (3C, 9)
        operators = (w[:, :, None] * f[:, None, :]).reshape(3 * c, 9 * c)  # row i: w_i (x) f_i
        return operators[c:2 * c], operators[2 * c:]

    def initialise(self, old: CSALayer, new: GLMHALayer, tokens: Tokens, bases: list[torch.Tensor],
                   method: str) -> None:
        _init_mdta(old, new, tokens, bases, method)

    def refit(self, old: CSALayer, new: GLMHALayer, inputs: LayerInputs) -> None:
        _refit_mdta(old, new, inputs)


MDTA_ADAPTER = MDTAAdapter()


# -- initialisation --------------------------------------------------------------------------------


def _init_mdta(old: RestormerAttention, new: GLMHARestormerAttention, tokens: Tokens, bases: list[torch.Tensor],
               method: str) -> None:
    c, d, r = old.channels, old.head_dim, new.reduced_head_dim
    new.temperature.copy_(old.temperature)
    new.project_out.load_state_dict(old.project_out.state_dict())
    w = old.qkv.weight  # (3C, C, 1, 1)
    f = old.qkv_dwconv.weight  # (3C, 1, 3, 3)
    new.q.weight.copy_(w[:c])
    new.q_dwconv.weight.copy_(f[:c])
    biased = old.qkv.bias is not None
    if biased:
        new.q.bias.copy_(old.qkv.bias[:c])
        new.q_dwconv.bias.copy_(old.qkv_dwconv.bias[:c])
    if method == "random":
        return
    reduced = new.reduced_channels
    for h, head_tokens in enumerate(tokens):
        for part, offset in ((0, c), (1, 2 * c)):  # K rows start at C, V rows at 2C
            first = part * reduced + h * r  # first output row of this head's K (or V) tokens
            rows = slice(offset + h * d, offset + (h + 1) * d)
            if method == "svd":
                _project_rows(old, new, bases[h], rows, first)
                continue
            for m, members in enumerate(head_tokens):
                index = torch.tensor(members) + offset + h * d
                out = first + m
                if len(members) == 1:
                    new.kv.weight[out] = w[index[0]]
                    new.kv_dwconv.weight[out] = f[index[0]]
                else:  # merged: the members' mean 3x3 operator, refactored as row (x) filter
                    operator = (w[index].reshape(-1, c, 1) * f[index].reshape(-1, 1, 9)).mean(0)  # (C, 9)
                    row, taps = rank_one(operator)
                    new.kv.weight[out] = row.to(w.dtype).reshape(c, 1, 1)
                    new.kv_dwconv.weight[out] = taps.to(w.dtype).reshape(1, 3, 3)
                if biased:
                    new.kv.bias[out] = old.qkv.bias[index].mean()
                    new.kv_dwconv.bias[out] = old.qkv_dwconv.bias[index].mean()


def _project_rows(old: RestormerAttention, new: GLMHARestormerAttention, basis: torch.Tensor, rows: slice,
                  first: int) -> None:
    """`svd`: token m's operator is sum_j U[j, m] (w_j (x) f_j) over the head's channels j."""
    c = old.channels
    w, f = old.qkv.weight, old.qkv_dwconv.weight
    basis = basis.to(w.dtype)  # (d, r)
    w_head = w[rows].reshape(-1, c)  # (d, C)
    f_head = f[rows].reshape(-1, 9)  # (d, 9)
    for m in range(basis.shape[1]):
        operator = w_head.T @ (basis[:, m:m + 1] * f_head)  # (C, 9)
        row, taps = rank_one(operator)
        new.kv.weight[first + m] = row.to(w.dtype).reshape(c, 1, 1)
        new.kv_dwconv.weight[first + m] = taps.to(w.dtype).reshape(1, 3, 3)
    if old.qkv.bias is not None:
        new.kv.bias[first:first + basis.shape[1]] = basis.T @ old.qkv.bias[rows]
        new.kv_dwconv.bias[first:first + basis.shape[1]] = basis.T @ old.qkv_dwconv.bias[rows]


# -- refit ------------------------------------------------------------------------------------------


def _attention_parts(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Teacher MDTA internals on one input: normalised q, k (b, heads, d, N), v (b, heads, d, N)."""
    b, _, h, w = x.shape
    q, k, v = layer.qkv_dwconv(layer.qkv(x)).chunk(3, dim=1)  # 3 x (b, C, h, w)
    heads = layer.num_heads
    q = F.normalize(q.reshape(b, heads, -1, h * w), dim=-1)
    k = F.normalize(k.reshape(b, heads, -1, h * w), dim=-1)
    return q, k, v.reshape(b, heads, -1, h * w)


def _refit_mdta(old: RestormerAttention, new: GLMHARestormerAttention, inputs: LayerInputs) -> None:
    """Per kept value token m: ridge regression of its 1x1 row on the input filtered by its own depthwise
    filter (sampled pixels), toward the value tokens V* that best reproduce the teacher's attention output."""
    c, heads, r = old.channels, old.num_heads, new.reduced_head_dim
    reduced = new.reduced_channels
    filters = new.kv_dwconv.weight[reduced:].detach().double().reshape(reduced, 9)  # (C', 9)
    weights = new.kv.weight[reduced:].detach().double().reshape(reduced, c)  # (C', C)
    grams = torch.zeros(reduced, c, c, dtype=torch.float64)
    rhs = torch.zeros(reduced, c, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    temperature = old.temperature.detach().double()
    chunk = max(1, (1 << 22) // (c * REFIT_PIXELS))  # tokens per block: features stay below ~32 MB
    with torch.no_grad():
        for (batch,) in inputs:
            for x in batch.split(1):
                _, _, height, width = x.shape
                q, k, v = (t.double() for t in _attention_parts(old, x))
                attention = ((q @ k.transpose(-2, -1)) * temperature).softmax(-1)  # (1, heads, d, d)
                kv = new.kv_dwconv(new.kv(x)).double()  # (1, 2C', h, w)
                k_s = F.normalize(kv[:, :reduced].reshape(1, heads, r, -1), dim=-1)
                v_s = kv[:, reduced:].reshape(1, heads, r, -1)  # (1, heads, d', N)
                logits = (q @ k_s.transpose(-2, -1)) * temperature
                if new.token_bias is not None:
                    logits = logits + new.token_bias.double()
                targets = value_targets(attention, logits.softmax(-1), v, v_s).reshape(reduced, -1)  # (C', N)
                count = min(REFIT_PIXELS, height * width)
                pixels = torch.randperm(height * width, generator=generator)[:count]
                rows, cols = pixels // width, pixels % width
                padded = F.pad(x[0].double(), (1, 1, 1, 1))  # zeros, as the depthwise conv
                # the 9 shifted inputs at the sampled pixels: (9, C, count), taps in (dy, dx) order
                taps = torch.stack([padded[:, rows + dy, cols + dx] for dy in range(3) for dx in range(3)])
                values = v_s.reshape(reduced, -1)[:, pixels]  # (C', count)
                for first in range(0, reduced, chunk):
                    block = slice(first, first + chunk)
                    features = torch.einsum("mt,tcp->mcp", filters[block], taps)  # (m, C, count): f_m * X
                    current = torch.einsum("mc,mcp->mp", weights[block], features)  # w_m . Z_m
                    goal = targets[block][:, pixels] - (values[block] - current)  # minus the biases' share
                    grams[block] += features @ features.transpose(1, 2)
                    rhs[block] += torch.einsum("mcp,mp->mc", features, goal)
    solved = ridge_solve(grams, rhs, weights)  # (C', C): one regression per kept value token
    if torch.isfinite(solved).all():
        new.kv.weight[reduced:] = solved.to(new.kv.weight.dtype).reshape(reduced, c, 1, 1)
