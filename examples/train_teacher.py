"""Train the project's small Restormer teacher for Gaussian colour denoising (sigma 25), on the CPU.

Why: glmha needs a teacher it may redistribute (the official Restormer weights are non-commercial)
and that is small enough for CPU tests and demos. This script makes one reproducibly from the
offline scikit-image photographs (`glmha.data`), and writes an official-container checkpoint
({'params': state_dict}, loadable with `glmha.load`) plus a JSON card with the full provenance and
the held-out quality. Everything random comes from seeded generators: model init (global seed),
crop positions and augmentations (one generator), noise (another generator), evaluation noise (one
fixed seed per held-out image).

    python examples/train_teacher.py --out checkpoints/restormer_denoise_s25.pth

The run that produced the shipped checkpoint is recorded in its card (command, wall time, torch
version, threads). `evaluate_teacher` is importable so tests can recompute the card's numbers.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine, a thread spinning while it
# waits for a descheduled peer made training steps up to 15x slower (measured). The OpenMP runtime
# reads this when torch loads it, so it is set before the import; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from glmha.archs import Restormer
from glmha.data import (
    COLOUR_IMAGES,
    TEST_IMAGES,
    TRAIN_IMAGES,
    add_gaussian_noise,
    load_sample,
    seeded_generator,
)
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write_text, check_writable_target
from glmha.metrics import psnr_per_image, ssim_per_image
from glmha.restore.tiling import crop_to, pad_to_multiple
from glmha.runtime import make_deterministic
from glmha.teacher_training import LossLog, cosine_lr, random_dihedral_crop, run_record, save_teacher

TEACHER_CONFIG: dict[str, Any] = dict(
    inp_channels=3, out_channels=3, dim=16, num_blocks=(2, 2, 2, 2), num_refinement_blocks=2,
    heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, layernorm_type="BiasFree",
    dual_pixel_task=False,
)
SIGMA = 25.0
MULTIPLE = 8  # Restormer down-samples three times
COLOUR_WEIGHT = 2.0  # colour photographs are drawn twice as often as grey ones (the task is colour)
GREY_WEIGHT = 1.0
EVAL_SEED = 2024


# -- data -------------------------------------------------------------------------------------------


class PatchSampler:
    """Random training patches: image (weighted), crop position and one of the 8 flips/rotations.

    All draws come from one seeded generator, so the sequence of patches is fixed by the seed.
    """

    def __init__(self, names: Sequence[str], patch: int, generator: torch.Generator) -> None:
        self.names = list(names)
        self.images = [load_sample(name) for name in self.names]
        for name, image in zip(self.names, self.images, strict=True):
            if min(image.shape[-2:]) < patch:
                raise GlmhaError(f"training image '{name}' {tuple(image.shape)} is smaller than patch {patch}")
        self.weights = torch.tensor(
            [COLOUR_WEIGHT if name in COLOUR_IMAGES else GREY_WEIGHT for name in self.names],
            dtype=torch.float64,
        )
        self.patch = patch
        self.generator = generator

    def sample(self, batch: int) -> torch.Tensor:
        """A clean batch (batch, 3, patch, patch)."""
        picks = torch.multinomial(self.weights, batch, replacement=True, generator=self.generator)
        patches = [random_dihedral_crop(self.images[i], self.patch, self.generator) for i in picks.tolist()]
        return torch.stack(patches)  # batch x (3, p, p) -> (batch, 3, p, p)


# -- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def denoise(model: torch.nn.Module, noisy: torch.Tensor) -> torch.Tensor:
    """Run the model on a whole (b, c, h, w) image of any size: reflect-pad to a multiple of 8, crop back."""
    padded, size = pad_to_multiple(noisy, MULTIPLE)
    return crop_to(model(padded), size)


def evaluate_teacher(
    model: torch.nn.Module, names: Sequence[str] = TEST_IMAGES, sigma: float = SIGMA, seed: int = EVAL_SEED,
) -> dict[str, Any]:
    """PSNR/SSIM of the noisy input and of the model's output on whole sample images.

    Image i of `names` gets noise from generator seed `seed + i` (unclipped, sigma on 0-255). The
    model output is clamped to [0, 1] before scoring, as the official Restormer test scripts do;
    the noisy input is scored as it is.
    """
    model.eval()
    rows = []
    for index, name in enumerate(names):
        clean = load_sample(name).unsqueeze(0)  # (3, h, w) -> (1, 3, h, w)
        noise_seed = seed + index
        noisy = add_gaussian_noise(clean, sigma, seeded_generator(noise_seed))
        restored = denoise(model, noisy).clamp(0.0, 1.0)
        rows.append({
            "name": name,
            "height": clean.shape[-2],
            "width": clean.shape[-1],
            "noise_seed": noise_seed,
            "psnr_noisy": float(psnr_per_image(noisy, clean)[0]),
            "psnr_teacher": float(psnr_per_image(restored, clean)[0]),
            "ssim_noisy": float(ssim_per_image(noisy, clean)[0]),
            "ssim_teacher": float(ssim_per_image(restored, clean)[0]),
        })
    metrics = ("psnr_noisy", "psnr_teacher", "ssim_noisy", "ssim_teacher")
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in metrics}
    mean["psnr_gain"] = mean["psnr_teacher"] - mean["psnr_noisy"]
    return {"sigma": sigma, "seed": seed, "output_clamped": True, "images": rows, "mean": mean}


# -- training ---------------------------------------------------------------------------------------


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + eps**2).mean()


def train(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """The training loop; returns a short log (loss every `log_every` steps) for the card."""
    sampler = PatchSampler(TRAIN_IMAGES, args.patch, seeded_generator(args.seed + 1))
    noise_generator = seeded_generator(args.seed + 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                  weight_decay=args.weight_decay)
    loss_fn = charbonnier if args.loss == "charbonnier" else F.l1_loss
    model.train()
    log = LossLog(args.steps, args.log_every)
    for step in range(args.steps):
        lr = cosine_lr(step, args.steps, args.lr, args.lr_min, warmup=args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean = sampler.sample(args.batch)
        noisy = add_gaussian_noise(clean, args.sigma, noise_generator)
        loss = loss_fn(model(noisy), clean)
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
        description="Train the small Restormer teacher for Gaussian colour denoising on the offline "
        "scikit-image photographs and write the checkpoint plus its JSON card (same name, .json).",
    )
    parser.add_argument("--out", required=True, help="checkpoint path (.pth); the card goes next to it")
    parser.add_argument("--steps", type=int, default=1200, help="optimiser steps (default 1200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, crops and noise (default 0)")
    parser.add_argument("--sigma", type=float, default=SIGMA, help="noise sigma on 0-255 (default 25)")
    parser.add_argument("--patch", type=int, default=64, help="square patch side, a multiple of 8")
    parser.add_argument("--batch", type=int, default=8, help="patches per step (default 8)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--lr-min", type=float, default=1e-6, help="final learning rate of the cosine")
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default 100)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off")
    parser.add_argument("--loss", choices=("l1", "charbonnier"), default="l1")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                        help=f"held-out image i gets noise seed EVAL_SEED + i (default {EVAL_SEED})")
    parser.add_argument("--log-every", type=int, default=100, help="print the mean loss every N steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.patch % MULTIPLE or args.patch < MULTIPLE:
            raise GlmhaError(f"--patch must be a positive multiple of {MULTIPLE}, got {args.patch}")
        if args.steps < 1 or args.batch < 1:
            raise GlmhaError("--steps and --batch must be >= 1")
        out = check_writable_target(args.out, what="--out")
        card_path = out.with_suffix(".json")
    except GlmhaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    deterministic = make_deterministic(args.threads)
    torch.manual_seed(args.seed)
    model = Restormer(**TEACHER_CONFIG)

    started = time.perf_counter()
    history = train(model, args)
    train_seconds = time.perf_counter() - started
    evaluation = evaluate_teacher(model, TEST_IMAGES, args.sigma, args.eval_seed)
    wall_seconds = time.perf_counter() - started

    card = {
        **save_teacher(model, out, family="restormer", container_key="params"),
        "task": {"name": "gaussian colour denoising", "sigma": args.sigma, "sigma_scale": "0-255",
                 "noise": "i.i.d. Gaussian, std sigma/255 on [0, 1] RGB, noisy input not clipped"},
        "data": {
            "source": "scikit-image skimage.data sample photographs (offline), see glmha.data.sample_images",
            "train_images": list(TRAIN_IMAGES),
            "held_out_images": list(TEST_IMAGES),
            "sampling": f"image drawn with weight {COLOUR_WEIGHT} (colour) / {GREY_WEIGHT} (grey, stacked "
                        "to RGB), uniform crop position",
            "patch_size": args.patch,
            "batch_size": args.batch,
            "augmentation": "one of the 8 rotations/flips per patch",
            "crop_generator_seed": args.seed + 1,
            "noise_generator_seed": args.seed + 2,
        },
        "training": {
            "steps": args.steps,
            "optimizer": {"name": "AdamW", "betas": [0.9, 0.999], "weight_decay": args.weight_decay},
            "lr": args.lr,
            "schedule": {"name": f"linear warm-up {args.warmup} steps, then cosine to lr_min",
                         "warmup_steps": args.warmup, "lr_min": args.lr_min},
            "grad_clip_norm": args.grad_clip,
            "loss": args.loss,
            "seed": args.seed,
            "threads": args.threads,
            "deterministic_algorithms": deterministic,
            "log": history["log"],
        },
        **run_record("train_teacher.py", argv, train_seconds, wall_seconds),
        "evaluation": {
            "protocol": "whole held-out images, reflect-padded to a multiple of 8 and cropped back; image i "
                        "gets noise seed eval_seed + i; teacher output clamped to [0, 1]; PSNR/SSIM on RGB "
                        "in [0, 1] per glmha.metrics (SSIM: Gaussian 11/1.5, valid filtering)",
            **evaluation,
        },
    }
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    mean = evaluation["mean"]
    for row in evaluation["images"]:
        print(f"{row['name']:>12}: noisy {row['psnr_noisy']:6.2f} dB  teacher {row['psnr_teacher']:6.2f} dB  "
              f"SSIM {row['ssim_noisy']:.4f} -> {row['ssim_teacher']:.4f}")
    print(f"{'mean':>12}: noisy {mean['psnr_noisy']:6.2f} dB  teacher {mean['psnr_teacher']:6.2f} dB  "
          f"(+{mean['psnr_gain']:.2f} dB); wrote {out} and {card_path} in {wall_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
