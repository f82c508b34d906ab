"""Calibration images from a user's folder, as model-ready tensors.

Why: activation spectra (`--calib`) should come from the user's own data. Images are centre-cropped
rather than resized so that pixel statistics (noise, texture scale) stay exactly as in the data, and
cropped to a multiple of `multiple` because the U-shaped models downsample by 2 per level.

Bit depth: 8-bit images are divided by 255 and 16-bit grey images (Pillow modes "I;16*" and "I") by
65535. Pillow itself reduces 16-bit *colour* PNGs to 8 bits per channel when it opens them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glmha.errors import GlmhaError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_CHANNEL_MODES = {1: "L", 3: "RGB"}


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder` (not recursive), sorted by file name."""
    return find_images(folder, f"calibration folder {Path(folder)}")


def find_images(folder: Path, what: str) -> list[Path]:
    """`list_images` with the error prefix `what` (e.g. "data.train: inputs folder /x"), for callers
    that speak in their own terms (a recipe key rather than a CLI flag)."""
    folder = Path(folder)
    if not folder.exists():
        raise GlmhaError(f"{what}: does not exist")
    if not folder.is_dir():
        raise GlmhaError(f"{what}: is not a folder")
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    except OSError as error:
        raise GlmhaError(f"{what}: cannot be listed ({error.strerror or error})") from None
    if not files:
        raise GlmhaError(f"{what}: no images in it (looked for {', '.join(IMAGE_SUFFIXES)}, any case)")
    return sorted(files, key=lambda p: p.name)


def read_calibration_images(folder: Path, channels: int, *, multiple: int = 8, max_side: int = 256,
                            limit: int | None = None) -> list[torch.Tensor]:
    """Read every image in `folder` as a float32 (1, channels, H, W) tensor in [0, 1], centre-cropped.

    Each side is cropped to min(side, max_side) rounded down to a multiple of `multiple`, keeping the
    centre; `limit` keeps only the first `limit` files by name.
    """
    if channels not in _CHANNEL_MODES:
        raise GlmhaError(f"calibration images can only feed 1- or 3-channel models, this one takes {channels}")
    if multiple < 1:
        raise GlmhaError(f"calibration crop multiple must be at least 1, got {multiple}")
    if max_side < multiple:
        raise GlmhaError(f"calibration max side {max_side} is smaller than the crop multiple {multiple}")
    if limit is not None and limit < 1:
        raise GlmhaError(f"calibration image limit must be at least 1, got {limit}")
    files = list_images(folder)
    if limit is not None:
        files = files[:limit]
    return [read_image(path, channels, multiple=multiple, max_side=max_side) for path in files]


def read_image(path: Path, channels: int, *, multiple: int = 8, max_side: int = 256) -> torch.Tensor:
    """One image as a float32 (1, channels, H, W) tensor in [0, 1], centre-cropped as described above."""
    pixels = _load_pixels(Path(path), channels)  # (H, W) or (H, W, 3), float32 in [0, 1]
    height, width = pixels.shape[:2]
    crop_h = min(height, max_side) // multiple * multiple
    crop_w = min(width, max_side) // multiple * multiple
    if crop_h < multiple or crop_w < multiple:
        raise GlmhaError(f"calibration image {path}: {width}x{height} pixels is smaller than {multiple} "
                         f"on a side; images need at least {multiple}x{multiple}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    pixels = pixels[top:top + crop_h, left:left + crop_w]
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, h, w)
    return torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0)  # (1, C, h, w)


def _load_pixels(path: Path, channels: int) -> np.ndarray:
    """Decode with Pillow and scale by the file's bit depth; any decoding failure names the file."""
    return decode_image(path, channels, f"calibration image {path}")


def _failure(error: Exception, path: Path) -> str:
    """Why Pillow could not read `path`, as a short parenthesis: the file's own state first (empty,
    permission denied), then Pillow's exception type and first line. The caller names the file, so
    the path Pillow repeats in its messages is left out."""
    from PIL import UnidentifiedImageError

    if _is_empty(path):
        return "(empty file)"
    if isinstance(error, UnidentifiedImageError):
        return "(not an image format Pillow recognises)"
    if isinstance(error, OSError) and error.strerror:
        return f"({error.strerror})"
    first = str(error).splitlines()[0] if str(error) else "no details"
    return f"({type(error).__name__}: {first})"


def _is_empty(path: Path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


def check_image(path: Path, what: str) -> tuple[int, int]:
    """(H, W) after decoding every pixel, so a truncated or damaged file fails here, before a long job
    meets it (the header alone, as `image_size` reads it, is intact in a cut-off download)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except Exception as error:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise GlmhaError(f"{what}: cannot be read {_failure(error, path)}") from None
    return height, width


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from the file header only: Pillow opens lazily, so indexing thousands of files is fast."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:  # Pillow raises many types for corrupt headers
        raise GlmhaError(f"{what}: cannot be read {_failure(error, path)}") from None
    return height, width


def decode_image(path: Path, channels: int, what: str) -> np.ndarray:
    """Pixels (H, W) or (H, W, 3) float32 in [0, 1]: 8-bit /255, 16-bit grey /65535. `what` starts
    every error message, so each caller names the file in its own terms."""
    from PIL import Image

    if channels not in _CHANNEL_MODES:
        raise GlmhaError(f"{what}: images can only feed 1- or 3-channel models, this one takes {channels}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in SIXTEEN_BIT_MODES:
                raw = np.asarray(image).astype(np.float64)  # (H, W)
                grey = (np.clip(raw, 0.0, 65535.0) / 65535.0).astype(np.float32)
                return grey if channels == 1 else np.stack([grey] * 3, axis=-1)  # (H, W, 3)
            if mode == "F":
                raise GlmhaError(f"{what}: 32-bit float pixels (Pillow mode F) are not "
                                 f"supported; save it as 8- or 16-bit")
            converted = image.convert(_CHANNEL_MODES[channels])
    except GlmhaError:
        raise
    except Exception as error:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise GlmhaError(f"{what}: cannot be read {_failure(error, path)}") from None
    return np.asarray(converted, dtype=np.float32) / np.float32(255.0)  # (H, W) or (H, W, 3)
