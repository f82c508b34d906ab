"""Image and spectral files of glmha-restore: every container x bit depth x channel count round-trips
exactly after `quantise`, the 16-bit PNG codec against PNGs built here from the specification's filter
definitions and against Pillow, TIFFs written by tifffile, MATLAB v7.3 cubes as the NTIRE 2022 reader
and scipy see them, and every user mistake as a one-line error naming the file."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from glmha.errors import GlmhaError
from glmha.restore import png
from glmha.restore.files import (
    CUBE_KEYS,
    IMAGE_SUFFIXES,
    MATLAB_HEADER,
    ImageFile,
    output_container,
    output_suffix,
    quantise,
    read_cube_mat,
    read_image_file,
    read_scene_mat,
    write_cube_mat,
    write_image_file,
)
from glmha.spectral.readers import read_sci_scene, read_v73_cube

RNG_SEED = 15


def test_suffixes_are_the_calibration_ones() -> None:
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff")
    assert [output_container(c) for c in ("png", "jpeg", "tiff")] == ["png", "png", "tiff"]
    assert [output_suffix(c) for c in ("png", "jpeg", "tiff")] == [".png", ".png", ".tif"]


def pixels_with_edges(height: int, width: int, channels: int, seed: int = RNG_SEED) -> np.ndarray:
    """Random float32 pixels reaching below 0 and above 1 (clipped on writing), plus exact 0 and 1."""
    values = np.random.default_rng(seed).uniform(-0.1, 1.1, (height, width, channels)).astype(np.float32)
    values[0, 0], values[-1, -1] = 0.0, 1.0
    return values


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("container", "bit_depth"), [("png", 8), ("png", 16), ("tiff", 8), ("tiff", 16),
                                                      ("tiff", 32)])
def test_round_trip_is_exact_after_quantise(tmp_path: Path, container: str, bit_depth: int, channels: int) -> None:
    pixels = pixels_with_edges(6, 9, channels)
    path = tmp_path / f"out{output_suffix(container)}"
    write_image_file(path, pixels, bit_depth=bit_depth, container=container)
    image = read_image_file(path)
    assert isinstance(image, ImageFile)
    assert (image.bit_depth, image.container) == (bit_depth, container)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (6, 9, channels)
    expected = quantise(pixels, bit_depth)
    np.testing.assert_array_equal(image.pixels, expected)
    assert expected.min() == 0.0 and expected.max() == 1.0
    if bit_depth != 32:  # the grid is exactly k / (2**bits - 1)
        levels = 2**bit_depth - 1
        integers = np.round(np.clip(pixels, 0, 1).astype(np.float64) * levels)
        np.testing.assert_array_equal(expected, integers.astype(np.float32) / np.float32(levels))
        assert np.abs(expected - np.clip(pixels, 0, 1)).max() <= 0.5 / levels + 1e-7
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind


def test_sixteen_bits_keep_what_eight_bits_lose(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.float32) / 64 / 255).reshape(8, 8, 1).repeat(3, axis=2)  # below one 8-bit step
    for container in ("png", "tiff"):
        path = tmp_path / f"ramp{output_suffix(container)}"
        write_image_file(path, ramp, bit_depth=16, container=container)
        assert len(np.unique(read_image_file(path).pixels)) == len(np.unique(quantise(ramp, 16))) > 60
    assert len(np.unique(quantise(ramp, 8))) == 2


# ------------------------------------------------------------------------------ 16-bit PNG codec


def spec_filtered_rows(raw: np.ndarray, kinds: np.ndarray, bpp: int) -> np.ndarray:
    """Filter raw bytes (H, W * bpp) row by row as the PNG specification (section 9.2-9.4) defines it:
    predictors from the ORIGINAL bytes a (left), b (up), c (up-left), zeros outside the image."""
    x = raw.astype(np.int32)
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, bpp:] = x[:-1, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    predictions = [np.zeros_like(x), a, b, (a + b) // 2, paeth]
    rows = np.empty((x.shape[0], 1 + x.shape[1]), dtype=np.uint8)
    for r, kind in enumerate(kinds):
        rows[r, 0] = kind
        rows[r, 1:] = (x[r] - predictions[kind][r]) % 256
    return rows


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def spec_png(samples: np.ndarray, colour_type: int, kinds: np.ndarray, *, interlace: int = 0,
             idat_parts: int = 3) -> bytes:
    """A 16-bit PNG built from the format's definitions, IDAT split in parts, an ancillary chunk between."""
    height, width, count = samples.shape
    raw = samples.astype(">u2").view(np.uint8).reshape(height, width * count * 2)  # big-endian rows
    data = zlib.compress(spec_filtered_rows(raw, kinds, 2 * count).tobytes(), 9)
    step = max(1, -(-len(data) // idat_parts))
    idats = b"".join(chunk(b"IDAT", data[i:i + step]) for i in range(0, len(data), step))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, interlace)
    return (png.SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"Comment\x00made by the test")
            + idats + chunk(b"IEND", b""))


@pytest.mark.parametrize("shape", [(7, 5), (4, 11), (1, 1), (1, 6), (6, 1)])  # H > W, H < W and edges
def test_png16_decodes_every_filter_type(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(RNG_SEED)
    height, width = shape
    for colour_type, count in png.CHANNELS.items():
        samples = rng.integers(0, 65536, (height, width, count), dtype=np.uint16)
        plans = [np.full(height, kind) for kind in range(5)]
        plans += [rng.integers(0, 5, height), rng.integers(0, 3, height)]  # with and without Average/Paeth
        for kinds in plans:
            decoded = png.decode_png16(spec_png(samples, colour_type, kinds), what="t")
            assert decoded.dtype == np.uint16
            np.testing.assert_array_equal(decoded, samples, err_msg=f"colour {colour_type}, filters {kinds}")


def test_png16_smooth_image_with_paeth_and_average(tmp_path: Path) -> None:
    """Smooth content (what Paeth is chosen for), all filters mixed, read through read_image_file."""
    rows, cols = np.mgrid[0:40, 0:33]
    rgb = np.stack([rows * 1500 + cols * 7, cols * 1900, (rows * cols * 31) % 65536], axis=-1).astype(np.uint16)
    kinds = np.tile([4, 3, 1, 2, 0], 8)
    path = tmp_path / "smooth.png"
    path.write_bytes(spec_png(rgb, 2, kinds))
    image = read_image_file(path)
    assert (image.bit_depth, image.container) == (16, "png")
    np.testing.assert_array_equal(image.pixels, rgb.astype(np.float32) / np.float32(65535))


def test_png16_alpha_is_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rgba = rng.integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    grey_alpha = rng.integers(0, 65536, (5, 6, 2), dtype=np.uint16)
    (tmp_path / "rgba.png").write_bytes(spec_png(rgba, 6, np.full(5, 4)))
    (tmp_path / "ga.png").write_bytes(spec_png(grey_alpha, 4, np.full(5, 3)))
    image = read_image_file(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image.pixels, rgba[:, :, :3] / np.float32(65535))
    image = read_image_file(tmp_path / "ga.png")
    assert image.bit_depth == 16 and image.pixels.shape == (5, 6, 1)
    np.testing.assert_array_equal(image.pixels, grey_alpha[:, :, :1] / np.float32(65535))


def test_png16_encoder_output_is_a_valid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rgb = rng.integers(0, 65536, (9, 4, 3), dtype=np.uint16)
    for row_filter in (png.NONE, png.UP):
        data = png.encode_png16(rgb, row_filter=row_filter)
        np.testing.assert_array_equal(png.decode_png16(data, what="t"), rgb)
        header = png.read_header(data, what="t")
        assert (header.width, header.height, header.bit_depth, header.colour_type) == (4, 9, 16, 2)
        kinds = np.frombuffer(zlib.decompress(data[8 + 25 + 8:-12 - 4]), np.uint8).reshape(9, -1)[:, 0]
        assert (kinds == row_filter).all()
        assert data.endswith(chunk(b"IEND", b""))
    with pytest.raises(GlmhaError, match="row filter must be 0"):
        png.encode_png16(rgb, row_filter=png.PAETH)


def test_pillow_and_our_codec_agree_on_16_bit_grey(tmp_path: Path) -> None:
    grey = np.random.default_rng(RNG_SEED).integers(0, 65536, (7, 10), dtype=np.uint16)
    path = tmp_path / "ours.png"
    write_image_file(path, grey[:, :, None] / np.float32(65535), bit_depth=16, container="png")
    with Image.open(path) as image:  # Pillow decodes our file
        assert image.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(image), grey)
    theirs = tmp_path / "pillow.png"
    Image.fromarray(grey).save(theirs)  # Pillow's encoder, our decoder
    np.testing.assert_array_equal(png.decode_png16(theirs.read_bytes(), what="t")[:, :, 0], grey)
    image = read_image_file(theirs)
    assert image.bit_depth == 16
    np.testing.assert_array_equal(image.pixels[:, :, 0], grey / np.float32(65535))


# ------------------------------------------------------------------------------------ TIFF, JPEG, modes


def test_tiff_files_written_by_tifffile(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rgb = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image_file(tmp_path / "planar.tif").pixels, rgb / np.float32(65535))
    grey_alpha = rng.integers(0, 256, (5, 4, 2), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"])
    image = read_image_file(tmp_path / "ga.tif")
    assert image.bit_depth == 8 and image.pixels.shape == (5, 4, 1)
    np.testing.assert_array_equal(image.pixels[:, :, 0], grey_alpha[:, :, 0] / np.float32(255))
    white = rng.integers(0, 65536, (3, 6), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "white.tif", white, photometric="miniswhite")
    np.testing.assert_array_equal(read_image_file(tmp_path / "white.tif").pixels[:, :, 0],
                                  (65535 - white) / np.float32(65535))
    floats = rng.random((4, 4, 3))
    tifffile.imwrite(tmp_path / "float64.tif", floats, photometric="rgb")
    image = read_image_file(tmp_path / "float64.tif")
    assert image.bit_depth == 32
    np.testing.assert_array_equal(image.pixels, floats.astype(np.float32))
    # and tifffile reads what we write: integers k = round(x * levels), no metadata
    write_image_file(tmp_path / "ours.tif", rgb / np.float32(65535), bit_depth=16, container="tiff")
    with tifffile.TiffFile(tmp_path / "ours.tif") as tiff:
        np.testing.assert_array_equal(tiff.pages[0].asarray(), rgb)
        assert "ImageDescription" not in tiff.pages[0].tags and "DateTime" not in tiff.pages[0].tags


def test_tiff_that_tifffile_cannot_decode_goes_through_pillow(tmp_path: Path) -> None:
    rgb = np.random.default_rng(RNG_SEED).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # LZW needs imagecodecs in tifffile
    image = read_image_file(tmp_path / "lzw.tif")
    assert (image.bit_depth, image.container) == (8, "tiff")
    np.testing.assert_array_equal(image.pixels, rgb / np.float32(255))
    cmyk_samples = np.asarray(Image.fromarray(rgb).convert("CMYK"))  # (H, W, 4)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk_samples, photometric="separated")
    with Image.open(tmp_path / "cmyk.tif") as cmyk:
        expected = np.asarray(cmyk.convert("RGB")) / np.float32(255)
    image = read_image_file(tmp_path / "cmyk.tif")
    assert image.bit_depth == 8
    np.testing.assert_array_equal(image.pixels, expected)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.tif")
    with Image.open(tmp_path / "palette.tif") as palette:
        expected = np.asarray(palette.convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(read_image_file(tmp_path / "palette.tif").pixels, expected)


def test_jpeg_and_pillow_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "photo.jpeg"
    Image.fromarray(rgb).save(path, quality=95)
    image = read_image_file(path)
    with Image.open(path) as reference:
        np.testing.assert_array_equal(image.pixels, np.asarray(reference) / np.float32(255))
    assert (image.bit_depth, image.container, image.pixels.shape) == (8, "jpeg", (16, 16, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate 90 degrees clockwise
    Image.fromarray(rgb[:, :10]).save(tmp_path / "turned.jpg", exif=exif)
    with Image.open(tmp_path / "turned.jpg") as stored:
        as_stored = np.asarray(stored) / np.float32(255)  # (16, 10, 3)
    np.testing.assert_array_equal(read_image_file(tmp_path / "turned.jpg").pixels, np.rot90(as_stored, k=-1))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image_file(tmp_path / "cmyk.jpg").pixels.shape == (16, 16, 3)
    palette = Image.fromarray(rgb[:4, :4]).convert("P", palette=Image.Palette.ADAPTIVE, colors=5)
    palette.save(tmp_path / "palette.png", transparency=0)
    np.testing.assert_array_equal(read_image_file(tmp_path / "palette.png").pixels,
                                  np.asarray(palette.convert("RGB")) / np.float32(255))
    grey_alpha = np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    grey = read_image_file(tmp_path / "la.png").pixels
    np.testing.assert_array_equal(grey[:, :, 0], rgb[..., 0] / np.float32(255))
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bilevel.png")
    image = read_image_file(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(image.pixels[:, :, 0], (rgb[..., 0] > 127).astype(np.float32))
    png_named_jpg = tmp_path / "really_png.jpg"  # the content decides the container, not the name
    Image.fromarray(rgb).save(png_named_jpg, format="PNG")
    assert read_image_file(png_named_jpg).container == "png"


def test_channel_conversion(tmp_path: Path) -> None:
    rgb = pixels_with_edges(4, 5, 3)
    write_image_file(tmp_path / "rgb.png", rgb, bit_depth=16, container="png")
    stored = quantise(rgb, 16)
    luma = read_image_file(tmp_path / "rgb.png", channels=1)
    assert luma.pixels.shape == (4, 5, 1) and luma.pixels.dtype == np.float32 and luma.bit_depth == 16
    expected = 0.299 * stored[..., 0].astype(np.float64) + 0.587 * stored[..., 1] + 0.114 * stored[..., 2]
    np.testing.assert_allclose(luma.pixels[:, :, 0], expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(read_image_file(tmp_path / "rgb.png", channels=3).pixels, stored)
    grey = pixels_with_edges(4, 5, 1)
    write_image_file(tmp_path / "grey.tif", grey, bit_depth=8, container="tiff")
    replicated = read_image_file(tmp_path / "grey.tif", channels=3).pixels
    assert replicated.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(replicated[:, :, channel], quantise(grey, 8)[:, :, 0])
    # Pillow's own L conversion of 8-bit RGB agrees to its rounding
    Image.fromarray((quantise(rgb, 8) * 255).round().astype(np.uint8)).save(tmp_path / "rgb8.png")
    with Image.open(tmp_path / "rgb8.png") as image:
        pillow_l = np.asarray(image.convert("L")) / 255.0
    np.testing.assert_allclose(read_image_file(tmp_path / "rgb8.png", channels=1).pixels[:, :, 0], pillow_l,
                               atol=0.5 / 255 + 1e-6)
    with pytest.raises(GlmhaError, match="1- or 3-channel"):
        read_image_file(tmp_path / "rgb.png", channels=2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_bytes(tmp_path: Path) -> None:
    pixels = pixels_with_edges(12, 10, 3)
    for container, depth in [("png", 8), ("png", 16), ("tiff", 16), ("tiff", 32)]:
        suffix = output_suffix(container)
        first, second = tmp_path / f"a{depth}{suffix}", tmp_path / f"b{depth}{suffix}"
        write_image_file(first, pixels, bit_depth=depth, container=container)
        write_image_file(second, pixels.copy(), bit_depth=depth, container=container)
        assert sha256(first) == sha256(second)
        write_image_file(first, pixels, bit_depth=depth, container=container)  # overwriting: same bytes again
        assert sha256(first) == sha256(second)
    cube = np.random.default_rng(RNG_SEED).random((3, 4, 5)).astype(np.float32)
    write_cube_mat(tmp_path / "a.mat", cube)
    write_cube_mat(tmp_path / "b.mat", cube.copy())
    assert sha256(tmp_path / "a.mat") == sha256(tmp_path / "b.mat")
    with h5py.File(tmp_path / "a.mat", "r") as handle:  # no object timestamps that a later write would change
        assert h5py.h5o.get_info(handle.id).ctime == 0 and h5py.h5o.get_info(handle["cube"].id).ctime == 0


# ------------------------------------------------------------------------------------------ spectral


def test_write_cube_mat_is_read_like_ntire_2022(tmp_path: Path) -> None:
    cube = np.random.default_rng(RNG_SEED).random((31, 6, 5)).astype(np.float32)  # (C, H, W)
    path = tmp_path / "ARAD_1K_0901.mat"
    write_cube_mat(path, cube)
    with h5py.File(path, "r") as handle:  # what Ntire2022Split.read_cube and prep_submission's h5py see
        assert handle.userblock_size == 512 and list(handle) == ["cube"]
        dataset = handle["cube"]
        assert dataset.shape == (31, 5, 6) and dataset.dtype == np.float32  # (C, W, H)
        np.testing.assert_array_equal(np.asarray(dataset).transpose(0, 2, 1), cube)
        np.testing.assert_array_equal(np.asarray(dataset).T, cube.transpose(1, 2, 0))  # .T -> MATLAB H x W x C
        assert dataset.attrs["MATLAB_class"] == b"single"
        attribute = dataset.attrs.get_id("MATLAB_class")
        assert attribute.shape == () and attribute.get_type().get_size() == 6
        assert attribute.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
    np.testing.assert_array_equal(read_v73_cube(path, bands=31), cube)  # the function read_cube calls
    np.testing.assert_array_equal(read_cube_mat(path, bands=31), cube)
    header = path.read_bytes()[:512]
    assert header[:128] == MATLAB_HEADER and header.startswith(b"MATLAB 7.3 MAT-file")
    assert header[116:124] == bytes(8) and header[124:128] == b"\x00\x02IM" and header[128:] == bytes(384)
    assert scipy.io.matlab.matfile_version(str(path)) == (2, 0)  # scipy reads the header as v7.3
    write_cube_mat(path, cube.astype(np.float64), key="pred")
    with h5py.File(path, "r") as handle:
        assert handle["pred"].dtype == np.float64 and handle["pred"].attrs["MATLAB_class"] == b"double"
    np.testing.assert_array_equal(read_cube_mat(path), cube)


def test_read_cube_mat_v5_and_scene(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    cube = rng.random((4, 6, 7))  # (C, H, W)
    scipy.io.savemat(tmp_path / "v5.mat", {"img": cube.transpose(1, 2, 0)})  # stored (H, W, C)
    read = read_cube_mat(tmp_path / "v5.mat", bands=4)
    assert read.dtype == np.float32 and read.flags.c_contiguous
    np.testing.assert_array_equal(read, cube.astype(np.float32))
    scipy.io.savemat(tmp_path / "both.mat", {"pred": np.zeros((6, 7, 4)), "cube": cube.transpose(1, 2, 0)})
    np.testing.assert_array_equal(read_cube_mat(tmp_path / "both.mat"), cube.astype(np.float32))  # 'cube' first
    assert CUBE_KEYS == ("cube", "img_expand", "img", "pred")
    scene = rng.random((3, 256, 256)).astype(np.float32)
    scipy.io.savemat(tmp_path / "scene01.mat", {"img": scene.transpose(1, 2, 0)})
    np.testing.assert_array_equal(read_scene_mat(tmp_path / "scene01.mat", bands=3), scene)  # unscaled


# ---------------------------------------------------------------------------------------------- errors


def assert_one_line_error(call: object, path: Path, match: str) -> None:
    with pytest.raises(GlmhaError, match=match) as caught:
        call()  # type: ignore[operator]
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message


def test_image_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    rgb16 = (np.random.default_rng(RNG_SEED).random((20, 20, 3))).astype(np.float32)
    good16 = tmp_path / "good16.png"
    write_image_file(good16, rgb16, bit_depth=16, container="png")
    good8 = tmp_path / "good8.png"
    write_image_file(good8, rgb16, bit_depth=8, container="png")
    cases: list[tuple[str, bytes, str]] = [
        ("empty.png", b"", r"cannot be read \(empty file\)"),
        ("text.png", b"hello, not an image\n", "not an image format Pillow recognises"),
        ("cut16.png", good16.read_bytes()[:200], r"truncated PNG"),
        ("nohead16.png", good16.read_bytes()[:20], r"truncated PNG"),
        ("cut8.png", good8.read_bytes()[:-40], r"cannot be read \("),
        ("cut.jpg", b"\xff\xd8\xff\xe0" + bytes(30), r"cannot be read \("),
        ("interlaced.png", spec_png(np.zeros((2, 2, 3), np.uint16), 2, np.zeros(2, int), interlace=1),
         "interlaced 16-bit PNGs are not supported"),
    ]
    damaged = bytearray(good16.read_bytes())
    damaged[60] ^= 0xFF  # inside the IDAT payload: its CRC no longer matches
    cases.append(("crc.png", bytes(damaged), "CRC mismatch in a IDAT chunk"))
    for name, data, match in cases:
        (tmp_path / name).write_bytes(data)
        assert_one_line_error(lambda name=name: read_image_file(tmp_path / name), tmp_path / name, match)
    Image.new("RGB", (4, 4)).save(tmp_path / "bitmap.png", format="BMP")
    assert_one_line_error(lambda: read_image_file(tmp_path / "bitmap.png"), tmp_path / "bitmap.png",
                          "is a BMP image; only PNG, JPEG and TIFF")
    tifffile.imwrite(tmp_path / "int32.tif", np.zeros((3, 3), np.int32))
    assert_one_line_error(lambda: read_image_file(tmp_path / "int32.tif"), tmp_path / "int32.tif",
                          "32-bit signed minisblack TIFFs are not supported")
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((3, 3), 2.5, np.float32))
    assert_one_line_error(lambda: read_image_file(tmp_path / "hdr.tif"), tmp_path / "hdr.tif",
                          r"float pixels range over \[2.5, 2.5\]")
    tifffile.imwrite(tmp_path / "cmyk16.tif", np.zeros((3, 3, 4), np.uint16), photometric="separated")
    assert_one_line_error(lambda: read_image_file(tmp_path / "cmyk16.tif"), tmp_path / "cmyk16.tif",
                          "16-bit unsigned separated TIFFs are not supported")
    tiff = tmp_path / "cut.tif"
    write_image_file(tiff, rgb16, bit_depth=16, container="tiff")
    tiff.write_bytes(tiff.read_bytes()[:300])
    assert_one_line_error(lambda: read_image_file(tiff), tiff, r"cannot be read \(")
    assert_one_line_error(lambda: read_image_file(tmp_path / "missing.png"), tmp_path / "missing.png",
                          "No such file")
    assert_one_line_error(lambda: read_image_file(tmp_path), tmp_path, r"cannot be read \(")


def test_write_errors(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    pixels = np.zeros((2, 2, 3), np.float32)
    assert_one_line_error(lambda: write_image_file(out, pixels, bit_depth=8, container="jpeg"), out,
                          "cannot write container 'jpeg'")
    assert_one_line_error(lambda: write_image_file(out, pixels, bit_depth=32, container="png"), out,
                          "written with 8, 16 bits, not 32")
    assert_one_line_error(lambda: write_image_file(out, np.zeros((2, 2, 2)), bit_depth=8, container="png"), out,
                          r"must be \(H, W, 1\) or \(H, W, 3\)")
    assert_one_line_error(lambda: write_image_file(out, np.full((2, 2, 1), np.nan), bit_depth=8, container="png"),
                          out, "4 pixel values are NaN")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(GlmhaError, match="bit depth must be 8, 16 or 32"):
        quantise(pixels, 12)
    with pytest.raises(GlmhaError, match="unknown image container 'gif'"):
        output_container("gif")
    assert_one_line_error(lambda: write_cube_mat(tmp_path / "c.mat", np.zeros((2, 2))), tmp_path / "c.mat",
                          r"\(C, H, W\)")
    assert_one_line_error(lambda: write_cube_mat(tmp_path / "c.mat", np.zeros((1, 2, 2)), key="2x"),
                          tmp_path / "c.mat", "not a MATLAB variable name")


def test_cube_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    cube = np.zeros((5, 3, 4), np.float32)
    v73 = tmp_path / "v73.mat"
    write_cube_mat(v73, cube, key="rad")
    assert_one_line_error(lambda: read_cube_mat(v73), v73,
                          r"none of the datasets 'cube', 'img_expand', 'img' or 'pred' \(found: rad\)")
    write_cube_mat(v73, cube)
    assert_one_line_error(lambda: read_cube_mat(v73, bands=31), v73, "expected 31 bands first")
    with h5py.File(v73, "w") as handle:
        handle["cube"] = np.zeros((3, 4))
    assert_one_line_error(lambda: read_cube_mat(v73, what="--truth"), v73, r"^--truth .*expected 3 axes")
    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"rad": np.zeros((3, 4, 5)), "bands": np.arange(5)})
    assert_one_line_error(lambda: read_cube_mat(v5), v5, r"none of the keys .* found \(found: bands, rad\)")
    scipy.io.savemat(v5, {"img": np.zeros((3, 4, 5))})
    assert_one_line_error(lambda: read_cube_mat(v5, bands=28), v5, r"has shape \(3, 4, 5\); expected \(H, W, 28\)")
    scipy.io.savemat(v5, {"img": np.zeros((3, 4))})
    assert_one_line_error(lambda: read_cube_mat(v5), v5, r"expected \(H, W, C\)")
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    assert_one_line_error(lambda: read_cube_mat(empty), empty, "not a readable MATLAB file")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(20))
    assert_one_line_error(lambda: read_cube_mat(garbage), garbage, "not a readable MATLAB file")
    assert_one_line_error(lambda: read_cube_mat(tmp_path / "nope.mat"), tmp_path / "nope.mat", "does not exist")
    scipy.io.savemat(v5, {"img": np.zeros((4, 4, 3))})
    scipy.io.savemat(v5, {"img": np.zeros((3, 4, 4))})
    assert read_scene_mat(v5, bands=4).shape == (4, 3, 4)  # restored whole: any size (the mask must match)
    assert_one_line_error(lambda: read_sci_scene(v5, bands=4, training=False), v5,
                          "smaller than the CASSI simulation's 256x256")
    write_cube_mat(v73, cube)
    assert_one_line_error(lambda: read_scene_mat(v73, bands=5), v73, r"MATLAB v7\.3 files are not supported")
    scipy.io.savemat(v5, {"cube": np.zeros((4, 4, 3))})
    assert_one_line_error(lambda: read_scene_mat(v5, bands=3), v5, r"neither key 'img_expand' nor 'img' found")
