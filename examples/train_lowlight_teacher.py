"""Train the project's small Retinexformer teacher for low-light enhancement, on the CPU.

Why: the published Retinexformer weights (LOL_v1.pth, ...) sit on Google Drive / Baidu and LOL is a
separate download, so glmha makes a small low-light teacher it can ship and test with. Pairs are
synthetic: the offline scikit-image photographs (`glmha.data`) darkened on the fly by
`glmha.data.degrade.LowLightSpec` (exposure, gamma, shot + read noise, clipped). The script writes an
official-container checkpoint ({'params': state_dict}, loadable with `glmha.load`) plus a JSON card
with the full provenance and the held-out quality.

The training follows Options/RetinexFormer_LOL_v1.yml where a CPU allows it: Adam (betas 0.9/0.999, no
weight decay), L1 to the clean image, random flips/rotations. Scaled down: a smaller model (n_feat 16,
num_blocks [1, 1, 1] instead of 40, [1, 2, 2]), 64x64 patches instead of 128, hundreds of steps
instead of 150k, so the peak lr is raised from 2e-4 to 2e-3 with a short warm-up and one cosine (the
official schedule is two cosine cycles); gradients are clipped at norm 1 (official: 0.01, tuned for
150k steps); no mixup (official: mixup with identity, a regulariser for long runs).

    python examples/train_lowlight_teacher.py --out checkpoints/retinexformer_lowlight.pth

Everything random comes from seeded generators: model init (global seed), patch choice, crops and
flips (seed + 1), darkening and noise (seed + 2), evaluation (image i of the held-out set is darkened
with generator seed eval_seed + i). `evaluate_teacher` is importable so tests can recompute the card.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (see examples/train_teacher.py: spinning made training
# up to 15x slower on a shared 2-core machine). Set before torch loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from glmha.archs import Retinexformer
from glmha.data import COLOUR_IMAGES, TEST_IMAGES, TRAIN_IMAGES, load_sample, seeded_generator
from glmha.data.degrade import LowLightSpec, degrade
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write_text, check_writable_target
from glmha.metrics import psnr_per_image, ssim_per_image
from glmha.restore.tiling import crop_to, pad_to_multiple
from glmha.runtime import make_deterministic
from glmha.teacher_training import LossLog, cosine_lr, random_dihedral_crop, run_record, save_teacher

TEACHER_CONFIG: dict[str, Any] = dict(in_channels=3, out_channels=3, n_feat=16, stage=1, num_blocks=(1, 1, 1))
LOW_LIGHT = LowLightSpec()  # the defaults: exposure [0.05, 0.3], gamma [1.5, 2.5], shot and read noise
MULTIPLE = 4  # Retinexformer down-samples twice
COLOUR_WEIGHT = 2.0  # colour photographs are drawn twice as often as grey ones (the task is colour)
GREY_WEIGHT = 1.0
EVAL_SEED = 2024


# -- data -------------------------------------------------------------------------------------------


class PatchSampler:
    """Random clean training patches: image (weighted), crop position and one of the 8 flips/rotations.

    All draws come from one seeded generator, so the sequence of patches is fixed by the seed.
    """

    def __init__(self, names: Sequence[str], patch: int, generator: torch.Generator) -> None:
        self.names = list(names)
        self.images = [load_sample(name) for name in self.names]
        for name, image in zip(self.names, self.images, strict=True):
            if min(image.shape[-2:]) < patch:
                raise GlmhaError(f"training image '{name}' {tuple(image.shape)} is smaller than patch {patch}")
        self.weights = torch.tensor(
            [COLOUR_WEIGHT if name in COLOUR_IMAGES else GREY_WEIGHT for name in self.names], dtype=torch.float64,
        )
        self.patch = patch
        self.generator = generator

    def sample(self, batch: int) -> torch.Tensor:
        """A clean batch (batch, 3, patch, patch)."""
        picks = torch.multinomial(self.weights, batch, replacement=True, generator=self.generator)
        patches = [random_dihedral_crop(self.images[i], self.patch, self.generator) for i in picks.tolist()]
        return torch.stack(patches)  # batch x (3, p, p) -> (batch, 3, p, p)


def darken(clean: torch.Tensor, spec: LowLightSpec, generator: torch.Generator) -> torch.Tensor:
    """Each image of a (b, 3, h, w) batch darkened on its own (own exposure, gamma and noise), in order."""
    return torch.stack([degrade(spec, image, generator) for image in clean])  # b x (3, h, w) -> (b, 3, h, w)


# -- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def enhance(model: torch.nn.Module, low: torch.Tensor) -> torch.Tensor:
    """Run the model on a whole (b, 3, h, w) image: reflect-pad bottom/right to a multiple of 4 and crop
    back, as the official test script does."""
    padded, size = pad_to_multiple(low, MULTIPLE)
    return crop_to(model(padded), size)


def _scores(pred: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    return float(psnr_per_image(pred, clean)[0]), float(ssim_per_image(pred, clean)[0])


def evaluate_teacher(
    model: torch.nn.Module, names: Sequence[str] = TEST_IMAGES, spec: LowLightSpec = LOW_LIGHT,
    seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """PSNR/SSIM against the clean photograph of: the dark input, the teacher's output (clamped to
    [0, 1] as the official test script does), and the dark input times the oracle gain mean(clean) /
    mean(dark), clamped (a global exposure correction that knows the answer's brightness; the official
    `--GT_mean` option rescales outputs the same way). Image i of `names` is darkened with generator seed
    `seed + i`."""
    model.eval()
    rows = []
    for index, name in enumerate(names):
        clean = load_sample(name).unsqueeze(0)  # (3, h, w) -> (1, 3, h, w)
        low = degrade(spec, clean[0], seeded_generator(seed + index)).unsqueeze(0)  # (1, 3, h, w)
        restored = enhance(model, low).clamp(0.0, 1.0)
        scaled = (low * (clean.mean() / low.mean())).clamp(0.0, 1.0)
        (psnr_dark, ssim_dark), (psnr_teacher, ssim_teacher) = _scores(low, clean), _scores(restored, clean)
        psnr_scaled, ssim_scaled = _scores(scaled, clean)
        rows.append({
            "name": name, "height": clean.shape[-2], "width": clean.shape[-1], "seed": seed + index,
            "mean_dark": float(low.mean()), "mean_clean": float(clean.mean()),
            "psnr_dark": psnr_dark, "psnr_scaled": psnr_scaled, "psnr_teacher": psnr_teacher,
            "ssim_dark": ssim_dark, "ssim_scaled": ssim_scaled, "ssim_teacher": ssim_teacher,
        })
    metrics = ("psnr_dark", "psnr_scaled", "psnr_teacher", "ssim_dark", "ssim_scaled", "ssim_teacher")
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in metrics}
    return {"degradation": spec.to_dict(), "seed": seed, "output_clamped": True, "images": rows, "mean": mean}


# -- training ---------------------------------------------------------------------------------------


def train(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """The training loop; returns a short log (mean loss every `log_every` steps) for the card."""
    sampler = PatchSampler(TRAIN_IMAGES, args.patch, seeded_generator(args.seed + 1))
    light_generator = seeded_generator(args.seed + 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    model.train()
    log = LossLog(args.steps, args.log_every, label="L1")
    for step in range(args.steps):
        lr = cosine_lr(step, args.steps, args.lr, args.lr_min, warmup=args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean = sampler.sample(args.batch)
        loss = F.l1_loss(model(darken(clean, LOW_LIGHT, light_generator)), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        log.add(step, float(loss.detach()), lr)
    model.eval()
    return {"log": log.entries}


# -- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the small Retinexformer low-light teacher on the offline scikit-image photographs "
        "darkened by LowLightSpec and write the checkpoint plus its JSON card (same name, .json).",
    )
    parser.add_argument("--out", required=True, help="checkpoint path (.pth); the card goes next to it")
    parser.add_argument("--steps", type=int, default=700, help="optimiser steps (default 700)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, crops (+1) and darkening (+2)")
    parser.add_argument("--patch", type=int, default=64, help="square patch side, a multiple of 4 (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="patches per step (default 8, as the official)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3; official 2e-4)")
    parser.add_argument("--lr-min", type=float, default=1e-6, help="final learning rate of the cosine")
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                        help=f"held-out image i is darkened with seed EVAL_SEED + i (default {EVAL_SEED})")
    parser.add_argument("--log-every", type=int, default=50, help="print the mean loss every N steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.patch % MULTIPLE or args.patch < MULTIPLE:
            raise GlmhaError(f"--patch must be a positive multiple of {MULTIPLE}, got {args.patch}")
        if args.steps < 1 or args.batch < 1:
            raise GlmhaError("--steps and --batch must be >= 1")
        if not 0 <= args.warmup < args.steps:
            raise GlmhaError(f"--warmup must lie in [0, --steps), got {args.warmup}")
        out = check_writable_target(args.out, what="--out")
        card_path = out.with_suffix(".json")
    except GlmhaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    deterministic = make_deterministic(args.threads)
    torch.manual_seed(args.seed)
    model = Retinexformer(**TEACHER_CONFIG)

    started = time.perf_counter()
    history = train(model, args)
    train_seconds = time.perf_counter() - started
    evaluation = evaluate_teacher(model, TEST_IMAGES, LOW_LIGHT, args.eval_seed)
    wall_seconds = time.perf_counter() - started

    card = {
        **save_teacher(model, out, family="retinexformer", container_key="params"),
        "task": {"name": "low-light enhancement (synthetic under-exposure)",
                 "degradation": LOW_LIGHT.to_dict(),
                 "model": "dark = e * clean ** g; low = clip(dark + sqrt(shot * dark + (read / 255) ** 2) * n, "
                          "0, 1), n ~ N(0, 1); e, g, shot, read drawn uniformly per image "
                          "(glmha.data.degrade.LowLightSpec)"},
        "data": {
            "source": "scikit-image skimage.data sample photographs (offline), see glmha.data.sample_images",
            "train_images": list(TRAIN_IMAGES),
            "held_out_images": list(TEST_IMAGES),
            "sampling": f"image drawn with weight {COLOUR_WEIGHT} (colour) / {GREY_WEIGHT} (grey, stacked "
                        "to RGB), uniform crop position; each patch darkened on its own",
            "patch_size": args.patch,
            "batch_size": args.batch,
            "augmentation": "one of the 8 rotations/flips per patch",
            "crop_generator_seed": args.seed + 1,
            "darkening_generator_seed": args.seed + 2,
        },
        "training": {
            "steps": args.steps,
            "optimizer": {"name": "Adam", "betas": [0.9, 0.999], "weight_decay": 0.0},
            "lr": args.lr,
            "schedule": {"name": f"linear warm-up {args.warmup} steps, then cosine to lr_min",
                         "warmup_steps": args.warmup, "lr_min": args.lr_min},
            "grad_clip_norm": args.grad_clip,
            "loss": "l1 (official pixel_opt: L1Loss, weight 1)",
            "seed": args.seed,
            "threads": args.threads,
            "deterministic_algorithms": deterministic,
            "log": history["log"],
        },
        **run_record("train_lowlight_teacher.py", argv, train_seconds, wall_seconds),
        "evaluation": {
            "protocol": "whole held-out images, reflect-padded bottom/right to a multiple of 4 and cropped back; "
                        "image i darkened with generator seed eval_seed + i; teacher output clamped to [0, 1]; "
                        "'scaled' = dark input times mean(clean) / mean(dark), clamped (oracle global gain); "
                        "PSNR/SSIM on RGB in [0, 1] per glmha.metrics (SSIM: Gaussian 11/1.5, valid filtering)",
            **evaluation,
        },
    }
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    mean = evaluation["mean"]
    for row in evaluation["images"]:
        print(f"{row['name']:>12}: dark {row['psnr_dark']:6.2f} dB  oracle gain {row['psnr_scaled']:6.2f} dB  "
              f"teacher {row['psnr_teacher']:6.2f} dB  SSIM {row['ssim_dark']:.4f} / {row['ssim_scaled']:.4f} / "
              f"{row['ssim_teacher']:.4f}")
    print(f"{'mean':>12}: dark {mean['psnr_dark']:6.2f} dB  oracle gain {mean['psnr_scaled']:6.2f} dB  "
          f"teacher {mean['psnr_teacher']:6.2f} dB; wrote {out} and {card_path} in {wall_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
