"""Replace planned CSA layers by GLMHA layers: build and check every replacement first, then swap
them in through their parents, so a failure never leaves a half-converted model."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from glmha.archs import RestorationModel
from glmha.convert.activations import batched, capture
from glmha.convert.calibration import default_calibration
from glmha.convert.initialise import CALIBRATED_INITS, convert_layer
from glmha.convert.layers import GLMHALayer, GLMHASettings
from glmha.convert.plan import ConversionPlan
from glmha.convert.spectrum import LayerSpectrum
from glmha.errors import GlmhaError
from glmha.runtime import single_thread


@dataclass
class ConversionRecord:
    """What a converted model needs to be exported and rebuilt; kept as `model.glmha_record`."""

    settings: GLMHASettings
    reduced: dict[str, int]  # layer name -> C'
    init: str = "select"
    plan: dict = field(default_factory=dict)  # ConversionPlan.to_json(), when known
    source_sha256: str = ""
    source_file: str = ""


def apply_plan(model: RestorationModel, plan: ConversionPlan, spectra: list[LayerSpectrum], *,
               inplace: bool = False, calibration: Sequence[tuple[torch.Tensor, ...]] | None = None
               ) -> RestorationModel:
    """The converted model (a copy unless `inplace`), with `glmha_record` set. Inits that fit to
    activations (`refit`) run on `calibration` inputs (default: the family's offline samples)."""
    layers = dict(model.csa_layers())
    by_name = {s.name: s for s in spectra}
    planned = [(index, lp) for index, lp in enumerate(plan.layers) if lp.convert]
    for _, layer_plan in planned:
        layer = layers.get(layer_plan.name)
        if layer is None or isinstance(layer, GLMHALayer):
            raise GlmhaError(f"plan layer {layer_plan.name} is not a CSA layer of this model")
        if layer_plan.name not in by_name:
            raise GlmhaError(f"no spectrum for {layer_plan.name}")
    seen: dict[str, list] = {}
    if planned and plan.settings.init in CALIBRATED_INITS:
        if calibration is None:
            calibration, _ = default_calibration(model)
        _, records = capture(model, batched(calibration), [lp.name for _, lp in planned], keep_outputs=False)
        seen = {name: record.inputs for name, record in records.items()}
    replacements = {}
    # thousands of d x d operations: one thread is faster (glmha.runtime); fits to activations are not
    with contextlib.nullcontext() if seen else single_thread():
        for index, layer_plan in planned:
            replacements[layer_plan.name] = convert_layer(
                layers[layer_plan.name], by_name[layer_plan.name], layer_plan.reduced_channels,
                plan.settings.init, plan.glmha, seed=plan.settings.seed + index, inputs=seen.get(layer_plan.name))
    target = model if inplace else copy.deepcopy(model)
    swap_layers(target, replacements)
    source = getattr(model, "glmha_source", {})  # set by glmha.load
    target.glmha_record = ConversionRecord(settings=plan.glmha, reduced=plan.converted,
                                           init=plan.settings.init, plan=plan.to_json(),
                                           source_sha256=source.get("sha256", ""),
                                           source_file=source.get("file", ""))
    return target


def swap_layers(model: RestorationModel, replacements: dict[str, GLMHALayer]) -> None:
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
