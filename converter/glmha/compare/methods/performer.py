"""`performer`: FAVOR+ positive orthogonal random features in place of the softmax (its feature count m per head
is the knob). No parameters of its own: distillation adapts the layers around the approximation."""

from __future__ import annotations

from torch import nn

from glmha.archs import RestorationModel
from glmha.compare.methods.core_methods import CoreMethod
from glmha.layers import CSALayer


class PerformerMethod(CoreMethod):
    name = "performer"
    title = "Performer"
    knob = "performer_features"
    width_name = "random features"

    def not_applicable(self, teacher: RestorationModel) -> str | None:
        for _, layer in teacher.csa_layers():
            if type(layer).combine is not CSALayer.combine:
                return (f"{type(layer).__name__} does not use a dense softmax ({type(layer).__name__}.combine), "
                        f"which positive random features approximate")
        return None

    def core(self, layer: CSALayer, width: int, seed: int) -> nn.Module:
        from glmha.compare.cores import PerformerCore

        return PerformerCore(width, seed=seed)
