"""The global allocator: optimal against brute force, targets met exactly, unreachable targets named."""

from __future__ import annotations

import itertools
import random

import pytest

from glmha.convert.allocate import Option, Unreachable, allocate, best_savings, frontier


def random_options(seed: int, layers: int = 4, choices: int = 4) -> dict[str, list[Option]]:
    """Layers whose options trade error for savings, like real sensitivity curves (noisy, not convex)."""
    rng = random.Random(seed)
    options = {}
    for index in range(layers):
        entries = [Option(reduced=8, error=0.0, saving={"macs_total": 0, "params": 0})]
        for width in range(choices, 0, -1):
            saving = (choices - width + 1) * rng.randint(50, 400)
            entries.append(Option(reduced=width, error=rng.uniform(0.1, 1.0) * (choices - width + 1) ** 2,
                                  saving={"macs_total": saving, "params": saving // rng.randint(2, 5)}))
        options[f"layer{index}"] = entries
    return options


def brute_force(options, required, max_error=None):
    best = None
    for combo in itertools.product(*options.values()):
        saving = {r: sum(o.saving[r] for o in combo) for r in ("macs_total", "params")}
        error = sum(o.error for o in combo)
        if any(saving[r] < need for r, need in required.items()):
            continue
        if max_error is not None:
            if error > max_error:
                continue
            key = (-saving["macs_total"], error)
        else:
            key = (error, saving["macs_total"])
        if best is None or key < best[0]:
            best = (key, error, saving)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_least_error_for_a_macs_target_matches_brute_force(seed: int) -> None:
    options = random_options(seed)
    need = int(best_savings(options)["macs_total"] * random.Random(seed).uniform(0.2, 0.9))
    result = allocate(options, {"macs_total": need})
    expected = brute_force(options, {"macs_total": need})
    assert result.saving["macs_total"] >= need
    assert result.error == pytest.approx(expected[1], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_both_targets_are_met_with_near_least_error(seed: int) -> None:
    options = random_options(seed + 100)
    best = best_savings(options)
    rng = random.Random(seed)
    required = {"macs_total": int(best["macs_total"] * rng.uniform(0.2, 0.6)),
                "params": int(best["params"] * rng.uniform(0.3, 0.7))}
    expected = brute_force(options, required)
    if expected is None:
        with pytest.raises(Unreachable):
            allocate(options, required)
        return
    result = allocate(options, required)
    assert all(result.saving[r] >= need for r, need in required.items())
    # the Lagrangian relaxation may miss the exact optimum of a two-resource knapsack, but not by much here
    assert result.error <= expected[1] * 1.5 + 1e-12


@pytest.mark.parametrize("seed", range(8))
def test_most_saving_within_an_error_budget_matches_brute_force(seed: int) -> None:
    options = random_options(seed + 200)
    total = sum(max(o.error for o in opts) for opts in options.values())
    budget = total * random.Random(seed).uniform(0.05, 0.5)
    result = allocate(options, {}, max_error=budget)
    expected = brute_force(options, {}, max_error=budget)
    assert result.error <= budget
    # binning can cost at most one bin per layer of the saving
    assert result.saving["macs_total"] >= expected[2]["macs_total"] - len(options) * best_savings(options)[
        "macs_total"] / 8000


def test_unreachable_target_reports_the_best_possible() -> None:
    options = random_options(3)
    best = best_savings(options)
    with pytest.raises(Unreachable) as caught:
        allocate(options, {"macs_total": best["macs_total"] + 1})
    assert caught.value.resource == "macs_total" and caught.value.best == best["macs_total"]
    full = allocate(options, {"macs_total": best["macs_total"]})
    assert full.saving["macs_total"] == best["macs_total"]


def test_frontier_errors_grow_with_the_saving() -> None:
    options = random_options(5, layers=6)
    plans = frontier(options, 6)
    best = best_savings(options)["macs_total"]
    savings = [sum(o.saving["macs_total"] for o in p.choice.values()) for p in plans]
    errors = [p.error for p in plans]
    assert all(saving >= best * k // 6 for k, saving in enumerate(savings, start=1))
    assert errors == sorted(errors) and savings[-1] == best
