"""The held-out photographs with fixed sigma-25 noise: what the shipped teacher's card, the examples and
the benchmarks score models on, so that their numbers are comparable."""

from __future__ import annotations

import torch

from glmha.data.degrade import add_gaussian_noise, seeded_generator
from glmha.data.sample_images import TEST_IMAGES, load_sample

NOISE_SEED = 2024  # held-out image i gets noise seed NOISE_SEED + i (the teacher card's convention)

Pair = tuple[str, torch.Tensor, torch.Tensor]  # (name, clean (1, 3, h, w), noisy (1, 3, h, w))


def held_out_pairs(crop: int | None = None, *, sigma: float = 25.0, seed: int = NOISE_SEED) -> list[Pair]:
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
