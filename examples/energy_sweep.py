"""Sweep the spectrum-energy threshold on the shipped teacher: cost against quality, and the spectra.

Why: `--energy` is the one knob of a conversion, and what it buys depends on the model. This script
shows the trade-off on `checkpoints/restormer_denoise_s25.pth` (a small Restormer for sigma-25
colour denoising): for each energy it converts the teacher (data-free spectra, `select` init),
counts MACs under both conventions at 256x256 and measures PSNR against the clean images on the
three held-out sample photographs (centre 256x256 crops, fixed sigma-25 noise) right after
conversion. With `--distil-steps N` every student is also distilled for N steps by the engine
(glmha.distill) and measured again. It also draws glmha's cumulative spectrum-energy plots, one
set per energy (the curves are the same; the threshold line and the chosen widths move).

    OMP_WAIT_POLICY=PASSIVE python examples/energy_sweep.py [--energies 0.6 0.7 0.8 0.9 0.95 1.0]
        [--distil-steps 0] [--out runs/energy_sweep]

Writes, under --out: `psnr_vs_macs.png`, `psnr_vs_macs.json`, `spectra/energy_<e>/energy_level_*.png`
and, with --distil-steps, one distillation run per energy in `distill/energy_<e>/`.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads waiting for a
# descheduled peer make every step many times slower. Read when torch loads, so set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import glmha
import glmha.distill
from glmha.convert.plot import plot_spectra
from glmha.data.held_out import NOISE_SEED, SIGMA, Pair, held_out_pairs, held_out_psnr
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "checkpoints" / "restormer_denoise_s25.pth"
ENERGIES = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
NOISE = {"type": "gaussian_noise", "sigma": SIGMA}
COUNT_SIZE = (256, 256)  # input size of the MAC counts


def point(model: glmha.RestorationModel, pairs: list[Pair]) -> dict[str, Any]:
    """Cost (at COUNT_SIZE) and quality of one model."""
    report = glmha.describe(model, *COUNT_SIZE)
    scores = held_out_psnr(model, pairs)
    return {"params": report.params, "macs_linear": report.macs_linear, "macs_total": report.macs_total,
            "psnr": scores, "psnr_mean": sum(scores) / len(scores)}


def distill_recipe(teacher: Path, energy: float, steps: int, run_dir: Path) -> dict[str, Any]:
    """The engine converts the teacher itself with the same settings as the sweep (energy, data-free
    operator spectrum, select init). Validation, which picks the exported student, uses one training
    photograph so the held-out photographs stay unseen."""
    return {
        "version": 1,
        "teacher": str(teacher),
        "student": {"energy": energy},
        "data": {"train": {"samples": "train", "degrade": NOISE}, "val": {"samples": "train", "degrade": NOISE},
                 "patch_size": 48, "batch_size": 4, "val_limit": 1, "val_crop": 128},
        "train": {"steps": steps, "lr": 2e-3, "min_lr": 1e-5, "max_grad_norm": 1.0, "seed": 0,
                  "checkpoint_every": steps, "keep_checkpoints": 1, "device": "cpu"},
        "loss": {"output": 1.0, "features": 0.1, "gt": 1.0, "distance": "l1"},
        "eval": {"every": steps, "input_size": list(COUNT_SIZE)},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def distil(teacher_path: Path, energy: float, steps: int, run_dir: Path, pairs: list[Pair]) -> dict[str, Any]:
    """Distil with the engine (always from scratch) and measure the exported best student. The engine's
    own messages and final table are not printed (one table per energy would bury the sweep's); the
    table is in the run folder's report.md."""
    recipe = glmha.distill.parse_recipe(distill_recipe(teacher_path, energy, steps, run_dir))
    engine = glmha.distill.Distillation(recipe, restart=True, progress=False, say=lambda _text: None)
    result = engine.run()
    student = glmha.load(result.run_dir / "student.safetensors")
    return {**point(student, pairs), "steps": steps, "best_step": result.best_step,
            "run_dir": str(result.run_dir)}


def plot_curve(result: dict[str, Any], path: Path) -> None:
    """PSNR against MACs (b): the converted students, the distilled ones if any, the teacher as a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(figure)  # the Agg backend, without pyplot's global state
    axes = figure.add_subplot()
    points = result["points"]
    curves = [("converted", "after conversion", "tab:blue", "o")]
    if any(p["distilled"] is not None for p in points):
        curves.append(("distilled", f"after {result['distil_steps']} distillation steps", "tab:orange", "s"))
    for key, label, colour, marker in curves:
        shown = [(p["energy"], p if key == "converted" else p["distilled"]) for p in points]
        shown = [(energy, values) for energy, values in shown if values is not None]
        xs = [values["macs_total"] / 1e9 for _, values in shown]
        ys = [values["psnr_mean"] for _, values in shown]
        axes.plot(xs, ys, color=colour, marker=marker, linewidth=1.5, label=label)
        for (energy, _), x, y in zip(shown, xs, ys, strict=True):
            axes.annotate(f"{energy:g}", (x, y), textcoords="offset points", xytext=(5, -12 if key == "converted"
                          else 6), fontsize=8, color=colour)
    teacher = result["teacher"]
    axes.plot([teacher["macs_total"] / 1e9], [teacher["psnr_mean"]], marker="*", markersize=15, color="black",
              linestyle="none", label="teacher (CSA)", zorder=5)
    axes.grid(True, alpha=0.3)
    axes.set_xlabel(f"MACs (b) at {COUNT_SIZE[0]}x{COUNT_SIZE[1]}, G (with attention products)")
    axes.set_ylabel(f"PSNR vs clean, dB (mean of {len(result['images'])} held-out crops)")
    axes.set_title(f"GLMHA energy sweep: {Path(result['checkpoint']).name}, sigma {SIGMA:g}, "
                   f"labels = energy", fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        figure.clear()


def format_table(result: dict[str, Any]) -> str:
    teacher = result["teacher"]
    distilled = any(p["distilled"] is not None for p in result["points"])
    header = ["model", "layers", "params", "MACs (a)", "MACs (b)", "MACs (b) saved", "PSNR", "vs teacher"]
    if distilled:
        header += ["distilled", "vs teacher"]
    rows = [header]

    def cells(name: str, layers: str, values: dict[str, Any]) -> list[str]:
        saved = 1.0 - values["macs_total"] / teacher["macs_total"]
        return [name, layers, f"{values['params']:,}", f"{values['macs_linear'] / 1e9:.3f} G",
                f"{values['macs_total'] / 1e9:.3f} G", f"{100 * saved:.2f} %", f"{values['psnr_mean']:.2f}",
                f"{values['psnr_mean'] - teacher['psnr_mean']:+.2f}"]

    rows.append(cells("teacher", "-", teacher) + (["-", "-"] if distilled else []))
    for p in result["points"]:
        row = cells(f"energy {p['energy']:g}", f"{p['converted_layers']}/{p['csa_layers']}", p)
        if distilled:
            d = p["distilled"]
            row += ["-", "-"] if d is None else [f"{d['psnr_mean']:.2f}",
                                                 f"{d['psnr_mean'] - teacher['psnr_mean']:+.2f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                                          strict=True)]))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert the shipped teacher at several spectrum energies; plot PSNR against MACs and "
        "the cumulative spectrum energy of every layer.",
    )
    parser.add_argument("--out", default="runs/energy_sweep", help="output folder (default runs/energy_sweep)")
    parser.add_argument("--energies", type=float, nargs="+", default=list(ENERGIES), metavar="E",
                        help=f"energies in (0, 1] (default {' '.join(f'{e:g}' for e in ENERGIES)})")
    parser.add_argument("--distil-steps", type=int, default=0, metavar="N",
                        help="also distil each student for N steps and plot that curve (default 0: off)")
    parser.add_argument("--checkpoint", default=str(TEACHER), help="teacher checkpoint (default: the shipped one)")
    parser.add_argument("--crop", type=int, default=256,
                        help="centre crop of the held-out photos, a multiple of 8 (default 256)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        bad = [e for e in args.energies if not 0.0 < e <= 1.0]
        if bad:
            raise GlmhaError(f"--energies must lie in (0, 1], got {' '.join(f'{e:g}' for e in bad)}")
        if args.distil_steps < 0:
            raise GlmhaError(f"--distil-steps must be >= 0, got {args.distil_steps}")
        return _run(args)
    except GlmhaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    energies = sorted(set(args.energies))
    teacher_path = Path(args.checkpoint)
    teacher = glmha.load(teacher_path)
    teacher.check_input_size(args.crop, args.crop)
    pairs = held_out_pairs(args.crop)
    spectra = glmha.analyse(teacher)  # data-free: computed once, every energy reads it

    result: dict[str, Any] = {
        "checkpoint": str(teacher_path), "crop": args.crop, "sigma": SIGMA, "noise_seeds": NOISE_SEED,
        "images": [name for name, _, _ in pairs], "count_size": list(COUNT_SIZE), "init": "select",
        "spectrum": "operator", "distil_steps": args.distil_steps, "teacher": point(teacher, pairs), "points": [],
    }
    for energy in energies:
        plan = glmha.plan_conversion(teacher, spectra, energy=energy, input_size=COUNT_SIZE)
        plots = plot_spectra(spectra, plan, out / "spectra" / f"energy_{energy:g}")
        student = glmha.convert_model(teacher, plan, spectra)
        entry = {"energy": energy, "converted_layers": len(plan.converted), "csa_layers": len(plan.layers),
                 **point(student, pairs), "plots": [str(p) for p in plots], "distilled": None}
        if args.distil_steps > 0 and plan.converted:
            entry["distilled"] = distil(teacher_path, energy, args.distil_steps,
                                        out / "distill" / f"energy_{energy:g}", pairs)
        elif args.distil_steps > 0:  # nothing converted: the student is the teacher, nothing to train
            entry["distilled"] = {key: entry[key] for key in ("params", "macs_linear", "macs_total", "psnr",
                                                              "psnr_mean")} | {"steps": 0, "best_step": None}
        result["points"].append(entry)
        print(f"energy {energy:g}: {entry['converted_layers']}/{entry['csa_layers']} layers converted, "
              f"MACs (b) {entry['macs_total'] / 1e9:.3f} G, PSNR {entry['psnr_mean']:.2f} dB"
              + (f", distilled {entry['distilled']['psnr_mean']:.2f} dB" if entry["distilled"] else ""),
              flush=True)

    plot_curve(result, out / "psnr_vs_macs.png")
    atomic_write_text(out / "psnr_vs_macs.json", json.dumps(result, indent=2) + "\n")
    print(f"\nPSNR (dB) vs clean, mean of {len(pairs)} held-out {args.crop}x{args.crop} crops (sigma {SIGMA:g}, "
          f"seeds {NOISE_SEED}..{NOISE_SEED + len(pairs) - 1}); MACs at {COUNT_SIZE[0]}x{COUNT_SIZE[1]}: "
          f"(a) convolutions and linear layers, (b) with attention products\n")
    print(format_table(result))
    print(f"\nwrote {out / 'psnr_vs_macs.png'}, {out / 'psnr_vs_macs.json'} and the spectrum plots in "
          f"{out / 'spectra'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
