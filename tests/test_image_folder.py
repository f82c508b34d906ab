"""Calibration images: bit depths, centre crops, channel conversion, ordering and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glmha.data.image_folder import read_calibration_images
from glmha.errors import GlmhaError


def gradient(height: int, width: int) -> np.ndarray:
    """Pixel (y, x) holds y * width + x, so a crop's first value tells where it started."""
    return np.arange(height * width, dtype=np.uint16).reshape(height, width)  # (H, W)


def save(array: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


def read_one(path: Path, channels: int, **options) -> torch.Tensor:
    (image,) = read_calibration_images(path.parent, channels, **options)
    return image


def test_eight_bit_rgb_png_exact(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 128, 255, 0
    image = read_one(save(rgb, tmp_path / "a.png"), 3)
    assert image.dtype == torch.float32 and image.shape == (1, 3, 8, 8)
    assert torch.equal(image[0, 0], torch.full((8, 8), 128 / 255, dtype=torch.float32))
    assert torch.equal(image[0, 1], torch.ones(8, 8)) and torch.equal(image[0, 2], torch.zeros(8, 8))


def test_eight_bit_grey_png(tmp_path: Path) -> None:
    grey = np.full((16, 8), 128, dtype=np.uint8)
    grey[0, 0] = 255
    path = save(grey, tmp_path / "g.png")
    image = read_one(path, 1)
    assert image.shape == (1, 1, 16, 8)
    assert image[0, 0, 0, 0] == 1.0 and image[0, 0, 1, 1] == torch.tensor(128 / 255, dtype=torch.float32)
    colour = read_one(path, 3)  # grey feeds a 3-channel model as three equal channels
    assert colour.shape == (1, 3, 16, 8)
    assert torch.equal(colour[0, 0], colour[0, 1]) and torch.equal(colour[0, 0], image[0, 0])


def test_sixteen_bit_grey_png(tmp_path: Path) -> None:
    grey = np.full((8, 8), 32768, dtype=np.uint16)
    grey[0, 0], grey[0, 1] = 65535, 0
    path = save(grey, tmp_path / "deep.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    image = read_one(path, 1)
    assert image[0, 0, 0, 0] == 1.0 and image[0, 0, 0, 1] == 0.0
    assert image[0, 0, 1, 1] == torch.tensor(32768 / 65535, dtype=torch.float32)
    colour = read_one(path, 3)
    assert colour.shape == (1, 3, 8, 8) and colour[0, 2, 0, 0] == 1.0


def test_mode_i_tiff_is_sixteen_bit(tmp_path: Path) -> None:
    values = np.full((8, 8), 65535, dtype=np.int32)
    values[0, 0] = 0
    path = save(values, tmp_path / "wide.tif")
    with Image.open(path) as check:
        assert check.mode == "I"
    image = read_one(path, 1)
    assert image[0, 0, 0, 0] == 0.0 and image[0, 0, 1, 1] == 1.0


def test_jpeg_and_tiff(tmp_path: Path) -> None:
    rgb = np.full((16, 24, 3), (200, 100, 50), dtype=np.uint8)
    save(rgb, tmp_path / "b.JPEG", quality=95)
    save(rgb, tmp_path / "c.TIFF")
    jpeg, tiff = read_calibration_images(tmp_path, 3)
    assert jpeg.shape == tiff.shape == (1, 3, 16, 24)
    expected = torch.tensor([200, 100, 50], dtype=torch.float32).div(255).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    assert torch.equal(tiff, expected.expand_as(tiff))
    assert (jpeg - expected).abs().max() < 4 / 255  # lossy
    grey = read_calibration_images(tmp_path, 1, limit=1)[0]  # RGB feeds a grey model through Pillow's luma
    assert grey.shape == (1, 1, 16, 24)
    assert abs(float(grey.mean()) - (200 * 299 + 100 * 587 + 50 * 114) / 1000 / 255) < 4 / 255


def test_centre_crop_to_multiple(tmp_path: Path) -> None:
    path = save(gradient(30, 21), tmp_path / "grad.png")  # 30 rows, 21 columns, 16-bit
    image = read_one(path, 1, multiple=8)
    assert image.shape == (1, 1, 24, 16)
    rows = (image[0, 0] * 65535).round().long()  # (24, 16)
    top, left = (30 - 24) // 2, (21 - 16) // 2  # 3 rows and 2 columns dropped before the kept block
    assert torch.equal(rows, torch.from_numpy(gradient(30, 21)[top:top + 24, left:left + 16]).long())


def test_crop_to_max_side(tmp_path: Path) -> None:
    path = save(gradient(40, 12), tmp_path / "tall.png")
    image = read_one(path, 1, multiple=4, max_side=20)
    assert image.shape == (1, 1, 20, 12)
    assert round(float(image[0, 0, 0, 0]) * 65535) == 10 * 12  # first kept row is row (40 - 20) // 2
    assert read_one(path, 1, multiple=1, max_side=256).shape == (1, 1, 40, 12)


def test_sorting_limit_and_other_files(tmp_path: Path) -> None:
    for index, name in enumerate(["c.png", "a.tif", "B.jpg", "d.Png"]):
        save(np.full((8, 8), index * 10, dtype=np.uint8), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder with an image suffix is skipped, not recursed into
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "sub.png" / "inner.png")
    images = read_calibration_images(tmp_path, 1)
    assert [round(float(t[0, 0, 0, 0]) * 255) for t in images] == [20, 10, 0, 30]  # B.jpg a.tif c.png d.Png
    assert len(read_calibration_images(tmp_path, 1, limit=2)) == 2
    assert len(read_calibration_images(tmp_path, 1, limit=99)) == 4


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(GlmhaError, match="does not exist") as info:
        read_calibration_images(tmp_path / "missing", 3)
    assert "missing" in one_line(info)
    file = save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "x.png")
    with pytest.raises(GlmhaError, match="is not a folder"):
        read_calibration_images(file, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(GlmhaError, match=r"no images.*\.png.*\.tiff") as info:
        read_calibration_images(empty, 3)
    assert str(empty) in one_line(info)


def test_channel_count_error(tmp_path: Path) -> None:
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "x.png")
    with pytest.raises(GlmhaError, match="only feed 1- or 3-channel models") as info:
        read_calibration_images(tmp_path, 31)
    one_line(info)


def test_corrupt_image(tmp_path: Path) -> None:
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "a_good.png")
    (tmp_path / "b_bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(GlmhaError, match=r"b_bad\.jpg: cannot be read") as info:
        read_calibration_images(tmp_path, 3)
    one_line(info)
    whole = (tmp_path / "a_good.png").read_bytes()
    (tmp_path / "b_bad.jpg").unlink()
    (tmp_path / "c_cut.png").write_bytes(whole[: len(whole) // 2])  # truncated: header fine, data missing
    with pytest.raises(GlmhaError, match=r"c_cut\.png: cannot be read") as info:
        read_calibration_images(tmp_path, 1)
    one_line(info)


def test_too_small_image(tmp_path: Path) -> None:
    save(np.zeros((7, 32), dtype=np.uint8), tmp_path / "thin.png")
    with pytest.raises(GlmhaError, match=r"thin\.png: 32x7 pixels is smaller than 8") as info:
        read_calibration_images(tmp_path, 1)
    one_line(info)
    assert read_calibration_images(tmp_path, 1, multiple=7)[0].shape == (1, 1, 7, 28)


def test_bad_options(tmp_path: Path) -> None:
    save(np.zeros((8, 8), dtype=np.uint8), tmp_path / "x.png")
    with pytest.raises(GlmhaError, match="limit"):
        read_calibration_images(tmp_path, 1, limit=0)
    with pytest.raises(GlmhaError, match="multiple"):
        read_calibration_images(tmp_path, 1, multiple=0)
    with pytest.raises(GlmhaError, match="max side"):
        read_calibration_images(tmp_path, 1, max_side=4)
