"""How much each candidate C' of each CSA layer costs in fidelity, measured on calibration inputs.

For every layer and candidate width the GLMHA layer is built exactly as the conversion would build it
and run on the inputs that layer receives in the teacher, giving the layer's own output error (sum of
squares). Whole-model forward passes with the layer converted at three probe widths (its narrowest
candidate, one a third and one two thirds up its candidate list; two, the narrowest and the middle one,
for models where that would take long) give its gain there: how much model-output MSE a unit of the layer's output
error causes. Gains grow for large errors (the network is not linear), so between the probes the gain is
interpolated (log-linear in the candidate index) and held beyond them. The predicted model-output MSE of a
candidate is gain x layer error, made monotone (removing more channels never predicts less error: the
raw layer errors are noisy in the width, and an allocator would exploit the noise), and layers add (first
order). The allocator (glmha.convert.allocate) spends a budget on these predictions; the budget planner
then measures the chosen plan for real.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from glmha.convert.activations import Inputs, TeacherRun, mean_squared_error
from glmha.convert.initialise import convert_layer
from glmha.layers import GLMHALayer

MAX_CANDIDATES = 24  # widths measured per layer (evenly spaced when a layer allows more)
PROBE_POSITIONS = (0.0, 1 / 3, 2 / 3)  # where in a layer's candidate list its gain is measured in the whole model
LARGE_MODEL_PROBES = (0.0, 0.5)  # when three probes per layer would cost more than PROBE_MACS
PROBE_MACS = 1e12  # MACs (b) of the probe passes, at most, before falling back to two probes per layer


@dataclass
class LayerSensitivity:
    name: str
    reduced: list[int]  # candidate C' values, ascending
    local: list[float]  # the layer's own output error (sum of squares) at each candidate
    gains: dict[int, float]  # probe C' -> model-output MSE per unit of layer output error there

    def gain_at(self, index: int) -> float:
        """The gain at candidate `index`: log-linear between the probes, held beyond them."""
        probes = sorted((self.reduced.index(c), g) for c, g in self.gains.items())
        if index <= probes[0][0]:
            return probes[0][1]
        for (i0, g0), (i1, g1) in itertools.pairwise(probes):
            if index <= i1:
                if g0 <= 0 or g1 <= 0:
                    return max(g0, g1)
                return math.exp(math.log(g0) + (math.log(g1) - math.log(g0)) * (index - i0) / (i1 - i0))
        return probes[-1][1]

    def predicted(self) -> list[float]:
        """Predicted model-output MSE of each candidate, never smaller for a narrower one."""
        raw = [self.gain_at(i) * error for i, error in enumerate(self.local)]
        for i in range(len(raw) - 2, -1, -1):
            raw[i] = max(raw[i], raw[i + 1])
        return raw


def spread(values: Sequence[int], count: int) -> list[int]:
    """At most `count` of the sorted values, evenly spaced, always with the first and the last."""
    values = sorted(values)
    if len(values) <= count:
        return values
    picks = {round(i * (len(values) - 1) / (count - 1)) for i in range(count)}
    return [values[i] for i in sorted(picks)]


class LayerBuilder:
    """Builds GLMHA candidates of one model's layers as the conversion would (same init and seeds)."""

    def __init__(self, layers: dict, spectra: dict, init: str, glmha, seed: int, order: Sequence[str]) -> None:
        self.layers, self.spectra, self.init, self.glmha = layers, spectra, init, glmha
        self.seeds = {name: seed + index for index, name in enumerate(order)}

    def __call__(self, name: str, reduced: int, inputs: Sequence[Inputs] | None = None) -> GLMHALayer:
        return convert_layer(self.layers[name], self.spectra[name], reduced, self.init, self.glmha,
                             seed=self.seeds[name], inputs=inputs).eval()


def measure(model: torch.nn.Module, inputs: Sequence[Inputs], candidates: dict[str, list[int]],
            build: LayerBuilder, *, step: Callable[[str], None] | None = None, extra: Sequence[str] = (),
            forward_macs: int = 0) -> tuple[TeacherRun, dict[str, LayerSensitivity]]:
    """The recorded teacher run (also recording the `extra` layers), and the sensitivity of every layer in
    `candidates` (layer -> candidate C' values). `step(name)` is called after each layer (progress);
    `forward_macs` (one pass over the inputs) decides between three and two probes per layer."""
    positions = PROBE_POSITIONS
    if len(candidates) * len(PROBE_POSITIONS) * forward_macs > PROBE_MACS:
        positions = LARGE_MODEL_PROBES
    names = list(candidates)
    teacher = TeacherRun(model, inputs, [*names, *extra])
    records = teacher.layers
    found = {}
    with torch.no_grad():
        for name in names:
            record = records[name]
            widths = candidates[name]
            local = []
            built = {}
            for reduced in widths:
                layer = build(name, reduced, record.inputs)
                built[reduced] = layer
                local.append(sum(float((layer(*args).double() - out.double()).pow(2).sum())
                                 for args, out in zip(record.inputs, record.outputs, strict=True)))
            gains = {}
            for probe in sorted({widths[round(f * (len(widths) - 1))] for f in positions}):
                error = local[widths.index(probe)]
                gains[probe] = 0.0 if error <= 0 else (
                    mean_squared_error(teacher.run({name: built[probe]}), teacher.outputs) / error)
            found[name] = LayerSensitivity(name=name, reduced=list(widths), local=local, gains=gains)
            if step is not None:
                step(name)
    return teacher, found
