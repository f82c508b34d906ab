"""Replace planned CSA layers by GLMHA layers: build and check every replacement first, then swap
them in through their parents, so a failure never leaves a half-converted model."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch

from glmha.archs import RestorationModel
from glmha.convert.activations import batched, capture
from glmha.convert.calibration import default_calibration
from glmha.convert.initialise import CALIBRATED_INITS, convert_layer
from glmha.convert.plan import ConversionPlan
from glmha.convert.spectrum import LayerSpectrum
from glmha.errors import GlmhaError
from glmha.layers import GLMHALayer
from glmha.record import Conversion, ModelRecord
from glmha.runtime import single_thread


def apply_plan(model: RestorationModel, plan: ConversionPlan, spectra: list[LayerSpectrum], *,
               inplace: bool = False, calibration: Sequence[tuple[torch.Tensor, ...]] | None = None
               ) -> RestorationModel:
    """The converted model (a copy unless `inplace`), its record naming the conversion. Inits that fit to
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
    target.replace_layers(replacements)
    conversion = Conversion(settings=plan.glmha, reduced=plan.converted, init=plan.settings.init,
                            plan=plan.to_json())
    target.record = ModelRecord(source_sha256=model.record.source_sha256, source_file=model.record.source_file,
                                conversion=conversion)  # the source file as glmha.load recorded it
    return target
