"""How fast does distillation win back the quality that conversion loses?

`--task denoise` (default) converts the shipped teacher checkpoints/restormer_denoise_s25.pth (a
small Restormer for sigma-25 colour denoising) at each energy and distils it with glmha.distill on the
offline sample photos: train patches from the training photos, validation on the three held-out photos
(centre 256x256 crops, fixed noise), scored by PSNR. `--task spectral` does the same for the shipped
MST++ teacher checkpoints/mst_plus_plus_synthetic.pth on synthetic scenes (training scenes from seed
0, four held-out ones from seed 2000, Adam as MST++), scored by MRAE, MST++'s selection metric.
Evaluated every few steps. By default the loss is pure teacher distillation (output 1.0 + block
features 0.1, no ground truth), so the ground-truth score measures what the teacher's signal alone
gives back. Prints the score against steps as Markdown (step 0 is the converted student before any
training) and a summary with the student's cost. For denoising the default lr 5e-4 recovered faster
than 2e-4 at both energies, and 200 steps reach the plateau (bench/RESULTS.md).

    OMP_WAIT_POLICY=PASSIVE python bench/distill_recovery.py [--task denoise|spectral]
        [--energies 0.9 0.8] [--plan target_macs=0.88 --plan ratio=0.5,init=merge ...]
        [--steps 200] [--lr 5e-4] [--gt 0] [--trainable glmha|all] [--out DIR] [--json FILE]

`--plan` (repeatable) gives any student section as comma-separated recipe keys, e.g. `target_macs=0.88`
(a budget plan, calibrated on the recipe's own training inputs), `ratio=0.5`, or
`target_macs=0.88,calibration=full`; with --plan the --energies are not run unless given too.

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

DEFAULT_OUT = "runs/bench_distill_recovery"
NOISE = {"type": "gaussian_noise", "sigma": 25}
SCENES = {"format": "synthetic", "kind": "rgb", "size": 96}
TASKS: dict[str, dict[str, Any]] = {
    "denoise": {
        "teacher": "checkpoints/restormer_denoise_s25.pth", "metric": "psnr", "higher_is_better": True,
        "data": {"train": {"samples": "train", "degrade": NOISE}, "val": {"samples": "test", "degrade": NOISE}},
        "optimizer": "adamw", "distance": "l1", "patch": 48,
    },
    "spectral": {
        "teacher": "checkpoints/mst_plus_plus_synthetic.pth", "metric": "mrae", "higher_is_better": False,
        "data": {"train": {**SCENES, "scenes": 48, "seed": 0}, "val": {**SCENES, "scenes": 4, "seed": 2000},
                 "val_crop": None},
        "optimizer": "adam", "distance": "mrae", "patch": 64,
    },
}


def parse_plan(text: str) -> dict[str, Any]:
    """'target_macs=0.88,calibration=full' -> {'target_macs': 0.88, 'calibration': 'full'} (values as YAML)."""
    import yaml

    student = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--plan {text}: expected key=value[,key=value...]")
        student[key.strip()] = yaml.safe_load(value)
    return student


def recipe_dict(args: argparse.Namespace, student: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One run: every setting the benchmark varies comes from the command line, the rest is fixed."""
    task = TASKS[args.task]
    return {
        "version": 1,
        "teacher": args.teacher,
        "student": student,
        "data": {"patch_size": args.patch, "batch_size": args.batch, "workers": 0, "val_crop": args.val_crop,
                 **task["data"]},
        "train": {"steps": args.steps, "lr": args.lr, "optimizer": task["optimizer"], "scheduler": "cosine",
                  "seed": args.seed, "checkpoint_every": args.steps, "keep_checkpoints": 1,
                  "trainable": args.trainable},
        "loss": {"output": 1.0, "features": args.features, "gt": args.gt, "distance": task["distance"]},
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


def run_plan(args: argparse.Namespace, label: str, student: dict[str, Any], out: Path) -> dict[str, Any]:
    import glmha
    from glmha.distill import distill, parse_recipe

    run_dir = out / label.replace("=", "_").replace(",", "__")
    recipe = parse_recipe(recipe_dict(args, student, run_dir))
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "engine_output.txt").open("w") as log, contextlib.redirect_stdout(log):
        result = distill(recipe, restart=True, progress=False)
    wall = time.perf_counter() - started
    report = json.loads((run_dir / "report.json").read_text())
    teacher, converted, distilled = report["rows"]
    student = glmha.load(run_dir / "student.safetensors")
    return {
        "label": label, "run_dir": str(run_dir), "wall_s": wall,
        "train_s": training_seconds(run_dir / "log.csv", args.batch), "best_step": result.best_step,
        "layers_converted": len(student.record.conversion.reduced),
        "teacher": teacher, "converted": converted, "distilled": distilled,
        "history": report["history"],
    }


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric == "psnr" else f"{value:.4f}"


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The task's metric against steps (one pair of columns per energy), then one summary row per energy."""
    task = TASKS[args.task]
    metric, sign = task["metric"], 1.0 if task["higher_is_better"] else -1.0
    name = metric.upper()
    gt, vs_teacher = f"{metric}_gt", f"{metric}_teacher"
    teacher = runs[0]["teacher"]
    head = "| step |" + "".join(f" {r['label']} {name} vs GT | {r['label']} vs teacher |" for r in runs)
    lines = [head, "|---|" + "---|---|" * len(runs)]
    lines.append("| teacher |" + f" {_fmt(teacher[gt], metric)} | - |" * len(runs))
    steps = sorted({h["step"] for r in runs for h in r["history"]})
    for step in steps:
        cells = []
        for r in runs:
            row = next((h for h in r["history"] if h["step"] == step), None)
            cells += [_fmt(row and row[gt], metric), _fmt(row and row[vs_teacher], metric)]
        label = "0 (converted)" if step == 0 else str(step)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"| plan | layers converted | student params | MACs (b) saved | {name} vs GT: converted -> "
              "best (step) | gap to teacher recovered | left to the teacher | run time (training) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        conv = r["converted"]
        best = max(r["history"], key=lambda h: sign * float(h[gt]))
        lost = sign * (float(teacher[gt]) - float(conv[gt]))
        won = sign * (float(best[gt]) - float(conv[gt]))
        share = f"{won / lost:.0%}" if lost > 0 else "n/a: converted is not worse"
        saved = (teacher["macs_total"] - conv["macs_total"]) / teacher["macs_total"]
        params = conv["params"] - teacher["params"]
        left = sign * (float(teacher[gt]) - float(best[gt]))
        lines.append(
            f"| {r['label']} | {r['layers_converted']} | {conv['params']:,} ({params:+,}) | {saved:.2%} | "
            f"{_fmt(conv[gt], metric)} -> {_fmt(best[gt], metric)} ({best['step']}) | "
            f"{_fmt(won, metric)} of {_fmt(lost, metric)} ({share}) | {_fmt(left, metric)} | "
            f"{r['wall_s']:.0f} s ({r['train_s']:.0f} s) |")
    loss = (f"output {task['distance']} 1.0 + features {args.features:g}"
            + (f" + gt {args.gt:g}" if args.gt else " (no ground truth)"))
    if args.task == "denoise":
        where = (f"PSNR {_fmt(teacher['psnr_gt'], 'psnr')} dB / SSIM {float(teacher['ssim_gt']):.4f} vs GT on the "
                 f"{teacher['images']} held-out photos (centre {args.val_crop}x{args.val_crop} crops, sigma 25)")
    else:
        where = (f"MRAE {_fmt(teacher['mrae_gt'], 'mrae')} / PSNR {_fmt(teacher['psnr_gt'], 'psnr')} dB vs GT "
                 f"on {teacher['images']} held-out synthetic scenes (whole 96x96)")
    trained = "GLMHA parameters only" if args.trainable == "glmha" else "all parameters"
    lines += ["", f"Teacher {args.teacher}: {teacher['params']:,} params, {where}. Distillation: {args.steps} "
              f"steps, patch {args.patch}, batch {args.batch}, {task['optimizer']} lr {args.lr:g} cosine, loss "
              f"{loss}, trainable: {trained}. MACs (b) at 256x256 including attention products."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="denoise",
                        help="denoise: the shipped Restormer on photos; spectral: the shipped MST++ on scenes")
    parser.add_argument("--teacher", help="default: the task's shipped teacher")
    parser.add_argument("--energies", type=float, nargs="+", help="default 0.9 0.8 (unless --plan is given)")
    parser.add_argument("--plan", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="a student section to run, e.g. target_macs=0.88 (repeatable)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--patch", type=int, help="default: 48 (denoise), 64 (spectral)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--features", type=float, default=0.1, help="weight of the block-feature loss")
    parser.add_argument("--gt", type=float, default=0.0, help="weight of the ground-truth L1 (0: teacher only)")
    parser.add_argument("--val-crop", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainable", choices=["glmha", "all"], default="glmha",
                        help="glmha: only the converted layers' parameters (default); all: the whole student")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the run directories (overwritten)")
    parser.add_argument("--json", help="also write every run's history and rows as JSON")
    args = parser.parse_args(argv)
    args.teacher = args.teacher or TASKS[args.task]["teacher"]
    args.patch = args.patch or TASKS[args.task]["patch"]
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE; on a shared CPU, spinning OpenMP threads can make "
              "steps many times slower", file=sys.stderr)

    import torch

    out = Path(args.out)
    metric = TASKS[args.task]["metric"]
    gt = f"{metric}_gt"
    plans = [(f"E={e:g}", {"energy": e}) for e in (args.energies or ([] if args.plan else [0.9, 0.8]))]
    plans += [(text, parse_plan(text)) for text in args.plan]
    runs = []
    for label, student in plans:
        runs.append(run_plan(args, label, student, out))
        r = runs[-1]
        print(f"{label}: {args.steps} steps in {r['wall_s']:.0f} s ({r['train_s']:.0f} s training); "
              f"{metric.upper()} vs GT {_fmt(r['converted'][gt], metric)} -> {_fmt(r['distilled'][gt], metric)}",
              flush=True)
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
