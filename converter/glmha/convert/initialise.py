"""Build a GLMHA layer from a CSA layer: copied weights plus initialised reduced K/V generators.

Methods (SPEC section 4; bench/init_fidelity.py measures them):
* `select`: keep the d' channels of each head that a column-pivoted QR of the joint key/value rows
  picks first. Keys and values keep one shared token set and every depthwise filter stays with its
  channel, so the layer is exact at C' = C. In the MST family V' gathers the kept channels of V.
* `merge`: cluster each head's d channels into d' groups (Ward on the unit key/value operator rows,
  scikit-learn) and merge each group into one token: the mean key and value operator, and a logit
  bias of log(group size) so the token keeps the softmax mass of its members (proportional
  attention). Exact at C' = C.
* `refit`: `select`, then the value generators refit by ridge regression on calibration activations
  so that the layer's attention output with the kept keys matches the teacher's (regularised toward
  the selected rows, so exact at C' = C); a step along the refit is kept only as far as it lowers the
  layer's output error on the calibration inputs.
* `svd`: project each head's key/value channels onto the leading d' left singular vectors (the
  plain low-rank projection). Not exact even at C' = C: softmax is not invariant to mixing tokens.
* `random`: default PyTorch initialisation of the reduced generators (a baseline).

What each method does to a layer's weights is written once per attention kind, in its adapter
(glmha.archs.adapter); this module chooses the tokens and runs the refit's line search.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from glmha.archs import adapter_for
from glmha.archs.adapter import LayerInputs, Tokens
from glmha.convert.spectrum import LayerSpectrum
from glmha.errors import GlmhaError
from glmha.layers import CSALayer, GLMHALayer, GLMHASettings

INIT_METHODS = ("select", "merge", "refit", "svd", "random")
CALIBRATED_INITS = ("refit",)  # need activations on calibration inputs
REFIT_STEPS = (1.0, 0.5, 0.25)  # fractions of the refit tried; the best one (or none) is kept


def value_form(init: str) -> str:
    """How channels-last kinds form V' (GLMHA setting `values`): only `select` keeps whole channels, the
    others mix them."""
    return "gather" if init == "select" else "mix"


def empty_glmha_like(layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
    """A GLMHA layer with the shapes that replace `layer` at C' = `reduced` (weights not set)."""
    return adapter_for(layer).empty_glmha(layer, reduced, settings)


def convert_layer(layer: CSALayer, spectrum: LayerSpectrum, reduced: int, method: str,
                  settings: GLMHASettings, seed: int = 0, inputs: LayerInputs | None = None) -> GLMHALayer:
    """The GLMHA replacement of `layer`, on the layer's device and dtype. `inputs` (what the layer
    received on calibration inputs) are needed by `refit`."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init '{method}'")
    adapter_for(layer).check_init(method)
    if method in CALIBRATED_INITS and not inputs:
        raise GlmhaError(f"--init {method} needs calibration inputs")
    r = reduced // layer.num_heads
    tokens = _tokens(layer, spectrum, r, method)
    bases = [head.basis[:, :r] for head in spectrum.heads] if method == "svd" else []  # (d, d') per head
    new = build_glmha_layer(layer, reduced, settings, tokens, bases=bases, method=method, seed=seed)
    with torch.no_grad():
        if method == "merge" and new.token_bias is not None:
            sizes = torch.tensor([[len(group) for group in head] for head in tokens], dtype=new.token_bias.dtype)
            new.token_bias.copy_(sizes.log().view(layer.num_heads, 1, r))  # (heads, d') -> (heads, 1, d')
        if method == "refit":
            refit_values(layer, new, inputs)
    return new


def build_glmha_layer(layer: CSALayer, reduced: int, settings: GLMHASettings, tokens: Tokens, *,
                      bases: list[torch.Tensor] = (), method: str = "select", seed: int = 0) -> GLMHALayer:
    """The GLMHA layer that keeps `tokens` of `layer` (per head, lists of channels within the head), on the layer's
    device and dtype and in its mode; new weights drawn from `seed`. What every initialisation, and structured
    pruning with its own channel choice (glmha.compare), builds on."""
    adapter = adapter_for(layer)
    reference = next(layer.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = adapter.empty_glmha(layer, reduced, settings)
    new = new.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        adapter.initialise(layer, new, tokens, list(bases), method)
    return new.train(layer.training)


# -- which channels form each reduced token ------------------------------------------------------------


def _tokens(layer: CSALayer, spectrum: LayerSpectrum, r: int, method: str) -> Tokens:
    """Per head, the d' tokens as lists of channel indices within the head (one each unless merged)."""
    if method == "merge":
        features = joint_operator_rows(layer)
        return [cluster_channels(features[h], r) for h in range(layer.num_heads)]
    return [[[channel] for channel in sorted(head.order[:r])] for head in spectrum.heads]


def joint_operator_rows(layer: CSALayer) -> list[np.ndarray]:
    """Per head, one row per channel: its key operator and value operator, each scaled to unit norm
    (d, 2 * operator size); what the merge clusters on."""
    with torch.no_grad():
        keys, values = adapter_for(layer).operator_rows(layer)
    unit = [torch.nn.functional.normalize(m, dim=1) for m in (keys, values)]
    joint = torch.cat(unit, dim=1).numpy()
    d = layer.head_dim
    return [joint[h * d:(h + 1) * d] for h in range(layer.num_heads)]


def cluster_channels(rows: np.ndarray, groups: int) -> list[list[int]]:
    """`groups` clusters of the rows (Ward linkage, deterministic), each sorted, ordered by first member."""
    count = rows.shape[0]
    if groups >= count:
        return [[i] for i in range(count)]
    if groups == 1:
        return [list(range(count))]
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=groups, linkage="ward").fit_predict(rows)
    found: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        found.setdefault(int(label), []).append(index)
    return sorted(found.values(), key=lambda members: members[0])


# -- refit ---------------------------------------------------------------------------------------------


def refit_values(old: CSALayer, new: GLMHALayer, inputs: LayerInputs) -> None:
    """Refit the value generators of a `select`-initialised layer on calibration activations, then
    keep the step along the refit that gives the lowest layer output error (possibly none)."""
    start = {name: p.detach().clone() for name, p in new.named_parameters()}
    adapter_for(old).refit(old, new, inputs)
    target = {name: p.detach().clone() for name, p in new.named_parameters()}
    changed = [name for name in start if not torch.equal(start[name], target[name])]
    if not changed:
        return

    def place(step: float) -> None:
        for name in changed:
            new.get_parameter(name).copy_(start[name] + step * (target[name] - start[name]))

    errors = {}
    for step in (0.0, *REFIT_STEPS):
        place(step)
        errors[step] = layer_output_error(old, new, inputs)
    place(min(errors, key=lambda step: (errors[step], -step)))


def layer_output_error(old: nn.Module, new: nn.Module, inputs: LayerInputs) -> float:
    """Sum of squared differences between the two layers' outputs over the calibration inputs."""
    total = 0.0
    with torch.no_grad():
        for args in inputs:
            total += float((new(*args).double() - old(*args).double()).pow(2).sum())
    return total
