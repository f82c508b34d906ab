"""Synthetic degradations with explicit random generators, so every degraded image is reproducible.

Each degradation is a frozen spec (the `degrade:` section of a distillation recipe) and `degrade`
applies it to one (C, H, W) image. Every random draw comes from the caller's CPU generator, so a
degraded image is a pure function of (spec, clean image, generator seed): the training data of a run
can be replayed exactly from any sample index, on any device and with any number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from glmha.config import StrictConfig
from glmha.errors import GlmhaError

RAIN_REFERENCE_AREA = 256 * 256  # RainSpec.streaks counts streaks per this many pixels
_RAIN_SEED_BRIGHTNESS = (0.5, 1.0)  # each streak's own brightness, before the image-wide intensity


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


# -- specs --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """Numbers as a user wrote them: -3.0 shows as -3, so messages echo the recipe's own text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _number(name: str, value: Any, *, integer: bool = False) -> float:
    """A finite number (an integer where `integer`); bools are not numbers in a recipe."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise GlmhaError(f"{name}: expected {'an integer' if integer else 'a number'}, got {_show(value)}")
    if not math.isfinite(value):
        raise GlmhaError(f"{name}: must be a finite number, got {_show(value)}")
    return value


def _range(name: str, value: Any, *, low: float, high: float = math.inf, integer: bool = False,
           strict_low: bool = False) -> tuple[float, float]:
    """Validate a fixed value or a [low, high] range and return it as (low, high)."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise GlmhaError(f"{name}: a range must be [low, high], got {_show(value)}")
        lo, hi = (_number(name, v, integer=integer) for v in value)
        if lo > hi:
            raise GlmhaError(f"{name}: a range must be [low, high] with low <= high, got {_show(value)}")
    else:
        lo = hi = _number(name, value, integer=integer)
    for bound in (lo, hi):
        if bound < low or (strict_low and bound == low):
            raise GlmhaError(f"{name}: must be {'>' if strict_low else '>='} {_show(low)}, got {_show(value)}")
        if bound > high:
            raise GlmhaError(f"{name}: must be <= {_show(high)}, got {_show(value)}")
    return lo, hi


def _check_type(spec: Any, expected: str) -> None:
    if spec.type != expected:
        raise GlmhaError(f"type: must be {expected!r} for {type(spec).__name__}, got {_show(spec.type)}")


def _draw(bounds: tuple[float, float], generator: torch.Generator) -> float:
    """Uniform in [low, high]; a fixed value (low == high) draws nothing, keeping the stream short."""
    lo, hi = bounds
    if lo == hi:
        return float(lo)
    return float(lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64))


def _draw_int(bounds: tuple[float, float], generator: torch.Generator) -> int:
    """Uniform integer in [low, high], both included."""
    lo, hi = int(bounds[0]), int(bounds[1])
    if lo == hi:
        return lo
    return int(torch.randint(lo, hi + 1, (), generator=generator))


@dataclass(frozen=True)
class GaussianNoiseSpec(StrictConfig):
    """Additive white Gaussian noise, sigma on the 0-255 scale; [low, high] draws one sigma per image
    (blind denoising). Not clipped, like `add_gaussian_noise` and the published benchmarks."""

    type: str = "gaussian_noise"
    sigma: float | tuple[float, ...] = 25.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_type(self, "gaussian_noise")
        _range("sigma", self.sigma, low=0.0)


@dataclass(frozen=True)
class GaussianBlurSpec(StrictConfig):
    """Isotropic Gaussian blur (sigma in pixels, or [low, high] per image) then optional Gaussian noise
    (0-255 scale); clipped to [0, 1] like a saved blurry photograph. kernel_size 0 picks the smallest
    odd size covering 3 sigma on each side (about 6 sigma + 1)."""

    type: str = "gaussian_blur"
    sigma: float | tuple[float, ...] = 2.0
    kernel_size: int = 0
    noise: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_type(self, "gaussian_blur")
        _range("sigma", self.sigma, low=0.0)
        size = _number("kernel_size", self.kernel_size, integer=True)
        if size < 0 or (size > 0 and size % 2 == 0):
            raise GlmhaError(f"kernel_size: must be 0 (automatic) or a positive odd number, got {_show(size)}")
        _range("noise", self.noise, low=0.0)

    def radius(self, sigma: float) -> int:
        """Kernel half-width for one drawn sigma."""
        return self.kernel_size // 2 if self.kernel_size > 0 else math.ceil(3.0 * sigma)


@dataclass(frozen=True)
class RainSpec(StrictConfig):
    """Synthetic rain streaks in the spirit of Rain100L/Rain13K: sparse random seeds smeared along one
    random direction per image by a line kernel of random length, scaled and added, clipped to [0, 1].

    streaks: how many per 256x256 pixels (scaled with the image area); length in pixels; angle in
    degrees from vertical (positive leans the top of a streak to the right); width in pixels;
    intensity: brightness of the brightest streak. Each is a fixed value or a [low, high] range drawn
    once per image.
    """

    type: str = "rain"
    streaks: int | tuple[int, ...] = (100, 400)
    length: float | tuple[float, ...] = (10.0, 30.0)
    angle: float | tuple[float, ...] = (-30.0, 30.0)
    width: int = 1
    intensity: float | tuple[float, ...] = (0.3, 0.8)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_type(self, "rain")
        _range("streaks", self.streaks, low=0, integer=True)
        _range("length", self.length, low=1.0, high=512.0)
        _range("angle", self.angle, low=-90.0, high=90.0)
        width = _number("width", self.width, integer=True)
        if not 1 <= width <= 16:
            raise GlmhaError(f"width: must be between 1 and 16 pixels, got {_show(width)}")
        _range("intensity", self.intensity, low=0.0, high=1.0)


@dataclass(frozen=True)
class LowLightSpec(StrictConfig):
    """Synthetic under-exposure, the usual recipe for synthetic low-light pairs (Lv et al., MBLLEN /
    AgLLNet; Wei et al., physics-based noise): darken, then add signal-dependent sensor noise, clip.

    Per image, in this order: exposure e, gamma g, shot a and read r are each drawn uniformly in their
    [low, high] range (a fixed value draws nothing); then

        dark  = e * clip(clean, 0, 1) ** g          (gamma > 1 darkens the mid-tones more than the highlights)
        noisy = dark + sqrt(a * dark + (r / 255) ** 2) * n,   n ~ N(0, 1) per pixel and channel
        low   = clip(noisy, 0, 1)

    i.e. the Poisson-Gaussian noise model in its heteroscedastic Gaussian form: shot noise of variance
    a * dark (on the [0, 1] scale) plus read noise of standard deviation r on the 0-255 scale, like the
    other specs' sigma. Clipped because real captures are: near black the noise is then biased upwards.
    No n is drawn when a = r = 0. Ranges: exposure in (0, 1], gamma in [1, 5], shot in [0, 1], read in
    [0, 255]. Defaults: exposure [0.05, 0.3], gamma [1.5, 2.5], shot [5e-4, 5e-3], read [0.5, 2]
    (0-255); they take the held-out sample photographs (mean pixel 0.39-0.45) to means of 0.02-0.04,
    as dark as under-exposed captures.
    """

    type: str = "low_light"
    exposure: float | tuple[float, ...] = (0.05, 0.3)
    gamma: float | tuple[float, ...] = (1.5, 2.5)
    shot: float | tuple[float, ...] = (5e-4, 5e-3)
    read: float | tuple[float, ...] = (0.5, 2.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_type(self, "low_light")
        self.bounds()

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Each field as a validated (low, high) pair, in drawing order."""
        return {
            "exposure": _range("exposure", self.exposure, low=0.0, high=1.0, strict_low=True),
            "gamma": _range("gamma", self.gamma, low=1.0, high=5.0),
            "shot": _range("shot", self.shot, low=0.0, high=1.0),
            "read": _range("read", self.read, low=0.0, high=255.0),
        }


DegradeSpec = GaussianNoiseSpec | GaussianBlurSpec | RainSpec | LowLightSpec

DEGRADATIONS: dict[str, type] = {
    "gaussian_noise": GaussianNoiseSpec,
    "gaussian_blur": GaussianBlurSpec,
    "rain": RainSpec,
    "low_light": LowLightSpec,
}


# -- applying them ------------------------------------------------------------------------------------


def margin(spec: DegradeSpec) -> int:
    """Context pixels a crop needs on each side so that degrading the crop and cutting the margin off
    equals cropping the degraded whole image (exactly, for blur without noise). Noise and low light are
    per pixel and rain streaks are drawn on the crop itself, so they need none."""
    if isinstance(spec, GaussianBlurSpec):
        return spec.radius(_range("sigma", spec.sigma, low=0.0)[1])
    if isinstance(spec, (GaussianNoiseSpec, RainSpec, LowLightSpec)):
        return 0
    raise GlmhaError(f"unknown degradation {type(spec).__name__}")


def degrade(spec: DegradeSpec, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply `spec` to one image (C, H, W) in [0, 1]; a new tensor of the same shape, device and dtype."""
    if clean.dim() != 3:
        raise GlmhaError(f"degrade expects one (C, H, W) image, got shape {tuple(clean.shape)}")
    if not clean.is_floating_point():
        raise GlmhaError(f"degrade needs a floating-point image in [0, 1], got {clean.dtype}")
    if isinstance(spec, GaussianNoiseSpec):
        return add_gaussian_noise(clean, _draw(_range("sigma", spec.sigma, low=0.0), generator), generator)
    if isinstance(spec, GaussianBlurSpec):
        return _blur(spec, clean, generator)
    if isinstance(spec, RainSpec):
        return _rain(spec, clean, generator)
    if isinstance(spec, LowLightSpec):
        return _low_light(spec, clean, generator)
    raise GlmhaError(f"unknown degradation {type(spec).__name__}")


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (2 * radius + 1,) in float64; sigma 0 is the identity."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    if sigma == 0:
        return (offsets == 0).double()
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _pad_mode(pad: int, size: int) -> str:
    """Reflect (like OpenCV's default border) where the image is long enough, else replicate."""
    return "reflect" if pad < size else "replicate"


def _blur_axis(image: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D convolution along `dim` (-1 or -2) of (C, H, W) as a weighted sum of shifted copies.

    Why not conv2d: a fixed sum order makes a blurred crop bit-identical to the same crop of the
    blurred whole image (conv2d's algorithm, hence rounding, depends on the tensor size).
    """
    radius = (taps.numel() - 1) // 2
    if radius == 0:
        return image * taps[0].item()
    size = image.shape[dim]
    pads = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    padded = F.pad(image.unsqueeze(0), pads, mode=_pad_mode(radius, size)).squeeze(0)  # (C, H', W')
    out = torch.zeros_like(image)
    for index, weight in enumerate(taps.tolist()):
        out.add_(padded.narrow(dim, index, size), alpha=weight)
    return out


def _blur(spec: GaussianBlurSpec, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = _draw(_range("sigma", spec.sigma, low=0.0), generator)
    taps = gaussian_kernel(sigma, spec.radius(sigma)).to(clean.dtype)
    blurred = _blur_axis(_blur_axis(clean, taps, -1), taps, -2)
    if spec.noise > 0:
        blurred = add_gaussian_noise(blurred, spec.noise, generator)
    return blurred.clamp_(0.0, 1.0)


def line_kernel(length: float, angle: float, width: int) -> torch.Tensor:
    """An anti-aliased straight line (k, k) through the centre, `angle` degrees from vertical, with
    values near 1 along it (not normalised: a streak keeps its seed's brightness along its length)."""
    size = 2 * math.ceil((length + width) / 2) + 1
    half = size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    dy, dx = torch.meshgrid(coords, coords, indexing="ij")  # (k, k) each
    theta = math.radians(angle)
    along = -dy * math.cos(theta) + dx * math.sin(theta)  # distance along the streak, up is positive
    across = dy * math.sin(theta) + dx * math.cos(theta)  # distance across it
    body = (width / 2 + 0.5 - across.abs()).clamp(0, 1)
    ends = (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return (body * ends).float()


def _rain(spec: RainSpec, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    _, height, width = clean.shape
    density = _draw_int(_range("streaks", spec.streaks, low=0, integer=True), generator)
    length = _draw(_range("length", spec.length, low=1.0), generator)
    angle = _draw(_range("angle", spec.angle, low=-90.0), generator)
    intensity = _draw(_range("intensity", spec.intensity, low=0.0), generator)
    kernel = line_kernel(length, angle, spec.width)  # (k, k)
    k = kernel.shape[0]
    # Seeds lie on a canvas k-1 pixels larger, so streaks entering from outside keep the density uniform
    # up to the borders. Each seed stamps the kernel onto the image (a 'valid' convolution of the seed map,
    # done as a scatter because seeds are sparse: ~100x faster than conv2d with a 33x33 kernel).
    canvas_h, canvas_w = height + k - 1, width + k - 1
    count = round(density * canvas_h * canvas_w / RAIN_REFERENCE_AREA)
    positions = torch.randint(0, canvas_h * canvas_w, (count,), generator=generator)
    lo, hi = _RAIN_SEED_BRIGHTNESS
    brightness = lo + (hi - lo) * torch.rand(count, generator=generator)
    tap_y, tap_x = kernel.nonzero(as_tuple=True)  # (T,) each
    tap_w = kernel[tap_y, tap_x]  # (T,)
    rows = (positions // canvas_w)[:, None] - tap_y[None, :]  # (count, T): output row of each stamp pixel
    cols = (positions % canvas_w)[:, None] - tap_x[None, :]  # (count, T)
    values = brightness[:, None] * tap_w[None, :]  # (count, T)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    streaks = torch.zeros(height * width)
    streaks.index_add_(0, (rows * width + cols)[inside], values[inside])  # CPU: a fixed, serial sum order
    streaks = streaks.clamp_(max=1.0).view(1, height, width)  # (1, H, W)
    streaks = streaks.to(device=clean.device, dtype=clean.dtype)
    return (clean + intensity * streaks).clamp_(0.0, 1.0)


def _low_light(spec: LowLightSpec, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """LowLightSpec's model; the noise is drawn on the CPU in float32 (as add_gaussian_noise does), so a
    seed gives the same image on any device."""
    exposure, gamma, shot, read = (_draw(bounds, generator) for bounds in spec.bounds().values())
    dark = clean.clamp(0.0, 1.0).pow(gamma).mul_(exposure)  # clamp first: a negative base has no real power
    if shot == 0 and read == 0:
        return dark
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
    noise = noise.to(device=clean.device, dtype=clean.dtype)
    std = (dark * shot).add_((read / 255.0) ** 2).sqrt_()
    return dark.add_(std * noise).clamp_(0.0, 1.0)
