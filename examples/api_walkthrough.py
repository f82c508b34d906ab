"""The glmha Python API end to end on the shipped teacher, as a script to copy from.

Why: the README lists the calls; this shows them working together on a real model, with the
numbers a user wants at each step (cost before and after, quality before and after distillation).
The teacher is `checkpoints/restormer_denoise_s25.pth`, a small Restormer for sigma-25 colour
denoising (see its JSON card). Quality is measured on the three held-out sample photographs
(astronaut, chelsea, coffee), centre 256x256 crops with fixed sigma-25 noise, so it runs in about
a minute on a 2-core CPU; a 30-step distillation is a smoke run, not a converged student.

    OMP_WAIT_POLICY=PASSIVE python examples/api_walkthrough.py [--energy 0.8] [--steps 30]
        [--out runs/api_walkthrough]

Writes, under --out: the converted student (`student_e<energy>.glmha.safetensors`), the
distillation run (`distill/`, with `student.safetensors` and `report.md`) and `walkthrough.json`
(the before/after table). Every run starts the distillation over.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads waiting for a
# descheduled peer make every step many times slower. Read when torch loads, so set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import glmha
import glmha.distill
from glmha.cli.convert import format_plan
from glmha.data.held_out import NOISE_SEED, SIGMA, held_out_pairs, held_out_psnr
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write_text
from glmha.report import giga

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "checkpoints" / "restormer_denoise_s25.pth"
NOISE = {"type": "gaussian_noise", "sigma": SIGMA}


def distill_recipe(teacher: Path, student: Path, steps: int, run_dir: Path) -> dict[str, Any]:
    """The tiny_cpu recipe's training settings, with the exported student and a cheap validation.

    Validation (which picks the exported best student) uses one *training* photograph, so the three
    held-out photographs stay unseen for the before/after table.
    """
    return {
        "version": 1,
        "teacher": str(teacher),
        "student": {"path": str(student)},
        "data": {"train": {"samples": "train", "degrade": NOISE}, "val": {"samples": "train", "degrade": NOISE},
                 "patch_size": 48, "batch_size": 4, "val_limit": 1, "val_crop": 128},
        "train": {"steps": steps, "lr": 2e-3, "min_lr": 1e-5, "max_grad_norm": 1.0, "seed": 0,
                  "checkpoint_every": steps, "keep_checkpoints": 1, "device": "cpu"},
        "loss": {"output": 1.0, "features": 0.1, "gt": 1.0, "distance": "l1"},
        "eval": {"every": steps, "input_size": [256, 256]},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def format_table(rows: list[dict[str, Any]], names: Sequence[str]) -> str:
    """A plain-text table: cost columns, PSNR per held-out image and the mean."""
    header = ["model", "params", "MACs (a)", "MACs (b)", *names, "mean"]
    lines = [header]
    for row in rows:
        cost = ["-", "-", "-"] if row["params"] is None else [
            f"{row['params']:,}", giga(row["macs_linear"]), giga(row["macs_total"])]
        psnrs = [f"{value:.2f}" for value in row["psnr"]]
        lines.append([row["name"], *cost, *psnrs, f"{row['psnr_mean']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for index, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        text.append("  ".join(cells))
        if index == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Walk through the glmha Python API on the shipped teacher: load, describe, analyse, "
        "plan, convert, measure, export, distil, reload and measure again.",
    )
    parser.add_argument("--out", default="runs/api_walkthrough",
                        help="output folder (default runs/api_walkthrough)")
    parser.add_argument("--steps", type=int, default=30, help="distillation steps (default 30)")
    parser.add_argument("--energy", type=float, default=0.8, help="spectrum energy each head keeps (default 0.8)")
    parser.add_argument("--checkpoint", default=str(TEACHER), help="teacher checkpoint (default: the shipped one)")
    parser.add_argument("--crop", type=int, default=256,
                        help="centre crop of the held-out photos, a multiple of 8 (default 256)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.steps < 1:
            raise GlmhaError(f"--steps must be >= 1, got {args.steps}")
        if not 0.0 < args.energy <= 1.0:
            raise GlmhaError(f"--energy must be in (0, 1], got {args.energy}")
        return _run(args)
    except GlmhaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Load the official-container checkpoint: family and hyperparameters come from the tensors.
    teacher = glmha.load(args.checkpoint)
    teacher.check_input_size(args.crop, args.crop)  # Restormer needs multiples of 8
    print(f"1.  loaded {args.checkpoint}: {teacher.family} {teacher.config.to_dict()}")

    # 2. Count it at 256x256: MACs (a) are convolutions and linear layers, (b) adds the attention products.
    report = glmha.describe(teacher, 256, 256)
    print(f"2.  teacher: {report.params:,} params, MACs (a) {giga(report.macs_linear)}, "
          f"MACs (b) {giga(report.macs_total)} at 256x256, {len(report.layers)} CSA layers")

    # 3. Data-free spectra of every CSA layer's keys/values, per head (no images needed).
    spectra = glmha.analyse(teacher)
    widths = [spectrum.width_for(args.energy) for spectrum in spectra]
    print(f"3.  analysed {len(spectra)} layers; per-head widths keeping {args.energy:g} of the energy: "
          f"{min(widths)}..{max(widths)}")

    # 4. The plan: C' per layer and the costs before/after. It is plain data (plan.to_json()).
    plan = glmha.plan_conversion(teacher, spectra, energy=args.energy)
    print("4.  " + textwrap.indent(format_plan(plan), "    ").lstrip())

    # 5. Convert: a new model with GLMHA layers; the teacher is not changed.
    student = glmha.convert_model(teacher, plan, spectra)
    print(f"5.  converted {len(plan.converted)} of {len(plan.layers)} CSA layers to GLMHA")
    if not plan.converted:  # GLMHA would cost more than CSA everywhere: nothing to distil
        raise GlmhaError(f"--energy {args.energy:g} keeps every channel, so no layer was converted; "
                         f"lower it (e.g. 0.8)")

    # 6. Count the student the same way (it agrees with the plan's `after`).
    student_report = glmha.describe(student, 256, 256)
    print(f"6.  student: {student_report.params:,} params, MACs (a) {giga(student_report.macs_linear)}, "
          f"MACs (b) {giga(student_report.macs_total)}")

    # 7. Held-out photos the teacher never trained on, with fixed noise: every model sees the same inputs.
    pairs = held_out_pairs(args.crop)
    names = [name for name, _, _ in pairs]
    print(f"7.  {len(pairs)} held-out crops: " + ", ".join(f"{name} {tuple(clean.shape[-2:])}"
                                                          for name, clean, _ in pairs))

    # 8. Quality right after conversion (glmha.metrics: RGB, no border crop, outputs clamped).
    scores = {"noisy": held_out_psnr(None, pairs), "teacher": held_out_psnr(teacher, pairs),
              "converted": held_out_psnr(student, pairs)}
    print("8.  mean PSNR: " + ", ".join(f"{key} {sum(v) / len(v):.2f} dB" for key, v in scores.items()))

    # 9. Export: slim safetensors whose metadata is enough to rebuild the model (glmha.load reads it).
    export_path = out / f"student_e{args.energy:g}.glmha.safetensors"
    glmha.export(student, export_path)
    print(f"9.  exported {export_path} ({export_path.stat().st_size:,} bytes)")

    # 10. A distillation recipe as a mapping, validated as strictly as a YAML file would be.
    recipe = glmha.distill.parse_recipe(distill_recipe(Path(args.checkpoint), export_path, args.steps,
                                                       out / "distill"))
    print(f"10. recipe: {args.steps} steps, lr {recipe.train.lr:g}, run folder {recipe.run_dir}")

    # 11. Distil against the frozen teacher. restart=True: rerunning the walkthrough starts over
    #     (without it, a run folder with checkpoints is resumed).
    print("11. distilling")
    result = glmha.distill.distill(recipe, restart=True, progress=False)

    # 12. Reload the best student the run exported and measure it the same way.
    distilled_path = result.run_dir / "student.safetensors"
    distilled = glmha.load(distilled_path)
    distilled_report = glmha.describe(distilled, 256, 256)
    scores["distilled"] = held_out_psnr(distilled, pairs)
    print(f"12. reloaded {distilled_path} (best step {result.best_step}): "
          f"mean PSNR {sum(scores['distilled']) / len(pairs):.2f} dB")

    costs = {"noisy": None, "teacher": report, "converted": student_report, "distilled": distilled_report}
    labels = {"noisy": "noisy input", "teacher": "teacher", "converted": f"converted (energy {args.energy:g})",
              "distilled": f"distilled ({args.steps} steps)"}
    rows = []
    for key, values in scores.items():
        cost = costs[key]
        rows.append({"name": labels[key], "key": key, "params": cost.params if cost else None,
                     "macs_linear": cost.macs_linear if cost else None,
                     "macs_total": cost.macs_total if cost else None,
                     "psnr": values, "psnr_mean": sum(values) / len(values)})
    print(f"\nPSNR (dB) vs clean on centre {args.crop}x{args.crop} crops, sigma {SIGMA:g} noise "
          f"(seeds {NOISE_SEED}..{NOISE_SEED + len(pairs) - 1}); MACs at 256x256\n")
    print(format_table(rows, names))
    summary = {"checkpoint": str(args.checkpoint), "energy": args.energy, "steps": args.steps, "crop": args.crop,
               "sigma": SIGMA, "images": names, "export": str(export_path), "distilled": str(distilled_path),
               "best_step": result.best_step, "rows": rows}
    atomic_write_text(out / "walkthrough.json", json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out / 'walkthrough.json'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
