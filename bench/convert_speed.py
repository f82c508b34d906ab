"""Speed and memory of `glmha-convert` on the full-size default Restormer (26.1 M parameters).

Each run is a fresh child process: it imports glmha, records its resident set size (RSS), runs the
CLI's main() in-process (load, analyse, plan, convert, export) and reports the wall time and the
RSS peak above the post-import baseline. Figures are compared with the checkpoint size, per the
target: under 5 s and under 3x the checkpoint size.

    python bench/convert_speed.py [--runs 3] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _child(checkpoint: str, argv: list[str], queue) -> None:
    import torch  # noqa: F401  (imports count towards the baseline, not the conversion)

    from glmha.cli.convert import main

    baseline_kib = _current_rss_kib()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([checkpoint, *argv])
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"code": code, "seconds": elapsed, "baseline_mib": baseline_kib / 1024,
               "peak_above_baseline_mib": (peak_kib - baseline_kib) / 1024})


def _current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5, help="--ratio passed to glmha-convert")
    args = parser.parse_args(argv)

    import torch

    from glmha.archs import Restormer

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "restormer_default.pth"
        torch.manual_seed(0)
        torch.save({"params": Restormer().state_dict()}, checkpoint)
        size_mib = checkpoint.stat().st_size / 2**20
        convert_argv = ["--ratio", str(args.ratio), "--force", "-o", str(Path(folder) / "out.safetensors")]
        context = multiprocessing.get_context("spawn")
        results = []
        for _ in range(args.runs):
            queue = context.Queue()
            process = context.Process(target=_child, args=(str(checkpoint), convert_argv, queue))
            process.start()
            results.append(queue.get())
            process.join()
        out_mib = (Path(folder) / "out.safetensors").stat().st_size / 2**20
    seconds = [r["seconds"] for r in results]
    peaks = [r["peak_above_baseline_mib"] for r in results]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores",
        "torch": torch.__version__,
        "checkpoint_mib": round(size_mib, 1),
        "output_mib": round(out_mib, 1),
        "seconds_median": round(statistics.median(seconds), 2),
        "seconds_all": [round(s, 2) for s in seconds],
        "peak_rss_above_baseline_mib_max": round(max(peaks), 1),
        "peak_over_checkpoint": round(max(peaks) / size_mib, 2),
        "import_baseline_mib": round(results[0]["baseline_mib"], 1),
    }
    print(json.dumps(summary, indent=2))
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
