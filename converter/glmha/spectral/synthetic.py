"""Offline synthetic hyperspectral data for tests and demos.

Why: the real data sets (ARAD_1K, CAVE, KAIST) are large downloads under their own licences, yet the
readers, the CASSI forward model and the metrics need inputs that look like reflectance: smooth
spectra, spatial structure, and bands that are strongly correlated. The model here is linear spectral
mixing: 3-6 materials are drawn from a fixed library of smooth spectra (sums of Gaussians over
wavelength, the same library for every scene, as real scenes share materials), blended per pixel by
smooth random abundance maps (upsampled low-frequency noise, softmax-normalised), then multiplied by a
smooth shading map. Convex mixing keeps every value inside [0, 1].

The camera (`capture_rgb`) is what makes RGB -> spectrum a learning problem rather than a linear
regression: a linear projection through smooth RGB sensitivities, then the sRGB tone curve and 8-bit
quantisation, as a consumer camera writes its JPEGs (NTIRE 2022's RGB inputs are such images).

All randomness comes from the `torch.Generator` passed in, so one seed always gives one cube.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from glmha.errors import GlmhaError

NTIRE_WAVELENGTHS: tuple[float, ...] = tuple(float(w) for w in range(400, 701, 10))
"""The 31 NTIRE 2022 / ARAD_1K band centres: 400..700 nm in 10 nm steps."""

# the 28 band centres (nm) of the CASSI simulation (CAVE/KAIST, as TSA-Net defines them), non-uniform
CASSI_WAVELENGTHS: tuple[float, ...] = (
    453.3, 457.6, 462.1, 466.8, 471.6, 476.5, 481.6, 486.9, 492.4, 498.0, 503.9, 509.9, 516.2, 522.7,
    529.5, 536.5, 543.8, 551.4, 558.6, 567.5, 575.3, 584.3, 594.4, 604.2, 614.4, 625.1, 636.3, 648.1,
)  # fmt: skip

CAMERA_CENTRES_NM = (600.0, 540.0, 460.0)  # R, G, B
CAMERA_SIGMA_NM = 40.0

LIBRARY_SIZE = 32  # materials shared by every scene
LIBRARY_SEED = 20_221_121  # fixed: the library is part of the synthetic world, not of a scene's seed

_ABUNDANCE_GRID = 24  # pixels per low-resolution noise cell: sets the spatial scale of the structure
_ABUNDANCE_SHARPNESS = 4.0  # softmax temperature: higher gives more distinct material regions


def default_wavelengths(bands: int) -> tuple[float, ...]:
    """NTIRE centres for 31 bands, CASSI centres for 28, otherwise evenly spaced over 400-700 nm."""
    if bands == len(NTIRE_WAVELENGTHS):
        return NTIRE_WAVELENGTHS
    if bands == len(CASSI_WAVELENGTHS):
        return CASSI_WAVELENGTHS
    if bands < 1:
        raise GlmhaError(f"synthetic: the number of bands must be >= 1, got {bands}")
    return tuple(float(w) for w in np.linspace(400.0, 700.0, bands))


def _wavelength_tensor(wavelengths: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wavelengths as a float64 1-D tensor, rejecting anything else with one clear line."""
    wl = torch.as_tensor(np.asarray(wavelengths, dtype=np.float64))
    if wl.ndim != 1 or wl.numel() == 0 or not bool(torch.isfinite(wl).all()):
        raise GlmhaError(f"synthetic: wavelengths must be a 1-D list of finite numbers, got {tuple(wl.shape)}")
    return wl


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    """Float64 uniform samples in [low, high) from the caller's generator."""
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _endmember_spectra(wl: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` smooth spectra (count, bands) in (0, 1): a floor plus 2-4 broad Gaussian bumps each.

    Bumps are at least 35 nm wide (sigma), which keeps adjacent 10 nm bands close, like real reflectance.
    """
    spectra = []
    for _ in range(count):
        bumps = int(torch.randint(2, 5, (1,), generator=generator))
        centres = _uniform(generator, 380.0, 720.0, bumps)
        widths = _uniform(generator, 35.0, 110.0, bumps)
        heights = _uniform(generator, 0.2, 1.0, bumps)
        floor = float(_uniform(generator, 0.02, 0.3, 1))
        offsets = (wl[None, :] - centres[:, None]) / widths[:, None]  # (bumps, 1) vs (1, bands) -> (bumps, bands)
        curve = floor + (heights[:, None] * torch.exp(-0.5 * offsets**2)).sum(dim=0)  # (bumps, bands) -> (bands,)
        peak = float(_uniform(generator, 0.35, 0.95, 1))
        spectra.append(curve / curve.max() * peak)
    return torch.stack(spectra)  # count x (bands,) -> (count, bands)


@functools.lru_cache(maxsize=8)
def _library_for(wavelengths: tuple[float, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(LIBRARY_SEED)
    return _endmember_spectra(_wavelength_tensor(wavelengths), LIBRARY_SIZE, generator)


def material_library(wavelengths: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """The fixed library of `LIBRARY_SIZE` material spectra (LIBRARY_SIZE, bands), float64 in (0, 1).

    Drawn from a generator seeded with LIBRARY_SEED, so every scene (any seed) mixes the same materials.
    """
    wl = _wavelength_tensor(wavelengths)
    return _library_for(tuple(float(w) for w in wl)).clone()


def _smooth_field(channels: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Low-frequency Gaussian noise (channels, height, width): a coarse grid upsampled bicubically."""
    grid_h = max(2, -(-height // _ABUNDANCE_GRID))
    grid_w = max(2, -(-width // _ABUNDANCE_GRID))
    coarse = torch.randn(1, channels, grid_h, grid_w, generator=generator, dtype=torch.float64)
    fine = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return fine[0]  # (1, channels, height, width) -> (channels, height, width)


def reflectance_cube(
    height: int,
    width: int,
    bands: int,
    generator: torch.Generator,
    *,
    wavelengths: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """A synthetic reflectance cube (bands, height, width), float32 in [0, 1].

    3-6 distinct materials of `material_library` mixed by smooth softmax abundances, times a smooth
    shading in [0.6, 1]. `wavelengths` (nm) defaults to `default_wavelengths(bands)` and must have `bands` entries.
    """
    if height < 1 or width < 1:
        raise GlmhaError(f"reflectance_cube: height and width must be >= 1, got {height}x{width}")
    wl = _wavelength_tensor(default_wavelengths(bands) if wavelengths is None else wavelengths)
    if wl.numel() != bands:
        raise GlmhaError(f"reflectance_cube: {wl.numel()} wavelengths given for {bands} bands")
    count = int(torch.randint(3, 7, (1,), generator=generator))
    chosen = torch.randperm(LIBRARY_SIZE, generator=generator)[:count]
    spectra = material_library(wl)[chosen]  # (LIBRARY_SIZE, bands) -> (count, bands)
    abundances = torch.softmax(_ABUNDANCE_SHARPNESS * _smooth_field(count, height, width, generator), dim=0)
    shading = 0.6 + 0.4 * torch.sigmoid(2.0 * _smooth_field(1, height, width, generator))  # (1, height, width)
    # (count, bands) x (count, h, w) -> (bands, h, w), then times the (1, h, w) shading
    cube = torch.einsum("kb,khw->bhw", spectra, abundances) * shading
    return cube.clamp(0.0, 1.0).float().contiguous()


def camera_response(wavelengths: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A smooth RGB camera sensitivity (3, bands), float32, rows R, G, B.

    Gaussians centred at 600/540/460 nm with sigma 40 nm, each row normalised to sum 1 over the given
    bands, so a flat reflectance r renders as RGB (r, r, r): a simple, checkable white balance.
    """
    wl = _wavelength_tensor(wavelengths)
    centres = torch.tensor(CAMERA_CENTRES_NM, dtype=torch.float64)
    offsets = (wl[None, :] - centres[:, None]) / CAMERA_SIGMA_NM  # (3, 1) vs (1, bands) -> (3, bands)
    response = torch.exp(-0.5 * offsets**2)
    return (response / response.sum(dim=1, keepdim=True)).float()


def render_rgb(cube: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Project a cube (bands, H, W) or (b, bands, H, W) to RGB (3, H, W) / (b, 3, H, W), clipped to [0, 1]."""
    if response.ndim != 2 or response.shape[0] != 3:
        raise GlmhaError(f"render_rgb: the response must be (3, bands), got {tuple(response.shape)}")
    if cube.ndim not in (3, 4) or cube.shape[-3] != response.shape[1]:
        raise GlmhaError(
            f"render_rgb: expected a cube (bands, H, W) or (b, bands, H, W) with {response.shape[1]} bands, "
            f"got {tuple(cube.shape)}"
        )
    rgb = torch.einsum("cb,...bhw->...chw", response.to(cube.dtype), cube)  # (3, bands) x (..., bands, h, w)
    return rgb.clamp(0.0, 1.0)


def encode_srgb(linear: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve (IEC 61966-2-1): linear [0, 1] -> encoded [0, 1]."""
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def decode_srgb(encoded: torch.Tensor) -> torch.Tensor:
    """The inverse of `encode_srgb`: encoded [0, 1] -> linear [0, 1]."""
    encoded = encoded.clamp(0.0, 1.0)
    return torch.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)


def capture_rgb(cube: torch.Tensor, response: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """What the synthetic camera writes: `render_rgb`, the sRGB curve, then `bits`-bit quantisation.

    (bands, H, W) or (b, bands, H, W) -> (3, H, W) / (b, 3, H, W), values on the grid k / (2**bits - 1).
    """
    if not 1 <= bits <= 16:
        raise GlmhaError(f"capture_rgb: bits must lie in [1, 16], got {bits}")
    levels = float(2**bits - 1)
    return torch.round(encode_srgb(render_rgb(cube, response)) * levels) / levels
