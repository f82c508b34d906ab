"""Build a GLMHA layer from a CSA layer: copied weights plus initialised reduced K/V generators.

Methods (SPEC section 4):
* `select`: keep the d' channels of each head that a column-pivoted QR of the joint [W_K | W_V]
  rows picks first. Keys and values keep one shared token set and every depthwise filter stays
  with its channel, so the layer is exact at C' = C.
* `svd`: project each head's key/value channels onto the leading d' left singular vectors (the
  plain low-rank projection). Not exact even at C' = C: softmax is not invariant to mixing tokens.
  For MDTA each projected channel's 3x3 operator is refactored as 1x1 row (x) depthwise filter by
  its best rank-1 approximation.
* `random`: default PyTorch initialisation of the reduced generators (a baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from glmha.archs.base import CSALayer
from glmha.archs.restormer import RestormerAttention
from glmha.archs.spectral_blocks import MaskedSpectralAttention, SpectralAttention
from glmha.convert.layers import (
    GLMHALayer,
    GLMHAMaskedSpectralAttention,
    GLMHARestormerAttention,
    GLMHASettings,
    GLMHASpectralAttention,
)
from glmha.convert.spectrum import LayerSpectrum

INIT_METHODS = ("select", "svd", "random")


def empty_glmha_like(layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
    """A GLMHA layer with the shapes that replace `layer` at C' = `reduced` (weights not set)."""
    if isinstance(layer, RestormerAttention):
        return GLMHARestormerAttention(layer.channels, layer.num_heads, reduced,
                                       layer.qkv.bias is not None, settings)
    if isinstance(layer, MaskedSpectralAttention):
        return GLMHAMaskedSpectralAttention(layer.channels, layer.num_heads, reduced, settings)
    if isinstance(layer, SpectralAttention):
        return GLMHASpectralAttention(layer.channels, layer.num_heads, reduced, settings)
    raise TypeError(f"cannot convert {type(layer).__name__}")


def convert_layer(layer: CSALayer, spectrum: LayerSpectrum, reduced: int, method: str,
                  settings: GLMHASettings, seed: int = 0) -> GLMHALayer:
    """The GLMHA replacement of `layer`, on the layer's device and dtype."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init '{method}'")
    reference = next(layer.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = empty_glmha_like(layer, reduced, settings)
    new = new.to(device=reference.device, dtype=reference.dtype)
    heads = spectrum.heads
    d, r = layer.head_dim, reduced // layer.num_heads
    with torch.no_grad():
        if isinstance(layer, RestormerAttention):
            _init_restormer(layer, new, heads, d, r, method)
        else:
            _init_spectral(layer, new, heads, d, r, method)
    return new.train(layer.training)


def _copy(target: nn.Module, source: nn.Module) -> None:
    target.load_state_dict(source.state_dict())


def _selection(heads, d: int, r: int) -> list[list[int]]:
    """Per head, the kept channel indices (sorted), r of the d."""
    return [sorted(head.order[:r]) for head in heads]


def _init_restormer(old: RestormerAttention, new: GLMHARestormerAttention, heads, d: int, r: int,
                    method: str) -> None:
    c = old.channels
    new.temperature.copy_(old.temperature)
    _copy(new.project_out, old.project_out)
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
    for h, head in enumerate(heads):
        for part, offset in ((0, c), (1, 2 * c)):  # K rows start at C, V rows at 2C
            rows = slice(offset + h * d, offset + (h + 1) * d)
            out = slice(part * reduced + h * r, part * reduced + (h + 1) * r)
            if method == "select":
                index = torch.tensor(_selection([head], d, r)[0]) + offset + h * d
                new.kv.weight[out] = w[index]
                new.kv_dwconv.weight[out] = f[index]
                if biased:
                    new.kv.bias[out] = old.qkv.bias[index]
                    new.kv_dwconv.bias[out] = old.qkv_dwconv.bias[index]
                continue
            basis = head.basis[:, :r].to(w.dtype)  # (d, r)
            w_head = w[rows].reshape(d, c)  # (d, C)
            f_head = f[rows].reshape(d, 9)  # (d, 9)
            for m in range(r):
                operator = w_head.T @ (basis[:, m:m + 1] * f_head)  # (C, 9) = sum_c U[c,m] w_c f_c^T
                u, s, vh = torch.linalg.svd(operator.double(), full_matrices=False)
                scale = s[0].sqrt()
                new.kv.weight[out.start + m] = (u[:, 0] * scale).to(w.dtype).reshape(c, 1, 1)
                new.kv_dwconv.weight[out.start + m] = (vh[0] * scale).to(w.dtype).reshape(1, 3, 3)
            if biased:
                new.kv.bias[out] = basis.T @ old.qkv.bias[rows]
                new.kv_dwconv.bias[out] = basis.T @ old.qkv_dwconv.bias[rows]


def _init_spectral(old: SpectralAttention, new: GLMHASpectralAttention, heads, d: int, r: int,
                   method: str) -> None:
    for name in ("to_k", "to_v", "proj", "pos_emb") + (("mm",) if isinstance(old, MaskedSpectralAttention)
                                                        else ()):
        _copy(getattr(new, name), getattr(old, name))
    new.rescale.copy_(old.rescale)
    if method == "random":
        return
    new.v_reduce.weight.zero_()  # (C', d, 1): output channel h*r+m mixes the d channels of head h
    wq = old.to_q.weight  # (C, C)
    for h, head in enumerate(heads):
        out = slice(h * r, (h + 1) * r)
        if method == "select":
            kept = _selection([head], d, r)[0]
            new.to_q.weight[out] = wq[torch.tensor(kept) + h * d]
            for m, channel in enumerate(kept):
                new.v_reduce.weight[h * r + m, channel, 0] = 1.0
        else:
            basis = head.basis[:, :r].to(wq.dtype)  # (d, r)
            new.to_q.weight[out] = basis.T @ wq[h * d:(h + 1) * d]
            new.v_reduce.weight[out, :, 0] = basis.T
