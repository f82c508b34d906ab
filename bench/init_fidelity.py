"""Which initialisation of the reduced key/value generators starts closest to the teacher?

For a small Restormer trained for Gaussian colour denoising (sigma 25, checkpoints/), convert at
several energies (and uniform ratios) with each `--init`, and report, right after conversion and
before any distillation: the PSNR of the student's output against the teacher's output, the task
PSNR against the clean images, and the parameters and MACs saved (both conventions, 256x256).
Inputs are the held-out sample images (centre 256x256 crops) with fixed-seed noise. `refit` fits on
calibration inputs: the offline training photographs at 96x96 with sigma-25 noise (what this denoiser
sees, as a recipe calibrates on its training data; `--refit-calib noisy`, default) or without noise
(`clean`, what glmha-convert uses without --calib / --calib-noise), or both.

    python bench/init_fidelity.py [--teacher checkpoints/restormer_denoise_s25.pth] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import glmha
from glmha.convert.api import analyse, convert, plan
from glmha.data import add_gaussian_noise, seeded_generator, test_images
from glmha.metrics import psnr

DEFAULT_TEACHER = "checkpoints/restormer_denoise_s25.pth"


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    _, height, width = image.shape
    size_h, size_w = min(size, height // 8 * 8), min(size, width // 8 * 8)
    top, left = (height - size_h) // 2, (width - size_w) // 2
    return image[:, top:top + size_h, left:left + size_w]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER)
    parser.add_argument("--energies", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    parser.add_argument("--inits", nargs="+", default=["select", "merge", "refit", "svd", "random"])
    parser.add_argument("--refit-calib", choices=["noisy", "clean", "both"], default="both")
    parser.add_argument("--spectra", nargs="+", default=["operator"],
                        help="data-free spectrum modes to compare (glmha-convert --spectrum)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    teacher = glmha.load(args.teacher)
    images = [(name, centre_crop(image, args.crop)) for name, image in test_images()]
    clean = [image.unsqueeze(0) for _, image in images]
    noisy = [add_gaussian_noise(c, args.sigma, seeded_generator(args.seed + i)) for i, c in enumerate(clean)]
    with torch.no_grad():
        teacher_out = [teacher(x) for x in noisy]
    teacher_task = sum(psnr(t, c) for t, c in zip(teacher_out, clean, strict=True)) / len(clean)
    noisy_task = sum(psnr(x, c) for x, c in zip(noisy, clean, strict=True)) / len(clean)
    crops = teacher.calibration_samples(96, 8)[0]
    calibrations = {"noisy": [(add_gaussian_noise(crops, args.sigma, seeded_generator(7)),)], "clean": [(crops,)]}
    variants = [(init, None) for init in args.inits if init != "refit"]
    if "refit" in args.inits:
        kinds = ["noisy", "clean"] if args.refit_calib == "both" else [args.refit_calib]
        variants += [("refit", kind) for kind in kinds]
    rules = [("energy", e, mode) for mode in args.spectra for e in args.energies]
    rules += [("ratio", r, args.spectra[0]) for r in args.ratios]
    rows = []
    for kind, value, mode in rules:
        spectra = analyse(teacher, mode=mode)
        for init, calib in variants:
            options = {"energy": value} if kind == "energy" else {"ratio": value}
            conversion = plan(teacher, spectra, init=init, input_size=(256, 256), **options)
            start = time.perf_counter()
            student = convert(teacher, conversion, spectra, inputs=calibrations[calib] if calib else None)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                outputs = [student(x) for x in noisy]
            before, after = conversion.before, conversion.after
            rows.append({
                "rule": f"{kind} {value:g}", "spectrum": mode, "init": init + (f" ({calib} calibration)" if calib
                                                                                else ""),
                "converted": sum(layer.convert for layer in conversion.layers),
                "layers": len(conversion.layers),
                "kv_channels_kept": sum(layer.reduced_channels for layer in conversion.layers)
                / sum(layer.channels for layer in conversion.layers),
                "params_saved": before["params"] - after["params"],
                "macs_linear_saved_pct": _saved(before, after, "macs_linear"),
                "macs_total_saved_pct": _saved(before, after, "macs_total"),
                "psnr_vs_teacher": sum(psnr(o, t) for o, t in zip(outputs, teacher_out, strict=True)) / len(clean),
                "psnr_vs_clean": sum(psnr(o, c) for o, c in zip(outputs, clean, strict=True)) / len(clean),
                "convert_seconds": seconds,
            })
            print(_row(rows[-1]), flush=True)
    print(f"\nteacher {args.teacher}: task PSNR {teacher_task:.2f} dB (noisy input {noisy_task:.2f} dB), "
          f"{len(clean)} held-out images ({', '.join(n for n, _ in images)}), centre crops <= {args.crop}")
    print("\n| rule | spectrum | init | layers converted | K/V channels kept | params saved | MACs (a) saved | "
          "MACs (b) saved | PSNR vs teacher | PSNR vs clean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"teacher": args.teacher, "teacher_psnr": teacher_task, "noisy_psnr": noisy_task,
                       "rows": rows}, handle, indent=2)
    return 0


def _saved(before: dict, after: dict, key: str) -> float:
    return 100 * (before[key] - after[key]) / before[key]


def _row(row: dict) -> str:
    return (f"| {row['rule']} | {row['spectrum']} | {row['init']} | {row['converted']}/{row['layers']} | "
            f"{100 * row['kv_channels_kept']:.0f} % | {row['params_saved']:,} | "
            f"{row['macs_linear_saved_pct']:.2f} % | {row['macs_total_saved_pct']:.2f} % | "
            f"{row['psnr_vs_teacher']:.2f} dB | {row['psnr_vs_clean']:.2f} dB |")


if __name__ == "__main__":
    sys.exit(main())
