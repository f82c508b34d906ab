"""Spectral-reconstruction metrics on (b, C, h, w) tensors, computed in float64, one value per image.

Why a separate module from `glmha.metrics`: the MST++ (NTIRE 2022) numbers are defined with their own
conventions, and matching published figures means matching them exactly (docs/spectral_data.md §1.5-1.6):

- MRAE = mean(|P - G| / G) with **no epsilon** (a zero in G gives inf/NaN, as in the official code);
  `eps=` reproduces `Loss_MRAE_custom`, which replaces G == 0 by eps in the denominator only.
- RMSE = sqrt(mean((P - G)^2)) on the raw, **unclamped** tensors.
- PSNR = 10*log10(1 / MSE) with **both** tensors clamped to [0, 1], data range 1.
- SAM is not computed by MST++; ours is the usual spectral angle in degrees, averaged over pixels.
- Every metric is taken per image (over all bands and pixels) and a batch is reported as the mean of
  the per-image values. NTIRE validation scores only `central_crop(x, 128)` (226x256 of 482x512).
"""

from __future__ import annotations

import math

import torch

from glmha.errors import GlmhaError

SPECTRAL_METRICS: tuple[str, ...] = ("mrae", "rmse", "psnr", "sam")
NTIRE_BORDER = 128


def _pair64(pred: torch.Tensor, target: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that both are (b, C, h, w) of one shape and return detached float64 copies."""
    if pred.ndim != 4 or pred.shape != target.shape:
        raise GlmhaError(
            f"{what}: expected two tensors of the same shape (b, C, h, w), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred.detach().double(), target.detach().double()


def mrae_per_image(pred: torch.Tensor, target: torch.Tensor, *, eps: float | None = None) -> torch.Tensor:
    """Mean relative absolute error per image, float64 (b,).

    eps None is the official metric and loss (plain |P - G| / G, so G == 0 gives inf or NaN on purpose:
    hiding it would make scores incomparable). A float eps replaces G == 0 by eps in the denominator only.
    """
    p, g = _pair64(pred, target, "mrae")
    denominator = g if eps is None else torch.where(g == 0, torch.full_like(g, float(eps)), g)
    return ((p - g).abs() / denominator).flatten(1).mean(dim=1)  # (b, C, h, w) -> (b, C*h*w) -> (b,)


def rmse_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error per image on the raw (unclamped) tensors, float64 (b,)."""
    p, g = _pair64(pred, target, "rmse")
    return (p - g).pow(2).flatten(1).mean(dim=1).sqrt()  # (b, C, h, w) -> (b, C*h*w) -> (b,)


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image with both tensors clamped to [0, 1] and data range 1, float64 (b,).

    Unlike `glmha.metrics.psnr` (which clamps only the prediction, if asked), MST++ clamps the ground
    truth too; NTIRE cubes can exceed 1 slightly, so clamping only one side would change the numbers.
    Identical images give +inf.
    """
    p, g = _pair64(pred, target, "psnr")
    mse = (p.clamp(0.0, 1.0) - g.clamp(0.0, 1.0)).pow(2).flatten(1).mean(dim=1)  # (b, C*h*w) -> (b,)
    return 10.0 * torch.log10(1.0 / mse)


def sam_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spectral angle mapper per image in degrees, float64 (b,).

    Per pixel the angle between the C-band spectra p and g, arccos(<p, g> / (|p| |g|)), in [0, 180];
    the image value is the mean over pixels. Pixels where |p| or |g| is 0 have no defined angle and are
    left out of the mean (an image with no such pixel left gives NaN). The angle is evaluated as
    2*atan2(|u - v|, |u + v|) with u, v the unit spectra, which equals the arccos form but stays exact
    near 0 and 180 degrees, where arccos loses about half the digits.
    """
    p, g = _pair64(pred, target, "sam")
    norm_p = p.norm(dim=1, keepdim=True)  # (b, C, h, w) -> (b, 1, h, w)
    norm_g = g.norm(dim=1, keepdim=True)  # (b, C, h, w) -> (b, 1, h, w)
    valid = ((norm_p > 0) & (norm_g > 0)).squeeze(1)  # (b, 1, h, w) -> (b, h, w)
    u = p / torch.where(norm_p > 0, norm_p, torch.ones_like(norm_p))
    v = g / torch.where(norm_g > 0, norm_g, torch.ones_like(norm_g))
    angle = 2.0 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))  # (b, C, h, w) -> (b, h, w)
    degrees = torch.rad2deg(angle) * valid
    count = valid.flatten(1).sum(dim=1)  # (b, h, w) -> (b, h*w) -> (b,)
    total = degrees.flatten(1).sum(dim=1)  # (b, h, w) -> (b, h*w) -> (b,)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def central_crop(x: torch.Tensor, border: int = NTIRE_BORDER) -> torch.Tensor:
    """`x[..., border:-border, border:-border]`: the region NTIRE 2022 scores (a view, not a copy)."""
    if border < 0:
        raise GlmhaError(f"central_crop: border must be >= 0, got {border}")
    if x.ndim < 2:
        raise GlmhaError(f"central_crop: expected a tensor (..., h, w), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise GlmhaError(f"central_crop: a {h}x{w} image has nothing left after removing a {border}-pixel border")
    if border == 0:
        return x
    return x[..., border:-border, border:-border]


def spectral_scores(
    pred: torch.Tensor, target: torch.Tensor, *, mrae_eps: float | None = None
) -> dict[str, torch.Tensor]:
    """All of `SPECTRAL_METRICS` per image (float64 (b,) each), keyed by name; crop first if needed."""
    return {
        "mrae": mrae_per_image(pred, target, eps=mrae_eps),
        "rmse": rmse_per_image(pred, target),
        "psnr": psnr_per_image(pred, target),
        "sam": sam_per_image(pred, target),
    }
