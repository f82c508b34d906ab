"""Choose C' per layer (SPEC section 3.3). The plan is data: printed, saved as JSON, exported.

Policy: `rank_patterns` (explicit overrides, applied to every layer they match) win; otherwise
layers outside `levels` stay CSA; otherwise d' comes from `ratio` (uniform key/value size
reduction, the paper's Table 7) or from `energy` (the smallest per-head width whose spectrum
energy reaches it in every head). C' = heads * d', so it is always divisible by the head count.
A layer where GLMHA would not save MACs (calibration net included) stays CSA, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from glmha.archs import RestorationModel
from glmha.config import StrictConfig
from glmha.convert.initialise import INIT_METHODS, empty_glmha_like
from glmha.convert.layers import GLMHASettings
from glmha.convert.spectrum import LayerSpectrum
from glmha.counting import CostReport, count_macs, count_parameters
from glmha.errors import GlmhaError
from glmha.runtime import single_thread

DEFAULT_ENERGY = 0.95  # spectrum energy each head keeps unless the user says otherwise


@dataclass(frozen=True)
class PlanSettings(StrictConfig):
    energy: float | None = DEFAULT_ENERGY
    ratio: float | None = None  # fraction of key/value channels removed, e.g. 0.5
    levels: tuple[str, ...] = ()  # empty: every level
    rank_patterns: tuple[str, ...] = ()  # "REGEX=C'" (re.search on the layer name; last match wins)
    init: str = "select"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.energy is not None and self.ratio is not None:
            raise GlmhaError("give either --energy or --ratio, not both")
        if self.energy is None and self.ratio is None:
            raise GlmhaError("one of --energy or --ratio is needed")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise GlmhaError(f"--energy must be in (0, 1], got {self.energy}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise GlmhaError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.init not in INIT_METHODS:
            raise GlmhaError(f"--init must be one of {', '.join(INIT_METHODS)}, got '{self.init}'")
        for pattern in self.rank_patterns:
            parse_rank_pattern(pattern)


def parse_rank_pattern(text: str) -> tuple[re.Pattern[str], int]:
    regex, sep, value = text.rpartition("=")
    if not sep or not regex or not value.strip().isdigit():
        raise GlmhaError(f"--rank-pattern '{text}': expected REGEX=C' with C' a positive integer")
    try:
        return re.compile(regex), int(value)
    except re.error as error:
        raise GlmhaError(f"--rank-pattern '{text}': bad regular expression ({error})") from None


@dataclass
class LayerPlan:
    name: str
    kind: str
    level: str
    channels: int
    heads: int
    reduced_channels: int  # C' (== channels when the layer stays CSA)
    energy: float  # spectrum energy kept by the weakest head at C'
    convert: bool
    reason: str
    params_before: int
    params_after: int
    macs_linear_before: int
    macs_linear_after: int
    macs_total_before: int
    macs_total_after: int


@dataclass
class ConversionPlan:
    family: str
    settings: PlanSettings
    glmha: GLMHASettings
    input_shapes: list[list[int]]
    source: str  # "weights" or "activations"
    layers: list[LayerPlan] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)  # params, macs_linear, macs_total
    after: dict[str, int] = field(default_factory=dict)

    @property
    def converted(self) -> dict[str, int]:
        return {layer.name: layer.reduced_channels for layer in self.layers if layer.convert}

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "glmha": self.glmha.to_dict(),
            "spectrum_source": self.source,
            "input_shapes": self.input_shapes,
            "before": self.before,
            "after": self.after,
            "layers": [asdict(layer) for layer in self.layers],
        }


@single_thread()
def make_plan(model: RestorationModel, spectra: list[LayerSpectrum], settings: PlanSettings,
              glmha: GLMHASettings, height: int, width: int, *, cost: CostReport | None = None) -> ConversionPlan:
    """The plan at input size height x width; `cost` may pass a count of the model made at that size."""
    inputs = model.example_inputs(height, width, device="meta")
    layers = dict(model.csa_layers())
    by_name = {s.name: s for s in spectra}
    if cost is None or set(cost.modules) != set(layers):
        cost = count_macs(model, inputs, modules=list(layers))
    patterns = [parse_rank_pattern(p) for p in settings.rank_patterns]
    matched = [0] * len(patterns)
    known_levels = {model.csa_level(name) for name in layers}
    unknown = sorted(set(settings.levels) - known_levels)
    if unknown:
        raise GlmhaError(f"--levels: unknown level(s) {', '.join(unknown)}; this model has "
                         f"{', '.join(sorted(known_levels))}")
    plan = ConversionPlan(family=model.family, settings=settings, glmha=glmha,
                          input_shapes=[list(t.shape) for t in inputs], source=spectra[0].source)
    for name, layer in layers.items():
        spectrum = by_name[name]
        c, heads, d = layer.channels, layer.num_heads, layer.head_dim
        level = model.csa_level(name)
        forced = None
        for index, (regex, value) in enumerate(patterns):
            if regex.search(name):
                matched[index] += 1
                forced = (settings.rank_patterns[index], value)
        if forced is not None:
            pattern, reduced = forced
            if reduced < 1 or reduced > c or reduced % heads:
                raise GlmhaError(f"--rank-pattern '{pattern}' gives C'={reduced} for {name}, which needs a "
                                 f"multiple of its {heads} heads between {heads} and {c}")
            reason = f"--rank-pattern {pattern}"
        elif settings.levels and level not in settings.levels:
            reduced, reason = c, f"level {level} not in --levels"
        else:
            if settings.ratio is not None:
                width_kept = max(1, round(d * (1.0 - settings.ratio)))
                reason = f"--ratio {settings.ratio:g}"
            else:
                width_kept = spectrum.width_for(settings.energy)
                reason = f"energy {settings.energy:g}"
            reduced = heads * width_kept
        before = cost.modules[name]
        params_before = count_parameters(layer)
        with torch.device("meta"):
            candidate = empty_glmha_like(layer, reduced, glmha)
        after = count_macs(candidate, [torch.empty(s, device="meta") for s in cost.input_shapes[name]]).macs
        convert = True
        if forced is None and (reduced >= c or after.total >= before.total):
            convert = False
            if reason.startswith(("energy", "--ratio")):
                reason = (f"{reason} keeps C'={reduced} of {c}: GLMHA would cost {after.total:,} MACs "
                          f"vs {before.total:,}, so it stays CSA")
        plan.layers.append(LayerPlan(
            name=name, kind=type(layer).__name__, level=level, channels=c, heads=heads,
            reduced_channels=reduced if convert else c,
            energy=spectrum.energy_at((reduced if convert else c) // heads),
            convert=convert, reason=reason,
            params_before=params_before,
            params_after=count_parameters(candidate) if convert else params_before,
            macs_linear_before=before.linear, macs_linear_after=after.linear if convert else before.linear,
            macs_total_before=before.total, macs_total_after=after.total if convert else before.total,
        ))
    for index, count in enumerate(matched):
        if count == 0:
            names = ", ".join(list(layers)[:3])
            raise GlmhaError(f"--rank-pattern '{settings.rank_patterns[index]}' matches no CSA layer "
                             f"(names look like {names}, ...)")
    params = count_parameters(model)
    plan.before = {"params": params, "macs_linear": cost.macs.linear, "macs_total": cost.macs.total}
    plan.after = {
        "params": params - sum(lp.params_before - lp.params_after for lp in plan.layers),
        "macs_linear": cost.macs.linear - sum(lp.macs_linear_before - lp.macs_linear_after for lp in plan.layers),
        "macs_total": cost.macs.total - sum(lp.macs_total_before - lp.macs_total_after for lp in plan.layers),
    }
    return plan
