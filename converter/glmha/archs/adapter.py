"""The interface between an attention kind and the converter.

glmha's analysis and conversion (glmha.convert) are written once, against this interface; each CSA layer
class brings one adapter that knows its weights. Adapters are registered by the exact layer class
(glmha.archs.adapter_for): a subclass that computes anything differently (DRSformer's top-k attention is
MDTA plus a sparsity step) must bring its own adapter or be refused, never be converted as its parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from glmha.errors import GlmhaError
from glmha.layers import CSALayer, GLMHALayer, GLMHASettings

LayerInputs = Sequence[tuple[torch.Tensor, ...]]  # what a CSA layer received, one tuple per forward
Tokens = list[list[list[int]]]  # per head, the reduced tokens as lists of channel indices within the head


class AttentionAdapter:
    """Everything family-specific about converting one CSA layer class to GLMHA."""

    csa_class: ClassVar[type[CSALayer]]
    glmha_class: ClassVar[type[GLMHALayer]]
    min_head_width: ClassVar[int] = 1  # smallest d' the GLMHA layer can compute with
    # initialisations this kind supports, with the reason for each it does not (see convert/initialise.py)
    unsupported_inits: ClassVar[dict[str, str]] = {}

    def empty_glmha(self, layer: CSALayer, reduced: int, settings: GLMHASettings) -> GLMHALayer:
        """The GLMHA layer with the shapes that replace `layer` at C' = `reduced` (weights not set)."""
        raise NotImplementedError

    def weight_grams(self, layer: CSALayer, mode: str) -> list[torch.Tensor]:
        """Per head, the (d, d) float64 Gram matrix of the joint key/value generator rows: `operator` (each
        channel's full linear operator) or `pointwise` (the 1x1 / linear rows alone)."""
        raise NotImplementedError

    def key_value_activations(self, layer: CSALayer, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value activations (b, C, N) the layer forms from its forward arguments; the keys are
        the tensor on the softmax axis, the values what the attention multiplies."""
        raise NotImplementedError

    def key_value_generators(self, layer: CSALayer) -> list[tuple[torch.nn.Module, list[int]]]:
        """The modules that generate keys and values, each with the output channel that carries channel j's key
        (or value) at position j (C entries): what structured K/V pruning scores, a pair (K_j, V_j) at a time."""
        raise NotImplementedError

    def operator_rows(self, layer: CSALayer) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value operators, one float64 row per channel (C, F) each: what `merge` clusters on."""
        raise NotImplementedError

    def initialise(self, old: CSALayer, new: GLMHALayer, tokens: Tokens, bases: list[torch.Tensor],
                   method: str) -> None:
        """Copy the kept weights of `old` into `new` and set its reduced generators: one token per kept
        channel (`select`), merged groups (`merge`), or the per-head (d, d') bases (`svd`); under no_grad."""
        raise NotImplementedError

    def refit(self, old: CSALayer, new: GLMHALayer, inputs: LayerInputs) -> None:
        """Refit the value generators of a `select`-initialised layer on what the layer received."""
        raise NotImplementedError

    def check_init(self, method: str) -> None:
        if method in self.unsupported_inits:
            raise GlmhaError(f"--init {method} is not available for {self.csa_class.__name__}: "
                             f"{self.unsupported_inits[method]}")
