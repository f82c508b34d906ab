"""Does the memory allocator, not the conversion, change the time of the layers a conversion leaves alone?

Original and converted models run interleaved in one process (as in bench/latency.py); every part of
the blocks that hold the CSA layers (norms, feed-forward, attention) is timed inside the whole-model
passes and summed per class. A conversion changes only the attention layers, so any other class
running at a different speed in the two models is the process's memory behaviour, not the maths:
glibc malloc adapts its mmap threshold to the sizes it has seen, and the two models allocate
different sizes. Run it with `--malloc default` and `--malloc fixed` (bench/latency.py's default).

    OMP_WAIT_POLICY=PASSIVE python bench/allocator.py --malloc default
    OMP_WAIT_POLICY=PASSIVE python bench/allocator.py --malloc fixed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import MODELS, build_student, interleaved, parse_size, random_teacher

from glmha.runtime import tune_allocator


def block_parts(model: torch.nn.Module) -> dict[str, str]:
    """Module name -> class name for every child of a module that holds a CSA layer directly."""
    csa = {name for name, _ in model.csa_layers()}
    blocks = {name.rpartition(".")[0] for name in csa}
    return {name: "attention (CSA or GLMHA)" if name in csa else type(module).__name__
            for name, module in model.named_modules() if name.rpartition(".")[0] in blocks and name not in blocks}


class PartClock:
    def __init__(self, model: torch.nn.Module) -> None:
        self.times: dict[str, list[float]] = {}
        self._started: dict[str, float] = {}
        modules = dict(model.named_modules())
        self.kinds = block_parts(model)
        for name in self.kinds:
            modules[name].register_forward_pre_hook(lambda m, a, n=name: self._start(n))
            modules[name].register_forward_hook(lambda m, a, o, n=name: self._stop(n))

    def _start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self.times.setdefault(name, []).append(time.perf_counter() - self._started[name])

    def per_kind(self) -> dict[str, float]:
        """Sum over the modules of each class of each module's minimum time."""
        sums: dict[str, float] = {}
        for name, kind in self.kinds.items():
            sums[kind] = sums.get(kind, 0.0) + min(self.times[name])
        return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="restormer")
    parser.add_argument("--size", default="128", help="N or HxW")
    parser.add_argument("--plan", default="ratio:0.5", help="ratio:R, target-macs:F or energy:E")
    parser.add_argument("--malloc", choices=("default", "fixed"), required=True)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 32x32, one pair: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats = "32", 1
    torch.set_num_threads(args.threads)
    if args.malloc == "fixed" and not tune_allocator():
        print("not glibc: --malloc fixed has no effect here", file=sys.stderr)
    size = parse_size(args.size)
    teacher = random_teacher(args.model, args.smoke)
    student, _ = build_student(teacher, args.plan, size, 32 if args.smoke else None)
    inputs = [torch.rand(t.shape, generator=torch.Generator().manual_seed(0))
              for t in teacher.example_inputs(*size)]
    clocks = PartClock(teacher), PartClock(student)
    with torch.no_grad():
        for _ in range(0 if args.smoke else 2):
            teacher(*inputs), student(*inputs)
        timing = interleaved(lambda: teacher(*inputs), lambda: student(*inputs), args.repeats)
    before, after = clocks[0].per_kind(), clocks[1].per_kind()
    print(f"{args.model} {size[0]}x{size[1]} {args.plan}, malloc {args.malloc}, {args.repeats} interleaved pairs")
    print(f"whole model: {timing['teacher_min'] * 1000:.1f} -> {timing['student_min'] * 1000:.1f} ms (minima), "
          f"ratio {timing['ratio_of_minima']:.3f}, median of pair ratios {timing['median_ratio']:.3f}")
    print("| part (summed minima) | original | converted | ratio |\n|---|---|---|---|")
    for kind in sorted(set(before) | set(after), key=lambda k: -before.get(k, 0.0)):
        a, b = before.get(kind), after.get(kind)
        ratio = f"{b / a:.3f}" if a and b else "-"
        print(f"| {kind} | {a * 1000 if a else 0:.1f} ms | {b * 1000 if b else 0:.1f} ms | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
