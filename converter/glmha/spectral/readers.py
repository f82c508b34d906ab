"""Readers that give the official MST++ (NTIRE 2022) and MST-L (CAVE/KAIST) networks their official inputs.

Both are lazy: a sample is read from disk on `read(i)`, because the official eager loading needs
about 30 GB (ARAD) or 24 GB (CAVE) of RAM.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from glmha.errors import GlmhaError
from glmha.io_utils import file_label

NTIRE_BANDS = 31
SCI_BANDS = 28
SCI_CROP = 256  # MST-L's training crop and mask size
SCI_DIVISOR = 65536.0  # official CAVE scaling (not 65535)
SCENE_KEYS = ("img_expand", "img")  # the official SCI reader's keys, in its order


def _natural_key(path: Path) -> list[object]:
    """Sort scene2 before scene10 (the official code sorts as strings; order only matters for listing)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def minmax_normalise(rgb: np.ndarray, *, what: str) -> np.ndarray:
    """(x - min) / (max - min) with one min and max over every pixel and channel: MST++'s RGB input."""
    low, high = float(rgb.min()), float(rgb.max())
    if high == low:
        raise GlmhaError(f"{what}: image is constant ({low}); min-max normalisation is undefined")
    return (rgb - low) / (high - low)


def _key_list(keys: tuple[str, ...], kind: str) -> str:
    """"no dataset 'cube'", "neither key 'img_expand' nor 'img'", "none of the keys 'a', 'b' or 'c'"."""
    quoted = [f"'{key}'" for key in keys]
    if len(quoted) == 1:
        return f"no {kind} {quoted[0]}"
    if len(quoted) == 2:
        return f"neither {kind} {quoted[0]} nor {quoted[1]}"
    return f"none of the {kind}s {', '.join(quoted[:-1])} or {quoted[-1]}"


def read_v73_cube(path: Path, *, keys: tuple[str, ...] = ("cube",), bands: int | None = None,
                  what: str = "") -> np.ndarray:
    """The first of `keys` in a MATLAB v7.3 (HDF5) file as CHW float32, unscaled. MATLAB stores H x W x C
    and h5py sees the axes reversed, (C, W, H). `bands` None takes any band count."""
    import h5py

    label = file_label(what, path)
    try:
        with h5py.File(path, "r") as handle:
            key = next((k for k in keys if k in handle), None)
            if key is None:
                found = ", ".join(sorted(handle)) or "none"
                raise GlmhaError(f"{label}: {_key_list(keys, 'dataset')} (found: {found})")
            if not isinstance(handle[key], h5py.Dataset):
                raise GlmhaError(f"{label}: '{key}' is a MATLAB struct or cell, not a numeric array")
            try:
                data = np.asarray(handle[key], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise GlmhaError(f"{label}: '{key}' is not a real numeric array ({exc})") from None
    except OSError as exc:
        raise GlmhaError(f"{label}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from exc
    if data.ndim != 3 or (bands is not None and data.shape[0] != bands):
        expected = f"expected {bands} bands first" if bands is not None else "expected 3 axes"
        raise GlmhaError(f"{label}: '{key}' has shape {data.shape} as stored (C, W, H); {expected}")
    return np.ascontiguousarray(data.transpose(0, 2, 1))  # (C, W, H) -> (C, H, W)


def load_v5_mat(path: Path, *, what: str = "") -> dict:
    """scipy.io.loadmat with one-line errors (v7.3 files need h5py, which the official SCI code never uses)."""
    import scipy.io

    label = file_label(what, path)
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:
        raise GlmhaError(f"{label}: MATLAB v7.3 files are not supported here; save with -v7") from exc
    except Exception as exc:  # scipy raises MatReadError, ValueError, IndexError, zlib.error, ... on bad files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GlmhaError(f"{label}: not a readable MATLAB file ({first})") from exc


def read_v5_cube(path: Path, *, keys: tuple[str, ...], bands: int | None = None, what: str = "") -> np.ndarray:
    """The first of `keys` in a MATLAB v5 file, stored (H, W, C), as a (C, H, W) float64 view, unscaled."""
    label = file_label(what, path)
    data = load_v5_mat(path, what=what)
    key = next((k for k in keys if k in data), None)
    if key is None:
        found = ", ".join(sorted(k for k in data if not k.startswith("__"))) or "none"
        raise GlmhaError(f"{label}: {_key_list(keys, 'key')} found (found: {found})")
    try:
        cube = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GlmhaError(f"{label}: '{key}' is not a real numeric array ({exc})") from None
    if cube.ndim != 3 or (bands is not None and cube.shape[2] != bands):
        raise GlmhaError(f"{label}: '{key}' has shape {cube.shape}; expected (H, W, {bands or 'C'})")
    return cube.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def read_sci_scene(path: Path, *, bands: int = SCI_BANDS, training: bool, min_side: int = SCI_CROP) -> np.ndarray:
    """One CASSI scene as MST-L's official code reads it: MATLAB v5, key `img_expand` if present, else `img`,
    stored (H, W, bands), at least `min_side` (the simulation's 256 x 256 crop) on a side; divided by 65536
    when `training` (CAVE), unscaled otherwise (the KAIST test truth). CHW float32."""
    cube = read_v5_cube(path, keys=SCENE_KEYS, bands=bands)  # (bands, H, W) float64
    if cube.shape[1] < min_side or cube.shape[2] < min_side:
        raise GlmhaError(
            f"{path}: scene is {cube.shape[1]}x{cube.shape[2]}, smaller than the CASSI simulation's "
            f"{SCI_CROP}x{SCI_CROP} crop"
        )
    if training:
        cube = cube / SCI_DIVISOR
    return np.ascontiguousarray(cube.astype(np.float32))


def read_mask(path: Path, *, side: int | None = SCI_CROP) -> np.ndarray:
    """The CASSI coded aperture float32 from key `mask` of a MATLAB v5 file (TSA_simu_data/mask.mat): 256 x 256
    for the simulation's crops; `side` None takes any 2-D size (restoring whole scenes of the mask's size)."""
    data = load_v5_mat(path)
    if "mask" not in data:
        raise GlmhaError(f"{path}: no key 'mask'")
    mask = np.asarray(data["mask"], dtype=np.float32)
    if mask.ndim != 2:
        raise GlmhaError(f"{path}: 'mask' must be 2-D; got shape {mask.shape}")
    if side is not None and mask.shape != (side, side):
        raise GlmhaError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]}; the CASSI simulation needs a "
            f"{side}x{side} mask to match its {side}x{side} crops"
        )
    return mask


class Ntire2022Split:
    """One NTIRE 2022 split (`train` or `valid`): RGB (3, H, W) and cube (bands, H, W), float32.

    Ids come from `root/split_txt/<split>_list.txt`. Unlike the official reader, a last line without
    a newline and CRLF line ends are accepted (the official code silently drops the former and
    mangles the latter). Names are sorted as strings, as officially.
    """

    SPLITS = ("train", "valid")

    def __init__(self, root: str | Path, split: str, *, bands: int = NTIRE_BANDS) -> None:
        self.root = Path(root)
        self.bands = bands
        if split not in self.SPLITS:
            raise GlmhaError(f"NTIRE 2022 split must be one of {', '.join(self.SPLITS)}; got {split!r}")
        if not self.root.is_dir():
            raise GlmhaError(f"NTIRE 2022 data root not found: {self.root}")
        list_file = self.root / "split_txt" / f"{split}_list.txt"
        if not list_file.is_file():
            raise GlmhaError(f"NTIRE 2022 split file not found: {list_file}")
        text = list_file.read_text(encoding="utf-8")
        self._names = sorted(line.strip() for line in text.splitlines() if line.strip())
        if not self._names:
            raise GlmhaError(f"NTIRE 2022 split file lists no ids: {list_file}")
        for name in self._names:  # fail before training starts, not at sample 800
            for path in (self.cube_path(name), self.rgb_path(name)):
                if not path.is_file():
                    raise GlmhaError(f"NTIRE 2022 file for id {name!r} not found: {path}")

    def cube_path(self, name: str) -> Path:
        return self.root / "Train_Spec" / f"{name}.mat"

    def rgb_path(self, name: str) -> Path:
        return self.root / "Train_RGB" / f"{name}.jpg"

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def read_cube(self, name: str) -> np.ndarray:
        """Key `cube` of a MATLAB v7.3 file; h5py gives (C, W, H), returned as CHW float32, unscaled."""
        return read_v73_cube(self.cube_path(name), bands=self.bands)

    def read_rgb(self, name: str) -> np.ndarray:
        """RGB (3, H, W) float32 with one global min-max over all channels, as the official reader.

        Pillow already yields RGB; the official cv2 BGR read plus BGR->RGB gives the same array.
        """
        from PIL import Image, UnidentifiedImageError

        path = self.rgb_path(name)
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
        except (OSError, UnidentifiedImageError) as exc:
            raise GlmhaError(f"{path}: not a readable image ({exc})") from exc
        rgb = minmax_normalise(rgb, what=str(path))
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (3, H, W), cube (bands, H, W)) of the index-th id."""
        name = self._names[index]
        rgb, cube = self.read_rgb(name), self.read_cube(name)
        if rgb.shape[1:] != cube.shape[1:]:
            raise GlmhaError(
                f"{self.rgb_path(name)} is {rgb.shape[1]}x{rgb.shape[2]} but {self.cube_path(name)} is "
                f"{cube.shape[1]}x{cube.shape[2]} (H x W)"
            )
        return rgb, cube


class SciScenes:
    """CAVE training scenes (`training=True`, divided by 65536) or KAIST test truth (unscaled), CHW float32.

    Every `*.mat` in `root`, naturally sorted, read with scipy.io.loadmat: key `img_expand` if present,
    else `img`, stored HWC.
    """

    KEYS = SCENE_KEYS

    def __init__(
        self, root: str | Path, mask_path: str | Path, *, training: bool, bands: int = SCI_BANDS
    ) -> None:
        self.root = Path(root)
        self.mask_path = Path(mask_path)
        self.training = training
        self.bands = bands
        if not self.root.is_dir():
            raise GlmhaError(f"SCI scene folder not found: {self.root}")
        if not self.mask_path.is_file():
            raise GlmhaError(f"SCI mask file not found: {self.mask_path}")
        self.paths = sorted(self.root.glob("*.mat"), key=_natural_key)
        if not self.paths:
            raise GlmhaError(f"SCI scene folder has no .mat files: {self.root}")

    @property
    def names(self) -> list[str]:
        return [path.stem for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        """Scene (bands, H, W) float32; /65536 when training, as stored otherwise."""
        return read_sci_scene(self.paths[index], bands=self.bands, training=self.training)

    def mask(self) -> np.ndarray:
        """The fixed coded aperture (256, 256) float32 from key `mask`."""
        return read_mask(self.mask_path)
