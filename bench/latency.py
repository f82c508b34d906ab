"""Does a conversion save time in proportion to the MACs it saves?

Original and converted models run side by side in one process, interleaved (teacher, student,
student, teacher, ...), so both meet the same machine load. Reported per model, input size and plan:
the minimum time of each (the least disturbed run), the median of the per-pair time ratios, the MACs
(b) saved, and the share of those MACs that was saved in time: (1 - time ratio) / (MACs saved). With
`--layers`, the same comparison for every CSA layer alone on the input it receives, summed per level.

Models are the published default configurations with random weights (latency does not depend on the
values), or a checkpoint. Plans: `ratio:R` (uniform, the paper's rule) and `target-macs:F` (a budget,
allocated by sensitivity measured on the offline calibration inputs).

    OMP_WAIT_POLICY=PASSIVE python bench/latency.py --models restormer --sizes 128 256 512 \
        --plans ratio:0.5 target-macs:0.88 --repeats 7 --threads 2 --layers --json latency.json
    python bench/latency.py --smoke          # tiny models, one repeat: checks the script runs

Allocator: glibc's malloc adapts its mmap threshold to the allocation sizes it has seen, so two
models with different intermediate shapes can pay different page-fault costs in *identical* layers
(measured: the same Restormer FFN layers 8.6 % slower inside the converted model at 128x128, and
every layer up to 40 % slower than with a fixed threshold). The bench fixes the thresholds with
mallopt (as PyTorch's CPU performance guide suggests) unless `--default-malloc`.

Never asserted on in tests: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import glmha
from glmha.archs import MST, MSTPlusPlus, RestorationModel, Restormer
from glmha.layers import GLMHALayer
from glmha.runtime import tune_allocator

MODELS: dict[str, Callable[[], RestorationModel]] = {
    "restormer": Restormer,  # dim 48, blocks 4/6/6/8, refinement 4, heads 1/2/4/8
    "mst_plus_plus": MSTPlusPlus,  # 3 stages of n_feat 31
    "mst_l": lambda: MST(dim=28, stage=2, num_blocks=(4, 7, 5)),
}
SMOKE_MODELS: dict[str, Callable[[], RestorationModel]] = {
    "restormer": lambda: Restormer(dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4)),
    "mst_plus_plus": lambda: MSTPlusPlus(stage=1, stage_blocks=(1, 1)),
    "mst_l": lambda: MST(dim=28, stage=1, num_blocks=(1, 1)),
}
DEFAULT_SIZES = {"restormer": ["128", "256", "512"], "mst_plus_plus": ["482x512"], "mst_l": ["256"]}


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def build_student(teacher: RestorationModel, plan_text: str, size: tuple[int, int],
                  calibration_side: int | None = None) -> tuple[RestorationModel, Any]:
    """The converted model of a plan; budgets measure on the offline calibration inputs (or, with
    `calibration_side`, two of them at that size)."""
    kind, _, value = plan_text.partition(":")
    options = {"ratio": {"ratio": float(value)}, "target-macs": {"target_macs": float(value)},
               "energy": {"energy": float(value)}}[kind]
    if calibration_side is not None:
        options["inputs"] = [teacher.calibration_samples(calibration_side, 2)]
    with contextlib.redirect_stderr(io.StringIO()):
        student, plan = glmha.convert_to_glmha(teacher, input_size=size, progress=False, **options)
    return student.eval(), plan


def random_teacher(name: str, smoke: bool = False) -> RestorationModel:
    """A published default configuration (or its smoke-size stand-in) with random but non-trivial weights,
    so plans and outputs are not degenerate; latency does not depend on the values."""
    teacher = (SMOKE_MODELS if smoke else MODELS)[name]()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in teacher.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            scaled = noise / max(parameter[0].numel(), 1) ** 0.5 if parameter.dim() > 1 else 1.0 + 0.1 * noise
            parameter.copy_(scaled)
    return teacher.eval()


def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int) -> dict[str, Any]:
    """Times of both callables over `repeats` rounds, alternating which goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(repeats):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for which in order:
            call = first if which == 0 else second
            start = time.perf_counter()
            call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[which].append(time.perf_counter() - start)
    ratios = [s / t for t, s in zip(*times, strict=True)]
    return {"teacher_s": times[0], "student_s": times[1], "teacher_min": min(times[0]),
            "student_min": min(times[1]), "ratio_of_minima": min(times[1]) / min(times[0]),
            "median_ratio": statistics.median(ratios)}


class LayerClock:
    """Wall time of every CSA / GLMHA layer inside the model's own forward passes (hooks), so layers are
    timed with the caches and memory state of a real run rather than alone."""

    def __init__(self, model: RestorationModel) -> None:
        self.times: dict[str, list[float]] = {}
        self._started: dict[str, float] = {}
        self._handles = []
        for name, layer in model.csa_layers():
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, n=name: self._start(n)))
            self._handles.append(layer.register_forward_hook(lambda m, a, o, n=name: self._stop(n)))

    def _start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self.times.setdefault(name, []).append(time.perf_counter() - self._started.pop(name))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def layer_breakdown(teacher: RestorationModel, student: RestorationModel, inputs: Sequence[torch.Tensor],
                    repeats: int, plan: Any) -> list[dict[str, Any]]:
    """Each converted layer against its CSA original, both timed inside interleaved whole-model passes."""
    clocks = LayerClock(teacher), LayerClock(student)
    try:
        with torch.no_grad():
            interleaved(lambda: teacher(*inputs), lambda: student(*inputs), repeats)
    finally:
        for clock in clocks:
            clock.close()
    macs = {lp.name: lp.macs_total_after / lp.macs_total_before for lp in plan.layers}
    rows = []
    for name, layer in student.csa_layers():
        before, after = clocks[0].times[name], clocks[1].times[name]
        rows.append({"layer": name, "level": teacher.csa_level(name), "converted": isinstance(layer, GLMHALayer),
                     "macs_ratio": macs[name], "teacher_min": min(before),
                     "student_min": min(after),
                     "median_ratio": statistics.median(b / a for a, b in zip(before, after, strict=True))})
    return rows


def run_case(model_name: str, teacher: RestorationModel, size: tuple[int, int], plan_text: str,
             args: argparse.Namespace, students: dict[str, tuple[RestorationModel, Any]]) -> dict[str, Any]:
    device = torch.device(args.device)
    if plan_text not in students:  # a plan's widths do not depend on the input size: plan once per model
        students[plan_text] = build_student(teacher, plan_text, size, 32 if args.smoke else None)
    student, plan = students[plan_text]
    before, after = glmha.describe(teacher, *size), glmha.describe(student, *size)
    teacher_d, student_d = teacher.to(device), student.to(device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.bf16:
        teacher_d, student_d = teacher_d.to(dtype), student_d.to(dtype)
    inputs = [torch.rand(t.shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
              for t in teacher.example_inputs(*size)]
    with torch.no_grad():
        for _ in range(args.warmup):
            teacher_d(*inputs), student_d(*inputs)
        timing = interleaved(lambda: teacher_d(*inputs), lambda: student_d(*inputs), args.repeats)
    saved_macs = 1 - after.macs_total / before.macs_total
    row = {
        "model": model_name, "size": f"{size[0]}x{size[1]}", "plan": plan_text, "device": args.device,
        "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "converted_layers": len(plan.converted), "params_before": before.params,
        "params_after": after.params, "macs_total_saved": saved_macs,
        "macs_linear_saved": 1 - after.macs_linear / before.macs_linear, **timing,
        "time_share_of_macs_min": (1 - timing["ratio_of_minima"]) / saved_macs if saved_macs else None,
        "time_share_of_macs_median": (1 - timing["median_ratio"]) / saved_macs if saved_macs else None,
    }
    if args.layers:
        row["layers"] = layer_breakdown(teacher_d, student_d, inputs, args.repeats, plan)
        converted = [layer for layer in row["layers"] if layer["converted"]]
        # what the model would save if every converted layer's time shrank exactly with its MACs
        ideal = sum(layer["teacher_min"] * (1 - layer["macs_ratio"]) for layer in converted)
        row["csa_time_share"] = sum(layer["teacher_min"] for layer in row["layers"]) / row["teacher_min"]
        row["proportional_time_saved"] = ideal / row["teacher_min"]
    teacher.to("cpu").float(), student.to("cpu").float()
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | input | plan | layers converted | params | MACs (b) saved | min time original -> "
             "converted | ratio of minima | median of pair ratios | time saved / MACs saved (min, median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r["time_share_of_macs_min"] is None else (
            f"{r['time_share_of_macs_min']:.0%}, {r['time_share_of_macs_median']:.0%}")
        lines.append(
            f"| {r['model']} | {r['size']} | {r['plan']} | {r['converted_layers']} | "
            f"{r['params_before']:,} -> {r['params_after']:,} | {r['macs_total_saved']:.2%} | "
            f"{r['teacher_min'] * 1000:.1f} -> {r['student_min'] * 1000:.1f} ms | {r['ratio_of_minima']:.3f} | "
            f"{r['median_ratio']:.3f} | {share} |")
    for r in rows:
        if "layers" not in r:
            continue
        ideal = r["proportional_time_saved"]
        lines += ["", f"Per level, {r['model']} {r['size']} {r['plan']} (sum over the converted layers of each "
                  "one's minimum time inside the whole-model passes; MACs ratio: the same layers' MACs (b) "
                  "after / before):", "",
                  "| level | layers | CSA | GLMHA | time ratio | MACs ratio |", "|---|---|---|---|---|---|"]
        levels: dict[str, list[dict[str, Any]]] = {}
        for layer in r["layers"]:
            if layer["converted"]:
                levels.setdefault(layer["level"], []).append(layer)
        for level, items in levels.items():
            before = sum(i["teacher_min"] for i in items)
            after = sum(i["student_min"] for i in items)
            macs = sum(i["teacher_min"] * i["macs_ratio"] for i in items) / before  # time-weighted
            lines.append(f"| {level} | {len(items)} | {before * 1000:.1f} ms | {after * 1000:.1f} ms | "
                         f"{after / before:.3f} | {macs:.3f} |")
        lines += ["", f"CSA layers take {r['csa_time_share']:.0%} of the original's time; if each converted "
                  f"layer's time shrank exactly with its MACs the model would save {ideal:.1%} of its time, "
                  f"{ideal / r['macs_total_saved']:.0%} of the MACs saved (measured: "
                  f"{1 - r['ratio_of_minima']:.1%} minima, {1 - r['median_ratio']:.1%} median)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["restormer"])
    parser.add_argument("--sizes", nargs="+", help="N or HxW (default per model: Restormer 128 256 512, "
                        "MST++ 482x512, MST-L 256)")
    parser.add_argument("--plans", nargs="+", default=["ratio:0.5", "target-macs:0.88"],
                        help="ratio:R, target-macs:F or energy:E")
    parser.add_argument("--checkpoint", help="time this checkpoint instead of random weights (one model)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="run both models in bfloat16")
    parser.add_argument("--layers", action="store_true", help="also time every converted layer alone")
    parser.add_argument("--smoke", action="store_true", help="tiny models, small inputs, one repeat")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc's adaptive thresholds on (see the module docstring)")
    parser.add_argument("--json", help="write every row as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # smoke runs (tests) leave the process's allocator alone
    tuned = not (args.default_malloc or args.smoke) and tune_allocator()
    allocator = "fixed thresholds" if tuned else "default"
    if args.smoke:
        args.repeats, args.warmup = 1, 0
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and args.device == "cpu" and not args.smoke:
        print("warning: OMP_WAIT_POLICY is not PASSIVE; on a shared CPU spinning threads distort timings",
              file=sys.stderr)
    rows = []
    for model_name in args.models:
        teacher = glmha.load(args.checkpoint) if args.checkpoint else random_teacher(model_name, args.smoke)
        teacher.eval()
        sizes = args.sizes or (["32"] if args.smoke else DEFAULT_SIZES[model_name])
        students: dict[str, tuple[RestorationModel, Any]] = {}
        for size_text in sizes:
            size = parse_size(size_text)
            for plan_text in args.plans:
                rows.append(run_case(model_name, teacher, size, plan_text, args, students))
                r = rows[-1]
                print(f"{model_name} {r['size']} {plan_text}: MACs (b) -{r['macs_total_saved']:.2%}, time "
                      f"{r['ratio_of_minima']:.3f} (minima) / {r['median_ratio']:.3f} (median ratio)", flush=True)
    table = markdown(rows)
    print("\n" + table)
    if args.json:
        payload = {"torch": torch.__version__, "threads": args.threads, "device": args.device, "malloc": allocator,
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "markdown": table}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
