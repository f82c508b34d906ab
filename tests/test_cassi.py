"""The CASSI simulation must match the official MST pipeline: +2 columns per band, 2/C scaling, Phi = shift(M)."""

from __future__ import annotations

import pytest
import torch

from glmha.archs import MST
from glmha.errors import GlmhaError
from glmha.spectral.cassi import STEP, measure, mst_inputs, shift, shift_back


def test_shift_places_band_i_at_columns_2i() -> None:
    x = torch.arange(1, 1 + 3 * 2 * 4, dtype=torch.float32).reshape(1, 3, 2, 4)  # (B, C, H, W)
    out = shift(x)
    assert out.shape == (1, 3, 2, 4 + 2 * STEP)
    expected = torch.tensor(
        [
            [[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 7, 8, 0, 0, 0, 0]],
            [[0, 0, 9, 10, 11, 12, 0, 0], [0, 0, 13, 14, 15, 16, 0, 0]],
            [[0, 0, 0, 0, 17, 18, 19, 20], [0, 0, 0, 0, 21, 22, 23, 24]],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(out[0], expected)


def test_shift_back_inverts_shift() -> None:
    x = torch.randn(2, 5, 3, 7, dtype=torch.float64)
    shifted = shift(x)
    for i in range(5):  # each band of a single-band-at-a-time measurement comes back exactly
        y = shifted[:, i]
        assert torch.equal(shift_back(y, 5)[:, i], x[:, i])
    assert shift_back(shifted.sum(1), 5).shape == x.shape


def test_doc_numeric_check_ones() -> None:
    cube = torch.ones(1, 28, 256, 256)
    mask = torch.ones(256, 256)
    y = measure(cube, mask)
    assert y.shape == (1, 256, 310)
    assert torch.all(y[..., 54:256] == 28)
    assert y[0, 0, 53] == 27 and y[0, 0, 256] == 27 and y[0, 0, 0] == 1 and y[0, 0, 309] == 1
    meas, phi = mst_inputs(cube, mask)
    assert meas.shape == (1, 28, 256, 256) and phi.shape == (1, 28, 256, 310)
    # H = shift_back(y * 2 / 28) equals 2 wherever its source column lies in 54..255
    for i in (0, 13, 27):
        cols = torch.arange(256) + 2 * i
        inside = (cols >= 54) & (cols <= 255)
        assert torch.allclose(meas[0, i, :, inside], torch.tensor(2.0))
    assert torch.equal(phi, shift(torch.ones(1, 28, 256, 256)))


def test_measurement_is_linear_and_masked() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 6, 8, 8, generator=gen), torch.rand(2, 6, 8, 8, generator=gen)
    mask = (torch.rand(8, 8, generator=gen) > 0.5).float()
    lhs = measure(2.0 * a - 3.0 * b, mask)
    assert torch.allclose(lhs, 2.0 * measure(a, mask) - 3.0 * measure(b, mask), atol=1e-5)
    assert torch.equal(measure(a, torch.zeros(8, 8)), torch.zeros(2, 8, 8 + 5 * STEP))


def test_mst_inputs_shapes_and_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    cube = torch.rand(3, 28, 256, 256, generator=gen)
    mask = (torch.rand(256, 256, generator=gen) > 0.5).float()
    meas, phi = mst_inputs(cube, mask)
    assert meas.shape == (3, 28, 256, 256) and phi.shape == (3, 28, 256, 310)
    y = measure(cube, mask)
    assert torch.allclose(meas, shift_back(y / 28 * 2, 28))
    assert torch.equal(phi[1, 5, :, 10:266], mask)


def test_mst_accepts_mst_inputs() -> None:
    small = MST(dim=8, stage=1, num_blocks=(1, 1), bands=8).eval()
    cube = torch.rand(1, 8, 32, 32)
    meas, phi = mst_inputs(cube, (torch.rand(32, 32) > 0.5).float())
    with torch.no_grad():
        assert small(meas, phi).shape == (1, 8, 32, 32)
    full = MST(dim=28, stage=1, num_blocks=(1, 1), bands=28).eval()  # the real 256 / 310 geometry
    meas, phi = mst_inputs(torch.rand(1, 28, 256, 256), torch.ones(256, 256))
    assert phi.shape[-1] >= full.mask_width(256)
    with torch.no_grad():
        assert full(meas, phi).shape == (1, 28, 256, 256)


def test_errors() -> None:
    with pytest.raises(GlmhaError, match="mask is 128x128, the cubes are 256x256"):
        measure(torch.zeros(1, 28, 256, 256), torch.zeros(128, 128))
    with pytest.raises(GlmhaError, match="mask is 128x128, the cubes are 256x256"):
        mst_inputs(torch.zeros(1, 28, 256, 256), torch.zeros(128, 128))
    with pytest.raises(GlmhaError, match=r"the CASSI model's design hard-codes 256: .* got 64x32"):
        mst_inputs(torch.zeros(1, 4, 64, 32), torch.zeros(64, 32))
    with pytest.raises(GlmhaError, match=r"the CASSI model's design hard-codes 256: .* got 512x512"):
        mst_inputs(torch.zeros(1, 2, 512, 512), torch.zeros(512, 512))
    with pytest.raises(GlmhaError, match="mask must be 2-D"):
        measure(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(GlmhaError, match=r"\(B, C, H, W\)"):
        shift(torch.zeros(2, 4, 4))
    with pytest.raises(GlmhaError, match="too narrow for 28 bands"):
        shift_back(torch.zeros(1, 4, 54), 28)
