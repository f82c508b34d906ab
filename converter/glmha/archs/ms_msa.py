"""MS-MSA, the channel-wise attention of MST++, MST and Retinexformer: GLMHA versions of its layer kinds
and the adapters that convert them.

MS-MSA computes K^ Q^T, so the softmax runs over the `to_q` tokens: (to_q, to_v) is the pair GLMHA
reduces, `to_k` plays the query. The positional branch reads the full-width V_in, so `to_v` stays C -> C
and V' is formed from it per head. The kinds differ only in a per-channel guide multiplied into V before
the attention (none; MST's mask guidance; Retinexformer's illumination feature), which an adapter names
by `value_guide`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.adapter import AttentionAdapter, LayerInputs, Tokens
from glmha.archs.spectral_blocks import MaskedSpectralAttention, MaskGuidance, SpectralAttention, positional_branch
from glmha.errors import GlmhaError
from glmha.layers import CSALayer, FoldedLinear, GLMHALayer, GLMHASettings
from glmha.linalg import ridge_solve


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


class SpectralAdapter(AttentionAdapter):
    """Converts MST++'s MS-MSA; subclasses add the guide multiplied into V and the modules it needs."""

    csa_class = SpectralAttention
    glmha_class = GLMHASpectralAttention
    copied: tuple[str, ...] = ("to_k", "to_v", "proj", "pos_emb")  # modules that keep their weights

    def value_guide(self, layer: CSALayer, *args: torch.Tensor) -> torch.Tensor | None:
        """What V_in is multiplied by before the attention, (b or 1, N, C); None: nothing."""
        return None

    def empty_glmha(self, layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
        return self.glmha_class(layer.channels, layer.num_heads, reduced, settings)

    def weight_grams(self, layer: CSALayer, mode: str) -> list[torch.Tensor]:
        d = layer.head_dim
        wq = layer.to_q.weight.detach().double()  # (C, C): the softmax axis, GLMHA's keys
        wv = layer.to_v.weight.detach().double()
        rows = [slice(h * d, (h + 1) * d) for h in range(layer.num_heads)]
        return [wq[r] @ wq[r].T + wv[r] @ wv[r].T for r in rows]  # linear rows: both modes agree

    def key_value_activations(self, layer: CSALayer, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = args[0].shape
        tokens = args[0].reshape(b, h * w, c)  # (b, N, C)
        keys = layer.to_q(tokens)  # (b, N, C): the softmax axis
        values = layer.to_v(tokens)  # (b, N, C)
        guide = self.value_guide(layer, *args)
        if guide is not None:
            values = values * guide
        return keys.transpose(1, 2), values.transpose(1, 2)  # (b, C, N) each

    def key_value_generators(self, layer: CSALayer) -> list[tuple[nn.Module, list[int]]]:
        channels = list(range(layer.channels))
        return [(layer.to_q, channels), (layer.to_v, channels)]  # to_q: the softmax axis, GLMHA's keys

    def operator_rows(self, layer: CSALayer) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.to_q.weight.detach().double(), layer.to_v.weight.detach().double()

    def initialise(self, old: CSALayer, new: GLMHALayer, tokens: Tokens, bases: list[torch.Tensor],
                   method: str) -> None:
        for name in self.copied:
            getattr(new, name).load_state_dict(getattr(old, name).state_dict())
        _init_reduced(old, new, tokens, bases, method)

    def refit(self, old: CSALayer, new: GLMHALayer, inputs: LayerInputs) -> None:
        _refit_value_mix(old, new, inputs, self.value_guide)


class MaskedSpectralAdapter(SpectralAdapter):
    """Converts MST's mask-guided MS-MSA: V_in times the mask guidance `mm(mask)` of the first image."""

    csa_class = MaskedSpectralAttention
    glmha_class = GLMHAMaskedSpectralAttention
    copied = (*SpectralAdapter.copied, "mm")

    def value_guide(self, layer: CSALayer, *args: torch.Tensor) -> torch.Tensor | None:
        x, mask = args[:2]
        _, h, w, c = x.shape
        guide = layer.mm(mask[:1].permute(0, 3, 1, 2))  # (1, C, h, w)
        return guide.permute(0, 2, 3, 1).reshape(1, h * w, c)  # (1, N, C)


SPECTRAL_ADAPTER = SpectralAdapter()
MASKED_SPECTRAL_ADAPTER = MaskedSpectralAdapter()


# -- initialisation --------------------------------------------------------------------------------


def _init_reduced(old: SpectralAttention, new: GLMHASpectralAttention, tokens: Tokens, bases: list[torch.Tensor],
                  method: str) -> None:
    """The reduced keys (`to_q` rows) and the V' tokens; the rescale is copied."""
    d, r = old.head_dim, new.reduced_head_dim
    new.rescale.copy_(old.rescale)
    if method == "random":
        return
    mixing = new.value_form == "mix"
    if mixing:
        new.v_reduce.weight.zero_()  # (C', d, 1): output channel h*r+m mixes the d channels of head h
    wq = old.to_q.weight  # (C, C)
    for h, head_tokens in enumerate(tokens):
        out = slice(h * r, (h + 1) * r)
        if method == "svd":
            basis = bases[h].to(wq.dtype)  # (d, r)
            new.to_q.weight[out] = basis.T @ wq[h * d:(h + 1) * d]
            new.v_reduce.weight[out, :, 0] = basis.T
            continue
        for m, members in enumerate(head_tokens):
            index = torch.tensor(members) + h * d
            new.to_q.weight[h * r + m] = wq[index].mean(0)
            if mixing:
                new.v_reduce.weight[h * r + m, members, 0] = 1.0 / len(members)
            else:
                new.v_index[h * r + m] = int(index[0])


# -- refit ------------------------------------------------------------------------------------------


def _spectral_heads(linear: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, N, C) through a linear layer, split head-major: (b, heads, width, N) in float64."""
    b, n, _ = x.shape
    return linear(x).double().reshape(b, n, heads, -1).permute(0, 2, 3, 1)


def _refit_value_mix(old: SpectralAttention, new: GLMHASpectralAttention, inputs: LayerInputs,
                     value_guide: Callable[..., torch.Tensor | None]) -> None:
    """Per head, the d -> d' value mix R solving min sum ||P_S R V - P V||^2 + mu ||R - R_start||^2 exactly."""
    if new.value_form != "mix":
        raise GlmhaError("refit needs the mixing form of the values (GLMHA setting values: mix)")
    heads, d, r = old.num_heads, old.head_dim, new.reduced_head_dim
    normal = torch.zeros(heads, r * d, r * d, dtype=torch.float64)
    rhs = torch.zeros(heads, r * d, dtype=torch.float64)
    start = new.v_reduce.weight.detach().double().reshape(heads, r * d)  # (C', d, 1): row-major R per head
    rescale = old.rescale.detach().double()
    normalize = F.normalize
    with torch.no_grad():
        for args in inputs:
            b, height, width, c = args[0].shape
            n = height * width
            x = args[0].reshape(b, n, c)  # (b, N, C)
            query = normalize(_spectral_heads(old.to_k, x, heads), dim=-1)  # (b, heads, d, N)
            keys = normalize(_spectral_heads(old.to_q, x, heads), dim=-1)  # (b, heads, d, N)
            kept = normalize(_spectral_heads(new.to_q, x, heads), dim=-1)  # (b, heads, d', N)
            values = old.to_v(x)  # (b, N, C)
            guide = value_guide(old, *args)  # (b or 1, N, C) or None
            if guide is not None:
                values = values * guide
            values = values.double().reshape(b, n, heads, d).permute(0, 2, 3, 1)  # (b, heads, d, N)
            attention = ((query @ keys.transpose(-2, -1)) * rescale).softmax(-1)  # (b, heads, d, d)
            logits = (query @ kept.transpose(-2, -1)) * rescale
            if new.token_bias is not None:
                logits = logits + new.token_bias.double()
            attention_kept = logits.softmax(-1)  # (b, heads, d, d')
            a_gram = attention_kept.transpose(-2, -1) @ attention_kept  # (b, heads, d', d')
            v_gram = values @ values.transpose(-2, -1)  # (b, heads, d, d)
            target = attention_kept.transpose(-2, -1) @ (attention @ values) @ values.transpose(-2, -1)
            # vec(A R B) = (A (x) B^T) vec(R) for row-major vec of R (d', d): index m * d + j
            normal += torch.einsum("bhmn,bhkj->hmjnk", a_gram, v_gram).reshape(heads, r * d, r * d)
            rhs += target.reshape(b, heads, r * d).sum(0)
    solved = ridge_solve(normal, rhs, start)  # (heads, d' * d)
    if torch.isfinite(solved).all():
        new.v_reduce.weight.copy_(solved.reshape(heads * r, d, 1).to(new.v_reduce.weight.dtype))
