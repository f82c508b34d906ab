"""What does the distillation engine cost per training step over a plain PyTorch loop?

Both sides do the same work on the shipped teacher (checkpoints/restormer_denoise_s25.pth): the
same converted student, the same trainable parameters (the GLMHA ones), AdamW with the recipe's
cosine schedule, the same TrainPatches stream through a DataLoader (workers 0), and the same loss
(output L1 + 0.1 x block-feature L1 through FeatureTap hooks), the teacher under no_grad. The
plain loop is only: zero_grad, teacher forward, student forward, loss, backward, step.

The engine runs `glmha.distill.distill()` with evaluation and checkpoints only at the end. Its steps
are timed by wall clock at each per-step log call (a CSVTracker subclass swapped in for this
benchmark records the time), so the interval covers everything a step does: Accelerate's wrappers,
the per-step `reduce`, `float(loss)`, the CSV write. The engine's own samples/s (log.csv, which
leaves the reduce and logging out) is reported next to it. The first `--warmup` steps of every run
are not timed. Repeats alternate the order (plain, engine / engine, plain) after one untimed pair,
and the overhead is also given as the median of the per-repeat ratios, which a shared machine's
drifting load disturbs less than two medians taken apart.

    OMP_WAIT_POLICY=PASSIVE python bench/engine_overhead.py [--repeats 5] [--steps 50] [--warmup 10]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_TEACHER = "checkpoints/restormer_denoise_s25.pth"
NOISE = {"type": "gaussian_noise", "sigma": 25}
FEATURES = 0.1


def recipe_dict(args: argparse.Namespace, steps: int, run_dir: Path) -> dict[str, Any]:
    never = 10 * steps  # evaluation and checkpoint only at the end (excluded from the timing)
    return {
        "version": 1,
        "teacher": args.teacher,
        "student": {"energy": args.energy},
        "data": {"train": {"samples": "train", "degrade": NOISE}, "val": {"samples": "test", "degrade": NOISE},
                 "patch_size": args.patch, "batch_size": args.batch, "workers": 0, "val_limit": 1, "val_crop": 64},
        "train": {"steps": steps, "lr": 2e-4, "optimizer": "adamw", "scheduler": "cosine", "seed": 0,
                  "checkpoint_every": never, "keep_checkpoints": 1},
        "loss": {"output": 1.0, "features": FEATURES, "gt": 0.0},
        "eval": {"every": never},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def throughput(stamps: dict[int, float], first: int, last: int, batch: int) -> float:
    """Samples per second over steps first+1 .. last, from the wall-clock time at the end of each step."""
    return batch * (last - first) / (stamps[last] - stamps[first])


def plain_run(recipe: Any, teacher: Any, template: Any) -> dict[int, float]:
    """The reference loop; returns the perf_counter time at the end of each step."""
    import torch
    from torch.utils.data import DataLoader

    from glmha.distill.data import TrainPatches, open_source
    from glmha.distill.losses import FeatureTap, distance_fn, feature_loss, feature_points
    from glmha.distill.optim import lr_factor, select_trainable

    torch.manual_seed(recipe.train.seed)
    train, data = recipe.train, recipe.data
    student = copy.deepcopy(template).train()
    params = select_trainable(student, train.trainable)
    optimizer = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(t, train))
    source = open_source(data.train, channels=teacher.input_channels, where="data.train")
    dataset = TrainPatches(source, patch_size=data.patch_size, length=train.steps * data.batch_size,
                           seed=train.seed, flips=data.flips)
    loader = DataLoader(dataset, batch_size=data.batch_size, shuffle=False, drop_last=True, num_workers=0)
    points = feature_points(student)
    teacher_tap, student_tap = FeatureTap(teacher, points), FeatureTap(student, points)
    distance = distance_fn("l1")
    stamps = {0: time.perf_counter()}
    try:
        for step, batch in enumerate(loader, start=1):
            optimizer.zero_grad()
            teacher_tap.clear()
            student_tap.clear()
            inputs = batch["input"]
            with torch.no_grad():
                teacher_out = teacher(inputs)
            student_out = student(inputs)
            loss = distance(student_out, teacher_out) + FEATURES * feature_loss(
                student_tap.values, teacher_tap.values, distance)
            loss.backward()
            optimizer.step()
            scheduler.step()
            stamps[step] = time.perf_counter()
    finally:
        teacher_tap.remove()
        student_tap.remove()
    return stamps


@contextlib.contextmanager
def timed_engine_log() -> Iterator[dict[int, float]]:
    """Swap the engine's CSVTracker for one that also notes when each training step was logged."""
    from glmha.distill import engine
    from glmha.distill.trackers import CSVTracker

    stamps: dict[int, float] = {}

    class TimedCSVTracker(CSVTracker):
        def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
            if "loss" in values and step is not None:
                stamps[step] = time.perf_counter()
            super().log(values, step=step, **kwargs)

    original = engine.CSVTracker
    engine.CSVTracker = TimedCSVTracker
    try:
        yield stamps
    finally:
        engine.CSVTracker = original


def engine_run(recipe: Any) -> tuple[dict[int, float], list[tuple[int, float]]]:
    """Step-end times, and the engine's own samples/s windows from log.csv as (step, samples/s)."""
    from glmha.distill import distill
    from glmha.distill.trackers import read_log

    with timed_engine_log() as stamps, contextlib.redirect_stdout(io.StringIO()):
        distill(recipe, restart=True, progress=False)
    windows = [(int(row["step"]), float(row["samples_per_s"])) for row in read_log(recipe.run_dir / "log.csv")
               if row.get("samples_per_s")]
    return stamps, windows


def logged_throughput(windows: list[tuple[int, float]], first: int, batch: int) -> float:
    """The engine's samples/s over its 10-step windows after step `first`, as one figure."""
    seconds = sum(10 * batch / rate for step, rate in windows if step > first)
    count = sum(1 for step, _ in windows if step > first)
    return 10 * batch * count / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--energy", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=10, help="steps at the start of each run left out")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", help="also write every run's figures as JSON")
    args = parser.parse_args(argv)
    if args.steps % 10 or args.warmup % 10 or args.warmup >= args.steps:
        parser.error("--steps and --warmup must be multiples of 10 (the engine logs samples/s every 10 steps), "
                     "with --warmup < --steps")
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE; on a shared CPU, spinning OpenMP threads can make "
              "steps many times slower", file=sys.stderr)

    import torch

    from glmha.distill import parse_recipe
    from glmha.distill.engine import build_student, load_teacher
    from glmha.io_utils import sha256_file

    folder = Path(tempfile.mkdtemp(prefix="glmha_engine_overhead_"))
    recipe = parse_recipe(recipe_dict(args, args.steps, folder / "run"))
    warm_recipe = parse_recipe(recipe_dict(args, args.warmup + 10, folder / "warm"))
    teacher = load_teacher(recipe).eval().requires_grad_(False)
    template = build_student(recipe, teacher, sha256_file(recipe.teacher), lambda _text: None)
    threads = torch.get_num_threads()

    plain_run(warm_recipe, teacher, template)  # untimed: first-use costs of both paths
    engine_run(warm_recipe)
    rows = []
    for repeat in range(args.repeats):
        order = ("plain", "engine") if repeat % 2 == 0 else ("engine", "plain")
        row: dict[str, Any] = {"repeat": repeat + 1, "order": "/".join(order)}
        for side in order:
            if side == "plain":
                stamps = plain_run(recipe, teacher, template)
                row["plain"] = throughput(stamps, args.warmup, args.steps, args.batch)
            else:
                stamps, windows = engine_run(recipe)
                row["engine"] = throughput(stamps, args.warmup, args.steps, args.batch)
                row["engine_log"] = logged_throughput(windows, args.warmup, args.batch)
            if torch.get_num_threads() != threads:
                raise RuntimeError(f"{side} changed torch's thread count {threads} -> {torch.get_num_threads()}")
        row["ratio"] = row["engine"] / row["plain"]
        rows.append(row)
        print(f"repeat {row['repeat']} ({row['order']}): plain {row['plain']:.2f}, engine {row['engine']:.2f} "
              f"(log.csv {row['engine_log']:.2f}) samples/s; engine/plain {row['ratio']:.3f}", flush=True)

    plain = statistics.median(r["plain"] for r in rows)
    engine = statistics.median(r["engine"] for r in rows)
    logged = statistics.median(r["engine_log"] for r in rows)
    ratio = statistics.median(r["ratio"] for r in rows)
    lines = ["| repeat | order | plain samples/s | engine samples/s (wall clock) | engine samples/s (log.csv) "
             "| engine / plain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['repeat']} | {r['order']} | {r['plain']:.2f} | {r['engine']:.2f} | {r['engine_log']:.2f} | "
              f"{r['ratio']:.3f} |" for r in rows]
    lines.append(f"| **median** | | **{plain:.2f}** | **{engine:.2f}** | {logged:.2f} | **{ratio:.3f}** |")
    summary = (f"Overhead = 1 - engine/plain: {1 - engine / plain:+.1%} from the medians, {1 - ratio:+.1%} as the "
               f"median per-repeat ratio (target: at most 10 %). Steps {args.warmup + 1}-{args.steps} of each run "
               f"timed, {args.repeats} repeats, batch {args.batch}, patch {args.patch}, energy {args.energy:g}, "
               f"{threads} threads, torch {torch.__version__}.")
    table = "\n".join(lines) + "\n\n" + summary + "\n"
    print("\n" + table)
    if args.json:
        payload = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "threads": threads,
                   "torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "rows": rows, "median_plain": plain, "median_engine": engine, "median_engine_log": logged,
                   "median_ratio": ratio, "overhead_from_medians": 1 - engine / plain,
                   "overhead_from_ratios": 1 - ratio, "markdown": table}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
