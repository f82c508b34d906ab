"""The real photographs that scikit-image ships inside its wheel, as RGB tensors in [0, 1].

Why these: the project never downloads anything at run time (SPEC section 6), and `skimage.data`
bundles a few dozen images in the installed package. Only real photographs are used; synthetic or
binary images (colorwheel, logo, checkerboard, horse, binary_blobs, shepp_logan_phantom) would teach
a denoiser nothing about natural statistics, and the images that need the optional `pooch` download
(eagle, kidney, lily, skin, cells3d, ...) are left out because they are not available offline.

Colour photographs (8): astronaut, chelsea (`skimage.data.cat` is the very same array, so it is not
listed twice), coffee, rocket, motorcycle (left view of `stereo_motorcycle`; the right view is a
near-duplicate and is skipped), hubble_deep_field, immunohistochemistry, retina.

Grey photographs (9), stacked to three equal channels: camera, moon, coins, page, text, brick,
grass, gravel, cell. Skipped: clock (deliberately motion-blurred) and microaneurysms (102x102).

Split (fixed, never shuffled): the held-out test set is three everyday colour photographs,
astronaut, chelsea and coffee; everything else is for training. The other colour images are kept
for training because a colour denoiser needs real colour statistics there too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from glmha.errors import GlmhaError, InputShapeError

COLOUR_IMAGES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
    "immunohistochemistry", "retina",
)
GREY_IMAGES: tuple[str, ...] = (
    "camera", "moon", "coins", "page", "text", "brick", "grass", "gravel", "cell",
)
SAMPLE_IMAGES: tuple[str, ...] = COLOUR_IMAGES + GREY_IMAGES

TEST_IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee")
TRAIN_IMAGES: tuple[str, ...] = tuple(name for name in SAMPLE_IMAGES if name not in TEST_IMAGES)


def _loader(name: str) -> Callable[[], np.ndarray]:
    """The `skimage.data` function behind a name (imported lazily: scikit-image is slow to import)."""
    import skimage.data

    if name == "motorcycle":
        return lambda: skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)


@functools.cache
def _load_uint8(name: str) -> np.ndarray:
    """Decode once per process; the retina and Hubble images take a noticeable time to decode."""
    array = np.asarray(_loader(name)())
    if array.dtype != np.uint8:
        raise GlmhaError(f"sample image '{name}': expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)  # (h, w) -> (h, w, 3): grey as equal channels
    if array.ndim != 3 or array.shape[-1] != 3:
        raise GlmhaError(f"sample image '{name}': expected an RGB or grey image, got shape {array.shape}")
    array.setflags(write=False)
    return array


def load_sample(name: str) -> torch.Tensor:
    """One sample image as float32 (3, H, W) in [0, 1]; a fresh tensor the caller may modify."""
    if name not in SAMPLE_IMAGES:
        raise GlmhaError(f"unknown sample image '{name}'; known: {', '.join(SAMPLE_IMAGES)}")
    array = _load_uint8(name)
    # (h, w, 3) uint8 -> (3, h, w) float32
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().float().div_(255.0)


def train_images() -> list[tuple[str, torch.Tensor]]:
    """(name, image) for the training split, in the fixed order of TRAIN_IMAGES."""
    return [(name, load_sample(name)) for name in TRAIN_IMAGES]


def test_images() -> list[tuple[str, torch.Tensor]]:
    """(name, image) for the held-out split, in the fixed order of TEST_IMAGES."""
    return [(name, load_sample(name)) for name in TEST_IMAGES]


# The names start with "test": keep pytest from collecting them when a test module imports them.
test_images.__test__ = False  # type: ignore[attr-defined]
train_images.__test__ = False  # type: ignore[attr-defined]


def training_crops(side: int, count: int) -> torch.Tensor:
    """(count, 3, side, side): centre crops of the training photographs (never the held-out ones), cycled
    when `count` exceeds them; what the image families calibrate on when the user gives no images."""
    crops = []
    for index in range(count):
        name = TRAIN_IMAGES[index % len(TRAIN_IMAGES)]
        image = load_sample(name)  # (3, H, W)
        if min(image.shape[1:]) < side:
            raise InputShapeError(f"the offline calibration photograph '{name}' is "
                                  f"{image.shape[1]}x{image.shape[2]}, smaller than {side}x{side}")
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        crops.append(image[:, top:top + side, left:left + side])
    return torch.stack(crops)
