"""Budget plans: `target_macs`, `target_params` and `min_fidelity` met by measured sensitivity.

1. Calibration inputs: the user's (`--calib`) or the family's offline samples.
2. Sensitivity of every candidate C' of every eligible layer (glmha.convert.sensitivity).
3. Allocation: the least predicted error that meets the targets, or the largest MACs saving whose
   predicted fidelity reaches `min_fidelity` (glmha.convert.allocate).
4. The chosen plan is converted and measured on the calibration inputs; for `min_fidelity` the
   prediction is corrected by the measurement until the measured fidelity holds.

Fidelity is the PSNR (data range 1) of the converted model's output against the teacher's output.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from glmha.convert.activations import Inputs, TeacherRun, batched, mean_squared_error
from glmha.convert.allocate import Allocation, Option, Unreachable, allocate, best_savings
from glmha.convert.plan import OPTION_FLAGS, PlanContext, rule_widths
from glmha.convert.sensitivity import MAX_CANDIDATES, LayerBuilder, LayerSensitivity, measure, spread
from glmha.errors import GlmhaError

FIDELITY_ROUNDS = 8  # measure-and-correct rounds for min_fidelity
REFINE_ROUNDS = 3  # allocate-measure-correct rounds for MACs / parameter targets
REFINE_SHARE = 0.9  # each round measures the layers carrying this share of the plan's predicted error ...
REFINE_LAYERS = 0.25  # ... but at most this fraction of the layers (at least 4)
RESOURCE_OF = {"target_macs": "macs_total", "target_params": "params"}
LABELS = {"macs_total": "MACs (b)", "params": "parameters"}


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for data range 1 (model outputs are images or reflectance in [0, 1])."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def mse_from_psnr(db: float) -> float:
    return 10.0 ** (-db / 10.0)


class BudgetPlanner:
    """Measures sensitivity once, then allocates and measures plans on the same calibration inputs."""

    def __init__(self, context: PlanContext, calibration: Sequence[Inputs] | None, *,
                 say: Callable[[str], None] | None = None, progress: bool | None = None,
                 before: dict[str, int] | None = None) -> None:
        """With `before` (the model's cost), an unreachable target is refused before anything is measured."""
        from glmha.convert.calibration import default_calibration

        self.context = context
        settings, model = context.settings, context.model
        order = list(context.layers)
        self.candidates: dict[str, list[int]] = {}
        self.blocked: set[str] = set()  # eligible, but GLMHA grows them at every C'
        for name in order:
            if name not in context.eligible:
                continue
            layer = context.layers[name]
            allowed = [layer.num_heads * k for k in range(1, layer.head_dim)
                       if context.allowed(name, layer.num_heads * k)]
            if allowed:
                self.candidates[name] = spread(allowed, MAX_CANDIDATES)
            else:
                self.blocked.add(name)
        self.build = LayerBuilder(context.layers, context.spectra, settings.init, context.glmha, settings.seed,
                                  order)
        self.fixed = self._pinned()
        if before is not None:
            self._required(before)
        if calibration is None:
            calibration, described = default_calibration(model)
            if say is not None:
                say(f"calibration inputs: {described} (the default; --calib DIR uses your own)")
        self.inputs = batched(calibration)
        self.teacher, self.sensitivity = self._measure(progress)
        if not all(torch.isfinite(output).all() for output in self.teacher.outputs):
            raise GlmhaError("the model produces non-finite outputs on the calibration inputs, so no budget can "
                             "be measured against it")
        self.options = {name: self._options(found) for name, found in self.sensitivity.items()}
        self._measured: dict[frozenset, float] = {}  # plans measured so far -> fidelity (dB)

    def _measure(self, progress: bool | None) -> tuple[TeacherRun, dict[str, LayerSensitivity]]:
        from tqdm.auto import tqdm

        extra = [name for name in self.fixed if name not in self.candidates]
        with tqdm(total=len(self.candidates), desc="measuring layer sensitivity", unit="layer", file=sys.stderr,
                  disable=(not progress) if progress is not None else None, leave=False) as bar:
            return measure(self.context.model, self.inputs, self.candidates, self.build,
                           step=lambda name: bar.update(), extra=extra, forward_macs=self._forward_macs())

    def _forward_macs(self) -> int:
        """MACs (b) of one teacher pass over all calibration inputs (counted on meta tensors)."""
        from glmha.counting import count_macs

        model = self.context.model
        return sum(count_macs(model, [torch.empty_like(t, device="meta") for t in args]).macs.total
                   for args in self.inputs)

    def _pinned(self) -> dict[str, int]:
        """Layers --rank-pattern converts (as the plan will: unless GLMHA grows them), with their C'."""
        costs, allow = self.context.costs, self.context.settings.allow_bigger
        return {name: reduced for name, (_, reduced) in self.context.forced.items()
                if allow or not costs[name].after(reduced).exceeds(costs[name].before)}

    def _options(self, found: LayerSensitivity) -> list[Option]:
        costs = self.context.costs[found.name]
        before = costs.before
        options = [Option(reduced=self.context.layers[found.name].channels, error=0.0,
                          saving={"macs_total": 0, "params": 0})]
        for reduced, error in zip(found.reduced, found.predicted(), strict=True):
            after = costs.after(reduced)
            options.append(Option(reduced=reduced, error=error, saving={
                "macs_total": max(0, before.macs_total - after.macs_total),
                "params": max(0, before.params - after.params)}))
        return options

    def saved(self, widths: dict[str, int]) -> dict[str, int]:
        """What a set of widths (plus the pinned layers) saves, per resource."""
        costs = self.context.costs
        return {r: sum(getattr(costs[n].before, r) - getattr(costs[n].after(c), r)
                       for n, c in {**self.fixed, **widths}.items()) for r in LABELS}

    def fidelity(self, widths: dict[str, int]) -> float:
        """Measured PSNR (dB) against the teacher with these layers (and the pinned ones) converted."""
        chosen = {**self.fixed, **widths}
        if not chosen:
            return math.inf
        records = self.teacher.layers
        replacements = {n: self.build(n, c, records[n].inputs) for n, c in chosen.items()}
        return psnr_from_mse(mean_squared_error(self.teacher.run(replacements), self.teacher.outputs))

    def widths_of(self, allocation: Allocation) -> dict[str, int]:
        return {name: option.reduced for name, option in allocation.choice.items()
                if option.reduced < self.context.layers[name].channels}

    def _required(self, before: dict[str, int]) -> dict[str, int]:
        """What the eligible layers must save per resource (beyond the pinned layers) to meet the targets;
        refuses a target that even every layer at its cheapest width cannot meet (costs alone decide)."""
        settings = self.context.settings
        fixed_saving = self.saved({})
        required = {}
        for key, resource in RESOURCE_OF.items():
            fraction = getattr(settings, key)
            if fraction is None:
                continue
            required[resource] = max(0, before[resource] - math.floor(fraction * before[resource])
                                     - fixed_saving[resource])
            costs = self.context.costs
            most = sum(max(0, *(getattr(costs[n].before, resource) - getattr(costs[n].after(c), resource)
                                for c in widths))
                       for n, widths in self.candidates.items())
            if required[resource] > most:
                raise self._out_of_reach(resource, (before[resource] - fixed_saving[resource] - most)
                                         / before[resource])
        return required

    def _out_of_reach(self, resource: str, best: float) -> GlmhaError:
        key = next(k for k, r in RESOURCE_OF.items() if r == resource)
        asked = f"{OPTION_FLAGS[key]} {getattr(self.context.settings, key):g}"
        return GlmhaError(f"{asked} is out of reach: with every layer it may convert as small as GLMHA allows, "
                          f"{LABELS[resource]} fall to {best:.4f} of the original at best")

    def allocate(self, before: dict[str, int]) -> tuple[dict[str, int], float]:
        """The widths that meet the settings' budget, and their measured fidelity."""
        settings = self.context.settings
        required = self._required(before)
        try:
            allocation = self._refined(required) if required else self._within_fidelity(settings.min_fidelity)
        except Unreachable as error:  # both targets at once (each alone was checked above)
            raise self._out_of_reach(error.resource, (before[error.resource] - self.saved({})[error.resource]
                                                      - error.best) / before[error.resource]) from None
        widths = self.widths_of(allocation)
        fidelity = self.measured_fidelity(widths)
        if settings.min_fidelity is not None and required and fidelity < settings.min_fidelity:
            asked = ", ".join(f"{OPTION_FLAGS[k]} {getattr(settings, k):g}" for k in RESOURCE_OF
                              if getattr(settings, k) is not None)
            raise GlmhaError(f"{asked} and --min-fidelity {settings.min_fidelity:g} cannot both be met: the "
                             f"least damaging plan that meets the targets measures {fidelity:.2f} dB on the "
                             f"calibration inputs")
        self.predicted = psnr_from_mse(allocation.error)
        return widths, fidelity

    def _refined(self, required: dict[str, int]) -> Allocation:
        """Allocate, measure, correct, reallocate: each round measures the chosen plan as a whole, and, in
        context, the chosen widths of the layers that carry most of its predicted error; each such
        measurement becomes a probe of that layer's gain. The best measured plan is kept."""
        best: tuple[float, Allocation] | None = None
        for _ in range(REFINE_ROUNDS):
            allocation = allocate(self.options, required)
            widths = self.widths_of(allocation)
            key = frozenset(widths.items())
            if key in self._measured:
                break
            fidelity = self._measured[key] = self.fidelity(widths)
            if best is None or fidelity > best[0]:
                best = (fidelity, allocation)
            ranked = sorted(widths, key=lambda n: -allocation.choice[n].error)
            covered = 0.0
            for name in ranked[:max(4, round(REFINE_LAYERS * len(self.options)))]:
                if covered >= REFINE_SHARE * allocation.error:
                    break
                covered += allocation.choice[name].error
                self._probe(name, widths[name])
        assert best is not None
        return best[1]

    def _probe(self, name: str, reduced: int) -> None:
        """Measure one layer at one width in context and make it a gain probe of that layer."""
        found = self.sensitivity[name]
        if reduced in found.gains:
            return
        error = found.local[found.reduced.index(reduced)]
        layer = self.build(name, reduced, self.teacher.layers[name].inputs)
        mse = mean_squared_error(self.teacher.run({name: layer}), self.teacher.outputs)
        found.gains[reduced] = mse / error if error > 0 else 0.0
        self.options[name] = self._options(found)

    def _within_fidelity(self, target_db: float) -> Allocation:
        """The largest MACs saving whose measured fidelity reaches target_db: predict, measure, correct."""
        budget = mse_from_psnr(target_db)
        best: Allocation | None = None
        tried: set[tuple] = set()
        for _ in range(FIDELITY_ROUNDS):
            allocation = allocate(self.options, {}, max_error=budget)
            widths = self.widths_of(allocation)
            key = tuple(sorted(widths.items()))
            if key in tried:
                break
            tried.add(key)
            fidelity = self.fidelity(widths)
            if fidelity >= target_db and (best is None or allocation.saving["macs_total"]
                                          > best.saving["macs_total"]):
                best = allocation
            if not widths or not math.isfinite(fidelity):
                break
            # correct the prediction by the measurement: the error budget scales by allowed / measured
            budget *= min(max(mse_from_psnr(target_db) / mse_from_psnr(fidelity), 0.25), 4.0)
        while best is None:  # every corrected plan fell short: shrink the budget until one holds
            budget /= 4.0
            allocation = allocate(self.options, {}, max_error=budget)
            widths = self.widths_of(allocation)
            if not widths or self.fidelity(widths) >= target_db:
                best = allocation
        return best

    def widths_for(self, before: dict[str, int], target_macs: float) -> dict[str, int]:
        """The least-error widths with MACs (b) at most `target_macs` of `before` (pinned layers included)."""
        need = before["macs_total"] - math.floor(target_macs * before["macs_total"]) - self.saved({})["macs_total"]
        return self.widths_of(self._refined({"macs_total": max(0, need)}))

    def frontier(self, points: int) -> list[dict[str, int]]:
        """Budget plans at evenly spaced MACs savings, up to the largest possible, each allocated and refined
        as `--target-macs` would be (the predicted least-error allocation alone is too pessimistic at large
        savings, where layers' errors interact)."""
        from glmha.convert.allocate import frontier

        savings = [allocation.saving["macs_total"] for allocation in frontier(self.options, points)]
        return [self.widths_of(self._refined({"macs_total": saving})) for saving in savings]

    def measured_fidelity(self, widths: dict[str, int]) -> float:
        """`fidelity`, reusing the measurement when this plan was measured already."""
        key = frozenset(widths.items())
        if key not in self._measured:
            self._measured[key] = self.fidelity(widths)
        return self._measured[key]

    def rule_widths(self, energy: float | None = None, ratio: float | None = None) -> dict[str, int]:
        """The widths --energy or --ratio would give, never-bigger applied (for comparisons)."""
        import dataclasses

        settings = dataclasses.replace(self.context.settings, energy=energy, ratio=ratio, target_macs=None,
                                       target_params=None, min_fidelity=None)
        context = dataclasses.replace(self.context, settings=settings)
        widths, _ = rule_widths(context)
        return {n: c for n, c in widths.items() if context.allowed(n, c)}

    def summary(self, before: dict[str, int], widths: dict[str, int], fidelity: float) -> dict[str, Any]:
        settings = self.context.settings
        saved = self.saved(widths)
        requested = {key: getattr(settings, key) for key in (*RESOURCE_OF, "min_fidelity")
                     if getattr(settings, key) is not None}
        shapes = sorted({"x".join(map(str, t[0].shape[-2:])) for t in self.inputs})
        return {
            "requested": requested,
            "achieved": {
                "target_macs": (before["macs_total"] - saved["macs_total"]) / before["macs_total"],
                "target_params": (before["params"] - saved["params"]) / before["params"],
                "min_fidelity": fidelity,
            },
            "predicted_fidelity": getattr(self, "predicted", None),
            "calibration": {"inputs": sum(int(t[0].shape[0]) for t in self.inputs), "sizes": shapes},
            "largest_savings": best_savings(self.options),
            "sensitivity": {name: {"reduced": s.reduced, "predicted_mse": s.predicted(),
                                   "gains": {str(c): g for c, g in s.gains.items()}}
                            for name, s in self.sensitivity.items()},
        }


def plan_budget(context: PlanContext, before: dict[str, int], calibration: Sequence[Inputs] | None, *,
                say: Callable[[str], None] | None = None, progress: bool | None = None
                ) -> tuple[dict[str, int], dict[str, str], dict[str, Any], BudgetPlanner]:
    """C' per eligible layer, the reason of each, what the budget asked for and reached, and the planner."""
    planner = BudgetPlanner(context, calibration, say=say, progress=progress, before=before)
    widths, fidelity = planner.allocate(before)
    rule = context.settings.rule()
    reasons = {}
    for name in context.eligible:
        if name in planner.blocked:
            reasons[name] = "GLMHA would grow this layer at every C', so it stays CSA (--allow-bigger converts it)"
        elif name in widths:
            reasons[name] = f"budget ({rule})"
        else:
            reasons[name] = f"budget ({rule}): the allocation keeps it whole"
    return widths, reasons, planner.summary(before, widths, fidelity), planner


CURVE_ENERGIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
CURVE_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
CURVE_BUDGETS = 8  # budget plans at evenly spaced MACs savings


def fidelity_curves(plan: Any, calibration: Sequence[Inputs] | None = None, *,
                    progress: bool | None = None) -> dict[str, Any]:
    """Fidelity (dB against the teacher on the calibration inputs) against MACs (b) saved for energy,
    ratio and budget plans of the same model, and the chosen plan: what `--plot` draws.

    Reuses a budget plan's measurements; other plans measure the sensitivity once here.
    """
    from tqdm.auto import tqdm

    planner: BudgetPlanner = plan.planner
    if planner is None:
        raise GlmhaError("fidelity curves need the plan's calibration measurements (make_plan with a budget, "
                         "or attach_planner)")
    total = plan.before["macs_total"]
    rules = ([("energy", e, {"energy": e}) for e in CURVE_ENERGIES]
             + [("ratio", r, {"ratio": r}) for r in CURVE_RATIOS])
    curves: dict[str, list[dict[str, float]]] = {"energy": [], "ratio": [], "budget": []}
    frontier = planner.frontier(CURVE_BUDGETS)
    with tqdm(total=len(rules) + len(frontier) + 1, desc="measuring fidelity curves", unit="plan",
              file=sys.stderr, disable=(not progress) if progress is not None else None, leave=False) as bar:
        for kind, value, options in rules:
            widths = planner.rule_widths(**options)
            curves[kind].append(_point(planner, widths, total, value))
            bar.update()
        for widths in frontier:
            curves["budget"].append(_point(planner, widths, total, None))
            bar.update()
        chosen = {n: c for n, c in plan.converted.items() if n not in planner.fixed}
        curves["chosen"] = [_point(planner, chosen, total, None)]
        bar.update()
    curves["rule"] = plan.settings.rule()
    return curves


def _point(planner: BudgetPlanner, widths: dict[str, int], total: int, value: float | None) -> dict[str, float]:
    point = {"macs_saved": planner.saved(widths)["macs_total"] / total,
             "fidelity_db": planner.measured_fidelity(widths)}
    if value is not None:
        point["setting"] = value
    return point


def attach_planner(plan: Any, model: Any, spectra: Sequence[Any], calibration: Sequence[Inputs] | None, *,
                   say: Callable[[str], None] | None = None, progress: bool | None = None) -> None:
    """Give a plan made by --energy / --ratio the calibration measurements a budget plan carries."""
    from glmha.convert.plan import plan_context

    if plan.planner is not None:
        return
    height, width = plan.input_shapes[0][-2:]
    context = plan_context(model, list(spectra), plan.settings, plan.glmha, height, width, None)
    plan.planner = BudgetPlanner(context, calibration, say=say, progress=progress)
