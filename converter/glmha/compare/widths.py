"""Per-layer widths of a replacement attention core that meet a MACs (b) budget, or why none can.

Linformer's d' and Performer's feature count m are per-head widths whose cost is affine in the width
(projections and products each scale with it). Each layer's cost line is read off two exact counts on meta
tensors (checked at a third width), so choosing widths is arithmetic: the largest uniform fraction of every
layer's widest setting whose total stays within the budget, then single steps up, least-served layer first,
while the total still fits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from glmha.archs import RestorationModel
from glmha.counting import count_macs
from glmha.errors import GlmhaError
from glmha.layers import CSALayer

CoreFactory = Callable[[CSALayer, int], nn.Module]  # (layer, per-head width) -> its replacement core


@dataclass(frozen=True)
class CostLine:
    """A layer's MACs (b) with a core of per-head width w: base + slope * w; `before` without a core."""

    before: int
    base: float
    slope: float

    def at(self, width: int) -> int:
        return round(self.base + self.slope * width)


@dataclass(frozen=True)
class WidthChoice:
    widths: dict[str, int]  # per-head width per layer
    macs_total: int  # the model's MACs (b) with these widths
    floor: int  # the model's MACs (b) at the smallest width of every layer
    reachable: bool  # the budget can be met at all


_LINES: dict[tuple, tuple[float, float]] = {}  # (core kind, layer kind and shapes, widths) -> (base, slope)


def cost_lines(teacher: RestorationModel, names: list[str], factory: CoreFactory, smallest: dict[str, int],
               largest: dict[str, int], height: int, width: int, *, kind: str) -> tuple[int, dict[str, CostLine]]:
    """The teacher's MACs (b) at height x width and the cost line of each named layer with its core (`kind`
    names the core: layers of one class, width and input shape share a line)."""
    report = count_macs(teacher, teacher.example_inputs(height, width, device="meta"), modules=names)
    layers = dict(teacher.csa_layers())
    lines = {}
    for name in names:
        layer, shapes = layers[name], report.input_shapes[name]
        low, high = smallest[name], largest[name]
        key = (kind, type(layer), layer.channels, layer.num_heads, tuple(map(tuple, shapes)), low, high)
        if key not in _LINES:
            _LINES[key] = _line(layer, shapes, factory, low, high)
        base, slope = _LINES[key]
        lines[name] = CostLine(before=report.modules[name].total, base=base, slope=slope)
    return report.macs.total, lines


def _line(layer: CSALayer, shapes: list[tuple[int, ...]], factory: CoreFactory, low: int,
          high: int) -> tuple[float, float]:
    """(base, slope) of the layer's MACs (b) with a core of width w, from exact counts at `low` and `high`,
    checked at a width between them."""

    def count(w: int) -> int:
        probe = copy.deepcopy(layer)
        probe.attention_core = factory(layer, w)
        return count_macs(probe, [torch.empty(s, device="meta") for s in shapes]).macs.total

    at_low, at_high = count(low), count(high)
    slope = (at_high - at_low) / (high - low) if high > low else 0.0
    base = at_low - slope * low
    middle = (low + high) // 2
    if high - low > 1 and round(base + slope * middle) != count(middle):  # pragma: no cover - non-affine core
        raise GlmhaError(f"{type(layer).__name__}: the cost of its replacement core is not affine in its width")
    if len(_LINES) > 4096:
        _LINES.clear()
    return base, slope


def choose_widths(total: int, lines: dict[str, CostLine], smallest: dict[str, int], largest: dict[str, int],
                  budget: int) -> WidthChoice:
    """The widths whose model MACs (b) come closest to `budget` from below (the smallest ones when even they
    exceed it)."""

    def model_macs(widths: dict[str, int]) -> int:
        return total + sum(lines[n].at(w) - lines[n].before for n, w in widths.items())

    def uniform(fraction: float) -> dict[str, int]:
        return {n: max(smallest[n], min(largest[n], math.floor(fraction * largest[n]))) for n in lines}

    floor = model_macs(dict(smallest))
    if floor > budget:
        return WidthChoice(dict(smallest), floor, floor, reachable=False)
    low, high = 0.0, 1.0
    if model_macs(uniform(high)) <= budget:
        low = high
    for _ in range(40):  # bisection on the fraction: cost only grows with it
        if high - low < 1e-6:
            break
        middle = (low + high) / 2
        if model_macs(uniform(middle)) <= budget:
            low = middle
        else:
            high = middle
    widths = uniform(low)
    grown = True
    while grown:  # single steps, the layer furthest below its widest setting first
        grown = False
        for name in sorted(lines, key=lambda n: (widths[n] / largest[n], n)):
            if widths[name] < largest[name]:
                trial = {**widths, name: widths[name] + 1}
                if model_macs(trial) <= budget:
                    widths, grown = trial, True
    return WidthChoice(widths, model_macs(widths), floor, reachable=True)
