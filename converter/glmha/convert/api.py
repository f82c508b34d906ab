"""The conversion pipeline as three calls: analyse -> plan -> convert (and `convert_to_glmha` for all)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from glmha.archs import RestorationModel
from glmha.convert.mutate import apply_plan
from glmha.convert.plan import DEFAULT_ENERGY, ConversionPlan, PlanSettings, make_plan
from glmha.convert.spectrum import ActivationGrams, LayerSpectrum, analyse_weights
from glmha.layers import GLMHASettings


def analyse(model: RestorationModel, calibration: Iterable[Sequence[torch.Tensor]] | None = None,
            *, mode: str = "operator") -> list[LayerSpectrum]:
    """Per-layer, per-head spectra: from the weights (`mode` "operator" or "pointwise", see
    glmha.convert.spectrum), or from activations on calibration inputs."""
    layers = model.csa_layers()
    if calibration is None:
        return analyse_weights(layers, mode)
    with ActivationGrams(layers) as grams, torch.no_grad():
        seen = 0
        for inputs in calibration:
            model(*inputs)
            seen += 1
    if seen == 0:
        raise ValueError("no calibration inputs")
    return grams.spectra()


def plan(model: RestorationModel, spectra: list[LayerSpectrum], *, energy: float | None = DEFAULT_ENERGY,
         ratio: float | None = None, target_macs: float | None = None, target_params: float | None = None,
         min_fidelity: float | None = None, levels: Sequence[str] = (), rank_patterns: Sequence[str] = (),
         init: str = "select", alpha: float = 0.6, calibration: str = GLMHASettings.calibration,
         allow_bigger: bool = False, seed: int = 0, input_size: tuple[int, int] = (256, 256),
         inputs: Sequence[Sequence[torch.Tensor]] | None = None, progress: bool | None = None) -> ConversionPlan:
    """C' per layer by one rule: `energy`, `ratio`, or a budget (`target_macs`, `target_params`,
    `min_fidelity`, measured on `inputs`: tuples of forward arguments, default the family's offline
    samples). `calibration` is the form of the calibration net's last layer."""
    budget = any(v is not None for v in (target_macs, target_params, min_fidelity))
    settings = PlanSettings(energy=None if ratio is not None or budget else energy, ratio=ratio,
                            target_macs=target_macs, target_params=target_params, min_fidelity=min_fidelity,
                            levels=tuple(levels), rank_patterns=tuple(rank_patterns), init=init, seed=seed,
                            allow_bigger=allow_bigger)
    glmha = GLMHASettings(alpha=alpha, calibration=calibration)
    return make_plan(model, spectra, settings, glmha, *input_size,
                     calibration=[tuple(t) for t in inputs] if inputs is not None else None, progress=progress)


def convert(model: RestorationModel, conversion_plan: ConversionPlan, spectra: list[LayerSpectrum],
            *, inplace: bool = False, inputs: Sequence[Sequence[torch.Tensor]] | None = None) -> RestorationModel:
    """The converted copy (or the model itself with `inplace`); `inputs` feed `refit` (default: the
    family's offline samples)."""
    return apply_plan(model, conversion_plan, spectra, inplace=inplace,
                      calibration=[tuple(t) for t in inputs] if inputs is not None else None)


def convert_to_glmha(model: RestorationModel, **options) -> tuple[RestorationModel, ConversionPlan]:
    """analyse (data-free) + plan + convert; `options` are those of `plan`. The model is not changed."""
    spectra = analyse(model)
    conversion_plan = plan(model, spectra, **options)
    return convert(model, conversion_plan, spectra, inputs=options.get("inputs")), conversion_plan
