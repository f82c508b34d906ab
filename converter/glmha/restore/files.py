"""The files `glmha-restore` reads and writes: images (PNG, JPEG, TIFF; 8 or 16 bit; grey or RGB) and
spectral cubes in MATLAB files.

Why a module of its own: a restored image must keep its input's bit depth (a 16-bit photo written back
as 8 bits loses information the model just recovered), and no single library does every case. Pillow
reads 8-bit files and 16-bit grey PNGs, but silently reduces 16-bit colour PNGs to 8 bits and cannot
write them: those go through `glmha.restore.png`. TIFFs of any depth go through tifffile, with Pillow
as the fallback for the compressions and colour models tifffile needs extra codecs for. Pixels are
float32 (H, W, C) in [0, 1], sample value k meaning k / (2**bits - 1); 32-bit float TIFFs pass as they
are. Output files are written atomically, and the same pixels always give the same bytes.

Spectral cubes are (C, H, W) float32. MATLAB v7.3 files (HDF5, as the NTIRE 2022 cubes) store H x W x C,
which h5py sees reversed as (C, W, H); v5 files (scipy) hold (H, W, C).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glmha.data.image_folder import IMAGE_SUFFIXES, SIXTEEN_BIT_MODES, _failure
from glmha.errors import GlmhaError
from glmha.io_utils import PendingFile, file_label, path_status
from glmha.restore import png
from glmha.spectral.readers import read_sci_scene, read_v5_cube, read_v73_cube

__all__ = [
    "CUBE_KEYS", "IMAGE_SUFFIXES", "MATLAB_HEADER", "ImageFile", "output_container", "output_suffix",
    "quantise", "read_cube_mat", "read_image_file", "read_scene_mat", "write_cube_mat", "write_image_file",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's "L" conversion
CUBE_KEYS = ("cube", "img_expand", "img", "pred")  # NTIRE 2022, CAVE, KAIST truth, MST-L test output
_LEVELS = {8: 255, 16: 65535}
_FLOAT_DEPTH = 32
_WRITABLE_DEPTHS = {"png": (8, 16), "tiff": (8, 16, _FLOAT_DEPTH)}
_SUFFIXES = {"png": ".png", "tiff": ".tif"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_JPEG_MAGIC = b"\xff\xd8\xff"
_PILLOW_GREY = frozenset({"1", "L", "LA", "La"})
_PILLOW_COLOUR = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# MATLAB's 128-byte v7.3 header in the HDF5 user block: text padded with spaces to 116 bytes, an empty
# subsystem data offset (8 zero bytes), version 0x0200 and the endian indicator "IM" (little endian).
# The text carries no creation date, so the same cube always gives the same bytes.
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: glmha, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
_MATLAB_USER_BLOCK = 512
_MATLAB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True, eq=False)
class ImageFile:
    """An image as read: pixels float32 (H, W, C) in [0, 1], C = 1 (grey) or 3 (RGB), alpha dropped and
    palettes expanded; `bit_depth` the file's bits per channel (8, 16, or 32 for float TIFF); `container`
    "png", "jpeg" or "tiff", detected from the bytes, not the name."""

    pixels: np.ndarray
    bit_depth: int
    container: str


# ----------------------------------------------------------------------------------------- images: read


def read_image_file(path: Path, *, channels: int | None = None) -> ImageFile:
    """Read a PNG, JPEG or TIFF. `channels` None keeps what is stored; 3 replicates grey to RGB; 1 takes
    the ITU-R 601 luma of RGB (on the float values, without Pillow's rounding to 8 bits)."""
    path = Path(path)
    what = f"image {path}"
    if channels not in (None, 1, 3):
        raise GlmhaError(f"{what}: images can only feed 1- or 3-channel models, not {channels}")
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise GlmhaError(f"{what}: cannot be read ({error.strerror or error})") from None
    if not head:
        raise GlmhaError(f"{what}: cannot be read (empty file)")
    if png.is_png(head):
        pixels, depth, container = *_read_png(path, what), "png"
    elif head.startswith(_TIFF_MAGIC):
        pixels, depth, container = *_read_tiff(path, what), "tiff"
    elif head.startswith(_JPEG_MAGIC):
        pixels, depth, container = *_read_with_pillow(path, what, formats=("JPEG", "MPO")), "jpeg"
    else:
        raise GlmhaError(f"{what}: {_not_supported_format(path)}")
    return ImageFile(_convert_channels(pixels, channels), depth, container)


def _read_png(path: Path, what: str) -> tuple[np.ndarray, int]:
    """16-bit colour (and grey + alpha) PNGs through our codec, everything else through Pillow."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GlmhaError(f"{what}: cannot be read ({error.strerror or error})") from None
    header = png.read_header(data, what=what)
    if header.bit_depth == 16 and header.colour_type in (2, 4, 6):
        samples = png.decode_png16(data, what=what)  # uint16 (H, W, S), alpha included
        kept = 1 if header.colour_type == 4 else 3  # grey + alpha -> grey, RGB(A) -> RGB
        return _to_unit(samples[:, :, :kept], 16), 16
    return _read_with_pillow(path, what, formats=("PNG",))


def _read_with_pillow(path: Path, what: str, *, formats: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """8-bit files of any Pillow mode that maps to grey or RGB, and 16-bit grey (modes I;16*, I). A JPEG's
    EXIF orientation is applied: the output carries no EXIF, so it would otherwise show turned on its side."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "palette images with transparency": alpha is dropped
            with Image.open(path) as image:
                image.load()
                if image.format not in formats:
                    raise GlmhaError(f"{what}: Pillow reads it as {image.format}, not {' or '.join(formats)}")
                if image.format in ("JPEG", "MPO"):
                    return _pillow_pixels(ImageOps.exif_transpose(image), what)
                return _pillow_pixels(image, what)
    except GlmhaError:
        raise
    except Exception as error:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise GlmhaError(f"{what}: cannot be read {_failure(error, path)}") from None


def _pillow_pixels(image: object, what: str) -> tuple[np.ndarray, int]:
    """(pixels (H, W, C) in [0, 1], bit depth) of a loaded Pillow image."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in SIXTEEN_BIT_MODES:
        raw = np.asarray(image)  # (H, W) uint16, or int32 for mode I
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) > 65535):
            raise GlmhaError(f"{what}: 32-bit integer pixels outside 0..65535 are not supported; "
                             f"save it as 8- or 16-bit")
        return _to_unit(raw.astype(np.uint16)[:, :, None], 16), 16  # (H, W) -> (H, W, 1)
    if mode in _PILLOW_GREY:
        return _to_unit(np.asarray(image.convert("L"))[:, :, None], 8), 8  # type: ignore[attr-defined]
    if mode in _PILLOW_COLOUR:
        return _to_unit(np.asarray(image.convert("RGB")), 8), 8  # type: ignore[attr-defined]
    raise GlmhaError(f"{what}: pixel mode {mode} is not supported; save it as 8- or 16-bit grey or RGB")


def _read_tiff(path: Path, what: str) -> tuple[np.ndarray, int]:
    """The first image of a TIFF through tifffile (any depth); Pillow where tifffile would need the
    imagecodecs package (LZW, JPEG compression) or the colour model is not grey/RGB (palette, CMYK,
    1-bit), as long as Pillow loses no bits there (8-bit samples, 16-bit unsigned grey)."""
    import tifffile

    grey_models = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            photometric, bits, samples = page.photometric, page.bitspersample, page.samplesperpixel
            extra, axes, dtype = len(page.extrasamples), page.axes, page.dtype
            grey = photometric in grey_models
            pillow_is_exact = bits <= 8 or (bits == 16 and grey and dtype == np.uint16)
            usable = ((grey or photometric == tifffile.PHOTOMETRIC.RGB) and dtype is not None
                      and (dtype in (np.uint8, np.uint16) or dtype.kind == "f"))
            if not usable:
                if pillow_is_exact:
                    return _read_with_pillow(path, what, formats=("TIFF",))
                raise GlmhaError(f"{what}: {bits}-bit {_sample_kind(dtype)} {_enum_name(photometric)} "
                                 f"TIFFs are not supported; save it as 8- or 16-bit grey or RGB, or 32-bit float")
            try:
                data = page.asarray()
            except ValueError as error:
                if "imagecodecs" not in str(error):
                    raise
                if pillow_is_exact:
                    return _read_with_pillow(path, what, formats=("TIFF",))
                raise GlmhaError(f"{what}: {bits}-bit {_enum_name(photometric)} TIFFs with "
                                 f"{_enum_name(page.compression)} compression need the imagecodecs package "
                                 f"(pip install imagecodecs), or save it uncompressed or with zlib") from None
    except GlmhaError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, zlib.error, struct.error, ... for bad files
        raise GlmhaError(f"{what}: cannot be read {_failure(error, path)}") from None
    if data.ndim == 2:
        data = data[:, :, None]  # (H, W) -> (H, W, 1)
    elif axes.startswith("S"):
        data = data.transpose(1, 2, 0)  # planar (S, H, W) -> (H, W, S)
    if data.ndim != 3 or samples != (1 if grey else 3) + extra:
        raise GlmhaError(f"{what}: {samples} samples per pixel ({extra} extra) in a "
                         f"{_enum_name(photometric)} TIFF is not supported; save it as grey or RGB")
    data = data[:, :, :1 if grey else 3]  # extra samples (alpha) dropped
    white_is_zero = photometric == tifffile.PHOTOMETRIC.MINISWHITE
    if dtype.kind == "f":
        return _float_pixels(1.0 - data if white_is_zero else data, what), _FLOAT_DEPTH
    depth = 8 if dtype == np.uint8 else 16
    if white_is_zero:
        data = _LEVELS[depth] - data  # stays in the unsigned type: 0 <= levels - k <= levels
    return _to_unit(data, depth), depth


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs a warning for every damaged tag before it raises; the one-line error says enough."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _sample_kind(dtype: np.dtype | None) -> str:
    if dtype is None:
        return "packed"
    return {"u": "unsigned", "i": "signed", "f": "float", "b": "1-bit"}.get(dtype.kind, dtype.kind)


def _enum_name(value: object) -> str:
    """"rgb", "separated", "lzw": a tifffile enum member in words."""
    return getattr(value, "name", str(value)).lower()


def _float_pixels(data: np.ndarray, what: str) -> np.ndarray:
    """A float TIFF is taken as it is, so it must already hold finite values in [0, 1]."""
    pixels = data.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise GlmhaError(f"{what}: float pixels include NaN or infinity; only finite values in [0, 1] are read")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        raise GlmhaError(f"{what}: float pixels range over [{low:g}, {high:g}]; only values in [0, 1] are read "
                         f"(scale it, or save it as 8- or 16-bit)")
    return pixels


def _not_supported_format(path: Path) -> str:
    """Why a file that is neither PNG nor JPEG nor TIFF cannot be read, naming its format if Pillow knows it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            found = image.format
    except Exception as error:  # not an image at all
        return f"cannot be read {_failure(error, path)}"
    return f"is a {found} image; only PNG, JPEG and TIFF files are read"


def _to_unit(samples: np.ndarray, bit_depth: int) -> np.ndarray:
    """Integer samples -> float32 k / levels, computed in float32 exactly as `quantise` does."""
    return samples.astype(np.float32) / np.float32(_LEVELS[bit_depth])


def _convert_channels(pixels: np.ndarray, channels: int | None) -> np.ndarray:
    stored = pixels.shape[2]
    if channels is None or channels == stored:
        return np.ascontiguousarray(pixels)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))  # (H, W, 1) -> (H, W, 3)
    luma = pixels.astype(np.float64) @ np.array(LUMA_WEIGHTS)  # (H, W, 3) -> (H, W)
    return luma.astype(np.float32)[:, :, None]  # (H, W) -> (H, W, 1)


# ---------------------------------------------------------------------------------------- images: write


def output_container(container: str) -> str:
    """The container a restored image is written in: the input's, except JPEG, which becomes PNG (a
    second lossy compression would add artefacts to what the model just removed)."""
    if container not in ("png", "jpeg", "tiff"):
        raise GlmhaError(f"unknown image container {container!r}; expected png, jpeg or tiff")
    return "png" if container == "jpeg" else container


def output_suffix(container: str) -> str:
    """".png" or ".tif" for the container an input of `container` is written in."""
    return _SUFFIXES[output_container(container)]


def quantise(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """What writing `pixels` at `bit_depth` and reading them back gives, without the files: clipped to
    [0, 1] and rounded to k / (2**bits - 1) (float32; 32-bit float only clips). Metrics taken on this
    are metrics of what is saved."""
    values = _clipped(pixels, "cannot quantise pixels")
    if bit_depth == _FLOAT_DEPTH:
        return values.astype(np.float32)
    return _to_unit(_integers(values, bit_depth, "cannot quantise pixels"), bit_depth)


def _clipped(pixels: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(pixels)
    if values.dtype.kind not in "fiub":
        raise GlmhaError(f"{what}: pixels must be numbers, got {values.dtype}")
    if values.dtype.kind == "f":
        nan = int(np.isnan(values).sum())
        if nan:
            raise GlmhaError(f"{what}: {nan} pixel values are NaN")
    return np.clip(values, 0.0, 1.0)


def _integers(clipped: np.ndarray, bit_depth: int, what: str) -> np.ndarray:
    """round(x * levels) as uint8 / uint16; np.round rounds halves to even, identically for every caller."""
    if bit_depth not in _LEVELS:
        raise GlmhaError(f"{what}: bit depth must be 8, 16 or {_FLOAT_DEPTH} (float), got {bit_depth}")
    levels = _LEVELS[bit_depth]
    rounded = np.round(clipped.astype(np.float64) * levels)
    return rounded.astype(np.uint8 if bit_depth == 8 else np.uint16)


def write_image_file(path: Path, pixels: np.ndarray, *, bit_depth: int, container: str) -> None:
    """Write float (H, W, C) pixels, C 1 or 3 (or (H, W) grey), clipped and rounded as `quantise`, as a
    "png" (8 or 16 bit) or "tiff" (8, 16, or 32-bit float) file. Atomic; no timestamps or other
    metadata, so the same pixels always give the same bytes. JPEG is never written (`output_container`)."""
    path = Path(path)
    what = f"output image {path}"
    if container not in _WRITABLE_DEPTHS:
        raise GlmhaError(f"{what}: cannot write container {container!r}; use png or tiff (see output_container)")
    if bit_depth not in _WRITABLE_DEPTHS[container]:
        depths = ", ".join(map(str, _WRITABLE_DEPTHS[container]))
        raise GlmhaError(f"{what}: a {container} file is written with {depths} bits, not {bit_depth}")
    values = np.asarray(pixels)
    if values.ndim == 2:
        values = values[:, :, None]  # (H, W) -> (H, W, 1)
    if values.ndim != 3 or values.shape[2] not in (1, 3) or 0 in values.shape:
        raise GlmhaError(f"{what}: pixels must be (H, W, 1) or (H, W, 3), got shape {values.shape}")
    clipped = _clipped(values, what)
    stored = clipped.astype(np.float32) if bit_depth == _FLOAT_DEPTH else _integers(clipped, bit_depth, what)
    writer = _png_writer(stored) if container == "png" else _tiff_writer(stored)
    with PendingFile(path, what="output image") as pending:
        pending.commit(writer)


def _png_writer(stored: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        if stored.dtype == np.uint16:  # Pillow cannot write 16-bit colour: our codec does all 16-bit PNGs
            tmp.write_bytes(png.encode_png16(stored))
            return
        from PIL import Image

        Image.fromarray(stored[:, :, 0] if stored.shape[2] == 1 else stored).save(tmp, format="PNG")

    return write


def _tiff_writer(stored: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        import tifffile

        grey = stored.shape[2] == 1
        tifffile.imwrite(tmp, stored[:, :, 0] if grey else stored, photometric="minisblack" if grey else "rgb",
                         compression="zlib", predictor=stored.dtype.kind == "u", metadata=None)

    return write


# ------------------------------------------------------------------------------------------ spectral


def read_cube_mat(path: Path, *, bands: int | None = None, what: str = "") -> np.ndarray:
    """A spectral cube (C, H, W) float32, unscaled, from a MATLAB file: v7.3 (HDF5, stored (C, W, H) as h5py
    sees it) or v5 (scipy, stored (H, W, C)); the first of keys `cube`, `img_expand`, `img`, `pred`.
    `bands` None takes any band count."""
    import h5py

    path = Path(path)
    _require_file(path, what)
    if h5py.is_hdf5(str(path)):
        return read_v73_cube(path, keys=CUBE_KEYS, bands=bands, what=what)
    cube = read_v5_cube(path, keys=CUBE_KEYS, bands=bands, what=what)  # (C, H, W) float64 view
    return np.ascontiguousarray(cube.astype(np.float32))


def read_scene_mat(path: Path, *, bands: int) -> np.ndarray:
    """A CASSI test scene (C, H, W) float32 as the KAIST test truth is stored (v5, key `img_expand` or `img`,
    (H, W, bands), reflectance, unscaled): the rule of SciScenes.read(training=False), at any size (the scene
    is restored whole, so it must match the mask, not the simulation's 256 x 256 crop)."""
    path = Path(path)
    _require_file(path, "")
    return read_sci_scene(path, bands=bands, training=False, min_side=1)


def _require_file(path: Path, what: str) -> None:
    label = file_label(what, path)
    if path_status(path, what=what) is None:
        raise GlmhaError(f"{label}: does not exist")


def write_cube_mat(path: Path, cube: np.ndarray, *, key: str = "cube") -> None:
    """Write a (C, H, W) cube as MATLAB v7.3 stores an H x W x C array, like the NTIRE 2022 files:
    HDF5 with MATLAB's 512-byte user block header, dataset `key` stored (C, W, H) with the attribute
    MATLAB_class "single" (float64 input: "double"). No timestamps in the HDF5 objects and no date in
    the header, so the same cube always gives the same bytes; atomic."""
    import h5py

    path = Path(path)
    values = np.asarray(cube)
    if values.ndim != 3 or 0 in values.shape or values.dtype.kind not in "fiu":
        raise GlmhaError(f"output cube {path}: must be a non-empty numeric (C, H, W) array, "
                         f"got {values.dtype} {values.shape}")
    if not _MATLAB_NAME.fullmatch(key):
        raise GlmhaError(f"output cube {path}: {key!r} is not a MATLAB variable name (a letter, then up to 62 "
                         f"letters, digits or underscores)")
    double = values.dtype == np.float64
    stored = np.ascontiguousarray(values.astype(np.float64 if double else np.float32).transpose(0, 2, 1))
    # (C, H, W) -> (C, W, H): MATLAB then sees H x W x C

    def write(tmp: Path) -> None:
        # locking=False: the PendingFile already holds an exclusive lock on the temporary file
        with h5py.File(tmp, "w", userblock_size=_MATLAB_USER_BLOCK, locking=False) as handle:
            dataset = handle.create_dataset(key, data=stored, track_times=False)
            _matlab_class(dataset, b"double" if double else b"single")
        with tmp.open("r+b") as raw:
            raw.write(MATLAB_HEADER)

    with PendingFile(path, what="output cube") as pending:
        pending.commit(write)


def _matlab_class(dataset: object, name: bytes) -> None:
    """The attribute as MATLAB writes it: a scalar fixed-length ASCII string, null-terminated padding."""
    import h5py

    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(name))
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    attribute = h5py.h5a.create(dataset.id, b"MATLAB_class", string_type,  # type: ignore[attr-defined]
                                h5py.h5s.create(h5py.h5s.SCALAR))
    attribute.write(np.array(name, dtype=f"S{len(name)}"), mtype=string_type)
