"""Image-quality metrics on torch tensors (b, c, h, w), computed in float64.

Why our own: the project's evaluation must not depend on a metrics package, and both the distiller
and the tests need the same numbers. Conventions (stated because published PSNR/SSIM figures differ
by them): no colour conversion (RGB, all channels), no border crop, no clamping unless asked.

- PSNR: per image 10*log10(data_range^2 / MSE) with the MSE over all channels and pixels, then the
  mean of the per-image values over the batch (not the PSNR of the batch MSE).
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window of sigma 1.5 (normalised to sum 1), K1 0.01,
  K2 0.03, population (not sample) statistics, and 'valid' filtering (no padding: only windows that
  lie fully inside the image); the SSIM map is averaged per channel, the channels are averaged, then
  the images of the batch. This equals scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)` and the reference MATLAB code on RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glmha.errors import GlmhaError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
IMAGE_METRICS: tuple[str, ...] = ("psnr", "ssim")  # what image models are scored by


def _check_pair(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise GlmhaError(
            f"{what}: expected two tensors of the same shape (b, c, h, w), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def psnr_per_image(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, *, clamp: bool = False
) -> torch.Tensor:
    """PSNR of each image of the batch in dB, float64 (b,); identical images give +inf."""
    _check_pair(pred, target, "psnr")
    pred64, target64 = pred.detach().double(), target.detach().double()
    if clamp:
        pred64 = pred64.clamp(0.0, data_range)
    mse = (pred64 - target64).pow(2).flatten(1).mean(dim=1)  # (b, c*h*w) -> (b,)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, *, clamp: bool = False) -> float:
    """Mean over the batch of the per-image PSNR (dB); `clamp` clips `pred` to [0, data_range] first."""
    return float(psnr_per_image(pred, target, data_range, clamp=clamp).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Separable 1-D Gaussian taps, float64, summing to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Depthwise separable Gaussian filter of (n, c, h, w) without padding ('valid')."""
    channels = x.shape[1]
    size = taps.numel()
    vertical = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)  # (k,) -> (c, 1, k, 1)
    horizontal = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)  # (k,) -> (c, 1, 1, k)
    x = F.conv2d(x, vertical, groups=channels)
    return F.conv2d(x, horizontal, groups=channels)


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image of the batch, float64 (b,); see the module docstring for the conventions."""
    _check_pair(pred, target, "ssim")
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise GlmhaError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape)}")
    x, y = pred.detach().double(), target.detach().double()
    taps = gaussian_window().to(x.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1)).mean(dim=1)  # (b, c, h', w') -> (b, c) -> (b,)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of the per-image SSIM."""
    return float(ssim_per_image(pred, target, data_range).mean())
