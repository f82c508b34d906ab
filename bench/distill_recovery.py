"""How fast does distillation win back the quality that conversion loses?

Converts the shipped teacher (checkpoints/restormer_denoise_s25.pth, a small Restormer for sigma-25
colour denoising) at each energy and distils it with glmha.distill on the offline sample photos:
train patches from the training photos, validation on the three held-out photos (centre 256x256
crops, fixed noise), evaluated every few steps. By default the loss is pure teacher distillation
(output L1 1.0 + block features 0.1, no ground truth), so the ground-truth PSNR measures what the
teacher's signal alone gives back. Prints PSNR against steps as Markdown (step 0 is the converted
student before any training) and a summary with the student's cost. The default lr 5e-4 recovered
faster than 2e-4 at both energies, and 200 steps reach the plateau (bench/RESULTS.md).

    OMP_WAIT_POLICY=PASSIVE python bench/distill_recovery.py [--energies 0.9 0.8] [--steps 200]
        [--lr 5e-4] [--gt 0] [--out runs/bench_distill_recovery] [--json FILE]

Runs always start over (`restart`), so an --out folder from an earlier benchmark is overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TEACHER = "checkpoints/restormer_denoise_s25.pth"
DEFAULT_OUT = "runs/bench_distill_recovery"
NOISE = {"type": "gaussian_noise", "sigma": 25}


def recipe_dict(args: argparse.Namespace, energy: float, run_dir: Path) -> dict[str, Any]:
    """One run: every setting the benchmark varies comes from the command line, the rest is fixed."""
    return {
        "version": 1,
        "teacher": args.teacher,
        "student": {"energy": energy},
        "data": {"train": {"samples": "train", "degrade": NOISE}, "val": {"samples": "test", "degrade": NOISE},
                 "patch_size": args.patch, "batch_size": args.batch, "workers": 0, "val_crop": args.val_crop},
        "train": {"steps": args.steps, "lr": args.lr, "optimizer": "adamw", "scheduler": "cosine",
                  "seed": args.seed, "checkpoint_every": args.steps, "keep_checkpoints": 1},
        "loss": {"output": 1.0, "features": args.features, "gt": args.gt},
        "eval": {"every": args.eval_every},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def training_seconds(log_csv: Path, batch: int) -> float:
    """Seconds spent in training steps (the engine's samples/s windows; evaluation excluded)."""
    from glmha.distill.trackers import read_log

    seconds = 0.0
    previous = 0
    for row in read_log(log_csv):
        if row.get("samples_per_s"):
            step = int(row["step"])
            seconds += (step - previous) * batch / float(row["samples_per_s"])
            previous = step
    return seconds


def run_energy(args: argparse.Namespace, energy: float, out: Path) -> dict[str, Any]:
    import glmha
    from glmha.distill import distill, parse_recipe

    run_dir = out / f"energy_{energy:g}"
    recipe = parse_recipe(recipe_dict(args, energy, run_dir))
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "engine_output.txt").open("w") as log, contextlib.redirect_stdout(log):
        result = distill(recipe, restart=True, progress=False)
    wall = time.perf_counter() - started
    report = json.loads((run_dir / "report.json").read_text())
    teacher, converted, distilled = report["rows"]
    student = glmha.load(run_dir / "student.safetensors")
    return {
        "energy": energy, "run_dir": str(run_dir), "wall_s": wall,
        "train_s": training_seconds(run_dir / "log.csv", args.batch), "best_step": result.best_step,
        "layers_converted": len(student.glmha_record.reduced),
        "teacher": teacher, "converted": converted, "distilled": distilled,
        "history": report["history"],
    }


def _db(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "inf" if math.isinf(value) else f"{value:.2f}"


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """PSNR against steps (one pair of columns per energy), then one summary row per energy."""
    teacher = runs[0]["teacher"]
    head = "| step |" + "".join(f" E={r['energy']:g} vs GT | E={r['energy']:g} vs teacher |" for r in runs)
    lines = [head, "|---|" + "---|---|" * len(runs)]
    lines.append("| teacher |" + f" {_db(teacher['psnr_gt'])} | - |" * len(runs))
    steps = sorted({h["step"] for r in runs for h in r["history"]})
    for step in steps:
        cells = []
        for r in runs:
            row = next((h for h in r["history"] if h["step"] == step), None)
            cells += [_db(row and row["psnr_gt"]), _db(row and row["psnr_teacher"])]
        label = "0 (converted)" if step == 0 else str(step)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| energy | layers converted | student params | MACs (b) saved | PSNR vs GT: converted -> best "
              "(step) | gap to teacher recovered | run time (training) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        conv = r["converted"]
        best = max(r["history"], key=lambda h: float(h["psnr_gt"]))
        lost = float(teacher["psnr_gt"]) - float(conv["psnr_gt"])
        won = float(best["psnr_gt"]) - float(conv["psnr_gt"])
        saved = (teacher["macs_total"] - conv["macs_total"]) / teacher["macs_total"]
        params = conv["params"] - teacher["params"]
        lines.append(
            f"| {r['energy']:g} | {r['layers_converted']} | {conv['params']:,} ({params:+,}) | {saved:.2%} | "
            f"{_db(conv['psnr_gt'])} -> {_db(best['psnr_gt'])} ({best['step']}) | "
            f"{won:.2f} of {lost:.2f} dB ({won / lost:.0%}) | {r['wall_s']:.0f} s ({r['train_s']:.0f} s) |")
    loss = f"output 1.0 + features {args.features:g}" + (f" + gt {args.gt:g}" if args.gt else " (no ground truth)")
    lines += ["", f"Teacher {args.teacher}: {teacher['params']:,} params, PSNR {_db(teacher['psnr_gt'])} dB / "
              f"SSIM {float(teacher['ssim_gt']):.4f} vs GT on the {teacher['images']} held-out photos (centre "
              f"{args.val_crop}x{args.val_crop} crops, sigma 25). Distillation: {args.steps} steps, patch "
              f"{args.patch}, batch {args.batch}, AdamW lr {args.lr:g} cosine, loss {loss}, trainable: GLMHA "
              f"parameters only. MACs (b) at 1x3x256x256 including attention products."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--energies", type=float, nargs="+", default=[0.9, 0.8])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--features", type=float, default=0.1, help="weight of the block-feature loss")
    parser.add_argument("--gt", type=float, default=0.0, help="weight of the ground-truth L1 (0: teacher only)")
    parser.add_argument("--val-crop", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the run directories (overwritten)")
    parser.add_argument("--json", help="also write every run's history and rows as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE; on a shared CPU, spinning OpenMP threads can make "
              "steps many times slower", file=sys.stderr)

    import torch

    out = Path(args.out)
    runs = []
    for energy in args.energies:
        runs.append(run_energy(args, energy, out))
        r = runs[-1]
        print(f"energy {energy:g}: {args.steps} steps in {r['wall_s']:.0f} s ({r['train_s']:.0f} s training); "
              f"PSNR vs GT {_db(r['converted']['psnr_gt'])} -> {_db(r['distilled']['psnr_gt'])} dB", flush=True)
    table = markdown(runs, args)
    print("\n" + table)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        payload = {"settings": settings, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "runs": runs, "markdown": table}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
