"""Synthetic degradations with explicit random generators, so every degraded image is reproducible."""

from __future__ import annotations

import torch

from glmha.errors import GlmhaError


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed: its stream does not depend on the global RNG state."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def add_gaussian_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """`clean` plus i.i.d. Gaussian noise of standard deviation sigma/255 (sigma on the 0-255 scale).

    The result is NOT clipped to [0, 1]: the Restormer Gaussian-denoising benchmarks (and DnCNN,
    FFDNet, SwinIR before them) feed unclipped noisy images, and clipping would make the noise
    signal-dependent near black and white. The noise is drawn on the CPU from `generator` (so the
    same seed gives the same noise on any device) in float32, then moved to `clean`'s device/dtype.
    """
    if sigma < 0:
        raise GlmhaError(f"noise sigma must be >= 0, got {sigma}")
    if not clean.is_floating_point():
        raise GlmhaError(f"add_gaussian_noise needs a floating-point image in [0, 1], got {clean.dtype}")
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
    noise = noise.to(device=clean.device, dtype=clean.dtype)
    return clean + noise * (sigma / 255.0)
