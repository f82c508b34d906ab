"""Linformer and Performer attention cores (glmha.compare.cores) against hand computations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import glmha.compare.cores as cores
from glmha.archs.drsformer import TopKAttention
from glmha.archs.mdta import RestormerAttention
from glmha.archs.spectral_blocks import SpectralAttention
from glmha.compare.cores import LinformerCore, PerformerCore, orthogonal_random_features
from glmha.counting import count_macs
from glmha.errors import GlmhaError

from conftest import randomise

F64 = torch.float64


def attention_inputs(seed: int, heads: int = 2, queries: int = 4, keys: int = 4, pixels: int = 64,
                     low: float = 1.0, spread: float = 0.5, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """L2-normalised q (batch, heads, queries, N), k (batch, heads, keys, N), values, temperature in
    [low, low+spread)."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, heads, queries, pixels, generator=g, dtype=F64), dim=-1)
    k = F.normalize(torch.randn(batch, heads, keys, pixels, generator=g, dtype=F64), dim=-1)
    v = torch.randn(batch, heads, keys, pixels, generator=g, dtype=F64)
    t = low + spread * torch.rand(heads, 1, 1, generator=g, dtype=F64)
    return q, k, v, t


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((q @ k.transpose(-2, -1)) * t).softmax(dim=-1) @ v


def dense(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1) @ value


@contextmanager
def one_line_error(match: str) -> Iterator[None]:
    with pytest.raises(GlmhaError, match=match) as caught:
        yield
    assert "\n" not in str(caught.value)


# -- Linformer ---------------------------------------------------------------------------------------


def test_linformer_select_is_attention_over_the_kept_tokens_only() -> None:
    heads, d, keys, reduced, n = 3, 5, 6, 4, 7
    q, k, v, _ = attention_inputs(0, heads, d, keys, n, batch=2)
    t = torch.tensor([1.7, -0.6, 3.1], dtype=F64).view(heads, 1, 1)
    g = torch.Generator().manual_seed(0)
    kept = [torch.randperm(keys, generator=g)[:reduced].tolist() for _ in range(heads)]
    core = LinformerCore(heads, keys, reduced).double()
    core.select(kept)
    out = core(q, k, v, t, dense)
    for h, chosen in enumerate(kept):
        logits = t[h] * q[:, h] @ k[:, h, chosen].transpose(-2, -1)  # (2, d, d')
        expected = logits.softmax(dim=-1) @ v[:, h, chosen]  # (2, d, N)
        torch.testing.assert_close(out[:, h], expected, rtol=0, atol=1e-12)


def test_linformer_learned_projections_mix_the_tokens_of_their_own_head() -> None:
    heads, d, keys, reduced, n = 2, 3, 5, 2, 6
    q, k, v, _ = attention_inputs(1, heads, d, keys, n)
    t = torch.tensor([0.8, 2.5], dtype=F64).view(heads, 1, 1)
    core = LinformerCore(heads, keys, reduced).double()  # default (random) init: dense E, F
    out = core(q, k, v, t, dense)
    e = core.project_key.weight.detach()[:, :, 0].view(heads, reduced, keys)
    f = core.project_value.weight.detach()[:, :, 0].view(heads, reduced, keys)
    for h in range(heads):
        key, value = e[h] @ k[0, h], f[h] @ v[0, h]  # (d', N): not normalised again
        expected = (t[h] * q[0, h] @ key.T).softmax(dim=-1) @ value
        torch.testing.assert_close(out[0, h], expected, rtol=0, atol=1e-12)
    out.square().sum().backward()
    assert core.project_key.weight.grad.abs().sum() > 0 and core.project_value.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["restormer", "spectral"])
def test_linformer_selecting_every_key_reproduces_the_layer(kind: str) -> None:
    channels, heads = 8, 2
    if kind == "restormer":
        layer, shape = RestormerAttention(channels, heads, bias=True), (2, channels, 4, 5)
    else:
        layer, shape = SpectralAttention(channels, channels // heads, heads), (2, 4, 5, channels)
    layer = randomise(layer, 3).double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    with torch.no_grad():
        reference = layer(x)
        keys = layer.head_dim
        layer.attention_core = LinformerCore(heads, keys, keys).double()
        layer.attention_core.select([[2, 0, 3, 1], [1, 3, 2, 0]])  # permuted: softmax attention ignores order
        torch.testing.assert_close(layer(x), reference, rtol=0, atol=1e-12)
        layer.attention_core = LinformerCore(heads, keys, keys - 1).double()
        layer.attention_core.select([[0, 1, 2], [1, 2, 3]])  # the core is really used: dropping a key shows
        assert (layer(x) - reference).abs().max() > 1e-3


def _topk_by_hand(logits: torch.Tensor, value: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """DRSformer's four branches from their definition: softmax over the int(K*a/b) largest logits of a row."""
    keys = logits.shape[-1]
    out = torch.zeros(*logits.shape[:-1], value.shape[-1], dtype=logits.dtype)
    for (a, b), weight in zip(((1, 2), (2, 3), (3, 4), (4, 5)), weights, strict=True):
        count = int(keys * a / b)
        threshold = logits.sort(dim=-1, descending=True).values[..., count - 1:count]  # no ties in random data
        probs = logits.masked_fill(logits < threshold, float("-inf")).softmax(dim=-1)
        out = out + weight * (probs @ value)
    return out


def test_linformer_keeps_the_top_k_combine_of_drsformer() -> None:
    channels, heads, reduced = 8, 2, 3
    layer = randomise(TopKAttention(channels, heads, bias=True), 5).double()
    x = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    kept = [[3, 0, 2], [1, 2, 3]]
    core = LinformerCore(heads, layer.head_dim, reduced).double()
    core.select(kept)
    layer.attention_core = core
    with torch.no_grad():
        out = layer(x)
        q, k, v = layer.qkv_dwconv(layer.qkv(x)).chunk(3, dim=1)  # (2, C, 4, 4) each
        q, k, v = (t.reshape(2, heads, -1, 16) for t in (q, k, v))  # (2, heads, d, N)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        weights = [float(getattr(layer, f"attn{i}")) for i in range(1, 5)]
        heads_out = []
        for h, chosen in enumerate(kept):
            logits = layer.temperature[h] * q[:, h] @ k[:, h, chosen].transpose(-2, -1)  # (2, d, d')
            heads_out.append(_topk_by_hand(logits, v[:, h, chosen], weights))  # (2, d, N)
        expected = layer.project_out(torch.stack(heads_out, 1).reshape(2, channels, 4, 4))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_linformer_validation() -> None:
    with one_line_error("heads and keys must be integers >= 1"):
        LinformerCore(0, 4, 2)
    with one_line_error(r"reduced must be an integer in \[1, 4\]"):
        LinformerCore(2, 4, 5)
    with one_line_error(r"reduced must be an integer in \[1, 4\]"):
        LinformerCore(2, 4, 0)
    core = LinformerCore(2, 4, 2)
    with one_line_error("one list of kept keys per head"):
        core.select([[0, 1]])
    with one_line_error("head 1 must keep 2 distinct key indices"):
        core.select([[0, 1], [2, 2]])
    with one_line_error("head 0 must keep 2 distinct key indices"):
        core.select([[0, 4], [0, 1]])
    with one_line_error("head 1 must keep 2 distinct key indices"):
        core.select([[0, 1], [0, 1, 2]])
    with one_line_error("built for 2 heads of 4 keys"):
        core(*attention_inputs(0, heads=2, keys=3, pixels=5)[:3], torch.ones(2, 1, 1, dtype=F64), dense)


# -- Performer ---------------------------------------------------------------------------------------

# FAVOR+ with positive features estimates exp(x.y) with a relative standard deviation per feature of
# sqrt(exp(|x + y|^2) - 1) for iid features (orthogonal ones do no worse): about 2.5 to 5.5 here
# (|x|^2 = |y|^2 = temperature in [1, 1.5), |x + y|^2 = 2 to 3.4), i.e. 1.4% to 3% at m = 2**15.
# Measured over 120 draws (3 inputs x 40 seeds) of this set-up: max abs output error median
# 0.028, largest 0.054 (the draw tested below: 0.025); the tolerance is 1.5x that largest.
APPROACH_TOLERANCE = 0.08


def test_performer_approaches_softmax_attention_and_its_error_shrinks_like_one_over_root_m() -> None:
    q, k, v, t = attention_inputs(0)
    reference = softmax_attention(q, k, v, t)
    errors = {}
    for m in (2**9, 2**15):
        outputs = [PerformerCore(m, seed)(q, k, v, t, dense) for seed in range(4)]
        errors[m] = torch.stack([o - reference for o in outputs]).square().mean().sqrt().item()
        if m == 2**15:
            assert (outputs[0] - reference).abs().max() < APPROACH_TOLERANCE
    # expected sqrt(64) = 8, measured 7.8; RMS over 4 seeds x 512 outputs: 4.9 to 9.9 over 30 seed families
    assert errors[2**9] > 4 * errors[2**15]


def test_performer_negative_temperature_approaches_the_softmax_of_negative_logits() -> None:
    q, k, v, t = attention_inputs(1)
    out = PerformerCore(2**15)(q, k, v, -t, dense)
    assert (out - softmax_attention(q, k, v, -t)).abs().max() < APPROACH_TOLERANCE
    assert (out - softmax_attention(q, k, v, t)).abs().max() > 3 * APPROACH_TOLERANCE  # the sign matters


def test_performer_attention_rows_are_positive_and_sum_to_one() -> None:
    q, k, v, t = attention_inputs(2, queries=3, keys=5, pixels=9)
    core = PerformerCore(7)  # fewer features than pixels: one partial block
    attention = core.attention(q, k, t)
    assert attention.shape == (1, 2, 3, 5) and (attention > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 2, 3, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(core(q, k, v, t, dense), attention @ v, rtol=0, atol=0)


def test_performer_is_deterministic_per_seed_and_size_and_keeps_w_out_of_the_state_dict() -> None:
    q, k, v, t = attention_inputs(3, pixels=16)
    first, again, other = PerformerCore(64, seed=5), PerformerCore(64, seed=5), PerformerCore(64, seed=6)
    out = first(q, k, v, t, dense)
    assert torch.equal(out, again(q, k, v, t, dense))
    assert (out - other(q, k, v, t, dense)).abs().max() > 1e-3
    assert first.state_dict() == {} and list(first.buffers()) == []
    first(q.float(), k.float(), v.float(), t.float(), dense)
    first(*attention_inputs(3, pixels=20)[:3], t, dense)
    cpu = torch.device("cpu")
    assert set(first.projections) == {(16, cpu, F64), (16, cpu, torch.float32), (20, cpu, F64)}
    assert torch.equal(first.projections[(16, cpu, torch.float32)], first.projections[(16, cpu, F64)].float())
    assert torch.equal(first.projections[(16, cpu, F64)], orthogonal_random_features(64, 16, 5))


def test_orthogonal_random_features_blocks_are_orthogonal_with_gaussian_norms() -> None:
    w = orthogonal_random_features(11, 4, 0)  # blocks of rows 0-3, 4-7 and the partial 8-10
    assert w.shape == (11, 4) and w.dtype == F64
    for block in (w[0:4], w[4:8], w[8:11]):
        unit = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(len(block), dtype=F64), rtol=0, atol=1e-12)
    assert len(set(w.norm(dim=1).tolist())) == 11  # each row its own chi-distributed length
    many = orthogonal_random_features(4000, 8, 1)
    # E|w|^2 = N = 8 (std of the mean 4/sqrt(4000) = 0.063), and each coordinate has variance 1
    assert abs(many.square().sum(1).mean().item() - 8) < 0.3
    torch.testing.assert_close(many.square().mean(0), torch.ones(8, dtype=F64), rtol=0, atol=0.1)


def test_performer_on_meta_tensors_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> torch.Tensor:
        raise AssertionError("random features drawn for a meta tensor")

    monkeypatch.setattr(cores, "orthogonal_random_features", refuse)
    core = PerformerCore(32)
    q, k, v = (torch.empty(2, 3, s, 10, device="meta") for s in (4, 5, 5))
    out = core(q, k, v, torch.empty(3, 1, 1, device="meta"), dense)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 10)
    assert core.projections == {}


def test_performer_float32_stays_finite_at_high_temperature() -> None:
    """At temperature 200, exp(x.w - |x|^2/2) underflows in float32 without the stabilisers (NaN rows)."""
    q, k, v, _ = attention_inputs(4)
    t = torch.full((2, 1, 1), 200.0, dtype=F64)
    core = PerformerCore(256)
    exact = core(q, k, v, t, dense)
    single = core(q.float(), k.float(), v.float(), t.float(), dense)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=0, atol=1e-4)


def test_performer_in_a_restormer_layer_approaches_its_output() -> None:
    layer = randomise(RestormerAttention(8, 2, bias=False), 7).double()
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(8), dtype=F64)
    with torch.no_grad():
        reference = layer(x)
        layer.attention_core = PerformerCore(2**15)
        out = layer(x)
    relative = ((out - reference).norm() / reference.norm()).item()
    assert relative < 0.02  # measured 0.0105 (seeds 0-9: 0.0045 to 0.0118; temperatures 0.85, 1.14; N = 64)
    assert relative > 1e-6  # an estimate, not the exact softmax


def test_performer_validation() -> None:
    with one_line_error("features must be an integer >= 1"):
        PerformerCore(0)
    with one_line_error("features must be an integer >= 1"):
        PerformerCore(2.5)  # type: ignore[arg-type]
    with one_line_error("seed must be an integer >= 0"):
        PerformerCore(8, seed=-1)


# -- MAC counts --------------------------------------------------------------------------------------


def test_mac_counts_with_each_core_installed() -> None:
    c, heads, d, n = 8, 2, 4, 4 * 6
    convs = c * 3 * c * n + 3 * c * 9 * n + c * c * n  # qkv, depthwise 3x3, project_out
    x = torch.empty(1, c, 4, 6, device="meta")

    reduced = 3
    layer = RestormerAttention(c, heads, bias=False)
    layer.attention_core = LinformerCore(heads, d, reduced)
    macs = count_macs(layer, [x]).macs
    projections = 2 * heads * d * reduced * n  # E k and F v
    assert macs.linear == convs + projections
    assert macs.total == convs + projections + heads * d * n * reduced + heads * d * reduced * n

    m = 16
    layer.attention_core = PerformerCore(m)
    macs = count_macs(layer, [x]).macs
    features = heads * (d + d) * n * m  # x W^T and y W^T
    assert macs.linear == convs
    assert macs.total == convs + features + heads * d * m * d + heads * d * d * n  # phi(x) phi(y)^T, A V
    assert layer.attention_core.projections == {}
