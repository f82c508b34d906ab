"""`glmha-restore MODEL INPUT... -o OUTDIR`: run a model glmha loads on files or folders.

    glmha-restore checkpoints/restormer_denoise_s25.pth noisy/ -o restored/
    glmha-restore student.glmha.safetensors big.tif -o out/ --tile 256 --overlap 32 --precision bf16
    glmha-restore model.pth noisy/ -o out/ --gt clean/          # PSNR/SSIM per file and the mean
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from glmha.cli import run_command
from glmha.errors import GlmhaError

PROG = "glmha-restore"
METRICS_FILE = "metrics.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Apply a model (an official checkpoint of a supported family, or a glmha export) to image "
        "files (PNG/JPEG/TIFF, 8 or 16 bit) or, for spectral models, RGB images or CASSI scenes (.mat). Inputs "
        "are padded to the model's multiple and cropped back; outputs keep the input's name, bit depth and "
        "container (JPEG is written as PNG; spectral cubes as MATLAB v7.3 .mat). Inputs are never overwritten.",
    )
    parser.add_argument("model", help="checkpoint (.pth/.safetensors) or glmha export")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, or folders whose files are read")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the outputs")
    parser.add_argument("--tile", type=int, metavar="N", help="process in N x N tiles (a multiple of the "
                        "model's size multiple): memory stays that of one tile however large the image")
    parser.add_argument("--overlap", type=int, default=32, metavar="M",
                        help="pixels shared by neighbouring tiles, cross-faded without seams (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="autocast precision (default fp32; bf16/fp16 pay off on GPUs, rarely on CPUs)")
    parser.add_argument("--gt", type=Path, metavar="DIR", help="ground truth with the inputs' names: prints "
                        "PSNR/SSIM (spectra: MRAE/RMSE/PSNR/SAM) per file and the mean, writes OUTDIR/metrics.csv")
    parser.add_argument("--mask", type=Path, help="CASSI coded aperture (.mat, key 'mask') for CASSI models")
    parser.add_argument("--family", help="force the model family instead of detecting it")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    existing.add_argument("--skip-existing", action="store_true",
                          help="keep outputs that already exist (resume an interrupted run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kept = "interrupted; the files written so far are complete (rerun with --skip-existing)"
    return run_command(PROG, lambda: _run(args), interrupted=kept)


def _run(args: argparse.Namespace) -> int:
    import glmha
    from glmha.io_utils import atomic_write_text, create_folder
    from glmha.restore.jobs import mean_scores, plan_jobs, run_jobs
    from glmha.restore.kinds import file_kind
    from glmha.restore.runner import Restorer
    from glmha.restore.tiling import TileSettings
    from glmha.runtime import choose_device

    device = choose_device(args.device)
    if device.type == "cpu":
        from glmha.runtime import tune_allocator

        tune_allocator()  # feature maps reused, not unmapped and faulted in again per layer (bench/allocator.py)
    tiles = TileSettings(args.tile, args.overlap) if args.tile is not None else None
    model = glmha.load(args.model, family=args.family)
    kind = file_kind(model, mask=args.mask)
    if tiles is not None and not kind.tileable:
        raise GlmhaError(f"--tile is for image models; {model.title} takes fixed-size CASSI measurements")
    existing = "overwrite" if args.overwrite else "skip" if args.skip_existing else "error"
    outdir = Path(args.output)
    jobs = plan_jobs(args.inputs, outdir, kind, truth=args.gt, existing=existing)
    restorer = Restorer(model, device, args.precision, tiles)
    if device.type == "cpu" and args.precision != "fp32":
        print(f"note: --precision {args.precision} on a CPU without native support is usually much slower than "
              f"fp32 (bench/RESULTS.md measured 11-17x); it is meant for GPUs", file=sys.stderr)
    create_folder(outdir, what="-o")
    where = f"{device}, {args.precision}" + (f", tiles {tiles.tile} overlap {tiles.overlap}" if tiles else "")
    what = "converted (GLMHA)" if model.record.converted else "original"
    print(f"{model.title}, {what}, on {len(jobs)} file(s) [{where}] -> {outdir}")
    progress = _progress(len(jobs), enabled=not args.no_progress)

    def report(result) -> None:
        timing = "kept (exists)" if result.seconds is None else f"{result.seconds:.2f} s"
        scores = "  ".join(f"{name.upper()} {_number(value)}" for name, value in result.scores.items())
        progress.write(f"{result.job.source.name} -> {result.job.output.name}  {timing}  {scores}".rstrip())
        progress.update(1)

    def tile_done(done: int, total: int) -> None:
        progress.set_postfix_str(f"tile {done}/{total}")

    try:
        results = run_jobs(jobs, kind, restorer, on_result=report, on_tile=tile_done)
    finally:
        progress.close()
    timed = [r.seconds for r in results if r.seconds is not None]
    if timed:
        print(f"{len(timed)} file(s) restored in {sum(timed):.2f} s ({len(timed) / sum(timed):.3g} files/s)")
    if args.gt is not None and results:
        means = mean_scores(results)
        print("mean  " + "  ".join(f"{name.upper()} {_number(value)}" for name, value in means.items()))
        atomic_write_text(outdir / METRICS_FILE, _metrics_csv(results, means))
        print(f"written: {outdir / METRICS_FILE}")
    return 0


def _number(value: float) -> str:
    return f"{value:.4f}"


def _metrics_csv(results, means: dict[str, float]) -> str:
    names = list(means)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "output", "truth", *names])
    for result in results:
        writer.writerow([result.job.source.name, result.job.output.name, result.job.truth.name,
                         *(repr(result.scores[n]) for n in names)])
    writer.writerow(["mean", "", "", *(repr(means[n]) for n in names)])
    return buffer.getvalue()


def _progress(total: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", disable=not enabled or None, dynamic_ncols=True, leave=False)


if __name__ == "__main__":
    sys.exit(main())
