"""Replacement attention cores for the compared baselines: Linformer and Performer (FAVOR+).

A core is installed as `layer.attention_core` on a CSA layer (glmha.layers.CSALayer.attend_channels) and
receives the layer's L2-normalised queries (b, heads, d, N) and keys (b, heads, K, N), its values
(b, heads, K, N), its temperature (heads, 1, 1) and its `combine`; it returns (b, heads, d, N). In channel
attention the tokens are channels and each token is a vector of N pixel values, so a "sequence length"
reduction acts on the K key/value channels and a random-feature map acts on N-dimensional vectors.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from glmha.errors import GlmhaError

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LinformerCore(nn.Module):
    """Linformer (Wang et al. 2020) read for channel attention as in the GLMHA paper: the layer generates its
    full K keys and values, then learned per-head projections E, F mix the K tokens down to `reduced` (d'):
    softmax(temperature * Q^ (E K^)^T) (F V). The keys are projected after their L2 normalisation and not
    normalised again, as Linformer projects the keys the attention would have used.

    The projections are grouped 1-d convolutions (not bare matrices) so that glmha.counting counts them as
    linear layers, like the key/value generators they stand beside.
    """

    def __init__(self, heads: int, keys: int, reduced: int) -> None:
        super().__init__()
        if not all(_is_count(v) and v >= 1 for v in (heads, keys)):
            raise GlmhaError(f"LinformerCore: heads and keys must be integers >= 1, got {heads!r} and {keys!r}")
        if not (_is_count(reduced) and 1 <= reduced <= keys):
            raise GlmhaError(f"LinformerCore: reduced must be an integer in [1, {keys}], got {reduced!r}")
        self.heads, self.keys, self.reduced = heads, keys, reduced
        # weight (heads * d', K, 1): group h maps the K tokens of head h to its d' tokens
        self.project_key = nn.Conv1d(heads * keys, heads * reduced, 1, groups=heads, bias=False)
        self.project_value = nn.Conv1d(heads * keys, heads * reduced, 1, groups=heads, bias=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                combine: Combine) -> torch.Tensor:
        """combine(temperature * Q^ (E K^)^T, F V): (b, heads, d, N) queries, (b, heads, K, N) keys and values
        -> (b, heads, d, N). The layer's own `combine` is used, so a top-k layer keeps its sparse softmax."""
        b, heads, keys, n = key.shape
        if (heads, keys) != (self.heads, self.keys) or value.shape != key.shape:
            raise GlmhaError(f"LinformerCore built for {self.heads} heads of {self.keys} keys got keys of shape "
                             f"{tuple(key.shape)} and values of shape {tuple(value.shape)}")
        key = self.project_key(key.reshape(b, heads * keys, n))  # (b, heads*K, N) -> (b, heads*d', N)
        value = self.project_value(value.reshape(b, heads * keys, n))  # (b, heads*K, N) -> (b, heads*d', N)
        key = key.view(b, heads, self.reduced, n)  # (b, heads, d', N)
        value = value.view(b, heads, self.reduced, n)  # (b, heads, d', N)
        logits = (query @ key.transpose(-2, -1)) * temperature  # (b, heads, d, d')
        return combine(logits, value)

    def select(self, kept: list[list[int]]) -> None:
        """Set E and F to the one-hot selection of the kept tokens, per head (kept[h][j] becomes reduced token
        j of head h), so that the core computes the structurally pruned layer: attention over the kept keys
        and values only. The starting point of a Linformer built from a pruned teacher."""
        if len(kept) != self.heads:
            raise GlmhaError(f"LinformerCore.select needs one list of kept keys per head ({self.heads}), "
                             f"got {len(kept)}")
        for head, indices in enumerate(kept):
            indices = list(indices)
            valid = all(_is_count(i) and 0 <= i < self.keys for i in indices)
            if len(indices) != self.reduced or not valid or len(set(indices)) != len(indices):
                raise GlmhaError(f"LinformerCore.select: head {head} must keep {self.reduced} distinct key "
                                 f"indices in [0, {self.keys}), got {indices}")
        rows = torch.arange(self.heads * self.reduced)  # output token h*d' + j
        columns = torch.tensor([int(i) for indices in kept for i in indices])  # its key within head h
        with torch.no_grad():
            for conv in (self.project_key, self.project_value):
                weight = torch.zeros_like(conv.weight)  # (heads*d', K, 1)
                weight[rows, columns, 0] = 1.0
                conv.weight.copy_(weight)


class PerformerCore(nn.Module):
    """FAVOR+ (Choromanski et al. 2021): exp(temperature * q.k) estimated with m positive orthogonal random
    features, A = phi(x) phi(y)^T, rows normalised, times V. With s = sqrt(|temperature|), x = s q and
    y = sign(temperature) s k, so that exp(x.y) = exp(temperature q.k); phi(u) = exp(W u - |u|^2/2) / sqrt(m).

    The tokens are the channels and each is an N-vector of pixels, so W is (m, N) and depends on the input
    size: it is drawn per N from (seed, N), the same on every device, and cached outside the state dict
    (it is not learned, and a checkpoint must not tie the model to one input size).

    `combine` is ignored: the estimate replaces a dense softmax, so a layer whose combine is something else
    (DRSformer's top-k softmax) is not reproduced; callers refuse installing this core on such layers.
    The products are ordered for channel attention (d, K small, N large): phi(x) phi(y)^T is only d x K.
    """

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        if not (_is_count(features) and features >= 1):
            raise GlmhaError(f"PerformerCore: features must be an integer >= 1, got {features!r}")
        if not (_is_count(seed) and seed >= 0):
            raise GlmhaError(f"PerformerCore: seed must be an integer >= 0, got {seed!r}")
        self.features, self.seed = features, seed
        # (N, device, dtype) -> W (m, N); a plain dict, so neither state_dict nor .to() sees it
        self.projections: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def projection(self, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """W (m, N) for inputs of N = size pixels; an empty meta tensor on the meta device (MAC counting)."""
        if device.type == "meta":
            return torch.empty(self.features, size, device=device, dtype=dtype)
        cache_key = (size, device, dtype)
        found = self.projections.get(cache_key)
        if found is None:
            drawn = orthogonal_random_features(self.features, size, self.seed)
            found = self.projections[cache_key] = drawn.to(device=device, dtype=dtype)
        return found

    def feature_map(self, u: torch.Tensor, weight: torch.Tensor, per_row: bool) -> torch.Tensor:
        """phi(u) (..., rows, m) of u (..., rows, N), up to a positive factor that cancels in the attention:
        the largest exponent of each row (per_row, the queries: cancels in the row normalisation) or of each
        (batch, head) (the keys: a factor common to every entry of the head's attention)."""
        exponent = u @ weight.transpose(0, 1) - (u * u).sum(dim=-1, keepdim=True) / 2  # (..., rows, m)
        dims = (-1,) if per_row else (-2, -1)
        stabiliser = exponent.detach().amax(dim=dims, keepdim=True)  # cancels, so no gradient through it
        return torch.exp(exponent - stabiliser) / math.sqrt(self.features)

    def attention(self, query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """The estimated attention (b, heads, d, K), rows summing to 1, of queries (b, heads, d, N) and keys
        (b, heads, K, N) with the temperature (heads, 1, 1)."""
        weight = self.projection(query.shape[-1], query.device, query.dtype)  # (m, N)
        scale = temperature.abs().sqrt()  # (heads, 1, 1)
        x = query * scale  # (b, heads, d, N)
        y = key * (scale * temperature.sign())  # (b, heads, K, N)
        kernel = self.feature_map(x, weight, True) @ self.feature_map(y, weight, False).transpose(-2, -1)
        return kernel / kernel.sum(dim=-1, keepdim=True)  # (b, heads, d, K)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                combine: Combine | None = None) -> torch.Tensor:
        """A @ V (b, heads, d, N); `combine` is accepted for the core interface and ignored (see the class)."""
        return self.attention(query, key, temperature) @ value  # (b, heads, d, K) @ (b, heads, K, N)


def orthogonal_random_features(features: int, size: int, seed: int) -> torch.Tensor:
    """W (features, size) in float64, drawn on the CPU from (seed, size) alone: blocks of `size` orthonormal
    rows (Haar-distributed: QR of a Gaussian matrix with R's diagonal made positive), stacked until there are
    `features` rows, each row rescaled to the norm of an independent Gaussian `size`-vector, so that every
    row is marginally N(0, I) as FAVOR+'s unbiased estimator needs, while rows of a block stay orthogonal."""
    generator = torch.Generator().manual_seed(_mixed_seed(seed, size))
    full, rest = divmod(features, size)
    blocks = []
    if full:
        gaussian = torch.randn(full, size, size, generator=generator, dtype=torch.float64)
        blocks.append(_orthonormal_rows(gaussian).reshape(full * size, size))  # (full, N, N) -> (full*N, N)
    if rest:
        gaussian = torch.randn(1, size, rest, generator=generator, dtype=torch.float64)
        blocks.append(_orthonormal_rows(gaussian).reshape(rest, size))  # (1, rest, N) -> (rest, N)
    norms = torch.randn(features, size, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return torch.cat(blocks) * norms  # (m, N)


def _orthonormal_rows(gaussian: torch.Tensor) -> torch.Tensor:
    """(blocks, N, r) Gaussian -> (blocks, r, N) orthonormal rows spanning a uniformly random subspace."""
    q, r = torch.linalg.qr(gaussian)  # q (blocks, N, r), r (blocks, r, r)
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)  # (blocks, r)
    signs = torch.where(diagonal < 0, -1.0, 1.0).to(q.dtype)
    return (q * signs.unsqueeze(-2)).transpose(-2, -1)  # (blocks, N, r) -> (blocks, r, N)


def _mixed_seed(seed: int, size: int) -> int:
    """A generator seed from (seed, size): a hash, so that nearby pairs do not share streams."""
    digest = hashlib.sha256(f"glmha.performer/{seed}/{size}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # below 2**63


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
