"""Which (K_j, V_j) channel pairs structured K/V pruning keeps: Torch-Pruning's importance criteria on a pruning
group built by hand for one CSA layer.

Torch-Pruning's dependency graph traces a model and couples layers through their tensors' shapes; CSA's
attention reshapes (channels become tokens, heads split them) are beyond it. One layer's group is simple to
state, though: every output row that generates channel j's key or value (the 1x1 / linear rows and, in MDTA,
the depthwise filters after them) is removed together with channel j. `layer_group` writes that group with
Torch-Pruning's own Node / Dependency / Group classes, each member's root index being the channel j it
carries, so that Torch-Pruning's importance classes reduce all members onto the C channel pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import Group

from glmha.archs import adapter_for
from glmha.archs.adapter import Tokens
from glmha.errors import GlmhaError
from glmha.layers import CSALayer

CRITERIA = ("magnitude", "taylor", "hessian")

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (model inputs, target)
ParameterStats = dict[nn.Parameter, torch.Tensor]


def _generators(layer: CSALayer) -> list[tuple[nn.Module, list[int]]]:
    """The layer's key/value generators, checked: 1x1 convs / linears with one output row per channel."""
    entries = adapter_for(layer).key_value_generators(layer)
    for module, rows in entries:
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise GlmhaError(f"{type(layer).__name__}: a key/value generator is a {type(module).__name__}, "
                             "not a Conv2d or Linear, which K/V pruning cannot score")
        if len(rows) != layer.channels:
            raise GlmhaError(f"{type(layer).__name__}: a key/value generator names {len(rows)} rows for "
                             f"{layer.channels} channels")
    return entries


def _generator_weights(layer: CSALayer) -> list[nn.Parameter]:
    """The weights the importance classes read (biases are not scored: Torch-Pruning's default bias=False),
    each once although MDTA's qkv generates both keys and values."""
    found: dict[int, nn.Parameter] = {}
    for module, _ in _generators(layer):
        found.setdefault(id(module.weight), module.weight)
    return list(found.values())


def layer_group(layer: CSALayer) -> Group:
    """The Torch-Pruning group of one CSA layer's C (K_j, V_j) channel pairs: one member per key/value
    generator entry, pruning that module's output rows; member rows[j] has root index j.

    Built for scoring with torch_pruning.importance: it belongs to no dependency graph, so `Group.prune`
    with new indices cannot be called on it.
    """
    function = tp.pruner.function
    names = {id(module): name for name, module in layer.named_modules()}
    nodes: dict[int, Any] = {}
    group = tp.Group()
    root = None
    root_fn = None
    for module, rows in _generators(layer):
        handler = (function.prune_conv_out_channels if isinstance(module, nn.Conv2d)
                   else function.prune_linear_out_channels)
        node = nodes.get(id(module))
        if node is None:
            node = nodes[id(module)] = tp.Node(module, None, name=names.get(id(module), type(module).__name__))
        if root is None:
            root, root_fn = node, handler
        # rows ascending with their channels alongside: Taylor and Hessian importance sort a member's indices
        # in place, which must not separate a row from its root index
        pairs = sorted(zip(rows, range(layer.channels), strict=True))
        group.add_dep(tp.Dependency(root_fn, handler, source=root, target=node), [row for row, _ in pairs])
        group[len(group) - 1].root_idxs = [channel for _, channel in pairs]
    return group


def _importance(criterion: str) -> Callable[[Group], torch.Tensor | None]:
    """Torch-Pruning's scorer of the criterion with its defaults (p=2, mean over members, divided by the mean)."""
    classes = tp.importance
    if criterion == "magnitude":
        return classes.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    if criterion == "taylor":
        return classes.GroupTaylorImportance(group_reduction="mean", normalizer="mean")
    return classes.GroupHessianImportance(group_reduction="mean", normalizer="mean")


def _substitute_grads(weights: list[nn.Parameter], stats: ParameterStats, what: str) -> list[torch.Tensor | None]:
    """Put stats[w] in w.grad, where Taylor and Hessian importance read it; returns the grads it replaced."""
    for weight in weights:
        value = stats.get(weight)
        if value is None:
            raise GlmhaError(f"{what} lacks a key/value generator weight of shape {tuple(weight.shape)}")
        if value.shape != weight.shape:
            raise GlmhaError(f"{what}: a tensor of shape {tuple(value.shape)} for a weight of shape "
                             f"{tuple(weight.shape)}")
    saved = [weight.grad for weight in weights]
    for weight in weights:
        weight.grad = stats[weight].detach().to(dtype=weight.dtype, device=weight.device)
    return saved


def channel_importance(layer: CSALayer, criterion: str, *, squared_gradients: ParameterStats | None = None,
                       gradients: ParameterStats | None = None) -> torch.Tensor:
    """(C,) float32 importance of each (K_j, V_j) pair, as Torch-Pruning's class for the criterion scores the
    layer's group (the mean over members, divided by the mean over channels).

    magnitude: sum |w|^2 of each member row. taylor: sum |w * g| of each row (Torch-Pruning's default, not
    multivariable), g the parameters' .grad (the caller ran backward) or `gradients` {parameter: gradient}
    when given. hessian: sum w^2 h, h = `squared_gradients` {parameter: mean over samples of grad^2}, the
    diagonal Fisher approximation of the Hessian (gradient_statistics gives both dicts). Substituted
    gradients are put in .grad only while the class reads them.
    """
    if criterion not in CRITERIA:
        raise GlmhaError(f"unknown importance criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    weights = _generator_weights(layer)
    stats: ParameterStats | None = None
    what = ""
    if criterion == "hessian":
        if squared_gradients is None:
            raise GlmhaError("hessian importance needs squared_gradients (from gradient_statistics)")
        stats, what = squared_gradients, "squared_gradients"
    elif criterion == "taylor":
        if gradients is not None:
            stats, what = gradients, "gradients"
        elif any(weight.grad is None for weight in weights):
            raise GlmhaError(f"taylor importance of {type(layer).__name__}: a key/value generator weight has no "
                             "gradient (run backward on a loss first, or pass gradients)")
    group = layer_group(layer)
    scorer = _importance(criterion)
    saved = _substitute_grads(weights, stats, what) if stats is not None else None
    try:
        scores = scorer(group)
    finally:
        if saved is not None:
            for weight, grad in zip(weights, saved, strict=True):
                weight.grad = grad
    if scores is None:  # pragma: no cover - every member is a Conv2d / Linear, which all three classes score
        raise GlmhaError(f"Torch-Pruning scored no member of {type(layer).__name__}'s group")
    return scores.detach().float()


def _named_layers(model: nn.Module, layers: Iterable[str]) -> list[CSALayer]:
    found = []
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise GlmhaError(f"the model has no layer named '{name}'") from error
        if not isinstance(module, CSALayer):
            raise GlmhaError(f"'{name}' is a {type(module).__name__}, not a channel-wise attention layer")
        found.append(module)
    return found


def _generator_parameters(layers: Sequence[CSALayer]) -> list[nn.Parameter]:
    """Weights and biases of the layers' key/value generators, each once."""
    found: dict[int, nn.Parameter] = {}
    for layer in layers:
        for module, _ in _generators(layer):
            for param in (module.weight, module.bias):
                if param is not None:
                    found.setdefault(id(param), param)
    return list(found.values())


def _gradients(loss: torch.Tensor, params: list[nn.Parameter], retain: bool) -> list[torch.Tensor]:
    if loss.dim() != 0:
        raise GlmhaError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise GlmhaError("gradient_statistics: the loss does not depend on the named layers' keys and values")
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def gradient_statistics(model: nn.Module, layers: Iterable[str], batches: Iterable[Batch],
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                        ) -> tuple[ParameterStats, ParameterStats]:
    """What Taylor and Hessian importance need, for the key/value generator weights and biases of the named CSA
    layers: (sum over batches of the gradient of loss_fn(output, target), the batch's loss; mean over all
    samples of the squared per-sample gradient, the diagonal Fisher that stands for the Hessian).

    A sample's loss is loss_fn(output[i:i+1], target[i:i+1]) on the batch's forward pass, one backward per
    sample (what the model computes for an image in that batch, e.g. MST's guidance from its first mask).
    The model runs in eval mode (no dropout noise in the statistics); its modes, requires_grad flags and
    .grad are restored afterwards, also on error.
    """
    params = _generator_parameters(_named_layers(model, layers))
    if not params:
        raise GlmhaError("gradient_statistics: no layer named")
    everything = list(model.parameters())
    flags = [p.requires_grad for p in everything]
    grads = [p.grad for p in everything]
    modes = [(module, module.training) for module in model.modules()]
    summed = [torch.zeros_like(p, requires_grad=False) for p in params]
    squared = [torch.zeros_like(p, requires_grad=False) for p in params]
    samples = 0
    try:
        for p in everything:
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            for inputs, target in batches:
                output = model(*inputs)
                if not isinstance(output, torch.Tensor) or output.dim() == 0:
                    raise GlmhaError("gradient_statistics needs a model that returns one batched tensor")
                size = output.shape[0]
                if target.shape[0] != size:
                    raise GlmhaError(f"a batch of {size} outputs has {target.shape[0]} targets")
                for total, g in zip(summed, _gradients(loss_fn(output, target), params, retain=True), strict=True):
                    total += g
                for i in range(size):
                    sample = _gradients(loss_fn(output[i:i + 1], target[i:i + 1]), params, retain=i < size - 1)
                    for total, g in zip(squared, sample, strict=True):
                        total += g.square()
                samples += size
    finally:
        for p, flag, grad in zip(everything, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.training = training
    if samples == 0:
        raise GlmhaError("gradient_statistics: the batches held no sample")
    return ({p: g for p, g in zip(params, summed, strict=True)},
            {p: g / samples for p, g in zip(params, squared, strict=True)})


def keep_channels(scores: torch.Tensor, heads: int, per_head: int) -> Tokens:
    """Per head, the `per_head` channels (indices within the head) of highest score, ties to the lower index,
    ascending, as glmha's token lists [[[j], [k], ...], ...]: one token per kept (K_j, V_j) pair, so the kept
    keys and values are the same channel set."""
    if scores.dim() != 1:
        raise GlmhaError(f"keep_channels needs one score per channel, got a tensor of shape {tuple(scores.shape)}")
    channels = scores.shape[0]
    if heads < 1 or channels % heads:
        raise GlmhaError(f"{channels} channel scores do not split into {heads} heads")
    width = channels // heads
    if not 1 <= per_head <= width:
        raise GlmhaError(f"cannot keep {per_head} channels of a head of {width}")
    if not bool(torch.isfinite(scores).all()):
        raise GlmhaError("keep_channels: the importance scores are not all finite")
    values = scores.detach().double().cpu().view(heads, width).tolist()  # (heads, d)
    tokens: Tokens = []
    for head in values:
        best = sorted(range(width), key=lambda j, s=head: (-s[j], j))[:per_head]
        tokens.append([[j] for j in sorted(best)])
    return tokens
