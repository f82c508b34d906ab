"""Distillation losses: output vs teacher, block features vs teacher, output vs ground truth.

Feature distillation compares, for every converted layer, the output of the block around it in the
student with the same point in the teacher; the points come from the family's `block_output`, and
forward hooks collect them during the ordinary forward passes, so no model code is changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from glmha.archs import RestorationModel
from glmha.layers import changed_layers

CHARBONNIER_EPS = 1e-3  # as in the restoration literature (MPRNet, Restormer's Charbonnier option)
MRAE_FLOOR = 1e-3  # smallest |reference| in the MRAE denominator (teacher outputs can be ~0 or negative)


def distance_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean distance between two tensors of equal shape, computed in float32."""
    if name == "l1":
        return lambda a, b: (a.float() - b.float()).abs().mean()
    if name == "mse":
        return lambda a, b: (a.float() - b.float()).pow(2).mean()
    if name == "charbonnier":
        return lambda a, b: torch.sqrt((a.float() - b.float()).pow(2) + CHARBONNIER_EPS**2).mean()
    if name == "rmse":  # MST-L's training loss
        return lambda a, b: torch.sqrt((a.float() - b.float()).pow(2).mean())
    if name == "mrae":  # MST++'s training loss, relative to the second argument (the reference)
        return lambda a, b: ((a.float() - b.float()).abs() / b.float().abs().clamp_min(MRAE_FLOOR)).mean()
    raise ValueError(f"unknown distance {name!r}")


def feature_points(student: RestorationModel) -> list[tuple[str, bool]]:
    """(module name, add its input) for the block around every converted layer, in forward order."""
    return [student.block_output(name) for name, _ in changed_layers(student)]


class FeatureTap:
    """Forward hooks that keep the latest output of each named module (plus its input when the
    block's residual sits outside the module). `clear()` between forward passes."""

    def __init__(self, model: nn.Module, points: list[tuple[str, bool]]) -> None:
        modules = dict(model.named_modules())
        self.values: dict[str, torch.Tensor] = {}
        self._handles = []
        for name, add_input in points:
            self._handles.append(modules[name].register_forward_hook(self._hook(name, add_input)))

    def _hook(self, name: str, add_input: bool):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.values[name] = output + inputs[0] if add_input else output
        return hook

    def clear(self) -> None:
        self.values.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def feature_loss(student_values: dict[str, torch.Tensor], teacher_values: dict[str, torch.Tensor],
                 distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Mean over the tapped blocks of the distance between student and teacher features."""
    names = list(student_values)
    if not names:
        raise RuntimeError("no block features were recorded; is the model converted?")
    total = sum(distance(student_values[n], teacher_values[n]) for n in names)
    return total / len(names)
