"""The conversion pipeline as three calls: analyse -> plan -> convert (and `convert_to_glmha` for all)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from glmha.archs import RestorationModel
from glmha.convert.layers import GLMHASettings
from glmha.convert.mutate import apply_plan
from glmha.convert.plan import DEFAULT_ENERGY, ConversionPlan, PlanSettings, make_plan
from glmha.convert.spectrum import ActivationGrams, LayerSpectrum, analyse_weights


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
         ratio: float | None = None, levels: Sequence[str] = (), rank_patterns: Sequence[str] = (),
         init: str = "select", alpha: float = 0.6, pool: int = 2, kernel: int = 3, seed: int = 0,
         input_size: tuple[int, int] = (256, 256)) -> ConversionPlan:
    settings = PlanSettings(energy=None if ratio is not None else energy, ratio=ratio,
                            levels=tuple(levels), rank_patterns=tuple(rank_patterns), init=init, seed=seed)
    return make_plan(model, spectra, settings, GLMHASettings(alpha=alpha, pool=pool, kernel=kernel),
                     *input_size)


def convert(model: RestorationModel, conversion_plan: ConversionPlan, spectra: list[LayerSpectrum],
            *, inplace: bool = False) -> RestorationModel:
    return apply_plan(model, conversion_plan, spectra, inplace=inplace)


def convert_to_glmha(model: RestorationModel, **options) -> tuple[RestorationModel, ConversionPlan]:
    """analyse (data-free) + plan + convert; `options` are those of `plan`. The model is not changed."""
    spectra = analyse(model)
    conversion_plan = plan(model, spectra, **options)
    return convert(model, conversion_plan, spectra), conversion_plan
