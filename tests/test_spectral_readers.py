"""Readers on small files written like the real ones: MATLAB v7.3 (h5py) ARAD cubes and scipy .mat scenes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from glmha.errors import GlmhaError
from glmha.spectral.readers import Ntire2022Split, SciScenes

from spectral_files import write_arad_cube, write_mask, write_rgb, write_scenes, write_split


def encoded_cube(bands: int, height: int, width: int) -> np.ndarray:
    """CHW cube whose value tells (band, row, col): 10000*band + 100*row + col."""
    c, h, w = np.meshgrid(np.arange(bands), np.arange(height), np.arange(width), indexing="ij")
    return (10000 * c + 100 * h + w).astype(np.float64)


def make_ntire(root: Path, ids: list[str], list_text: str | None = None, size: tuple[int, int] = (6, 5)) -> None:
    write_split(root, "train", ids, list_text)
    height, width = size
    for k, name in enumerate(ids):
        write_arad_cube(root / "Train_Spec" / f"{name}.mat", encoded_cube(31, height, width) + k)
        rgb = np.full((height, width, 3), 50, dtype=np.uint8)
        rgb[0, 0] = (10, 20, 30)
        rgb[-1, -1] = (110, 60, 40)
        write_rgb(root / "Train_RGB" / f"{name}.jpg", rgb)


def test_ntire_reads_axes_and_normalises(tmp_path: Path) -> None:
    make_ntire(tmp_path, ["ARAD_1K_0002", "ARAD_1K_0001"], "ARAD_1K_0002\r\nARAD_1K_0001")  # CRLF, no final \n
    split = Ntire2022Split(tmp_path, "train")
    assert len(split) == 2 and split.names == ["ARAD_1K_0001", "ARAD_1K_0002"]
    rgb, cube = split.read(0)
    assert cube.shape == (31, 6, 5) and cube.dtype == np.float32
    for band, row, col in [(0, 0, 0), (3, 5, 1), (30, 2, 4), (17, 0, 4)]:
        assert cube[band, row, col] == 10000 * band + 100 * row + col + 1  # ARAD_1K_0001 was written second
    assert split.read(1)[1][2, 1, 3] == 20000 + 100 + 3
    assert rgb.shape == (3, 6, 5) and rgb.dtype == np.float32
    # one global min (10) and max (110) over all channels, channel order R, G, B
    np.testing.assert_allclose(rgb[:, 0, 0], [0.0, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(rgb[:, 5, 4], [1.0, 0.5, 0.3], atol=1e-6)
    np.testing.assert_allclose(rgb[:, 2, 2], [0.4, 0.4, 0.4], atol=1e-6)


def test_ntire_real_jpeg_and_bands(tmp_path: Path) -> None:
    make_ntire(tmp_path, ["a"])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "RGB").save(tmp_path / "Train_RGB" / "a.jpg")
    write_arad_cube(tmp_path / "Train_Spec" / "a.mat", encoded_cube(4, 6, 5))
    rgb, cube = Ntire2022Split(tmp_path, "train", bands=4).read(0)
    assert rgb.shape == (3, 6, 5) and rgb.min() == 0.0 and rgb.max() == 1.0
    assert cube.shape == (4, 6, 5)


def test_ntire_errors(tmp_path: Path) -> None:
    with pytest.raises(GlmhaError, match="data root not found"):
        Ntire2022Split(tmp_path / "nope", "train")
    with pytest.raises(GlmhaError, match="split must be one of train, valid"):
        Ntire2022Split(tmp_path, "test")
    with pytest.raises(GlmhaError, match=r"split file not found: .*valid_list\.txt"):
        Ntire2022Split(tmp_path, "valid")
    make_ntire(tmp_path, [], "\n\n")
    with pytest.raises(GlmhaError, match="lists no ids"):
        Ntire2022Split(tmp_path, "train")
    make_ntire(tmp_path, ["x"])
    (tmp_path / "Train_Spec" / "x.mat").unlink()
    with pytest.raises(GlmhaError, match=r"id 'x' not found: .*Train_Spec.x\.mat"):
        Ntire2022Split(tmp_path, "train")
    make_ntire(tmp_path, ["x"])
    (tmp_path / "Train_RGB" / "x.jpg").unlink()
    with pytest.raises(GlmhaError, match=r"id 'x' not found: .*Train_RGB.x\.jpg"):
        Ntire2022Split(tmp_path, "train")
    make_ntire(tmp_path, ["x"])
    split = Ntire2022Split(tmp_path, "train")
    write_arad_cube(tmp_path / "Train_Spec" / "x.mat", encoded_cube(31, 6, 5), key="rad")
    with pytest.raises(GlmhaError, match=r"x\.mat: no dataset 'cube' \(found: rad\)"):
        split.read(0)
    write_arad_cube(tmp_path / "Train_Spec" / "x.mat", encoded_cube(30, 6, 5))
    with pytest.raises(GlmhaError, match="expected 31 bands"):
        split.read(0)
    write_arad_cube(tmp_path / "Train_Spec" / "x.mat", encoded_cube(31, 5, 6))
    with pytest.raises(GlmhaError, match=r"x\.jpg is 6x5 but .*x\.mat is 5x6"):
        split.read(0)
    (tmp_path / "Train_Spec" / "x.mat").write_bytes(b"not hdf5")
    with pytest.raises(GlmhaError, match=r"not a readable MATLAB v7\.3"):
        split.read(0)
    (tmp_path / "Train_RGB" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(GlmhaError, match=r"x\.jpg: not a readable image"):
        split.read(0)
    write_rgb(tmp_path / "Train_RGB" / "x.jpg", np.full((6, 5, 3), 7))
    with pytest.raises(GlmhaError, match="image is constant"):
        split.read(0)


def make_sci(root: Path, scenes: dict[str, np.ndarray], key: str = "img", mask: np.ndarray | None = None) -> Path:
    write_scenes(root, scenes, key)
    return write_mask(root.parent / "mask.mat", mask if mask is not None else np.eye(256, dtype=np.float32))


def test_sci_training_scaling_order_and_axes(tmp_path: Path) -> None:
    small = encoded_cube(28, 3, 2)  # values up to 270201, fits in float64 exactly
    big = np.zeros((28, 256, 257), dtype=np.uint16)
    big[5, 200, 256] = 32768
    scenes = {"scene10": np.tile(small, (1, 86, 129))[:, :256, :256], "scene2": big}
    mask_path = make_sci(tmp_path / "cave", scenes, key="img_expand")
    data = SciScenes(tmp_path / "cave", mask_path, training=True)
    assert data.names == ["scene2", "scene10"] and len(data) == 2
    cube = data.read(0)
    assert cube.shape == (28, 256, 257) and cube.dtype == np.float32
    assert cube[5, 200, 256] == 0.5 and cube.sum() == 0.5
    cube = data.read(1)
    for band, row, col in [(0, 0, 0), (27, 2, 1), (9, 1, 0)]:
        assert cube[band, row, col] == np.float32((10000 * band + 100 * row + col) / 65536.0)
    mask = data.mask()
    assert mask.shape == (256, 256) and mask.dtype == np.float32 and mask[3, 3] == 1 and mask[3, 4] == 0


def test_sci_test_truth_is_unscaled(tmp_path: Path) -> None:
    truth = np.random.default_rng(0).random((28, 256, 256))
    mask_path = make_sci(tmp_path / "Truth", {"scene01": truth})
    cube = SciScenes(tmp_path / "Truth", mask_path, training=False).read(0)
    np.testing.assert_array_equal(cube, truth.astype(np.float32))


def test_sci_errors(tmp_path: Path) -> None:
    mask_path = make_sci(tmp_path / "s", {})
    with pytest.raises(GlmhaError, match="scene folder not found"):
        SciScenes(tmp_path / "nope", mask_path, training=True)
    with pytest.raises(GlmhaError, match="mask file not found"):
        SciScenes(tmp_path / "s", tmp_path / "missing.mat", training=True)
    with pytest.raises(GlmhaError, match=r"has no \.mat files"):
        SciScenes(tmp_path / "s", mask_path, training=True)
    make_sci(tmp_path / "s", {"scene1": np.zeros((28, 256, 256))}, key="cube")
    with pytest.raises(GlmhaError, match=r"scene1\.mat: neither key 'img_expand' nor 'img'"):
        SciScenes(tmp_path / "s", mask_path, training=True).read(0)
    make_sci(tmp_path / "s", {"scene1": np.zeros((31, 256, 256))})
    with pytest.raises(GlmhaError, match=r"expected \(H, W, 28\)"):
        SciScenes(tmp_path / "s", mask_path, training=True).read(0)
    assert SciScenes(tmp_path / "s", mask_path, training=True, bands=31).read(0).shape == (31, 256, 256)
    make_sci(tmp_path / "s", {"scene1": np.zeros((28, 128, 300))})
    with pytest.raises(GlmhaError, match="scene is 128x300, smaller than the CASSI simulation's 256x256"):
        SciScenes(tmp_path / "s", mask_path, training=False).read(0)
    (tmp_path / "s" / "scene1.mat").write_bytes(b"garbage")
    with pytest.raises(GlmhaError, match="not a readable MATLAB file"):
        SciScenes(tmp_path / "s", mask_path, training=False).read(0)
    v73 = tmp_path / "s" / "scene1.mat"
    with h5py.File(v73, "w", userblock_size=512) as handle:
        handle["img"] = np.zeros((2, 2))
    with v73.open("r+b") as handle:  # MATLAB's 128-byte text header in the HDF5 user block
        handle.write(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM")
    with pytest.raises(GlmhaError, match=r"MATLAB v7\.3 files are not supported"):
        SciScenes(tmp_path / "s", mask_path, training=False).read(0)
    data = SciScenes(tmp_path / "s", mask_path, training=False)
    scipy.io.savemat(mask_path, {"code": np.zeros((256, 256))})
    with pytest.raises(GlmhaError, match=r"mask\.mat: no key 'mask'"):
        data.mask()
    scipy.io.savemat(mask_path, {"mask": np.zeros((256, 256, 2))})
    with pytest.raises(GlmhaError, match="'mask' must be 2-D"):
        data.mask()
    scipy.io.savemat(mask_path, {"mask": np.zeros((128, 128))})
    with pytest.raises(GlmhaError, match="mask is 128x128; the CASSI simulation needs a 256x256 mask"):
        data.mask()
