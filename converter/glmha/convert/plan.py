"""Choose C' per layer (SPEC section 3.3). The plan is data: printed, saved as JSON, exported.

Policy: `rank_patterns` (explicit overrides, applied to every layer they match) win; otherwise
layers outside `levels` stay CSA; otherwise d' comes from `ratio` (uniform key/value size
reduction, the paper's Table 7), from `energy` (the smallest per-head width whose spectrum energy
reaches it in every head), or from a budget (`target_macs`, `target_params`, `min_fidelity`: a
global allocation over measured per-layer sensitivity, glmha.convert.budget). C' = heads * d', so
it is always divisible by the head count.

Never bigger: unless `allow_bigger`, a layer whose GLMHA form would have more parameters or more
MACs (either convention) than its CSA form stays CSA, and the plan says why.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from glmha.archs import CSALayer, RestorationModel, adapter_for
from glmha.config import StrictConfig
from glmha.convert.initialise import INIT_METHODS, empty_glmha_like, value_form
from glmha.convert.spectrum import LayerSpectrum
from glmha.counting import CostReport, count_macs, count_parameters
from glmha.errors import GlmhaError
from glmha.layers import GLMHASettings
from glmha.runtime import single_thread

DEFAULT_ENERGY = 0.95  # spectrum energy each head keeps unless the user says otherwise
BUDGET_KEYS = ("target_macs", "target_params", "min_fidelity")

# the command-line spelling of each conversion setting; recipes name them by key (see in_recipe_terms)
OPTION_FLAGS = {
    "rank_patterns": "--rank-pattern", "target_macs": "--target-macs", "target_params": "--target-params",
    "min_fidelity": "--min-fidelity", "allow_bigger": "--allow-bigger", "energy": "--energy",
    "ratio": "--ratio", "levels": "--levels", "init": "--init", "calibration": "--calibration",
    "alpha": "--alpha", "seed": "--seed", "spectrum": "--spectrum",
}
MAX_SEED = 2**32 - 1  # seeds of the new weights (seed + layer index) stay far inside torch's range


def in_recipe_terms(message: str, section: str | None = "student") -> str:
    """A planner message that names command-line flags, rewritten with the recipe's keys
    (`section.key`, or the bare key without a section)."""
    for key, flag in OPTION_FLAGS.items():
        message = re.sub(re.escape(flag) + r"(?![\w-])", key if section is None else f"{section}.{key}", message)
    return message


@dataclass(frozen=True)
class PlanSettings(StrictConfig):
    energy: float | None = DEFAULT_ENERGY
    ratio: float | None = None  # fraction of key/value channels removed, e.g. 0.5
    target_macs: float | None = None  # converted MACs (b) at most this fraction of the original's
    target_params: float | None = None  # converted parameters at most this fraction of the original's
    min_fidelity: float | None = None  # dB PSNR against the teacher's output on the calibration inputs
    levels: tuple[str, ...] = ()  # empty: every level
    rank_patterns: tuple[str, ...] = ()  # "REGEX=C'" (re.search on the layer name; last match wins)
    init: str = "select"
    seed: int = 0
    allow_bigger: bool = False  # convert layers even where GLMHA costs more than CSA

    def __post_init__(self) -> None:
        """The one check of these values: glmha-convert's options and recipes (`student.*`, reworded by
        in_recipe_terms) both build this class, so a flag and its recipe key cannot drift apart."""
        super().__post_init__()
        for key in ("energy", "ratio", *BUDGET_KEYS):
            _check_number(key, getattr(self, key))
        self._check_one_rule()
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise GlmhaError(f"--energy must be in (0, 1], got {self.energy}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise GlmhaError(f"--ratio must be in [0, 1), got {self.ratio}")
        for key in ("target_macs", "target_params"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise GlmhaError(f"{OPTION_FLAGS[key]} must be a fraction in (0, 1], e.g. 0.88; got {value}")
        if self.min_fidelity is not None and not (math.isfinite(self.min_fidelity) and self.min_fidelity > 0):
            raise GlmhaError(f"--min-fidelity must be a positive number of dB, got {self.min_fidelity}")
        if any(not isinstance(level, str) or not level.strip() for level in self.levels):
            raise GlmhaError(f"--levels: level names must be non-empty, like 1,2 or 3,bottleneck; "
                             f"got {list(self.levels)}")
        for pattern in self.rank_patterns:
            parse_rank_pattern(pattern)
        if self.init not in INIT_METHODS:
            raise GlmhaError(f"--init: expected one of {', '.join(INIT_METHODS)}, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise GlmhaError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.allow_bigger, bool):
            raise GlmhaError(f"--allow-bigger must be true or false, got {self.allow_bigger!r}")

    def _check_one_rule(self) -> None:
        """Exactly one of --energy, --ratio and a budget."""
        rules = [name for name in ("energy", "ratio") if getattr(self, name) is not None]
        if self.has_budget:
            rules.append("budget")
        if len(rules) > 1:
            raise GlmhaError("--energy, --ratio and a budget (--target-macs, --target-params, --min-fidelity) "
                             f"exclude each other; got {' and '.join(rules)}")
        if not rules:
            raise GlmhaError("--energy, --ratio or a budget (--target-macs, --target-params, --min-fidelity): "
                             "one of them is needed")

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, key) is not None for key in BUDGET_KEYS)

    def rule(self) -> str:
        """How C' is chosen, in words: 'energy 0.95', 'ratio 0.5', 'target-macs 0.88, min-fidelity 40'."""
        if self.ratio is not None:
            return f"ratio {self.ratio:g}"
        if self.energy is not None:
            return f"energy {self.energy:g}"
        return ", ".join(f"{OPTION_FLAGS[key][2:]} {getattr(self, key):g}" for key in BUDGET_KEYS
                         if getattr(self, key) is not None)


def _check_number(key: str, value: object) -> None:
    """None or a real number (not a bool, not a string): what the range checks can compare."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise GlmhaError(f"{OPTION_FLAGS[key]} must be a number, got {value!r}")


def parse_rank_pattern(text: str) -> tuple[re.Pattern[str], int]:
    """'REGEX=C' -> (compiled REGEX, C'); C' is a positive integer in ASCII digits."""
    if not isinstance(text, str):
        raise GlmhaError(f"--rank-pattern: expected REGEX=C' text, got {text!r}")
    regex, sep, value = text.rpartition("=")
    if not sep or not regex or not re.fullmatch(r"\s*0*[1-9][0-9]*\s*", value):
        raise GlmhaError(f"--rank-pattern '{text}': expected REGEX=C' with C' a positive integer")
    try:
        return re.compile(regex), int(value)
    except re.error as error:
        raise GlmhaError(f"--rank-pattern '{text}': bad regular expression ({error})") from None


@dataclass(frozen=True)
class Cost:
    params: int
    macs_linear: int
    macs_total: int

    def exceeds(self, other: Cost) -> list[str]:
        """What grows from `other` to this cost, in words (empty: nothing)."""
        names = (("params", "parameters"), ("macs_linear", "MACs (a)"), ("macs_total", "MACs (b)"))
        return [f"{label} {getattr(other, key):,} -> {getattr(self, key):,}" for key, label in names
                if getattr(self, key) > getattr(other, key)]


@dataclass(frozen=True)
class LayerCost:
    """A CSA layer's cost, and its GLMHA cost at any C' (affine in C', read off two exact counts)."""

    before: Cost
    heads: int
    channels: int
    base: Cost  # GLMHA cost extrapolated to C' = 0
    slope: tuple[float, float, float]  # per unit of C'

    def after(self, reduced: int) -> Cost:
        values = [round(b + s * reduced) for b, s in zip(
            (self.base.params, self.base.macs_linear, self.base.macs_total), self.slope, strict=True)]
        return Cost(*values)


def layer_costs(layer: CSALayer, input_shapes: Sequence[tuple[int, ...]], before: Cost,
                glmha: GLMHASettings) -> LayerCost:
    """GLMHA costs at C' = heads and C' = C counted on meta tensors; every term of a GLMHA layer's cost
    is affine in C' (the K/V generators, the attention products, the per-token bias), checked at a
    third width. Layers of one kind, width and input shape share the count."""
    bias = getattr(getattr(layer, "qkv", None), "bias", None) is not None
    key = (type(layer), layer.channels, layer.num_heads, bias, tuple(map(tuple, input_shapes)), glmha)
    base, slope = _glmha_cost_line(key, layer)
    return LayerCost(before=before, heads=layer.num_heads, channels=layer.channels, base=base, slope=slope)


_COST_LINES: dict[tuple, tuple[Cost, tuple[float, float, float]]] = {}


@single_thread()
def _glmha_cost_line(key: tuple, layer: CSALayer) -> tuple[Cost, tuple[float, float, float]]:
    if key in _COST_LINES:
        return _COST_LINES[key]
    heads, channels, input_shapes, glmha = layer.num_heads, layer.channels, key[4], key[5]

    def count(reduced: int) -> Cost:
        with torch.device("meta"):
            candidate = empty_glmha_like(layer, reduced, glmha)
        macs = count_macs(candidate, [torch.empty(s, device="meta") for s in input_shapes]).macs
        return Cost(count_parameters(candidate), macs.linear, macs.total)

    smallest = smallest_width(layer)
    low, high = count(smallest), count(channels)
    span = channels - smallest
    keys = ("params", "macs_linear", "macs_total")
    slope = tuple((getattr(high, k) - getattr(low, k)) / span if span else 0.0 for k in keys)
    base = Cost(*[round(getattr(low, k) - s * smallest) for k, s in zip(keys, slope, strict=True)])
    line = LayerCost(before=low, heads=heads, channels=channels, base=base, slope=slope)
    middle = heads * max(smallest // heads, channels // heads // 2)
    if span and line.after(middle) != count(middle):  # pragma: no cover - a layer kind with a non-affine cost
        raise GlmhaError(f"{type(layer).__name__}: GLMHA cost is not affine in C'")
    if len(_COST_LINES) > 4096:
        _COST_LINES.clear()
    _COST_LINES[key] = (base, slope)
    return base, slope


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
    budget: dict[str, Any] = field(default_factory=dict)  # requested vs achieved, fidelity (budget plans)
    # the budget planner's measurements (calibration run, sensitivity), reused by the fidelity plot
    planner: Any = field(default=None, repr=False, compare=False)

    @property
    def converted(self) -> dict[str, int]:
        return {layer.name: layer.reduced_channels for layer in self.layers if layer.convert}

    def to_json(self) -> dict[str, Any]:
        data = {
            "settings": self.settings.to_dict(),
            "glmha": self.glmha.to_dict(),
            "spectrum_source": self.source,
            "input_shapes": self.input_shapes,
            "before": self.before,
            "after": self.after,
            "layers": [asdict(layer) for layer in self.layers],
        }
        if self.budget:
            data["budget"] = self.budget
        return data

    def totals(self) -> None:
        """Recompute `after` from the layers."""
        self.after = {key: self.before[key] - sum(getattr(lp, f"{key}_before") - getattr(lp, f"{key}_after")
                                                  for lp in self.layers)
                      for key in ("params", "macs_linear", "macs_total")}


@dataclass
class PlanContext:
    """What every rule needs: the model's CSA layers, their spectra and costs, and the user's pins."""

    model: RestorationModel
    layers: dict[str, CSALayer]
    spectra: dict[str, LayerSpectrum]
    costs: dict[str, LayerCost]
    settings: PlanSettings
    glmha: GLMHASettings
    forced: dict[str, tuple[str, int]]  # layer -> (pattern, C') from --rank-pattern
    eligible: set[str]  # layers the rule may reduce (inside --levels, not pinned)
    model_cost: Cost  # the whole model's parameters and MACs at the plan's input size

    def allowed(self, name: str, reduced: int) -> bool:
        """May `name` take this C' (a multiple of its heads, below C, not bigger unless allowed)?"""
        layer = self.layers[name]
        if reduced < smallest_width(layer) or reduced >= layer.channels or reduced % layer.num_heads:
            return False
        costs = self.costs[name]
        return self.settings.allow_bigger or not costs.after(reduced).exceeds(costs.before)


def smallest_width(layer: CSALayer) -> int:
    """The smallest C' a layer's GLMHA version computes with: one key per head, or its kind's minimum."""
    return layer.num_heads * min(adapter_for(layer).min_head_width, layer.head_dim)


def make_plan(model: RestorationModel, spectra: list[LayerSpectrum], settings: PlanSettings,
              glmha: GLMHASettings, height: int, width: int, *, cost: CostReport | None = None,
              calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
              say: Callable[[str], None] | None = None, progress: bool | None = None) -> ConversionPlan:
    """The plan at input size height x width; `cost` may pass a count of the model made at that size.
    Budget rules measure sensitivity on `calibration` inputs (default: the family's offline samples)."""
    glmha = dataclasses.replace(glmha, values=value_form(settings.init))
    context = plan_context(model, spectra, settings, glmha, height, width, cost)
    inputs = model.example_inputs(height, width, device="meta")
    plan = ConversionPlan(family=model.family, settings=settings, glmha=glmha,
                          input_shapes=[list(t.shape) for t in inputs], source=spectra[0].source)
    total = context.model_cost
    plan.before = {"params": total.params, "macs_linear": total.macs_linear, "macs_total": total.macs_total}
    if settings.has_budget:
        from glmha.convert.budget import plan_budget

        widths, reasons, plan.budget, plan.planner = plan_budget(context, plan.before, calibration, say=say,
                                                                 progress=progress)
    else:
        widths, reasons = rule_widths(context)
    fill_plan(plan, context, widths, reasons)
    return plan


@single_thread()
def plan_context(model: RestorationModel, spectra: list[LayerSpectrum], settings: PlanSettings,
                 glmha: GLMHASettings, height: int, width: int, cost: CostReport | None) -> PlanContext:
    layers = dict(model.csa_layers())
    if cost is None or set(cost.modules) != set(layers):
        cost = count_macs(model, model.example_inputs(height, width, device="meta"), modules=list(layers))
    known_levels = {model.csa_level(name) for name in layers}
    unknown = sorted(set(settings.levels) - known_levels)
    if unknown:
        raise GlmhaError(f"--levels: unknown level(s) {', '.join(unknown)}; this model has "
                         f"{', '.join(sorted(known_levels))}")
    patterns = [parse_rank_pattern(p) for p in settings.rank_patterns]
    matched = [0] * len(patterns)
    forced: dict[str, tuple[str, int]] = {}
    for name, layer in layers.items():
        for index, (regex, value) in enumerate(patterns):
            if regex.search(name):
                matched[index] += 1
                forced[name] = (settings.rank_patterns[index], value)
        if name in forced:
            pattern, reduced = forced[name]
            c, heads, smallest = layer.channels, layer.num_heads, smallest_width(layer)
            if reduced < smallest or reduced > c or reduced % heads:
                raise GlmhaError(f"--rank-pattern '{pattern}' gives C'={reduced} for {name}, which needs a "
                                 f"multiple of its {heads} heads between {smallest} and {c}")
    for index, count in enumerate(matched):
        if count == 0:
            names = ", ".join(list(layers)[:3])
            raise GlmhaError(f"--rank-pattern '{settings.rank_patterns[index]}' matches no CSA layer "
                             f"(names look like {names}, ...)")
    costs = {}
    for name, layer in layers.items():
        before = Cost(count_parameters(layer), cost.modules[name].linear, cost.modules[name].total)
        costs[name] = layer_costs(layer, cost.input_shapes[name], before, glmha)
    eligible = {name for name in layers if name not in forced
                and (not settings.levels or model.csa_level(name) in settings.levels)}
    return PlanContext(model=model, layers=layers, spectra={s.name: s for s in spectra}, costs=costs,
                       settings=settings, glmha=glmha, forced=forced, eligible=eligible,
                       model_cost=Cost(count_parameters(model), cost.macs.linear, cost.macs.total))


def rule_widths(context: PlanContext) -> tuple[dict[str, int], dict[str, str]]:
    """C' per layer by --ratio or --energy (layers outside the rule keep C), with the rule as reason."""
    settings = context.settings
    widths, reasons = {}, {}
    for name in context.eligible:
        layer = context.layers[name]
        d = layer.head_dim
        if settings.ratio is not None:
            kept = round(d * (1.0 - settings.ratio))
        else:
            kept = context.spectra[name].width_for(settings.energy)
        widths[name] = layer.num_heads * max(kept, smallest_width(layer) // layer.num_heads)
        reasons[name] = settings.rule()
    return widths, reasons


def fill_plan(plan: ConversionPlan, context: PlanContext, widths: dict[str, int], reasons: dict[str, str]) -> None:
    """One LayerPlan per CSA layer: pinned layers, the rule's widths, never-bigger, and the totals."""
    model, settings = context.model, context.settings
    for name, layer in context.layers.items():
        costs = context.costs[name]
        c = layer.channels
        level = model.csa_level(name)
        if name in context.forced:
            pattern, reduced = context.forced[name]
            reason = f"--rank-pattern {pattern}"
        elif name in widths:
            reduced, reason = widths[name], reasons[name]
        elif settings.levels and level not in settings.levels:
            reduced, reason = c, f"level {level} not in --levels"
        elif name in reasons:  # the rule left it whole and says why
            reduced, reason = c, reasons[name]
        else:
            reduced, reason = c, settings.rule()
        after = costs.after(reduced)
        grows = after.exceeds(costs.before)
        convert = reduced < c or name in context.forced
        if reduced >= c and name in widths:
            reason = f"{reason} keeps all {c} channels, so it stays CSA"
        elif convert and grows and not settings.allow_bigger:
            convert = False
            reason = (f"{reason} gives C'={reduced} of {c}, but GLMHA would grow it ({'; '.join(grows)}), "
                      f"so it stays CSA (--allow-bigger converts it anyway)")
        kept = reduced if convert else c
        final = after if convert else costs.before
        plan.layers.append(LayerPlan(
            name=name, kind=type(layer).__name__, level=level, channels=c, heads=layer.num_heads,
            reduced_channels=kept, energy=context.spectra[name].energy_at(kept // layer.num_heads),
            convert=convert, reason=reason,
            params_before=costs.before.params, params_after=final.params,
            macs_linear_before=costs.before.macs_linear, macs_linear_after=final.macs_linear,
            macs_total_before=costs.before.macs_total, macs_total_after=final.macs_total,
        ))
    plan.totals()
