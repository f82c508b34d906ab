"""Each layer kind declares its tensor layout; nothing infers it from sizes (issue 12, item 2).

The traps are feature maps whose height equals their channel count: a guess from `shape[1] == C`
reads a channels-last (b, h, w, C) map as channels-first there. The GLMHA spectral layers are checked
against a channels-first reference written out here, with a live calibration net, at such sizes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glmha.archs import MSTPlusPlus, Restormer
from glmha.archs.mdta import GLMHARestormerAttention
from glmha.archs.ms_msa import GLMHAMaskedSpectralAttention, GLMHASpectralAttention
from glmha.archs.restormer import RestormerAttention
from glmha.archs.spectral_blocks import MaskedSpectralAttention, SpectralAttention
from glmha.layers import GLMHASettings
from glmha.report import describe


def test_every_layer_kind_declares_its_layout() -> None:
    assert SpectralAttention.channels_last and MaskedSpectralAttention.channels_last
    assert GLMHASpectralAttention.channels_last and GLMHAMaskedSpectralAttention.channels_last
    assert not RestormerAttention.channels_last and not GLMHARestormerAttention.channels_last


@pytest.mark.parametrize(("model", "height", "width", "expected"), [
    # MST++ level 1 has 16 channels on a 16 x 32 map: (b, 16, 32, 16) channels-last
    (lambda: MSTPlusPlus(in_channels=3, out_channels=16, n_feat=16, stage=1, stage_blocks=(1, 1)), 16, 32,
     [[16, 32], [8, 16], [16, 32]]),
    # Restormer level 1 has 16 channels on a 16 x 24 map: (b, 16, 16, 24) channels-first
    (lambda: Restormer(dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4)), 16, 24,
     [[16, 24], [8, 12], [4, 6], [2, 3], [4, 6], [8, 12], [16, 24], [16, 24]]),
])
def test_report_reads_each_layers_grid_by_its_layout(model, height: int, width: int, expected) -> None:
    report = describe(model(), height, width)
    assert [layer.resolution for layer in report.layers] == expected


def _live(layer: GLMHASpectralAttention, seed: int) -> GLMHASpectralAttention:
    """Random weights everywhere, including the calibration net (zero right after conversion) and token bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        kept = torch.randperm(layer.channels, generator=generator)[:layer.reduced_channels]
        layer.v_index.copy_(kept.sort().values)
    return layer.eval()


def _reference(layer: GLMHASpectralAttention, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    """The GLMHA spectral layer computed channels-first, step by step; x (b, h, w, C), guide (1, C, h, w)."""
    b, h, w, c = x.shape
    heads, n = layer.num_heads, h * w
    channels_first = x.permute(0, 3, 1, 2).reshape(b, c, n)  # (b, C, N)
    query = torch.einsum("oc,bcn->bon", layer.to_k.weight, channels_first)  # (b, C, N)
    calibration = layer.calibrate(query.reshape(b, c, h, w))  # (b, C)
    tilde = channels_first * (1 + layer.alpha * calibration)[:, :, None]  # X~, scaled along channels
    key = torch.einsum("oc,bcn->bon", layer.to_q.weight, tilde)  # (b, C', N)
    value_in = torch.einsum("oc,bcn->bon", layer.to_v.weight, tilde)  # (b, C, N)
    guided = value_in if guide is None else value_in * guide.reshape(1, c, n)
    value = guided[:, layer.v_index]  # (b, C', N)
    q = F.normalize(query.reshape(b, heads, -1, n), dim=-1)  # (b, heads, d, N)
    k = F.normalize(key.reshape(b, heads, -1, n), dim=-1)  # (b, heads, d', N)
    logits = q @ k.transpose(-2, -1) * layer.rescale + layer.token_bias  # (b, heads, d, d')
    out = logits.softmax(dim=-1) @ value.reshape(b, heads, -1, n)  # (b, heads, d, N)
    out = torch.einsum("oc,bcn->bon", layer.proj.weight, out.reshape(b, c, n)) + layer.proj.bias[:, None]
    positional = layer.pos_emb(value_in.reshape(b, c, h, w))  # (b, C, h, w)
    return (out.reshape(b, c, h, w) + positional).permute(0, 2, 3, 1)  # (b, h, w, C)


@pytest.mark.parametrize(("height", "width"), [(8, 12), (8, 8), (12, 8)])
def test_spectral_glmha_reweights_channels_at_height_equal_to_channels(height: int, width: int) -> None:
    layer = _live(GLMHASpectralAttention(8, 2, 4, GLMHASettings()), seed=height * width)
    x = torch.randn(2, height, width, 8, generator=torch.Generator().manual_seed(1))
    assert layer.calibrate(torch.randn(2, 8, height, width)).abs().min() > 0  # the calibration net is live
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x, None), rtol=1e-5, atol=1e-5)


def test_masked_spectral_glmha_reweights_channels_at_height_equal_to_channels() -> None:
    channels = height = width = 8  # MST maps are square; height == width == C
    layer = _live(GLMHAMaskedSpectralAttention(channels, 2, 4, GLMHASettings()), seed=3)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, height, width, channels, generator=generator)
    mask = torch.rand(1, height, width + 2 * (channels - 1), channels, generator=generator)  # (b, h, W', C)
    with torch.no_grad():
        guide = layer.mm(mask.permute(0, 3, 1, 2))  # (1, C, h, h)
        torch.testing.assert_close(layer(x, mask), _reference(layer, x, guide), rtol=1e-5, atol=1e-5)

