"""Distillation data: every source form, exact reproducibility, aligned crops, degradations, errors."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glmha.data.degrade import (
    DEGRADATIONS,
    GaussianBlurSpec,
    GaussianNoiseSpec,
    RainSpec,
    degrade,
    margin,
    seeded_generator,
)
from glmha.data.sample_images import TEST_IMAGES, load_sample
from glmha.distill.data import (
    ImageSource,
    TrainPatches,
    ValImages,
    check_patch_size,
    open_source,
    stable_seed,
)
from glmha.errors import GlmhaError
from glmha.restore.tiling import crop_to, pad_to_multiple


@dataclasses.dataclass(frozen=True)
class Source:
    """Stands in for the recipe's source section (any object with these attributes will do)."""

    inputs: Path | None = None
    targets: Path | None = None
    clean: Path | None = None
    samples: str | None = None
    degrade: Any = None


def save(array: np.ndarray, path: Path, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def random_rgb(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # (H, W, 3)


def gradient(height: int, width: int) -> np.ndarray:
    """16-bit grey with unique pixel values y * width + x, so any crop can be located in the image."""
    return np.arange(height * width, dtype=np.uint16).reshape(height, width)  # (H, W)


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1], the way the sources read files."""
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)


def paired_folders(root: Path, count: int = 3, size: tuple[int, int] = (40, 48)) -> tuple[Path, Path]:
    """Identical images in inputs/ and targets/, so input == target after any aligned transform."""
    for index in range(count):
        array = random_rgb(index, *size)
        save(array, root / "inputs" / f"img{index}.png")
        save(array, root / "targets" / f"img{index}.png")
    return root / "inputs", root / "targets"


# -- source forms ------------------------------------------------------------------------------------


def test_paired_folders(tmp_path: Path) -> None:
    inputs, targets = paired_folders(tmp_path)
    save(np.zeros((4, 4), dtype=np.uint8), inputs / "sub.png" / "nested.png")  # a folder: skipped
    (inputs / "notes.txt").write_text("not an image")
    source = open_source(Source(inputs=inputs, targets=targets), channels=3, where="data.train")
    assert isinstance(source, ImageSource) and source.where == "data.train"
    assert source.names == ["img0.png", "img1.png", "img2.png"] and len(source) == 3
    assert source.has_target and source.sizes == [(40, 48)] * 3 and source.margin == 0
    image, target = source.read(1)
    assert image.dtype == torch.float32 and image.shape == (3, 40, 48)
    assert torch.equal(image, to_tensor(random_rgb(1, 40, 48))) and torch.equal(image, target)
    grey = open_source(Source(inputs=inputs, targets=targets), channels=1, where="data.val")
    assert grey.read(0)[0].shape == (1, 40, 48)


def test_inputs_only(tmp_path: Path) -> None:
    inputs, _ = paired_folders(tmp_path)
    source = open_source(Source(inputs=inputs), channels=3, where="data.train")
    assert not source.has_target and source.read(0)[1] is None
    item = TrainPatches(source, patch_size=16, length=5, seed=0)[4]
    assert set(item) == {"input"} and item["input"].shape == (3, 16, 16)
    val = ValImages(source)[2]
    assert set(val) == {"input", "index"} and int(val["index"]) == 2


def test_clean_folder_degraded_on_the_fly(tmp_path: Path) -> None:
    array = random_rgb(0, 32, 24)
    save(array, tmp_path / "clean" / "a.png")
    spec = GaussianNoiseSpec(sigma=25.0)
    source = open_source(Source(clean=tmp_path / "clean", degrade=spec), channels=3, where="data.train")
    assert source.has_target and source.synthetic and source.sizes == [(32, 24)]
    noisy, clean = source.read(0, seeded_generator(5))
    assert torch.equal(clean, to_tensor(array))
    assert torch.equal(noisy, degrade(spec, clean, seeded_generator(5)))
    assert not torch.equal(noisy, clean)
    item = TrainPatches(source, patch_size=16, length=3, seed=0)[2]
    assert set(item) == {"input", "target"} and item["input"].shape == item["target"].shape == (3, 16, 16)


def test_sample_photos(tmp_path: Path) -> None:
    spec = GaussianNoiseSpec(sigma=15.0)
    source = open_source(Source(samples="test", degrade=spec), channels=3, where="data.val")
    assert source.names == list(TEST_IMAGES) and source.has_target
    first = load_sample(TEST_IMAGES[0])  # (3, H, W)
    assert source.sizes[0] == tuple(first.shape[-2:])
    noisy, clean = source.read(0, seeded_generator(0))
    assert torch.equal(clean, first) and noisy.shape == first.shape
    grey = open_source(Source(samples="test", degrade=spec), channels=1, where="data.val")
    rgb = (first * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    save(rgb, tmp_path / "astronaut.png")  # a grey model reading the same photo from a file
    expected = open_source(Source(inputs=tmp_path), channels=1, where="x").read(0)[0]
    assert torch.equal(grey.read_clean(0), expected)
    assert pickle.loads(pickle.dumps(source)).read_clean(2).shape == source.read_clean(2).shape


def test_file_formats(tmp_path: Path) -> None:
    rgb = np.full((16, 24, 3), (200, 100, 50), dtype=np.uint8)
    save(rgb, tmp_path / "a.png")
    save(rgb, tmp_path / "b.JPG", quality=95)
    save(rgb, tmp_path / "c.tif")
    deep = np.full((16, 24), 32768, dtype=np.uint16)
    deep[0, 0] = 65535
    save(deep, tmp_path / "d.png")
    source = open_source(Source(inputs=tmp_path), channels=3, where="data.train")
    assert source.names == ["a.png", "b.JPG", "c.tif", "d.png"] and source.sizes == [(16, 24)] * 4
    expected = to_tensor(rgb)
    assert torch.equal(source.read(0)[0], expected) and torch.equal(source.read(2)[0], expected)
    assert (source.read(1)[0] - expected).abs().max() < 4 / 255  # lossy
    sixteen = source.read(3)[0]
    assert sixteen[:, 0, 0].tolist() == [1.0] * 3
    assert float(sixteen[1, 5, 5]) == pytest.approx(32768 / 65535, abs=1e-7)


def test_pairs_by_stem_when_suffixes_differ(tmp_path: Path) -> None:
    for name in ("x1", "x2"):
        save(random_rgb(0, 8, 8), tmp_path / "in" / f"{name}.jpg")
        save(random_rgb(0, 8, 8), tmp_path / "gt" / f"{name}.png")
    save(random_rgb(1, 8, 8), tmp_path / "in" / "x3.png")  # full names match first
    save(random_rgb(1, 8, 8), tmp_path / "gt" / "x3.png")
    source = open_source(Source(inputs=tmp_path / "in", targets=tmp_path / "gt"), channels=3, where="data.val")
    assert source.names == ["x1.jpg", "x2.jpg", "x3.png"]
    assert torch.equal(*source.read(2))


# -- errors ------------------------------------------------------------------------------------------


def test_unmatched_pairs(tmp_path: Path) -> None:
    for index in range(8):
        save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "in" / f"i{index}.png")
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "gt" / "i0.png")
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "gt" / "other.png")
    with pytest.raises(GlmhaError) as info:
        open_source(Source(inputs=tmp_path / "in", targets=tmp_path / "gt"), channels=3, where="data.train")
    assert one_line(info) == ("data.train: inputs and targets do not pair up by file name: 7 input(s) without a "
                              "target (i1.png, i2.png, i3.png, i4.png, i5.png and 2 more), 1 target(s) without "
                              "an input (other.png)")


def test_pair_of_different_sizes(tmp_path: Path) -> None:
    save(np.zeros((8, 10), dtype=np.uint8), tmp_path / "in" / "a.png")
    save(np.zeros((8, 12), dtype=np.uint8), tmp_path / "gt" / "a.png")
    spec = Source(inputs=tmp_path / "in", targets=tmp_path / "gt")
    with pytest.raises(GlmhaError) as info:
        open_source(spec, channels=3, where="data.val")
    assert one_line(info) == "data.val: input a.png is 10x8 pixels but its target a.png is 12x8"
    save(np.zeros((8, 10), dtype=np.uint8), tmp_path / "gt" / "a.png")
    source = open_source(spec, channels=3, where="data.val")
    save(np.zeros((9, 10), dtype=np.uint8), tmp_path / "gt" / "a.png")  # changed after indexing
    with pytest.raises(GlmhaError) as info:
        source.read(0)
    assert one_line(info) == "data.val: input a.png is 10x8 pixels but its target a.png is 10x9"


def test_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(GlmhaError) as info:
        open_source(Source(inputs=missing), channels=3, where="data.train")
    assert one_line(info) == f"data.train.inputs: folder {missing}: does not exist"
    file = save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "x.png")
    with pytest.raises(GlmhaError, match=r"^data\.val\.clean: folder .*x\.png: is not a folder$"):
        open_source(Source(clean=file, degrade=GaussianNoiseSpec()), channels=3, where="data.val")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing")
    with pytest.raises(GlmhaError) as info:
        open_source(Source(inputs=tmp_path, targets=empty), channels=3, where="data.train")
    assert one_line(info) == (f"data.train.targets: folder {empty}: no images in it (looked for .png, .jpg, "
                              f".jpeg, .tif, .tiff, any case)")


def test_unreadable_files(tmp_path: Path) -> None:
    save(random_rgb(0, 32, 32), tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(GlmhaError, match=r"^data\.train\.inputs: image .*b\.jpg: cannot be read \(") as info:
        open_source(Source(inputs=tmp_path), channels=3, where="data.train")  # at open: the header is bad
    one_line(info)
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.jpg").unlink()
    (tmp_path / "c.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixel data cut off
    source = open_source(Source(clean=tmp_path, degrade=GaussianNoiseSpec()), channels=3, where="data.val")
    with pytest.raises(GlmhaError, match=r"^data\.val\.clean: image .*c\.png: cannot be read \(") as info:
        source.read(1, seeded_generator(0))
    one_line(info)


def test_channel_count(tmp_path: Path) -> None:
    paired_folders(tmp_path, count=1)
    with pytest.raises(GlmhaError) as info:
        open_source(Source(inputs=tmp_path / "inputs"), channels=6, where="data.train")
    assert one_line(info) == ("data.train: this model takes 6 channels; image folders can only feed 1- or "
                              "3-channel models")


def test_patch_size_check(tmp_path: Path) -> None:
    save(np.zeros((200, 200), dtype=np.uint8), tmp_path / "rain-011.png")
    save(np.zeros((80, 96), dtype=np.uint8), tmp_path / "rain-012.png")
    save(np.zeros((60, 60), dtype=np.uint8), tmp_path / "rain-013.png")
    source = open_source(Source(inputs=tmp_path), channels=3, where="data.train")
    with pytest.raises(GlmhaError) as info:
        check_patch_size(source, 128)
    assert one_line(info) == "data.train: image rain-012.png is 96x80 pixels, smaller than patch_size 128"
    with pytest.raises(GlmhaError, match=r"rain-013\.png is 60x60 pixels, smaller than patch_size 64"):
        TrainPatches(source, patch_size=64, length=10, seed=0)
    check_patch_size(source, 60)  # fits exactly; a blur margin would be clamped, not required
    blurred = open_source(Source(clean=tmp_path, degrade=GaussianBlurSpec(sigma=3.0)), channels=1, where="x")
    assert TrainPatches(blurred, patch_size=60, length=3, seed=0)[2]["input"].shape == (1, 60, 60)


# -- training patches --------------------------------------------------------------------------------


def test_items_are_pure_functions_of_seed_and_index(tmp_path: Path) -> None:
    inputs, targets = paired_folders(tmp_path, count=4)
    source = open_source(Source(inputs=inputs, targets=targets), channels=3, where="data.train")
    first = TrainPatches(source, patch_size=16, length=40, seed=7)
    second = TrainPatches(open_source(Source(inputs=inputs, targets=targets), channels=3, where="data.train"),
                          patch_size=16, length=40, seed=7)
    forward = [first[i]["input"] for i in range(40)]
    backward = {i: second[i]["input"] for i in reversed(range(40))}
    assert all(torch.equal(forward[i], backward[i]) for i in range(40))
    other = TrainPatches(source, patch_size=16, length=40, seed=8)
    assert sum(torch.equal(forward[i], other[i]["input"]) for i in range(40)) < 4
    loader = DataLoader(first, batch_size=5, num_workers=2, shuffle=False)  # workers get pickled copies
    assert torch.equal(torch.cat([batch["input"] for batch in loader]), torch.stack(forward))
    with pytest.raises(IndexError):
        first[40]


def test_every_image_once_per_pass(tmp_path: Path) -> None:
    for index in range(5):
        save(np.full((8, 8), index * 40, dtype=np.uint8), tmp_path / f"{index}.png")
    source = open_source(Source(inputs=tmp_path), channels=1, where="data.train")
    patches = TrainPatches(source, patch_size=4, length=17, seed=3)
    seen = [round(float(patches[i]["input"][0, 0, 0]) * 255 / 40) for i in range(17)]
    passes = [seen[0:5], seen[5:10], seen[10:15]]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # a new order each pass
    assert seen[15] in range(5) and seen == [patches.image_index(i) for i in range(17)]


def locate(patch: torch.Tensor, image: torch.Tensor) -> tuple[tuple[bool, bool, bool], int, int]:
    """Which flips (h, v, transpose) and crop of `image` (1, H, W) of unique values made `patch`."""
    size = patch.shape[-1]
    for flags in [(h, v, t) for h in (False, True) for v in (False, True) for t in (False, True)]:
        undone = patch.transpose(-2, -1) if flags[2] else patch  # (1, P, P)
        undone = undone.flip(-2) if flags[1] else undone
        undone = undone.flip(-1) if flags[0] else undone
        where = (image[0] == undone[0, 0, 0]).nonzero()
        if len(where) == 1:
            top, left = where[0].tolist()
            if torch.equal(image[:, top:top + size, left:left + size], undone):
                return flags, top, left
    raise AssertionError("patch is not a flipped crop of the image")


def redo(crop: torch.Tensor, flags: tuple[bool, bool, bool]) -> torch.Tensor:
    crop = crop.flip(-1) if flags[0] else crop
    crop = crop.flip(-2) if flags[1] else crop
    return crop.transpose(-2, -1) if flags[2] else crop


def test_crops_and_flips_stay_aligned(tmp_path: Path) -> None:
    save(gradient(40, 52), tmp_path / "in" / "g.png")
    save(gradient(40, 52), tmp_path / "gt" / "g.png")
    source = open_source(Source(inputs=tmp_path / "in", targets=tmp_path / "gt"), channels=1, where="t")
    image = source.read(0)[0]
    patches = TrainPatches(source, patch_size=12, length=64, seed=0)
    used, positions = set(), set()
    for i in range(64):
        item = patches[i]
        assert torch.equal(item["input"], item["target"])
        flags, top, left = locate(item["input"], image)
        used.add(flags)
        positions.add((top, left))
    assert len(used) == 8 and len(positions) > 40
    plain = TrainPatches(source, patch_size=12, length=16, seed=0, flips=False)
    assert all(locate(plain[i]["input"], image)[0] == (False, False, False) for i in range(16))


def test_blurred_patches_equal_crops_of_the_blurred_image(tmp_path: Path) -> None:
    save(gradient(30, 36), tmp_path / "g.png")
    spec = GaussianBlurSpec(sigma=1.5)  # radius 5: crops near the border get a clamped margin
    source = open_source(Source(clean=tmp_path, degrade=spec), channels=1, where="data.train")
    clean = source.read_clean(0)  # (1, 30, 36)
    whole = degrade(spec, clean, seeded_generator(0))
    patches = TrainPatches(source, patch_size=14, length=40, seed=1)
    for i in range(40):
        item = patches[i]
        flags, top, left = locate(item["target"], clean)
        expected = redo(whole[:, top:top + 14, left:left + 14], flags)
        assert (item["input"] - expected).abs().max() <= 1e-6


def test_rain_patches(tmp_path: Path) -> None:
    save(np.full((48, 48, 3), 60, dtype=np.uint8), tmp_path / "flat.png")
    source = open_source(Source(clean=tmp_path, degrade=RainSpec()), channels=3, where="data.train")
    patches = TrainPatches(source, patch_size=32, length=4, seed=0)
    item = patches[3]
    assert (item["input"] >= item["target"]).all() and (item["input"] > item["target"]).any()
    assert torch.equal(item["input"], TrainPatches(source, patch_size=32, length=4, seed=0)[3]["input"])


# -- validation images -------------------------------------------------------------------------------


def test_val_images(tmp_path: Path) -> None:
    for index in range(4):
        save(random_rgb(index, 12 + index, 20), tmp_path / f"v{index}.png")
    source = open_source(Source(clean=tmp_path, degrade=GaussianNoiseSpec(sigma=(5.0, 50.0))), channels=3,
                         where="data.val")
    val = ValImages(source, seed=2, limit=3)
    assert len(val) == 3 and len(ValImages(source, limit=9)) == 4
    item = val[1]
    assert item["input"].shape == item["target"].shape == (3, 13, 20) and int(item["index"]) == 1
    again = ValImages(source, seed=2)[1]
    assert torch.equal(item["input"], again["input"])
    assert not torch.equal(item["input"], ValImages(source, seed=3)[1]["input"])
    with pytest.raises(IndexError):
        val[3]
    with pytest.raises(GlmhaError, match="limit must be at least 1"):
        ValImages(source, limit=0)


def test_stable_seed() -> None:
    assert stable_seed("x", 1, 2) == stable_seed("x", 1, 2) == 8515690122809947191
    assert stable_seed("x", 1, 2) != stable_seed("x", 2, 1) and 0 <= stable_seed("y", 0) < 2**63


# -- degradations ------------------------------------------------------------------------------------


def test_gaussian_noise_statistics() -> None:
    clean = torch.full((3, 256, 256), 0.5)
    noise = degrade(GaussianNoiseSpec(sigma=25.0), clean, seeded_generator(0)) - clean
    assert abs(float(noise.std()) - 25 / 255) < 0.01 * 25 / 255 and abs(float(noise.mean())) < 1e-3
    spread = [float((degrade(GaussianNoiseSpec(sigma=(10.0, 50.0)), clean, seeded_generator(s)) - clean).std())
              * 255 for s in range(6)]
    assert all(9.8 < s < 51 for s in spread) and max(spread) - min(spread) > 5
    assert torch.equal(degrade(GaussianNoiseSpec(sigma=0.0), clean, seeded_generator(0)), clean)


def test_gaussian_blur() -> None:
    image = torch.rand(3, 40, 50, generator=seeded_generator(0))
    spec = GaussianBlurSpec(sigma=2.0)
    assert margin(spec) == 6 and margin(GaussianBlurSpec(sigma=(0.5, 3.2))) == 10
    assert margin(GaussianBlurSpec(kernel_size=7, sigma=5.0)) == 3
    assert margin(GaussianNoiseSpec()) == margin(RainSpec()) == 0
    whole = degrade(spec, image, seeded_generator(0))
    assert whole.shape == image.shape and whole.std() < image.std() * 0.5
    assert abs(float(whole.mean()) - float(image.mean())) < 2e-3  # normalised kernel
    for top, left in [(10, 12), (0, 0), (22, 31), (3, 35)]:  # interior, and margins clamped at each border
        y0, x0 = max(top - 6, 0), max(left - 6, 0)
        y1, x1 = min(top + 18 + 6, 40), min(left + 15 + 6, 50)
        blurred = degrade(spec, image[:, y0:y1, x0:x1], seeded_generator(0))
        inner = blurred[:, top - y0:top - y0 + 18, left - x0:left - x0 + 15]
        assert (inner - whole[:, top:top + 18, left:left + 15]).abs().max() <= 1e-6
    constant = torch.full((1, 9, 9), 0.25)
    assert torch.allclose(degrade(spec, constant, seeded_generator(0)), constant)  # larger radius than image
    noisy = degrade(GaussianBlurSpec(sigma=1.0, noise=30.0), image, seeded_generator(0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, degrade(
        GaussianBlurSpec(sigma=1.0), image, seeded_generator(0)))


def test_rain() -> None:
    clean = torch.rand(3, 96, 80, generator=seeded_generator(1)) * 0.8
    spec = RainSpec()
    rainy = degrade(spec, clean, seeded_generator(4))
    assert rainy.shape == clean.shape and rainy.min() >= 0 and rainy.max() <= 1
    changed = (rainy != clean).any(0).float().mean()
    assert 0.01 < float(changed) < 0.5
    assert torch.equal(rainy, degrade(spec, clean, seeded_generator(4)))
    assert not torch.equal(rainy, degrade(spec, clean, seeded_generator(5)))
    assert (rainy - clean).min() >= 0  # rain only brightens
    assert torch.equal(degrade(RainSpec(streaks=0), clean, seeded_generator(0)), clean)
    straight = RainSpec(angle=0.0, length=20.0, streaks=300)
    vertical = degrade(straight, torch.zeros(1, 128, 128), seeded_generator(0))
    along = (vertical[:, 1:] - vertical[:, :-1]).abs().mean()
    across = (vertical[:, :, 1:] - vertical[:, :, :-1]).abs().mean()
    assert along < 0.3 * across  # streaks run down the columns


def test_spec_validation() -> None:
    assert set(DEGRADATIONS) == {"gaussian_noise", "gaussian_blur", "rain", "low_light"}
    spec = DEGRADATIONS["gaussian_noise"].from_dict({"type": "gaussian_noise", "sigma": [5, 50]})
    assert spec == GaussianNoiseSpec(sigma=(5.0, 50.0)) and spec.to_dict() == {"type": "gaussian_noise",
                                                                               "sigma": [5.0, 50.0]}
    assert RainSpec.from_dict({"angle": 10, "streaks": [5, 9]}).angle == 10.0
    cases = [
        (lambda: GaussianNoiseSpec(sigma=-3), "sigma: must be >= 0, got -3"),
        (lambda: GaussianNoiseSpec(sigma=(9.0, 2.0)), "sigma: a range must be [low, high] with low <= high, "
                                                      "got [9, 2]"),
        (lambda: GaussianNoiseSpec(sigma=(1.0, 2.0, 3.0)), "sigma: a range must be [low, high], got [1, 2, 3]"),
        (lambda: GaussianNoiseSpec(type="rain"),
         "type: must be 'gaussian_noise' for GaussianNoiseSpec, got 'rain'"),
        (lambda: GaussianBlurSpec(sigma=float("nan")), "sigma: must be a finite number, got nan"),
        (lambda: GaussianBlurSpec(kernel_size=4), "kernel_size: must be 0 (automatic) or a positive odd number, "
                                                  "got 4"),
        (lambda: GaussianBlurSpec(noise=-1.0), "noise: must be >= 0, got -1"),
        (lambda: RainSpec(width=0), "width: must be between 1 and 16 pixels, got 0"),
        (lambda: RainSpec(intensity=(0.5, 1.5)), "intensity: must be <= 1, got [0.5, 1.5]"),
        (lambda: RainSpec(angle=(-100.0, 0.0)), "angle: must be >= -90, got [-100, 0]"),
        (lambda: RainSpec(streaks=(10, 5)), "streaks: a range must be [low, high] with low <= high, got [10, 5]"),
        (lambda: RainSpec(length=0.5), "length: must be >= 1, got 0.5"),
    ]
    for make, message in cases:
        with pytest.raises(GlmhaError) as info:
            make()
        assert one_line(info) == message
    with pytest.raises(GlmhaError, match="unknown key"):
        RainSpec.from_dict({"drops": 3})


# -- padding -----------------------------------------------------------------------------------------


def test_pad_to_multiple_round_trip() -> None:
    x = torch.rand(2, 3, 13, 17, generator=seeded_generator(0))
    padded, size = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 24) and size == (13, 17)
    assert torch.equal(padded[..., 13, :17], x[..., 11, :])  # reflect: row 13 mirrors row 11
    assert torch.equal(padded[..., :13, 17], x[..., 15])
    assert torch.equal(crop_to(padded, size), x)
    tiny = torch.rand(1, 1, 3, 2)
    padded, size = pad_to_multiple(tiny, 8)  # too small to reflect: replicated
    assert padded.shape == (1, 1, 8, 8) and torch.equal(padded[..., 7, 7], tiny[..., 2, 1])
    assert torch.equal(crop_to(padded, size), tiny)
    same, size = pad_to_multiple(x, 1)
    assert same is x and size == (13, 17)
