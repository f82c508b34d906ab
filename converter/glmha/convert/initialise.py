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

For MDTA a merged or projected channel's 3x3 operator (1x1 row (x) depthwise filter) is refactored
into a 1x1 row and a depthwise filter by its best rank-1 approximation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
from glmha.errors import GlmhaError

INIT_METHODS = ("select", "merge", "refit", "svd", "random")
CALIBRATED_INITS = ("refit",)  # need activations on calibration inputs
REFIT_RIDGE = 1e-3  # ridge strength, relative to the mean diagonal of each normal matrix
REFIT_PIXELS = 4096  # pixels sampled per calibration input for the value-generator regressions
REFIT_STEPS = (1.0, 0.5, 0.25)  # fractions of the refit tried; the best one (or none) is kept

LayerInputs = Sequence[tuple[torch.Tensor, ...]]  # what a CSA layer received, one tuple per forward


def value_form(init: str) -> str:
    """How the MST family forms V': only `select` keeps whole channels, the others mix them."""
    return "gather" if init == "select" else "mix"


def empty_glmha_like(layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
    """A GLMHA layer with the shapes that replace `layer` at C' = `reduced` (weights not set)."""
    if type(layer) is RestormerAttention:
        return GLMHARestormerAttention(layer.channels, layer.num_heads, reduced,
                                       layer.qkv.bias is not None, settings)
    if type(layer) is MaskedSpectralAttention:
        return GLMHAMaskedSpectralAttention(layer.channels, layer.num_heads, reduced, settings)
    if type(layer) is SpectralAttention:
        return GLMHASpectralAttention(layer.channels, layer.num_heads, reduced, settings)
    raise TypeError(f"cannot convert {type(layer).__name__}")


def convert_layer(layer: CSALayer, spectrum: LayerSpectrum, reduced: int, method: str,
                  settings: GLMHASettings, seed: int = 0, inputs: LayerInputs | None = None) -> GLMHALayer:
    """The GLMHA replacement of `layer`, on the layer's device and dtype. `inputs` (what the layer
    received on calibration inputs) are needed by `refit`."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init '{method}'")
    if method in CALIBRATED_INITS and not inputs:
        raise GlmhaError(f"--init {method} needs calibration inputs")
    reference = next(layer.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = empty_glmha_like(layer, reduced, settings)
    new = new.to(device=reference.device, dtype=reference.dtype)
    d, r = layer.head_dim, reduced // layer.num_heads
    tokens = _tokens(layer, spectrum, d, r, method)
    with torch.no_grad():
        if isinstance(new, GLMHARestormerAttention):
            _init_restormer(layer, new, spectrum, tokens, d, r, method)
        else:
            _init_spectral(layer, new, spectrum, tokens, d, r, method)
        if method == "merge" and new.token_bias is not None:
            sizes = torch.tensor([[len(group) for group in head] for head in tokens], dtype=new.token_bias.dtype)
            new.token_bias.copy_(sizes.log().view(layer.num_heads, 1, r))  # (heads, d') -> (heads, 1, d')
        if method == "refit":
            refit_values(layer, new, inputs)
    return new.train(layer.training)


# -- which channels form each reduced token ------------------------------------------------------------


def _tokens(layer: CSALayer, spectrum: LayerSpectrum, d: int, r: int, method: str) -> list[list[list[int]]]:
    """Per head, the d' tokens as lists of channel indices within the head (one each unless merged)."""
    if method == "merge":
        features = joint_operator_rows(layer)
        return [cluster_channels(features[h], r) for h in range(layer.num_heads)]
    return [[[channel] for channel in sorted(head.order[:r])] for head in spectrum.heads]


def joint_operator_rows(layer: CSALayer) -> list[np.ndarray]:
    """Per head, one row per channel: its key operator and value operator, each scaled to unit norm
    (d, 2 * operator size); what the merge clusters on."""
    c, heads, d = layer.channels, layer.num_heads, layer.head_dim
    with torch.no_grad():
        if isinstance(layer, RestormerAttention):
            w = layer.qkv.weight.detach().double().reshape(3 * c, c)  # (3C, C)
            f = layer.qkv_dwconv.weight.detach().double().reshape(3 * c, 9)  # (3C, 9)
            operators = (w[:, :, None] * f[:, None, :]).reshape(3 * c, 9 * c)  # row i: w_i (x) f_i
            keys, values = operators[c:2 * c], operators[2 * c:]
        else:
            keys, values = layer.to_q.weight.detach().double(), layer.to_v.weight.detach().double()
    unit = [torch.nn.functional.normalize(m, dim=1) for m in (keys, values)]
    joint = torch.cat(unit, dim=1).numpy()
    return [joint[h * d:(h + 1) * d] for h in range(heads)]


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


# -- MDTA ----------------------------------------------------------------------------------------------


def _copy(target: nn.Module, source: nn.Module) -> None:
    target.load_state_dict(source.state_dict())


def _rank_one(operator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-1 factors of a (C, 9) channel operator: a 1x1 row (C,) and a depthwise filter (9,)."""
    u, s, vh = torch.linalg.svd(operator.double(), full_matrices=False)
    scale = s[0].sqrt()
    return u[:, 0] * scale, vh[0] * scale


def _init_restormer(old: RestormerAttention, new: GLMHARestormerAttention, spectrum: LayerSpectrum,
                    tokens: list[list[list[int]]], d: int, r: int, method: str) -> None:
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
    for h, head_tokens in enumerate(tokens):
        for part, offset in ((0, c), (1, 2 * c)):  # K rows start at C, V rows at 2C
            first = part * reduced + h * r  # first output row of this head's K (or V) tokens
            rows = slice(offset + h * d, offset + (h + 1) * d)
            if method == "svd":
                _project_restormer_rows(old, new, spectrum.heads[h].basis[:, :r], rows, first)
                continue
            for m, members in enumerate(head_tokens):
                index = torch.tensor(members) + offset + h * d
                out = first + m
                if len(members) == 1:
                    new.kv.weight[out] = w[index[0]]
                    new.kv_dwconv.weight[out] = f[index[0]]
                else:  # merged: the members' mean 3x3 operator, refactored as row (x) filter
                    operator = (w[index].reshape(-1, c, 1) * f[index].reshape(-1, 1, 9)).mean(0)  # (C, 9)
                    row, taps = _rank_one(operator)
                    new.kv.weight[out] = row.to(w.dtype).reshape(c, 1, 1)
                    new.kv_dwconv.weight[out] = taps.to(w.dtype).reshape(1, 3, 3)
                if biased:
                    new.kv.bias[out] = old.qkv.bias[index].mean()
                    new.kv_dwconv.bias[out] = old.qkv_dwconv.bias[index].mean()


def _project_restormer_rows(old: RestormerAttention, new: GLMHARestormerAttention, basis: torch.Tensor,
                            rows: slice, first: int) -> None:
    """`svd`: token m's operator is sum_j U[j, m] (w_j (x) f_j) over the head's channels j."""
    c = old.channels
    w, f = old.qkv.weight, old.qkv_dwconv.weight
    basis = basis.to(w.dtype)  # (d, r)
    w_head = w[rows].reshape(-1, c)  # (d, C)
    f_head = f[rows].reshape(-1, 9)  # (d, 9)
    for m in range(basis.shape[1]):
        operator = w_head.T @ (basis[:, m:m + 1] * f_head)  # (C, 9)
        row, taps = _rank_one(operator)
        new.kv.weight[first + m] = row.to(w.dtype).reshape(c, 1, 1)
        new.kv_dwconv.weight[first + m] = taps.to(w.dtype).reshape(1, 3, 3)
    if old.qkv.bias is not None:
        new.kv.bias[first:first + basis.shape[1]] = basis.T @ old.qkv.bias[rows]
        new.kv_dwconv.bias[first:first + basis.shape[1]] = basis.T @ old.qkv_dwconv.bias[rows]


# -- MS-MSA --------------------------------------------------------------------------------------------


def _init_spectral(old: SpectralAttention, new: GLMHASpectralAttention, spectrum: LayerSpectrum,
                   tokens: list[list[list[int]]], d: int, r: int, method: str) -> None:
    for name in ("to_k", "to_v", "proj", "pos_emb") + (("mm",) if isinstance(old, MaskedSpectralAttention)
                                                        else ()):
        _copy(getattr(new, name), getattr(old, name))
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
            basis = spectrum.heads[h].basis[:, :r].to(wq.dtype)  # (d, r)
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


# -- refit ---------------------------------------------------------------------------------------------


def refit_values(old: CSALayer, new: GLMHALayer, inputs: LayerInputs) -> None:
    """Refit the value generators of a `select`-initialised layer on calibration activations, then
    keep the step along the refit that gives the lowest layer output error (possibly none)."""
    start = {name: p.detach().clone() for name, p in new.named_parameters()}
    if isinstance(new, GLMHARestormerAttention):
        _refit_restormer(old, new, inputs)
    else:
        _refit_spectral(old, new, inputs)
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


def _attention_parts(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Teacher MDTA internals on one input: normalised q, k (b, heads, d, N), v (b, heads, d, N)."""
    b, _, h, w = x.shape
    q, k, v = layer.qkv_dwconv(layer.qkv(x)).chunk(3, dim=1)  # 3 x (b, C, h, w)
    heads = layer.num_heads
    q = torch.nn.functional.normalize(q.reshape(b, heads, -1, h * w), dim=-1)
    k = torch.nn.functional.normalize(k.reshape(b, heads, -1, h * w), dim=-1)
    return q, k, v.reshape(b, heads, -1, h * w)


def _value_targets(attention: torch.Tensor, attention_kept: torch.Tensor, values: torch.Tensor,
                   values_kept: torch.Tensor) -> torch.Tensor:
    """V* = argmin ||P_S V' - P V||^2 + mu ||V' - V_S||^2 per image and head (float64):
    P (b, heads, d, d), P_S (b, heads, d, d'), V (b, heads, d, N), V_S (b, heads, d', N) -> (b, heads, d', N)."""
    normal = attention_kept.transpose(-2, -1) @ attention_kept  # (b, heads, d', d')
    mu = REFIT_RIDGE * normal.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)  # (b, heads, 1)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype)
    rhs = attention_kept.transpose(-2, -1) @ (attention @ values) + mu[..., None] * values_kept
    return spd_solve(normal + mu[..., None] * eye, rhs)


def spd_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve batched symmetric positive definite systems (ridge normal equations) by Cholesky, one matrix at
    a time (batched LU solves failed inside some processes with MKL); NaN where a matrix is not SPD."""
    flat_matrix = matrix.reshape(-1, *matrix.shape[-2:])
    flat_rhs = rhs.reshape(-1, *rhs.shape[-2:])
    solved = []
    for a, b in zip(flat_matrix, flat_rhs, strict=True):
        factor, info = torch.linalg.cholesky_ex(a)
        solved.append(torch.cholesky_solve(b, factor) if info == 0 else torch.full_like(b, float("nan")))
    return torch.stack(solved).reshape(rhs.shape)


def _refit_restormer(old: RestormerAttention, new: GLMHARestormerAttention, inputs: LayerInputs) -> None:
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
                k_s = torch.nn.functional.normalize(kv[:, :reduced].reshape(1, heads, r, -1), dim=-1)
                v_s = kv[:, reduced:].reshape(1, heads, r, -1)  # (1, heads, d', N)
                logits = (q @ k_s.transpose(-2, -1)) * temperature
                if new.token_bias is not None:
                    logits = logits + new.token_bias.double()
                targets = _value_targets(attention, logits.softmax(-1), v, v_s).reshape(reduced, -1)  # (C', N)
                count = min(REFIT_PIXELS, height * width)
                pixels = torch.randperm(height * width, generator=generator)[:count]
                rows, cols = pixels // width, pixels % width
                padded = torch.nn.functional.pad(x[0].double(), (1, 1, 1, 1))  # zeros, as the depthwise conv
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
    ridge = REFIT_RIDGE * grams.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (C',)
    eye = torch.eye(c, dtype=torch.float64)
    rhs = (rhs + ridge[:, None] * weights).unsqueeze(-1)  # (C', C, 1): one right-hand side per token
    solved = spd_solve(grams + ridge[:, None, None] * eye, rhs).squeeze(-1)  # (C', C)
    if torch.isfinite(solved).all():
        new.kv.weight[reduced:] = solved.to(new.kv.weight.dtype).reshape(reduced, c, 1, 1)


def _spectral_heads(linear: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, N, C) through a linear layer, split head-major: (b, heads, width, N) in float64."""
    b, n, _ = x.shape
    return linear(x).double().reshape(b, n, heads, -1).permute(0, 2, 3, 1)


def _refit_spectral(old: SpectralAttention, new: GLMHASpectralAttention, inputs: LayerInputs) -> None:
    """Per head, the d -> d' value mix R solving min sum ||P_S R V - P V||^2 + mu ||R - R_start||^2 exactly."""
    if new.value_form != "mix":
        raise GlmhaError("refit needs the mixing form of the values (GLMHA setting values: mix)")
    heads, d, r = old.num_heads, old.head_dim, new.reduced_head_dim
    normal = torch.zeros(heads, r * d, r * d, dtype=torch.float64)
    rhs = torch.zeros(heads, r * d, dtype=torch.float64)
    start = new.v_reduce.weight.detach().double().reshape(heads, r * d)  # (C', d, 1): row-major R per head
    rescale = old.rescale.detach().double()
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        for args in inputs:
            b, height, width, c = args[0].shape
            n = height * width
            x = args[0].reshape(b, n, c)  # (b, N, C)
            query = normalize(_spectral_heads(old.to_k, x, heads), dim=-1)  # (b, heads, d, N)
            keys = normalize(_spectral_heads(old.to_q, x, heads), dim=-1)  # (b, heads, d, N)
            kept = normalize(_spectral_heads(new.to_q, x, heads), dim=-1)  # (b, heads, d', N)
            values = old.to_v(x)  # (b, N, C)
            if isinstance(old, MaskedSpectralAttention):
                guide = old.mm(args[1][:1].permute(0, 3, 1, 2))  # (1, C, h, h)
                values = values * guide.permute(0, 2, 3, 1).reshape(1, n, c)
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
    mu = REFIT_RIDGE * normal.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (heads,)
    eye = torch.eye(r * d, dtype=torch.float64)
    rhs = (rhs + mu[:, None] * start).unsqueeze(-1)  # (heads, d' * d, 1)
    solved = spd_solve(normal + mu[:, None, None] * eye, rhs).squeeze(-1)
    if torch.isfinite(solved).all():
        new.v_reduce.weight.copy_(solved.reshape(heads * r, d, 1).to(new.v_reduce.weight.dtype))
