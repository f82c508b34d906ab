"""The held-out photographs with fixed sigma-25 noise: what the shipped teacher's card, the examples and
the benchmarks score models on, so that their numbers are comparable."""

from __future__ import annotations

import torch

from glmha.data.degrade import add_gaussian_noise, seeded_generator
from glmha.data.sample_images import TEST_IMAGES, load_sample

NOISE_SEED = 2024  # held-out image i gets noise seed NOISE_SEED + i (the teacher card's convention)
SIGMA = 25.0  # the shipped teacher's task: sigma on the 0-255 scale

Pair = tuple[str, torch.Tensor, torch.Tensor]  # (name, clean (1, 3, h, w), noisy (1, 3, h, w))


def held_out_pairs(crop: int | None = None, *, sigma: float = SIGMA, seed: int = NOISE_SEED) -> list[Pair]:
    """Centre crops (at most crop x crop; None: whole images) of the held-out photos and their noisy
    versions (unclipped, as in the denoising literature)."""
    pairs = []
    for index, name in enumerate(TEST_IMAGES):
        image = load_sample(name)  # (3, H, W) in [0, 1]
        height, width = image.shape[-2:]
        side_h, side_w = (height, width) if crop is None else (min(crop, height), min(crop, width))
        top, left = (height - side_h) // 2, (width - side_w) // 2
        clean = image[:, top:top + side_h, left:left + side_w].unsqueeze(0)  # (3, h, w) -> (1, 3, h, w)
        pairs.append((name, clean, add_gaussian_noise(clean, sigma, seeded_generator(seed + index))))
    return pairs


@torch.no_grad()
def held_out_psnr(model: torch.nn.Module | None, pairs: list[Pair]) -> list[float]:
    """PSNR (dB) per pair of the model's output clamped to [0, 1] against the clean crop; None scores
    the noisy input itself."""
    from glmha.metrics import psnr

    return [psnr(noisy if model is None else model(noisy).clamp(0.0, 1.0), clean) for _, clean, noisy in pairs]
