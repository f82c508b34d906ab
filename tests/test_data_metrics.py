"""Offline sample images, the noise model and the PSNR/SSIM conventions, checked against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glmha.data import (
    COLOUR_IMAGES,
    SAMPLE_IMAGES,
    TEST_IMAGES,
    TRAIN_IMAGES,
    add_gaussian_noise,
    load_sample,
    seeded_generator,
    test_images,
    train_images,
)
from glmha.errors import GlmhaError
from glmha.metrics import gaussian_window, psnr, psnr_per_image, ssim, ssim_per_image

# -- sample images ----------------------------------------------------------------------------------


def test_every_sample_image_loads_offline_as_rgb_in_unit_range():
    for name in SAMPLE_IMAGES:
        image = load_sample(name)
        assert image.dtype == torch.float32
        assert image.ndim == 3 and image.shape[0] == 3, name
        assert min(image.shape[1:]) >= 128, name
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, name
        assert float(image.max()) > 0.5, name  # decoded, not all black


def test_grey_images_have_equal_channels_and_colour_images_do_not():
    for name in SAMPLE_IMAGES:
        image = load_sample(name)
        grey = torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert grey == (name not in COLOUR_IMAGES), name


def test_no_duplicate_images():
    """`skimage.data.cat` is `chelsea`: the list must not hold the same photograph twice."""
    assert len(set(SAMPLE_IMAGES)) == len(SAMPLE_IMAGES)
    seen = {}
    for name in SAMPLE_IMAGES:
        image = load_sample(name)
        key = (tuple(image.shape), round(float(image.mean()), 6))
        assert key not in seen, f"{name} duplicates {seen.get(key)}"
        seen[key] = name


def test_split_is_disjoint_fixed_and_covers_everything():
    assert set(TRAIN_IMAGES).isdisjoint(TEST_IMAGES)
    assert set(TRAIN_IMAGES) | set(TEST_IMAGES) == set(SAMPLE_IMAGES)
    assert TEST_IMAGES == ("astronaut", "chelsea", "coffee")
    assert sum(name in COLOUR_IMAGES for name in TEST_IMAGES) >= 3
    assert [name for name, _ in test_images()] == list(TEST_IMAGES)
    assert [name for name, _ in train_images()] == list(TRAIN_IMAGES)


def test_load_is_deterministic_and_returns_a_private_copy():
    first = load_sample("coffee")
    first.zero_()
    second = load_sample("coffee")
    assert float(second.max()) > 0
    assert torch.equal(second, load_sample("coffee"))


def test_unknown_image_is_a_clear_error():
    with pytest.raises(GlmhaError, match="unknown sample image 'lena'"):
        load_sample("lena")


# -- noise ------------------------------------------------------------------------------------------


def test_noise_std_matches_sigma_on_the_255_scale():
    clean = torch.full((4, 3, 256, 256), 0.5)  # 786,432 samples: std error of the std ~0.08 %
    noisy = add_gaussian_noise(clean, 25, seeded_generator(0))
    noise = (noisy - clean).double()
    assert abs(float(noise.std()) / (25 / 255) - 1) < 0.005
    assert abs(float(noise.mean())) < 5 * (25 / 255) / math.sqrt(noise.numel())


def test_noise_is_reproducible_from_the_seed_and_not_clipped():
    clean = torch.zeros(1, 3, 32, 32)
    first = add_gaussian_noise(clean, 25, seeded_generator(7))
    again = add_gaussian_noise(clean, 25, seeded_generator(7))
    other = add_gaussian_noise(clean, 25, seeded_generator(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert float(first.min()) < 0  # no clipping at black
    assert torch.equal(add_gaussian_noise(clean, 0, seeded_generator(7)), clean)


def test_noise_keeps_dtype_and_rejects_bad_arguments():
    clean = torch.zeros(2, 8, dtype=torch.float64)
    assert add_gaussian_noise(clean, 10, seeded_generator(0)).dtype == torch.float64
    with pytest.raises(GlmhaError, match="sigma"):
        add_gaussian_noise(clean, -1, seeded_generator(0))
    with pytest.raises(GlmhaError, match="floating-point"):
        add_gaussian_noise(torch.zeros(2, 8, dtype=torch.uint8), 10, seeded_generator(0))


# -- PSNR -------------------------------------------------------------------------------------------


def test_psnr_of_a_constant_error_is_exact():
    target = torch.rand(2, 3, 16, 16, generator=seeded_generator(0), dtype=torch.float64)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)  # 10 log10(1 / 0.01)
    assert psnr(target - 0.01, target) == pytest.approx(40.0, abs=1e-9)
    assert psnr(target * 255 + 25.5, target * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_is_the_mean_of_per_image_values():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    pred = target.clone()
    pred[0] += 0.1  # 20 dB
    pred[1] += 0.01  # 40 dB
    assert psnr_per_image(pred, target).tolist() == pytest.approx([20.0, 40.0])
    assert psnr(pred, target) == pytest.approx(30.0)  # not the PSNR of the pooled MSE (~23 dB)


def test_psnr_clamp_option():
    target = torch.full((1, 1, 4, 4), 0.9, dtype=torch.float64)
    pred = torch.full((1, 1, 4, 4), 1.1, dtype=torch.float64)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(1 / 0.04))
    assert psnr(pred, target, clamp=True) == pytest.approx(20.0)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(GlmhaError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(GlmhaError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# -- SSIM -------------------------------------------------------------------------------------------


def test_gaussian_window_is_normalised_and_symmetric():
    taps = gaussian_window()
    assert taps.numel() == 11 and float(taps.sum()) == pytest.approx(1.0)
    assert torch.allclose(taps, taps.flip(0))
    assert float(taps[6] / taps[5]) == pytest.approx(math.exp(-1 / (2 * 1.5**2)))


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    clean = load_sample("astronaut")[:, :96, :96].unsqueeze(0)  # (3, 96, 96) -> (1, 3, 96, 96)
    assert ssim(clean, clean) == pytest.approx(1.0, abs=1e-12)
    values = [ssim(add_gaussian_noise(clean, sigma, seeded_generator(0)), clean) for sigma in (5, 15, 25, 50)]
    assert values == sorted(values, reverse=True)
    assert values[-1] < 0.5 < values[0]


def test_ssim_of_constant_images_is_the_luminance_term():
    """Flat images have no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), the same in every window."""
    a, b = 0.6, 0.3
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    pred = torch.full((1, 3, 20, 20), a, dtype=torch.float64)
    target = torch.full((1, 3, 20, 20), b, dtype=torch.float64)
    assert ssim(pred, target) == pytest.approx(expected, abs=1e-12)


def test_ssim_of_an_11x11_image_is_its_single_valid_window():
    """Valid filtering: an 11x11 image has exactly one window, the Gaussian-weighted whole image."""
    generator = seeded_generator(1)
    x = torch.rand(1, 1, 11, 11, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(x.shape, generator=generator, dtype=torch.float64)) * 0.8
    taps = gaussian_window()
    weights = taps[:, None] * taps[None, :]  # (11,) x (11,) -> (11, 11)
    mu_x, mu_y = float((weights * x[0, 0]).sum()), float((weights * y[0, 0]).sum())
    var_x = float((weights * (x[0, 0] - mu_x) ** 2).sum())
    var_y = float((weights * (y[0, 0] - mu_y) ** 2).sum())
    cov = float((weights * (x[0, 0] - mu_x) * (y[0, 0] - mu_y)).sum())
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    assert ssim_per_image(x.repeat(2, 3, 1, 1), y.repeat(2, 3, 1, 1)).tolist() == pytest.approx([expected] * 2)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    generator = seeded_generator(3)
    target = torch.rand(2, 3, 40, 52, generator=generator, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)
    expected = np.mean([
        structural_similarity(p.numpy(), t.numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False)
        for p, t in zip(pred, target, strict=True)
    ])
    assert ssim(pred, target) == pytest.approx(float(expected), abs=1e-10)


def test_held_out_pairs_and_their_psnr():
    """Centre crops of the held-out photos with fixed noise; the scores every example reports."""
    from glmha.data.held_out import NOISE_SEED, SIGMA, held_out_pairs, held_out_psnr

    pairs = held_out_pairs(64)
    assert [name for name, _, _ in pairs] == list(TEST_IMAGES)
    for index, (name, clean, noisy) in enumerate(pairs):
        image = load_sample(name)
        top, left = (image.shape[1] - 64) // 2, (image.shape[2] - 64) // 2
        assert torch.equal(clean[0], image[:, top:top + 64, left:left + 64])
        assert torch.equal(noisy, add_gaussian_noise(clean, SIGMA, seeded_generator(NOISE_SEED + index)))
    assert held_out_psnr(None, pairs) == [psnr(noisy, clean) for _, clean, noisy in pairs]

    def overshoot(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0  # outputs above 1 must be clamped before scoring

    expected = [psnr((noisy * 2.0).clamp(0.0, 1.0), clean) for _, clean, noisy in pairs]
    assert held_out_psnr(overshoot, pairs) == expected
    assert held_out_psnr(None, held_out_pairs(64)) == held_out_psnr(None, pairs)  # fixed by the seed
