"""How fast and how lean is restoring large images: original against converted, whole against tiled,
PyTorch against ONNX Runtime.

Each row is one model pair (the shipped teacher and its converted student) at one image size and mode:
`whole` (one pass over the padded image) or `tiled` (glmha-restore's --tile/--overlap). Both models run
interleaved in one process (original, converted, converted, original, ...) through the same
`glmha.restore.runner.Restorer` that glmha-restore uses; reported are images per second from the median
time of each, the median of the per-pair time ratios, and the peak memory of one pass: on CPU the largest
total of live tensor bytes the pass creates (`glmha.restore.memory.PeakTensorMemory`, deterministic), on
CUDA `torch.cuda.max_memory_allocated`. With `--onnx`, each model is also exported to ONNX with dynamic
sizes (glmha-export's code) and ONNX Runtime (CPU) is timed against PyTorch on the same inputs, interleaved.

    OMP_WAIT_POLICY=PASSIVE python bench/restore.py --models restormer_denoise_s25 --sizes 512 1024 \
        --repeats 3 --json bench/restore/restormer.json
    OMP_WAIT_POLICY=PASSIVE python bench/restore.py --onnx --modes whole tiled --sizes 512 --json x.json
    python bench/restore.py --device cuda --precision bf16 ...      # when a GPU is there
    python bench/restore.py --smoke                                   # tiny models: checks the script runs

Students: `--student NAME=PATH` (e.g. the README job's distilled export), else converted here with the
model's default budget (the same plan glmha-convert makes; timing does not depend on the weights).
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
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import glmha
from glmha.archs import RestorationModel
from glmha.restore.memory import PeakTensorMemory, mebibytes
from glmha.restore.runner import Restorer
from glmha.restore.tiling import TileSettings
from glmha.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]
MODELS: dict[str, tuple[str, float]] = {  # name -> (shipped checkpoint, default budget: MACs (b) kept)
    "restormer_denoise_s25": ("checkpoints/restormer_denoise_s25.pth", 0.88),  # the README job's plan
    "mst_plus_plus_synthetic": ("checkpoints/mst_plus_plus_synthetic.pth", 0.96),  # its compare recipe
    "retinexformer_lowlight": ("checkpoints/retinexformer_lowlight.pth", 0.95),  # the LOL recipe's budget
}


def build_pair(name: str, student_path: str | None, smoke: bool) -> tuple[RestorationModel, RestorationModel, str]:
    checkpoint, budget = MODELS[name]
    teacher = glmha.load(ROOT / checkpoint)
    if student_path:
        return teacher, glmha.load(student_path), Path(student_path).name
    options: dict[str, Any] = {"target_macs": budget}
    if smoke:
        options["inputs"] = [teacher.calibration_samples(32, 1)]
    with contextlib.redirect_stderr(io.StringIO()):
        student, _ = glmha.convert_to_glmha(teacher, progress=False, **options)
    return teacher, student.eval(), f"converted here, target-macs {budget}"


def image(model: RestorationModel, side: int) -> tuple[torch.Tensor]:
    """A seeded image of the model's input channels in [0, 1] (speed and memory do not depend on content)."""
    return (torch.rand(1, model.input_channels, side, side, generator=torch.Generator().manual_seed(side)),)


def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int,
                sync: Callable[[], None]) -> tuple[list[float], list[float]]:
    """Times of both callables over `repeats` rounds, alternating which goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(repeats):
        for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (first if which == 0 else second)()
            sync()
            times[which].append(time.perf_counter() - start)
    return times


def peak_memory(restorer: Restorer, inputs: tuple[torch.Tensor, ...]) -> int:
    """Bytes at the peak of one pass: live tensors created by it (CPU) or the device's peak (CUDA)."""
    if restorer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(restorer.device)
        before = torch.cuda.memory_allocated(restorer.device)
        restorer(inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(restorer.device) - before
    weights = [*restorer.model.parameters(), *restorer.model.buffers(), *inputs]
    with PeakTensorMemory(ignore=weights) as memory:
        restorer(inputs)
    return memory.peak


def compare_models(name: str, teacher: RestorationModel, student: RestorationModel, side: int, mode: str,
                   args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    tiles = TileSettings(args.tile, args.overlap) if mode == "tiled" else None
    runners = [Restorer(model, device, args.precision, tiles) for model in (teacher, student)]
    inputs = image(teacher, side)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for runner in runners:  # warm-up: first-call allocations and kernel selection
        runner(inputs)
    times = interleaved(lambda: runners[0](inputs), lambda: runners[1](inputs), args.repeats, sync)
    peaks = [peak_memory(runner, inputs) for runner in runners]
    medians = [statistics.median(t) for t in times]
    return {"model": name, "size": side, "mode": mode, "tile": args.tile if tiles else None,
            "overlap": args.overlap if tiles else None, "device": args.device, "precision": args.precision,
            "threads": torch.get_num_threads(), "original_s": times[0], "converted_s": times[1],
            "original_images_per_s": 1 / medians[0], "converted_images_per_s": 1 / medians[1],
            "median_pair_ratio": statistics.median(b / a for a, b in zip(*times, strict=True)),
            "original_peak_mib": mebibytes(peaks[0]), "converted_peak_mib": mebibytes(peaks[1])}


def compare_onnx(name: str, model: RestorationModel, role: str, side: int, mode: str, folder: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime (CPU) against PyTorch (CPU, fp32) for one model, both through glmha-restore's padding and
    tiling, interleaved."""
    from glmha.deploy.export import export_onnx, onnx_session

    path = folder / f"{name}-{role}.onnx"
    if not path.exists():
        started = time.perf_counter()
        export_onnx(model, path)
        print(f"  exported {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name

    def through_onnx(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.contiguous().numpy()})[0])

    tiles = TileSettings(args.tile, args.overlap) if mode == "tiled" else None
    torch_runner = Restorer(model, torch.device("cpu"), "fp32", tiles)
    onnx_runner = Restorer(model, torch.device("cpu"), "fp32", tiles)
    onnx_runner.model = _Forward(through_onnx, model)  # the same padding and tiling around the ONNX graph
    inputs = image(model, side)
    difference = float((torch_runner(inputs) - onnx_runner(inputs)).abs().max())  # also the warm-up
    times = interleaved(lambda: torch_runner(inputs), lambda: onnx_runner(inputs), args.repeats, lambda: None)
    medians = [statistics.median(t) for t in times]
    return {"model": name, "role": role, "size": side, "mode": mode, "threads": torch.get_num_threads(),
            "pytorch_s": times[0], "onnxruntime_s": times[1], "pytorch_images_per_s": 1 / medians[0],
            "onnxruntime_images_per_s": 1 / medians[1],
            "median_pair_ratio": statistics.median(b / a for a, b in zip(*times, strict=True)),
            "max_abs_difference": difference}


class _Forward(torch.nn.Module):
    """An ONNX Runtime session dressed as the model for Restorer: same size rules, forward through the session."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], model: RestorationModel) -> None:
        super().__init__()
        self._forward = forward
        self.size_multiple = model.export_sizes.multiple  # what the exported graph takes (converted: larger)
        self.title = model.title
        self.check_input_size = model.check_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def markdown(rows: list[dict[str, Any]], onnx_rows: list[dict[str, Any]]) -> str:
    lines = []
    if rows:
        lines += ["| model | image | mode | device, precision | original images/s | converted images/s | "
                  "median time ratio | peak memory original -> converted |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mode = f"tiled {r['tile']}/{r['overlap']}" if r["mode"] == "tiled" else "whole"
            lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {mode} | {r['device']}, {r['precision']} | "
                         f"{r['original_images_per_s']:.3g} | {r['converted_images_per_s']:.3g} | "
                         f"{r['median_pair_ratio']:.3f} | {r['original_peak_mib']:.0f} -> "
                         f"{r['converted_peak_mib']:.0f} MiB |")
    if onnx_rows:
        lines += ["", "| model | which | image | mode | PyTorch images/s | ONNX Runtime images/s | "
                  "median time ratio (ORT / PyTorch) | max abs difference |", "|---|---|---|---|---|---|---|---|"]
        for r in onnx_rows:
            lines.append(f"| {r['model']} | {r['role']} | {r['size']}x{r['size']} | {r['mode']} | "
                         f"{r['pytorch_images_per_s']:.3g} | {r['onnxruntime_images_per_s']:.3g} | "
                         f"{r['median_pair_ratio']:.3f} | {r['max_abs_difference']:.1e} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--student", action="append", default=[], metavar="NAME=PATH",
                        help="use this export as NAME's converted model (e.g. the README job's distilled student)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--modes", nargs="+", default=["whole", "tiled"], choices=("whole", "tiled"))
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--onnx", action="store_true", help="ONNX Runtime against PyTorch instead (CPU, fp32)")
    parser.add_argument("--smoke", action="store_true", help="one tiny image, one repeat: checks the script runs")
    parser.add_argument("--json", help="write every row as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tuned = not args.smoke and args.device == "cpu" and tune_allocator()
    if args.smoke:
        args.sizes, args.repeats, args.tile, args.overlap = [48], 1, 32, 8
    students = dict(item.split("=", 1) for item in args.student)
    rows: list[dict[str, Any]] = []
    onnx_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            teacher, student, origin = build_pair(name, students.get(name), args.smoke)
            print(f"{name}: student {origin}", flush=True)
            for side in args.sizes:
                for mode in args.modes:
                    if args.onnx:
                        onnx_rows += [compare_onnx(name, model, role, side, mode, Path(scratch), args)
                                      for role, model in (("original", teacher), ("converted", student))]
                    else:
                        rows.append(compare_models(name, teacher, student, side, mode, args))
                    print(markdown(rows[-1:], onnx_rows[-2:]).splitlines()[-1], flush=True)
    table = markdown(rows, onnx_rows)
    print("\n" + table)
    if args.json:
        payload = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
                   "malloc": "fixed thresholds" if tuned else "default",
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "onnx_rows": onnx_rows,
                   "markdown": table}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
