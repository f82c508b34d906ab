"""Global allocation of C' across layers: a multiple-choice knapsack solved by dynamic programming.

Each layer offers options (stay CSA, or one of its candidate widths), each with a predicted error
and what it saves of two resources (MACs (b) and parameters). Savings of the resource the DP runs on
are binned downward, so a plan that meets a target in bins meets it exactly; a second resource is
handled by a Lagrange multiplier found by bisection. Errors add across layers (the sensitivity model
of glmha.convert.sensitivity). Pure numpy, independent of models, so it is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BINS = 8000  # resolution of the DP over the resource: 1/8000 of the largest possible saving
RESOURCES = ("macs_total", "params")


@dataclass(frozen=True)
class Option:
    reduced: int  # C' (the layer's C: stays CSA)
    error: float  # predicted contribution to the model's output MSE
    saving: dict[str, int]  # per resource: what this option saves against CSA (>= 0)


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, Option]
    error: float
    saving: dict[str, int]


class Unreachable(Exception):
    """No allocation meets the requirements; `best` holds the largest savings possible per resource."""

    def __init__(self, resource: str, best: int) -> None:
        super().__init__(resource)
        self.resource = resource
        self.best = best


def best_savings(options: Mapping[str, Sequence[Option]]) -> dict[str, int]:
    """The most each resource can be saved (every layer at its cheapest option for that resource)."""
    return {r: sum(max(o.saving[r] for o in opts) for opts in options.values()) for r in RESOURCES}


def allocate(options: Mapping[str, Sequence[Option]], required: Mapping[str, int],
             max_error: float | None = None) -> Allocation:
    """The allocation of least predicted error whose savings reach `required` (resource -> at least),
    or, with no requirement, the one of largest MACs saving whose error stays within `max_error`."""
    best = best_savings(options)
    for resource, need in required.items():
        if need > best[resource]:
            raise Unreachable(resource, best[resource])
    if not required:
        return _most_saving(options, max_error if max_error is not None else math.inf)
    primary = "macs_total" if "macs_total" in required else "params"
    secondary = next((r for r in required if r != primary), None)
    allocation = _solve(options, primary, required[primary], penalty=None)
    if secondary is None or allocation.saving[secondary] >= required[secondary]:
        return allocation
    # raise the price of the secondary resource's shortfall until it is met
    scale = max(o.error for opts in options.values() for o in opts) / max(best[secondary], 1) or 1.0
    low, high = 0.0, scale
    for _ in range(60):
        trial = _solve(options, primary, required[primary], penalty=(secondary, high))
        if trial.saving[secondary] >= required[secondary]:
            break
        high *= 4.0
    else:
        raise Unreachable(secondary, allocation.saving[secondary])
    allocation = trial
    for _ in range(40):
        middle = (low + high) / 2
        trial = _solve(options, primary, required[primary], penalty=(secondary, middle))
        if trial.saving[secondary] >= required[secondary]:
            high, allocation = middle, trial
        else:
            low = middle
    return allocation


def frontier(options: Mapping[str, Sequence[Option]], points: int) -> list[Allocation]:
    """Least-error allocations at `points` evenly spaced MACs savings up to the largest possible."""
    best = best_savings(options)["macs_total"]
    plans = []
    for index in range(1, points + 1):
        need = best * index // points
        plans.append(_solve(options, "macs_total", need, penalty=None))
    return plans


def _tables(options: Mapping[str, Sequence[Option]], resource: str, penalty: tuple[str, float] | None):
    names = list(options)
    unit = max(sum(max(o.saving[resource] for o in options[n]) for n in names) / BINS, 1e-9)
    costs = []
    for name in names:
        errors = np.array([o.error - (penalty[1] * o.saving[penalty[0]] if penalty else 0.0)
                           for o in options[name]])
        bins = np.array([min(BINS, math.floor(o.saving[resource] / unit)) for o in options[name]], dtype=np.int64)
        costs.append((errors, bins))
    return names, costs


def _dp(options: Mapping[str, Sequence[Option]], resource: str, penalty: tuple[str, float] | None):
    """value[j]: least (penalised) error with binned saving exactly j (capped at BINS); choices to backtrack."""
    names, costs = _tables(options, resource, penalty)
    value = np.full(BINS + 1, np.inf)
    value[0] = 0.0
    choices, previous = [], []
    for errors, bins in costs:
        new = np.full(BINS + 1, np.inf)
        pick = np.zeros(BINS + 1, dtype=np.int32)
        came = np.zeros(BINS + 1, dtype=np.int32)
        origin = np.arange(BINS + 1)
        for index, (error, width) in enumerate(zip(errors, bins, strict=True)):
            candidate = value + error  # arriving at min(j + width, BINS) from every j
            body = origin[: BINS + 1 - width]  # origins whose destination j + width is unique
            better = candidate[body] < new[body + width]
            dest = body[better] + width
            new[dest], pick[dest], came[dest] = candidate[body][better], index, body[better]
            tail = origin[BINS + 1 - width:]  # origins that all land on the cap
            if len(tail):
                best_tail = tail[int(np.argmin(candidate[tail]))]
                if candidate[best_tail] < new[BINS]:
                    new[BINS], pick[BINS], came[BINS] = candidate[best_tail], index, best_tail
        value = new
        choices.append(pick)
        previous.append(came)
    return names, value, choices, previous


def _backtrack(options, names, choices, previous, final: int) -> dict[str, Option]:
    chosen = {}
    j = final
    for position in range(len(names) - 1, -1, -1):
        chosen[names[position]] = options[names[position]][int(choices[position][j])]
        j = int(previous[position][j])
    return {name: chosen[name] for name in names}


def _summary(choice: dict[str, Option]) -> Allocation:
    return Allocation(choice=choice, error=sum(o.error for o in choice.values()),
                      saving={r: sum(o.saving[r] for o in choice.values()) for r in RESOURCES})


def _solve(options: Mapping[str, Sequence[Option]], resource: str, need: int,
           penalty: tuple[str, float] | None) -> Allocation:
    names, value, choices, previous = _dp(options, resource, penalty)
    total = sum(max(o.saving[resource] for o in options[n]) for n in names)
    start = min(BINS, math.ceil(need * BINS / total)) if need > 0 and total > 0 else 0
    tail = value[start:]
    if not np.isfinite(tail).any():  # only the unbinned maximum reaches the need
        return _summary({n: max(options[n], key=lambda o: o.saving[resource]) for n in names})
    # binned savings never exceed the real ones, so any final bin >= start meets the need
    return _summary(_backtrack(options, names, choices, previous, start + int(np.argmin(tail))))


def _most_saving(options: Mapping[str, Sequence[Option]], max_error: float) -> Allocation:
    names, value, choices, previous = _dp(options, "macs_total", None)
    within = np.flatnonzero(value <= max_error)
    return _summary(_backtrack(options, names, choices, previous, int(within.max()) if len(within) else 0))
