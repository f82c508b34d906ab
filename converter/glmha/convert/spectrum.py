"""Per-head spectra of the key/value generators (SPEC section 3.2).

Everything is expressed through a per-head Gram matrix G = R R^T of the head's joint key/value rows
R (one row per channel, i.e. per attention token). Its eigenvalues are the squared singular values
of R (the spectrum and its energy curve), its eigenvectors the left singular vectors (the `svd`
initialisation), and a pivoted Cholesky of G picks rows exactly as a column-pivoted QR of R^T
would (the `select` initialisation) without ever forming R.

* Data-free (default): the rows are the key/value generator weights. With `mode="operator"` (the
  default) they are the exact linear operators that generate each channel: for MDTA a channel is
  a 1x1 row w followed by its own depthwise 3x3 filter f, i.e. the 3x3 kernel w (x) f, and the inner
  product of two such kernels is <w_a, w_b> <f_a, f_b>, so G is a sum of Hadamard products. With
  `mode="pointwise"` they are the 1x1 rows [W_K | W_V] alone. For MS-MSA both are the `to_q` and
  `to_v` rows. bench/RESULTS.md compares the two: per MAC saved, the operator form keeps more of
  the teacher's output.
* From activations (`--calib`): the rows are the key/value activations over all calibration pixels,
  accumulated as Gram matrices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from glmha.archs import adapter_for
from glmha.errors import GlmhaError
from glmha.layers import CSALayer
from glmha.runtime import single_thread

ENERGY_TOLERANCE = 1e-12


@dataclass
class HeadSpectrum:
    eigenvalues: torch.Tensor  # (d,) float64, descending, >= 0: squared singular values
    basis: torch.Tensor  # (d, d) float64, eigenvectors as columns, same order
    order: list[int]  # channel indices in pivoted-Cholesky (column-pivoted QR) order

    @property
    def singular_values(self) -> torch.Tensor:
        return self.eigenvalues.sqrt()

    @property
    def cumulative_energy(self) -> torch.Tensor:
        """Fraction of the energy kept by the leading r singular values, r = 1..d."""
        total = self.eigenvalues.sum()
        if total <= 0:
            return torch.ones_like(self.eigenvalues)
        return (self.eigenvalues.cumsum(0) / total).clamp(max=1.0)

    def width_for(self, energy: float) -> int:
        """Smallest r whose retained energy reaches `energy` (energy >= 1 keeps every channel)."""
        if energy >= 1.0:
            return len(self.eigenvalues)
        reached = (self.cumulative_energy >= energy - ENERGY_TOLERANCE).nonzero()
        return int(reached[0]) + 1


@dataclass
class LayerSpectrum:
    name: str
    channels: int
    num_heads: int
    source: str  # "weights" or "activations"
    heads: list[HeadSpectrum] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.channels // self.num_heads

    def width_for(self, energy: float) -> int:
        """Common per-head width d' such that every head keeps at least `energy`."""
        return max(head.width_for(energy) for head in self.heads)

    def energy_at(self, width: int) -> float:
        """Energy kept by the weakest head at per-head width `width`."""
        return min(float(head.cumulative_energy[width - 1]) for head in self.heads)


def head_spectrum(gram: torch.Tensor) -> HeadSpectrum:
    gram = gram.detach().double().cpu()
    gram = (gram + gram.T) / 2
    eigenvalues, vectors = torch.linalg.eigh(gram)  # ascending
    return HeadSpectrum(eigenvalues=eigenvalues.flip(0).clamp(min=0), basis=vectors.flip(1),
                        order=pivoted_order(gram.numpy()))


def pivoted_order(gram: np.ndarray | torch.Tensor) -> list[int]:
    """Greedy pivoted Cholesky: at each step the row with the largest residual norm.

    Identical pivots to a column-pivoted QR of R^T (Businger-Golub). Rows that are (numerically)
    dependent on the chosen ones come last, by their original norm. numpy, because these d x d
    problems are tiny and torch's per-op overhead would dominate.
    """
    gram = gram.numpy() if isinstance(gram, torch.Tensor) else gram
    d = gram.shape[0]
    residual = gram.diagonal().astype(np.float64).copy()
    scale = float(residual.max()) if d else 0.0
    factors = np.zeros((d, d))
    order: list[int] = []
    remaining = np.ones(d, dtype=bool)
    for step in range(d):
        pivot = int(np.argmax(np.where(remaining, residual, -1.0)))
        if residual[pivot] <= 1e-13 * max(scale, 1e-300):
            break
        column = (gram[:, pivot] - factors[:, :step] @ factors[pivot, :step]) / np.sqrt(residual[pivot])
        factors[:, step] = column
        residual = residual - column**2
        order.append(pivot)
        remaining[pivot] = False
    rest = sorted((i for i in range(d) if remaining[i]), key=lambda i: -float(gram[i, i]))
    return order + rest


SPECTRUM_MODES = ("operator", "pointwise")


def check_spectrum_mode(mode: object) -> None:
    """--spectrum / `student.spectrum`: one of SPECTRUM_MODES."""
    if mode not in SPECTRUM_MODES:
        raise GlmhaError(f"--spectrum: expected one of {', '.join(SPECTRUM_MODES)}, got {mode!r}")


def weight_grams(layer: CSALayer, mode: str = "operator") -> list[torch.Tensor]:
    """Per-head Gram matrices of the joint key/value generator rows, from the weights alone."""
    check_spectrum_mode(mode)
    with torch.no_grad():
        return adapter_for(layer).weight_grams(layer, mode)


@single_thread()
def analyse_weights(layers: Iterable[tuple[str, CSALayer]], mode: str = "operator") -> list[LayerSpectrum]:
    """Data-free spectra of every layer."""
    source = "weights" if mode == "operator" else f"weights ({mode})"
    return [_layer_spectrum(name, layer, weight_grams(layer, mode), source) for name, layer in layers]


def _layer_spectrum(name: str, layer: CSALayer, grams: Sequence[torch.Tensor], source: str) -> LayerSpectrum:
    return LayerSpectrum(name=name, channels=layer.channels, num_heads=layer.num_heads, source=source,
                         heads=[head_spectrum(g) for g in grams])


class ActivationGrams:
    """Forward hooks accumulating per-head Gram matrices of key/value activations."""

    def __init__(self, layers: Sequence[tuple[str, CSALayer]]) -> None:
        self.layers = list(layers)
        self.grams: dict[str, list[torch.Tensor]] = {
            name: [torch.zeros(layer.head_dim, layer.head_dim, dtype=torch.float64)
                   for _ in range(layer.num_heads)]
            for name, layer in self.layers
        }
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ActivationGrams:
        for name, layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(layer: nn.Module, args: tuple, output: object) -> None:
            keys, values = key_value_activations(layer, *args)  # (b, C, N) each
            d = layer.head_dim
            for h, gram in enumerate(self.grams[name]):
                k = keys[:, h * d:(h + 1) * d].double()  # (b, d, N)
                v = values[:, h * d:(h + 1) * d].double()  # (b, d, N)
                gram += (k @ k.transpose(1, 2)).sum(0) + (v @ v.transpose(1, 2)).sum(0)

        return record

    @single_thread()
    def spectra(self) -> list[LayerSpectrum]:
        return [_layer_spectrum(name, layer, self.grams[name], "activations") for name, layer in self.layers]


def key_value_activations(layer: CSALayer, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The key and value activations (b, C, N) a CSA layer forms from its forward arguments."""
    with torch.no_grad():
        return adapter_for(layer).key_value_activations(layer, *args)
