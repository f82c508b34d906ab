"""Synthetic reflectance cubes and the RGB camera model: deterministic, plausible, checkable."""

from __future__ import annotations

import itertools

import pytest
import torch

from glmha.errors import GlmhaError
from glmha.spectral.synthetic import (
    CASSI_WAVELENGTHS,
    LIBRARY_SIZE,
    NTIRE_WAVELENGTHS,
    camera_response,
    capture_rgb,
    decode_srgb,
    default_wavelengths,
    encode_srgb,
    material_library,
    reflectance_cube,
    render_rgb,
)


def _cube(seed: int, bands: int = 31, height: int = 48, width: int = 56) -> torch.Tensor:
    return reflectance_cube(height, width, bands, torch.Generator().manual_seed(seed))


def test_wavelength_tables() -> None:
    assert len(NTIRE_WAVELENGTHS) == 31 and NTIRE_WAVELENGTHS[0] == 400 and NTIRE_WAVELENGTHS[-1] == 700
    assert len(CASSI_WAVELENGTHS) == 28
    assert all(a < b for a, b in itertools.pairwise(CASSI_WAVELENGTHS))
    assert CASSI_WAVELENGTHS[0] > 450 and CASSI_WAVELENGTHS[-1] < 650
    assert default_wavelengths(31) == NTIRE_WAVELENGTHS and default_wavelengths(28) == CASSI_WAVELENGTHS
    assert len(default_wavelengths(10)) == 10


@pytest.mark.parametrize("bands", [31, 28])
def test_shape_dtype_range(bands: int) -> None:
    cube = _cube(0, bands)
    assert cube.shape == (bands, 48, 56) and cube.dtype == torch.float32
    assert float(cube.min()) >= 0.0 and float(cube.max()) <= 1.0


def test_same_seed_same_cube() -> None:
    assert torch.equal(_cube(7), _cube(7))
    assert not torch.equal(_cube(7), _cube(8))


@pytest.mark.parametrize("bands", [31, 28])
def test_spectrally_smooth(bands: int) -> None:
    for seed in range(5):
        cube = _cube(seed, bands)
        step = (cube[1:] - cube[:-1]).abs()  # adjacent bands
        value_range = float(cube.max() - cube.min())
        assert float(step.max()) < 0.2 * value_range
        assert float(step.mean()) < 0.05 * value_range


def test_spatial_structure() -> None:
    cube = _cube(1)
    per_band_std = cube.std(dim=(1, 2))
    assert float(per_band_std.min()) > 0.01  # not constant over the image
    # and smooth: neighbouring pixels differ much less than distant ones
    neighbour = float((cube[:, :, 1:] - cube[:, :, :-1]).abs().mean())
    assert neighbour < 0.25 * float(per_band_std.mean())


def test_custom_wavelengths() -> None:
    generator = torch.Generator().manual_seed(0)
    cube = reflectance_cube(8, 9, 5, generator, wavelengths=[420.0, 480.0, 540.0, 600.0, 660.0])
    assert cube.shape == (5, 8, 9)
    with pytest.raises(GlmhaError, match="3 wavelengths given for 5 bands"):
        reflectance_cube(8, 9, 5, generator, wavelengths=[420.0, 480.0, 540.0])


@pytest.mark.parametrize("wavelengths", [NTIRE_WAVELENGTHS, CASSI_WAVELENGTHS])
def test_camera_response_and_flat_rendering(wavelengths: tuple[float, ...]) -> None:
    response = camera_response(wavelengths)
    bands = len(wavelengths)
    assert response.shape == (3, bands) and float(response.min()) > 0.0
    assert torch.allclose(response.sum(dim=1), torch.ones(3), atol=1e-6)
    peaks = [wavelengths[int(i)] for i in response.argmax(dim=1)]
    assert peaks[0] > peaks[1] > peaks[2]  # R, G, B order
    flat = torch.full((bands, 4, 5), 0.37)
    assert torch.allclose(render_rgb(flat, response), torch.full((3, 4, 5), 0.37), atol=1e-6)


def test_render_clips_is_deterministic_and_batches() -> None:
    response = camera_response(NTIRE_WAVELENGTHS)
    assert torch.equal(render_rgb(torch.full((31, 2, 2), 2.0), response), torch.ones(3, 2, 2))
    cube = _cube(2)
    rgb = render_rgb(cube, response)
    assert rgb.shape == (3, 48, 56) and float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    assert torch.equal(rgb, render_rgb(cube, response))
    batch = torch.stack([cube, _cube(3)])  # 2 x (31, h, w) -> (2, 31, h, w)
    assert torch.allclose(render_rgb(batch, response)[0], rgb, atol=1e-6)
    with pytest.raises(GlmhaError, match="render_rgb"):
        render_rgb(_cube(0, 28), response)


def test_srgb_curve_values_and_inverse() -> None:
    linear = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    encoded = encode_srgb(linear)
    assert torch.allclose(decode_srgb(encoded), linear, atol=1e-12)
    assert bool((encoded[1:] > encoded[:-1]).all())  # strictly increasing
    # IEC 61966-2-1: the two pieces meet at 0.0031308 -> 0.04045; mid grey 0.18 encodes to 0.46136
    knee = encode_srgb(torch.tensor([0.0031308], dtype=torch.float64))
    assert float(knee) == pytest.approx(0.0404500, abs=1e-6)
    assert float(encode_srgb(torch.tensor([0.18], dtype=torch.float64))) == pytest.approx(0.4613561, abs=1e-6)
    assert float(encode_srgb(torch.tensor([1.0]))) == pytest.approx(1.0, abs=1e-6)


def test_capture_is_the_tone_mapped_quantised_rendering() -> None:
    response = camera_response(NTIRE_WAVELENGTHS)
    flat = torch.full((31, 3, 4), 0.37)
    expected = round(1.055 * 0.37 ** (1 / 2.4) * 255 - 0.055 * 255) / 255
    assert torch.allclose(capture_rgb(flat, response), torch.full((3, 3, 4), expected), atol=1e-7)
    cube = _cube(4)
    rgb = capture_rgb(cube, response)
    codes = rgb * 255
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the 8-bit grid
    # within half a code of the exact curve, and the 4-bit camera is coarser still
    exact = encode_srgb(render_rgb(cube, response))
    assert float((rgb - exact).abs().max()) <= 0.5 / 255 + 1e-6
    assert len(torch.unique(capture_rgb(cube, response, bits=4))) <= 16
    with pytest.raises(GlmhaError, match="bits must lie in"):
        capture_rgb(cube, response, bits=0)


@pytest.mark.parametrize("wavelengths", [NTIRE_WAVELENGTHS, CASSI_WAVELENGTHS])
def test_material_library_is_fixed_and_shared_by_scenes(wavelengths) -> None:
    library = material_library(wavelengths)
    assert library.shape == (LIBRARY_SIZE, len(wavelengths))
    assert float(library.min()) > 0.0 and float(library.max()) < 1.0
    library[0] = 0.0  # a returned copy: the cached library is untouched
    assert torch.equal(material_library(wavelengths), material_library(list(wavelengths)))
    assert float(material_library(wavelengths)[0].min()) > 0.0
    # a cube is shading x (convex mix of 3-6 library spectra): its pixels span a subspace of rank 3-6, and
    # exactly that many library spectra lie in it (the rest are far outside)
    for seed in range(6):
        cube = reflectance_cube(16, 16, len(wavelengths), torch.Generator().manual_seed(seed))
        pixels = cube.double().reshape(len(wavelengths), -1)  # (bands, h, w) -> (bands, h*w)
        u, singular, _ = torch.linalg.svd(pixels, full_matrices=False)
        rank = int((singular > 1e-7 * singular[0]).sum())  # float32 rounding sits near 1e-8
        assert 3 <= rank <= 6
        span = u[:, :rank]  # (bands, rank)
        spectra = material_library(wavelengths).T  # (bands, LIBRARY_SIZE)
        residual = (spectra - span @ (span.T @ spectra)).norm(dim=0) / spectra.norm(dim=0)
        assert int((residual < 1e-5).sum()) == rank, (seed, sorted(residual.tolist())[:8])
        assert float(residual.sort().values[rank]) > 1e-4
