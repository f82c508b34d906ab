"""Does allocating C' by measured sensitivity beat the paper's rules at the same MACs?

For the shipped teacher (checkpoints/restormer_denoise_s25.pth), every --ratio and --energy plan is
matched by a budget plan with --target-macs set to that plan's MACs (b) fraction, and all are scored
right after conversion (no distillation) on the three held-out photographs (centre 256x256 crops,
sigma-25 noise, the teacher card's seeds): PSNR of the student's output against the teacher's, and
against the clean image. The budget planner measures sensitivity once, on calibration inputs: the
offline sample photographs as `glmha-convert` uses them by default (`--calib clean`), or the same
photographs with sigma-25 noise, what this denoiser really sees (`--calib noisy`, default here).

    OMP_WAIT_POLICY=PASSIVE python bench/budget_fidelity.py [--calib noisy|clean|both] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import glmha
from glmha.convert.activations import run_with
from glmha.convert.budget import BudgetPlanner
from glmha.convert.plan import PlanSettings, plan_context
from glmha.data import add_gaussian_noise, seeded_generator
from glmha.data.held_out import SIGMA, held_out_pairs
from glmha.layers import GLMHASettings
from glmha.metrics import psnr

DEFAULT_TEACHER = "checkpoints/restormer_denoise_s25.pth"
RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75)
ENERGIES = (0.9, 0.8, 0.7, 0.6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--calib", choices=["noisy", "clean", "both"], default="both")
    parser.add_argument("--init", default="select")
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--calib-count", type=int, default=4)
    parser.add_argument("--probes", type=float, nargs="+", help="probe positions (default: the planner's)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    teacher = glmha.load(args.teacher)
    spectra = glmha.analyse(teacher)
    pairs = held_out_pairs(256)
    inputs = [(noisy,) for _, _, noisy in pairs]
    with torch.no_grad():
        reference = [teacher(*x) for x in inputs]
    if args.probes:
        import glmha.convert.sensitivity as sensitivity

        sensitivity.PROBE_POSITIONS = tuple(args.probes)
    clean = teacher.calibration_samples(args.calib_size, args.calib_count)[0]
    calibrations = {"clean": [(clean,)], "noisy": [(add_gaussian_noise(clean, SIGMA, seeded_generator(7)),)]}
    kinds = ["noisy", "clean"] if args.calib == "both" else [args.calib]
    settings = PlanSettings(energy=None, target_macs=0.5, init=args.init)
    context = plan_context(teacher, spectra, settings, GLMHASettings(), 256, 256, None)
    before = {"params": context.model_cost.params, "macs_total": context.model_cost.macs_total}
    planners = {}
    for kind in kinds:
        started = time.perf_counter()
        planners[kind] = BudgetPlanner(context, calibrations[kind], progress=False)
        print(f"sensitivity on {kind} calibration inputs: {time.perf_counter() - started:.0f} s", flush=True)
    first = planners[kinds[0]]

    def score(planner: BudgetPlanner, widths: dict[str, int]) -> dict[str, float]:
        replacements = {n: planner.build(n, c, planner.teacher.layers[n].inputs) for n, c in widths.items()}
        outputs = run_with(teacher, inputs, replacements)
        saved = first.saved(widths)["macs_total"] / before["macs_total"]
        return {"macs_saved": saved,
                "psnr_teacher": sum(psnr(o, r) for o, r in zip(outputs, reference, strict=True)) / len(inputs),
                "psnr_gt": sum(psnr(o.clamp(0, 1), c) for o, (_, c, _) in zip(outputs, pairs, strict=True))
                / len(inputs)}

    rows = []
    rules = [("ratio", r) for r in RATIOS] + [("energy", e) for e in ENERGIES]
    for kind, value in rules:
        widths = first.rule_widths(**{kind: value})
        row = {"rule": f"{kind} {value:g}", **{f"rule_{k}": v for k, v in score(first, widths).items()}}
        fraction = 1 - row["rule_macs_saved"]
        for calib, planner in planners.items():
            budget = score(planner, planner.widths_for(before, fraction))
            row.update({f"{calib}_{k}": v for k, v in budget.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    head = "| rule | MACs (b) saved | rule: PSNR vs teacher / GT |"
    head += "".join(f" budget, {k} calibration: MACs saved, PSNR vs teacher / GT | gain vs teacher |"
                    for k in kinds)
    lines = [head, "|---|---|---|" + "---|---|" * len(kinds)]
    for row in rows:
        line = (f"| {row['rule']} | {row['rule_macs_saved']:.2%} | {row['rule_psnr_teacher']:.2f} / "
                f"{row['rule_psnr_gt']:.2f} |")
        for k in kinds:
            line += (f" {row[f'{k}_macs_saved']:.2%}, {row[f'{k}_psnr_teacher']:.2f} / "
                     f"{row[f'{k}_psnr_gt']:.2f} | "
                     f"{row[f'{k}_psnr_teacher'] - row['rule_psnr_teacher']:+.2f} dB |")
        lines.append(line)
    with torch.no_grad():
        teacher_gt = sum(psnr(r.clamp(0, 1), c) for r, (_, c, _) in zip(reference, pairs, strict=True)) / 3
    table = "\n".join(lines) + f"\n\nTeacher {args.teacher}: {teacher_gt:.2f} dB vs GT on the held-out crops.\n"
    print("\n" + table)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "teacher_psnr_gt": teacher_gt, "markdown": table}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
