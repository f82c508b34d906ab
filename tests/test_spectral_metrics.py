"""The MST++ spectral metrics against values worked out by hand with plain Python math."""

from __future__ import annotations

import math

import pytest
import torch

from glmha.errors import GlmhaError
from glmha.metrics import psnr_per_image as rgb_psnr_per_image
from glmha.spectral.metrics import (
    SPECTRAL_METRICS,
    central_crop,
    mrae_per_image,
    psnr_per_image,
    rmse_per_image,
    sam_per_image,
    spectral_scores,
)

TOL = 1e-12

# One image, 2 bands, 1x2 pixels: [band][pixel]. P[1][1] = 1.2 exceeds 1, so PSNR's clamp matters.
P = [[0.6, 0.25], [0.1, 1.2]]
G = [[0.5, 0.25], [0.2, 0.8]]


def _tensor(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 2, 1, 2)  # [band][pixel] -> (b=1, C=2, h=1, w=2)


def _pairs() -> list[tuple[float, float]]:
    return [(P[c][i], G[c][i]) for c in range(2) for i in range(2)]


def test_mrae_by_hand() -> None:
    expected = sum(abs(p - g) / g for p, g in _pairs()) / 4
    got = mrae_per_image(_tensor(P), _tensor(G))
    assert got.dtype == torch.float64 and got.shape == (1,)
    assert abs(float(got[0]) - expected) < TOL


def test_rmse_by_hand_is_unclamped() -> None:
    expected = math.sqrt(sum((p - g) ** 2 for p, g in _pairs()) / 4)
    assert abs(float(rmse_per_image(_tensor(P), _tensor(G))[0]) - expected) < TOL


def test_psnr_by_hand_clamps_prediction() -> None:
    mse = sum((min(max(p, 0.0), 1.0) - min(max(g, 0.0), 1.0)) ** 2 for p, g in _pairs()) / 4
    expected = 10 * math.log10(1 / mse)
    assert abs(float(psnr_per_image(_tensor(P), _tensor(G))[0]) - expected) < TOL


def test_sam_by_hand() -> None:
    angles = []
    for i in range(2):
        p = [P[0][i], P[1][i]]
        g = [G[0][i], G[1][i]]
        cos = (p[0] * g[0] + p[1] * g[1]) / (math.hypot(*p) * math.hypot(*g))
        angles.append(math.degrees(math.acos(cos)))
    expected = sum(angles) / 2
    assert abs(float(sam_per_image(_tensor(P), _tensor(G))[0]) - expected) < TOL


def test_mrae_zero_target_plain_and_eps() -> None:
    pred = torch.tensor([0.3, 0.0, 0.5, 0.25], dtype=torch.float64).view(1, 4, 1, 1)  # (4,) -> (b, C, 1, 1)
    target = torch.tensor([0.0, 0.0, 0.4, 0.5], dtype=torch.float64).view(1, 4, 1, 1)  # (4,) -> (b, C, 1, 1)
    assert math.isnan(float(mrae_per_image(pred, target)[0]))  # 0/0 in the official form
    assert math.isinf(float(mrae_per_image(pred[:, :1], target[:, :1])[0]))  # 0.3/0
    eps = 1e-8
    expected = (0.3 / eps + 0.0 / eps + 0.1 / 0.4 + 0.25 / 0.5) / 4
    got = float(mrae_per_image(pred, target, eps=eps)[0])
    assert abs(got - expected) / expected < TOL
    # eps touches only zero denominators: identical to the plain form where G has no zero
    assert float(mrae_per_image(pred[:, 2:], target[:, 2:], eps=eps)[0]) == float(
        mrae_per_image(pred[:, 2:], target[:, 2:])[0]
    )


def test_psnr_clamps_both_tensors() -> None:
    target = torch.tensor([1.5, -0.2], dtype=torch.float64).view(1, 2, 1, 1)  # (2,) -> (b, C, 1, 1)
    pred = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)  # (2,) -> (b, C, 1, 1)
    assert math.isinf(float(psnr_per_image(pred, target)[0]))
    # the generic PSNR clamps only the prediction, so it sees an error here
    assert math.isfinite(float(rgb_psnr_per_image(pred, target, clamp=True)[0]))
    # and clamping does not hide errors inside [0, 1]
    half = torch.full_like(pred, 0.5)
    assert abs(float(psnr_per_image(half, target)[0]) - 10 * math.log10(1 / 0.25)) < TOL


def test_sam_scaled_orthogonal_opposite() -> None:
    g = torch.tensor([0.1, 0.7, 0.3], dtype=torch.float64).view(1, 3, 1, 1)  # (3,) -> (b, C, 1, 1)
    assert float(sam_per_image(2 * g, g)[0]) == 0.0
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)  # (3,) -> (b, C, 1, 1)
    b = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64).view(1, 3, 1, 1)  # (3,) -> (b, C, 1, 1)
    assert abs(float(sam_per_image(a, b)[0]) - 90.0) < TOL
    assert abs(float(sam_per_image(-a, 3 * a)[0]) - 180.0) < TOL


def test_sam_skips_zero_pixels() -> None:
    pred = _tensor([[1.0, 0.0], [0.0, 5.0]])
    target = _tensor([[0.0, 1.0], [1.0, 5.0]])
    # pixel 0: (1, 0) vs (0, 1) = 90 degrees; pixel 1: (0, 5) vs (1, 5)
    cos = 25 / (5 * math.hypot(1, 5))
    expected = (90.0 + math.degrees(math.acos(cos))) / 2
    assert abs(float(sam_per_image(pred, target)[0]) - expected) < TOL
    zero_pixel = pred.clone()
    zero_pixel[..., 0] = 0.0  # pixel 0 of the prediction has no spectrum: left out
    assert abs(float(sam_per_image(zero_pixel, target)[0]) - math.degrees(math.acos(cos))) < TOL
    assert math.isnan(float(sam_per_image(torch.zeros_like(pred), target)[0]))


def test_per_image_in_batch() -> None:
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(3, 4, 5, 6, generator=generator) + 0.1
    pred = target + 0.05 * torch.randn(3, 4, 5, 6, generator=generator)
    scores = spectral_scores(pred, target)
    assert tuple(scores) == SPECTRAL_METRICS
    for name, values in scores.items():
        assert values.shape == (3,) and values.dtype == torch.float64
        single = spectral_scores(pred[1:2], target[1:2])[name]
        assert torch.allclose(values[1:2], single, rtol=0, atol=1e-12), name


def test_float32_input_is_scored_in_float64() -> None:
    target = torch.full((1, 2, 2, 2), 0.3, dtype=torch.float32)
    assert rmse_per_image(target + 0.1, target).dtype == torch.float64


@pytest.mark.parametrize("name", SPECTRAL_METRICS)
def test_shape_mismatch_names_metric(name: str) -> None:
    functions = {"mrae": mrae_per_image, "rmse": rmse_per_image, "psnr": psnr_per_image, "sam": sam_per_image}
    with pytest.raises(GlmhaError, match=f"^{name}: "):
        functions[name](torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(GlmhaError, match=f"^{name}: "):
        functions[name](torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))


def test_central_crop() -> None:
    cube = torch.zeros(2, 31, 482, 512)
    assert central_crop(cube).shape == (2, 31, 226, 256)
    marked = torch.arange(10 * 12, dtype=torch.float32).view(10, 12)  # (h*w,) -> (h, w)
    assert torch.equal(central_crop(marked, 2), marked[2:8, 2:10])
    assert central_crop(marked, 0) is marked
    with pytest.raises(GlmhaError, match="central_crop"):
        central_crop(marked, 5)
    with pytest.raises(GlmhaError, match="central_crop"):
        central_crop(marked, -1)
