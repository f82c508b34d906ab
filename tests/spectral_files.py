"""Write small spectral data sets the way the published ones are stored, for reader and pipeline tests.

- ARAD_1K (NTIRE 2022): cubes in MATLAB v7.3 (HDF5) files, key `cube`, which h5py sees as (C, W, H);
  RGB images under `.jpg` names; split lists in `split_txt/`.
- CAVE / KAIST (CASSI simulation): scipy `.mat` files holding (H, W, C) under `img_expand` or `img`,
  and `mask.mat` holding the 2-D coded aperture under `mask`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image


def write_arad_cube(path: Path, cube_chw: np.ndarray, key: str = "cube") -> None:
    """MATLAB stores H x W x C; h5py sees the axes reversed, (C, W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle[key] = cube_chw.transpose(0, 2, 1)  # (C, H, W) -> (C, W, H)


def write_rgb(path: Path, rgb_hwc: np.ndarray) -> None:
    """PNG bytes under a .jpg name: lossless, and Pillow detects the format from the content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_hwc.astype(np.uint8), "RGB").save(path, format="PNG")


def write_split(root: Path, split: str, ids: list[str], text: str | None = None) -> None:
    """`split_txt/<split>_list.txt`, one id per line unless `text` gives the exact bytes."""
    (root / "split_txt").mkdir(parents=True, exist_ok=True)
    content = text if text is not None else "".join(f"{name}\n" for name in ids)
    (root / "split_txt" / f"{split}_list.txt").write_bytes(content.encode())


def write_scenes(folder: Path, cubes: dict[str, np.ndarray], key: str = "img") -> None:
    """One `<name>.mat` per (C, H, W) cube, stored (H, W, C) under `key` as CAVE and KAIST do."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, cube_chw in cubes.items():
        scipy.io.savemat(folder / f"{name}.mat", {key: cube_chw.transpose(1, 2, 0)})  # (C, H, W) -> (H, W, C)


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"mask": mask})
    return path
