"""Structured K/V channel importance (glmha.compare.importance): Torch-Pruning's magnitude, Taylor and Hessian
scores of a CSA layer's hand-built group against the formulas written out here, the gradient statistics
against per-sample backward passes, the per-head choice of kept channels, and the error lines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glmha.archs.drsformer import TopKAttention
from glmha.archs.mdta import RestormerAttention
from glmha.archs.spectral_blocks import SpectralAttention
from glmha.compare.importance import (
    CRITERIA,
    channel_importance,
    gradient_statistics,
    keep_channels,
    layer_group,
)
from glmha.errors import GlmhaError

from conftest import randomise

C = 8


def mdta(bias: bool, seed: int = 0) -> RestormerAttention:
    return randomise(RestormerAttention(C, 2, bias=bias).double(), seed)


def spectral(seed: int = 1) -> SpectralAttention:
    return randomise(SpectralAttention(C, 4, 2).double(), seed)


def members(layer: nn.Module) -> list[tuple[nn.Parameter, list[int]]]:
    """The (weight, rows) of each group member, written out from the layers' definitions: MDTA's K and V are
    chunks 1 and 2 of qkv's 3C outputs (1x1 rows, then their depthwise filters); MS-MSA's keys are `to_q`."""
    if isinstance(layer, RestormerAttention):
        keys, values = list(range(C, 2 * C)), list(range(2 * C, 3 * C))
        return [(layer.qkv.weight, keys), (layer.qkv_dwconv.weight, keys),
                (layer.qkv.weight, values), (layer.qkv_dwconv.weight, values)]
    return [(layer.to_q.weight, list(range(C))), (layer.to_v.weight, list(range(C)))]


def reduce(per_member: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the group's members per channel, divided by the mean over channels."""
    score = torch.stack(per_member).mean(dim=0)  # (members, C) -> (C,)
    return score / score.mean()


def rows(tensor: torch.Tensor, idxs: list[int]) -> torch.Tensor:
    return tensor.detach()[idxs].flatten(1)  # (C, fan-in x kernel)


def hand_magnitude(layer: nn.Module) -> torch.Tensor:
    return reduce([rows(w, r).abs().pow(2).sum(1) for w, r in members(layer)])


def hand_taylor(layer: nn.Module, grads: dict) -> torch.Tensor:
    # Torch-Pruning's default (multivariable=False): the sum over a row of |w g| per weight
    return reduce([(rows(w, r) * rows(grads[w], r)).abs().sum(1) for w, r in members(layer)])


def hand_hessian(layer: nn.Module, squared: dict) -> torch.Tensor:
    return reduce([(rows(w, r).pow(2) * rows(squared[w], r)).sum(1) for w, r in members(layer)])


def image(layer: nn.Module, batch: int, seed: int) -> torch.Tensor:
    shape = (batch, 5, 4, C) if isinstance(layer, SpectralAttention) else (batch, C, 5, 4)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def squared_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).pow(2).mean()


def backward(layer: nn.Module, seed: int) -> None:
    x = image(layer, 2, seed)
    squared_loss(layer(x), torch.flip(x, dims=(0,))).backward()


def per_sample_squared(layer: nn.Module, batch: int, seed: int) -> dict:
    """Mean over samples of grad^2, one forward and backward per sample."""
    x = image(layer, batch, seed)
    target = image(layer, batch, seed + 100)
    total = {w: torch.zeros_like(w) for w, _ in members(layer)}
    for i in range(batch):
        layer.zero_grad(set_to_none=True)
        squared_loss(layer(x[i:i + 1]), target[i:i + 1]).backward()
        for w in total:
            total[w] += w.grad.pow(2)
    layer.zero_grad(set_to_none=True)
    return {w: g / batch for w, g in total.items()}


def close(scores: torch.Tensor, expected: torch.Tensor) -> None:
    assert scores.shape == (C,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=1e-6, atol=0)


# -- the group ------------------------------------------------------------------------------------------


def test_group_members_rows_and_root_indices() -> None:
    from torch_pruning.pruner import function

    layer = mdta(bias=True)
    group = layer_group(layer)
    expected = [(layer.qkv, range(C, 2 * C)), (layer.qkv_dwconv, range(C, 2 * C)),
                (layer.qkv, range(2 * C, 3 * C)), (layer.qkv_dwconv, range(2 * C, 3 * C))]
    assert len(group) == len(expected)
    for i, (module, want) in enumerate(expected):
        dep, idxs = group[i]
        assert dep.target.module is module and dep.handler == function.prune_conv_out_channels
        assert idxs == list(want) and group[i].root_idxs == list(range(C))
    linear = layer_group(spectral())
    assert [group_item.dep.handler for group_item in linear.items] == [function.prune_linear_out_channels] * 2


# -- the three criteria against their formulas ------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_magnitude_of_mdta(bias: bool) -> None:
    layer = mdta(bias)
    close(channel_importance(layer, "magnitude"), hand_magnitude(layer))


def test_magnitude_of_spectral_and_topk() -> None:
    layer = spectral()
    close(channel_importance(layer, "magnitude"), hand_magnitude(layer))
    topk = randomise(TopKAttention(C, 2, bias=False).double(), 3)
    close(channel_importance(topk, "magnitude"), hand_magnitude(topk))


@pytest.mark.parametrize("make", [lambda: mdta(True, 4), lambda: mdta(False, 5), spectral])
def test_taylor_reads_the_gradients(make) -> None:
    layer = make()
    backward(layer, seed=7)
    grads = {w: w.grad.clone() for w, _ in members(layer)}
    scores = channel_importance(layer, "taylor")
    close(scores, hand_taylor(layer, grads))
    assert all(torch.equal(w.grad, g) for w, g in grads.items())  # read, not changed
    # given gradients instead of .grad: the same scores, and .grad untouched
    doubled = {w: 2 * g for w, g in grads.items()}
    layer.zero_grad(set_to_none=True)
    close(channel_importance(layer, "taylor", gradients=doubled), hand_taylor(layer, doubled))
    assert all(w.grad is None for w in grads)


@pytest.mark.parametrize("make", [lambda: mdta(True, 8), spectral])
def test_hessian_uses_the_squared_gradients_and_restores_grad(make) -> None:
    layer = make()
    squared = per_sample_squared(layer, batch=3, seed=9)
    first = members(layer)[0][0]
    sentinel = torch.full_like(first, 5.0)
    first.grad = sentinel
    close(channel_importance(layer, "hessian", squared_gradients=squared), hand_hessian(layer, squared))
    assert first.grad is sentinel and bool((sentinel == 5.0).all())
    assert all(w.grad is None for w, _ in members(layer) if w is not first)


# -- gradient statistics ------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """Two CSA layers (MDTA, then MS-MSA channels-last) between 1x1 convs, a dropout to tell the modes apart."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(2, C, 1)
        self.mdta = RestormerAttention(C, 2, bias=True)
        self.drop = nn.Dropout(0.5)
        self.spectral = SpectralAttention(C, 4, 2)
        self.tail = nn.Conv2d(C, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(x)
        y = y + self.drop(self.mdta(y))
        y = y + self.spectral(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (b, h, w, C) -> (b, C, h, w)
        return self.tail(y)


def ids(params) -> list[int]:
    return [id(p) for p in params]


def tiny_batches() -> list[tuple[tuple[torch.Tensor], torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [((torch.randn(b, 2, 4, 3, generator=generator, dtype=torch.float64),),
             torch.randn(b, 2, 4, 3, generator=generator, dtype=torch.float64)) for b in (2, 3)]


def test_gradient_statistics_match_per_sample_backward_and_restore_the_model() -> None:
    model = randomise(Tiny().double(), 12)
    batches = tiny_batches()
    expected_params = [model.mdta.qkv.weight, model.mdta.qkv.bias, model.mdta.qkv_dwconv.weight,
                       model.mdta.qkv_dwconv.bias, model.spectral.to_q.weight, model.spectral.to_v.weight]
    # the hand computation, in eval mode: batch-mean-loss gradients summed over batches; per-sample forward and
    # backward passes, squared, averaged over the 5 samples (not over the 2 batches)
    summed = [torch.zeros_like(p) for p in expected_params]
    squared = [torch.zeros_like(p) for p in expected_params]
    for (x,), target in batches:
        for total, g in zip(summed, torch.autograd.grad(squared_loss(model(x), target), expected_params),
                            strict=True):
            total += g
        for i in range(x.shape[0]):
            sample = torch.autograd.grad(squared_loss(model(x[i:i + 1]), target[i:i + 1]), expected_params)
            for total, g in zip(squared, sample, strict=True):
                total += g.pow(2)
    # the state to restore: train mode, a frozen head, one gradient set
    model.train()
    model.head.weight.requires_grad_(False)
    sentinel = torch.ones_like(model.mdta.qkv.weight)
    model.mdta.qkv.weight.grad = sentinel
    gradients, squared_gradients = gradient_statistics(model, ["mdta", "spectral"], batches, squared_loss)
    assert ids(gradients) == ids(expected_params) and ids(squared_gradients) == ids(expected_params)
    for p, want, want_sq in zip(expected_params, summed, squared, strict=True):
        torch.testing.assert_close(gradients[p], want, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(squared_gradients[p], want_sq / 5, rtol=1e-9, atol=1e-12)
    assert model.training and model.drop.training and model.mdta.training
    assert not model.head.weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "head.weight")
    assert model.mdta.qkv.weight.grad is sentinel
    assert all(p.grad is None for name, p in model.named_parameters() if name != "mdta.qkv.weight")
    # what they are for: hessian scores from the statistics equal the formula on them
    close(channel_importance(model.mdta, "hessian", squared_gradients=squared_gradients),
          hand_hessian(model.mdta, squared_gradients))
    # one named layer: only its generators
    only, _ = gradient_statistics(model, ["spectral"], batches, squared_loss)
    assert ids(only) == ids(expected_params[4:])


def test_gradient_statistics_restore_the_model_on_error() -> None:
    model = randomise(Tiny().double(), 13)
    model.train()
    model.tail.weight.requires_grad_(False)

    def failing(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gradient_statistics(model, ["mdta"], tiny_batches(), failing)
    assert model.training and model.drop.training
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["tail.weight"]
    assert all(p.grad is None for p in model.parameters())


# -- keys and values go together -------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["magnitude", "hessian"])
@pytest.mark.parametrize("part", ["key", "value"])
@pytest.mark.parametrize("kind", ["mdta", "spectral"])
def test_changing_one_pair_changes_only_its_score(criterion: str, part: str, kind: str) -> None:
    layer = mdta(True, 14) if kind == "mdta" else spectral(15)
    fixed = {w: torch.rand(w.shape, generator=torch.Generator().manual_seed(16), dtype=w.dtype) + 0.5
             for w, _ in members(layer)}  # fixed squared gradients: only the weights change
    options = {"squared_gradients": fixed} if criterion == "hessian" else {}
    before = channel_importance(layer, criterion, **options).double()
    j = 5
    half = len(members(layer)) // 2  # MDTA: K 1x1, K depthwise | V 1x1, V depthwise; MS-MSA: to_q | to_v
    with torch.no_grad():
        for w, r in members(layer)[:half] if part == "key" else members(layer)[half:]:
            w[r[j]] *= 3.0
    ratio = channel_importance(layer, criterion, **options).double() / before
    others = torch.cat([ratio[:j], ratio[j + 1:]])
    # the normaliser (the mean over channels) rescales every score alike; only score j changes otherwise
    torch.testing.assert_close(others, others[:1].expand_as(others), rtol=1e-6, atol=0)
    assert ratio[j] > 1.5 * others[0]


# -- keep_channels --------------------------------------------------------------------------------------------


def test_keep_channels_per_head_ties_and_order() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 0.5, 9.0, 9.0, 9.0, 2.0])
    assert keep_channels(scores, 2, 2) == [[[1], [2]], [[0], [1]]]  # head 1: a three-way tie, lower indices
    assert keep_channels(scores, 2, 1) == [[[1]], [[0]]]
    # each head keeps its own best, however small its scores next to the other head's
    assert keep_channels(torch.tensor([100.0, 200.0, 300.0, 400.0, 0.1, 0.4, 0.3, 0.2]), 2, 2) == [
        [[2], [3]], [[1], [2]]]
    # ascending indices, whatever the order of the scores
    assert keep_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 1, 3) == [[[1], [2], [3]]]
    assert keep_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 4, 1) == [[[0]], [[0]], [[0]], [[0]]]
    assert keep_channels(torch.tensor([2.0, 5.0, 5.0, 5.0]), 1, 2) == [[[1], [2]]]


def test_keep_channels_of_real_scores_take_the_top_pairs() -> None:
    layer = mdta(True, 17)
    with torch.no_grad():
        layer.qkv.weight[2 * C + 6] *= 50.0  # V_6 alone: the pair (K_6, V_6) becomes head 1's best
        layer.qkv.weight[C + 1] *= 50.0  # K_1 alone: head 0's best
    tokens = keep_channels(channel_importance(layer, "magnitude"), 2, 1)
    assert tokens == [[[1]], [[2]]]


# -- errors -----------------------------------------------------------------------------------------------


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_error_lines() -> None:
    layer = mdta(True)
    assert CRITERIA == ("magnitude", "taylor", "hessian")
    with pytest.raises(GlmhaError, match="unknown importance criterion 'l1': choose one of magnitude, taylor, "
                                         "hessian") as excinfo:
        channel_importance(layer, "l1")
    one_line(excinfo)
    with pytest.raises(GlmhaError, match="has no gradient") as excinfo:
        channel_importance(layer, "taylor")
    one_line(excinfo)
    with pytest.raises(GlmhaError, match="needs squared_gradients") as excinfo:
        channel_importance(layer, "hessian")
    one_line(excinfo)
    partial = {layer.qkv.weight: torch.ones_like(layer.qkv.weight)}
    with pytest.raises(GlmhaError, match="squared_gradients lacks a key/value generator weight") as excinfo:
        channel_importance(layer, "hessian", squared_gradients=partial)
    one_line(excinfo)
    assert layer.qkv.weight.grad is None
    scores = torch.ones(C)
    for args, message in [((scores, 3, 1), "8 channel scores do not split into 3 heads"),
                          ((scores, 2, 5), "cannot keep 5 channels of a head of 4"),
                          ((scores, 2, 0), "cannot keep 0 channels"),
                          ((scores.view(2, 4), 2, 1), "one score per channel"),
                          ((torch.tensor([1.0, float("nan")]), 1, 1), "not all finite")]:
        with pytest.raises(GlmhaError, match=message) as excinfo:
            keep_channels(*args)
        one_line(excinfo)
    model = randomise(Tiny().double(), 18)
    for names, batches, loss, message in [
            (["nowhere"], tiny_batches(), squared_loss, "no layer named 'nowhere'"),
            (["head"], tiny_batches(), squared_loss, "'head' is a Conv2d, not a channel-wise attention layer"),
            (["mdta"], [], squared_loss, "the batches held no sample"),
            (["mdta"], tiny_batches(), lambda o, t: (o - t).pow(2), "loss_fn must return a scalar")]:
        with pytest.raises(GlmhaError, match=message) as excinfo:
            gradient_statistics(model, names, batches, loss)
        one_line(excinfo)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
