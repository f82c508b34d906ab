"""Tiled restoration: exact where the model is local, seamless where it is not, memory flat in the image size."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import glmha
from glmha.errors import GlmhaError
from glmha.restore.memory import PeakTensorMemory
from glmha.restore.runner import Restorer, precision_dtype
from glmha.restore.tiling import TileSettings, edge_ramp, plan_tiles, run_tiled, tile_starts
from glmha.runtime import choose_device

from conftest import tiny_model

TEACHER = Path(__file__).resolve().parents[1] / "checkpoints" / "restormer_denoise_s25.pth"


def local_model(radius: int, channels: int = 3, seed: int = 0) -> nn.Module:
    """One (2 * radius + 1)-wide convolution: each output pixel sees inputs at most `radius` pixels away."""
    torch.manual_seed(seed)
    return nn.Conv2d(channels, channels, 2 * radius + 1, padding=radius).eval()


@pytest.mark.parametrize(("length", "tile", "overlap", "multiple"),
                         [(96, 32, 8, 8), (104, 48, 16, 8), (40, 64, 16, 8), (64, 64, 8, 4), (100, 30, 7, 1)])
def test_tiles_cover_the_side_with_the_overlap_asked_and_aligned_starts(length, tile, overlap, multiple) -> None:
    starts = tile_starts(length, tile, overlap, multiple)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % multiple == 0 for s in starts)
    assert all(b - a <= tile - overlap and b > a for a, b in itertools.pairwise(starts))


def test_ramps_are_zero_at_shared_edges_and_one_at_image_edges() -> None:
    ramp = edge_ramp(32, 16, rise=True, fall=False)
    assert torch.equal(ramp[:4], torch.zeros(4))  # overlap // 4 = 4 pixels ignored at the shared edge
    assert torch.allclose(ramp[4:12], (torch.arange(8, dtype=torch.float64) + 0.5) / 8)  # linear over 8 pixels
    assert torch.equal(ramp[12:], torch.ones(20))
    assert torch.equal(edge_ramp(32, 16, rise=False, fall=False), torch.ones(32, dtype=torch.float64))
    assert torch.equal(edge_ramp(32, 16, rise=True, fall=True).flip(0), edge_ramp(32, 16, rise=True, fall=True))


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(96, 80, 32, 8), (72, 136, 48, 16), (64, 64, 40, 8)])
def test_tiled_output_equals_whole_image_for_a_model_within_a_quarter_overlap(height, width, tile,
                                                                              overlap) -> None:
    radius = overlap // 4
    model = local_model(radius)
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = model(image)
        tiled = run_tiled(model, image, TileSettings(tile, overlap), multiple=8)
        wider = run_tiled(local_model(radius + 2), image, TileSettings(tile, overlap), multiple=8)
        wider_whole = local_model(radius + 2)(image)
    assert len(plan_tiles(height, width, TileSettings(tile, overlap), 8)) > 1
    assert (tiled - whole).abs().max() < 1e-5  # everywhere, image borders included
    # the margin is what makes it exact: a model that sees further than overlap // 4 differs at tile edges
    assert (wider - wider_whole).abs().max() > 1e-3


def test_tiles_that_disagree_are_cross_faded_without_a_step() -> None:
    """A 'model' whose output is each tile's mean: the blend must ramp between neighbouring constants."""
    image = torch.rand(1, 1, 64, 160, generator=torch.Generator().manual_seed(2))
    settings = TileSettings(48, 16)

    def tile_mean(tile: torch.Tensor) -> torch.Tensor:
        return torch.full_like(tile, float(tile.mean()) * 10)

    out = run_tiled(tile_mean, image, settings, multiple=8)[0, 0]
    means = [float(image[..., t.top:t.top + t.height, t.left:t.left + t.width].mean()) * 10
             for t in plan_tiles(64, 160, settings, 8)]
    largest_step = max(abs(a - b) for a in means for b in means)
    span = settings.overlap - 2 * (settings.overlap // 4)  # pixels over which one tile fades into the next
    assert out.diff(dim=1).abs().max() <= largest_step / span + 1e-6
    assert out.diff(dim=0).abs().max() <= largest_step / span + 1e-6
    assert largest_step > 0.05  # the tiles really disagree


def test_one_tile_as_large_as_the_image_gives_the_whole_image_output() -> None:
    model = tiny_model("restormer")
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    whole = Restorer(model, torch.device("cpu"))((image,))
    tiled = Restorer(model, torch.device("cpu"), tiles=TileSettings(64, 16))((image,))
    assert torch.equal(whole, tiled)
    assert whole.shape == image.shape  # padded to 40x56 -> 40x56 (already multiples of 8), cropped back


def test_tiling_a_shipped_teacher_stays_close_to_the_whole_image() -> None:
    """Channel attention pools over the whole tile, so tiles cannot reproduce the whole-image output exactly;
    this pins how close the shipped denoiser stays (PSNR of tiled against whole, measured on astronaut)."""
    from glmha.data.sample_images import load_sample
    from glmha.metrics import psnr

    model = glmha.load(TEACHER)
    clean = load_sample("astronaut")[None, :, 128:320, 160:352]  # (1, 3, 192, 192)
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    whole = Restorer(model, torch.device("cpu"))((noisy,))
    tiled = Restorer(model, torch.device("cpu"), tiles=TileSettings(96, 32))((noisy,))
    assert psnr(tiled, whole) == pytest.approx(47.72, abs=0.02)


def test_peak_memory_of_tiled_restoration_does_not_grow_with_the_image() -> None:
    model = tiny_model("restormer")
    weights = [*model.parameters(), *model.buffers()]
    peaks = {}
    for side in (64, 160):
        image = torch.rand(1, 3, side, side)
        with torch.inference_mode():
            with PeakTensorMemory(ignore=[*weights, image]) as tiled:
                run_tiled(model, image, TileSettings(48, 16), multiple=8)
            with PeakTensorMemory(ignore=[*weights, image]) as whole:
                model(image)
        accumulators = (3 + 1) * 4 * side * side  # the blended output and the summed weights, float32
        peaks[side] = (tiled.peak - accumulators, whole.peak)
    working, _ = peaks[64]
    assert abs(peaks[160][0] - working) < 0.03 * working  # the model's share: one tile's, whatever the image
    assert peaks[160][1] > 6 * peaks[64][1]  # a whole-image pass grows with the pixels (6.25x here)


def test_peak_counter_counts_live_tensors_exactly() -> None:
    with PeakTensorMemory() as memory:
        first = torch.empty(1000)  # 4000 bytes
        second = torch.empty(500)  # 2000
        del first
        third = torch.empty(2000)  # 8000: peak 10000
        view = third.view(-1)[:10]  # a view holds the storage
        del third
        small = torch.empty(10)
        assert memory.current == 2000 + 8000 + 40
        del view
        assert memory.current == 2000 + 40
    assert memory.peak == 10040
    del second, small


@pytest.mark.parametrize(("precision", "tolerance"), [("bf16", 0.05), ("fp16", 0.01)])
def test_reduced_precision_stays_close_to_fp32(precision, tolerance) -> None:
    model = tiny_model("restormer")
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    reference = Restorer(model, torch.device("cpu"))((image,))
    reduced = Restorer(model, torch.device("cpu"), precision)((image,))
    assert reduced.dtype == torch.float32
    difference = (reduced - reference).abs().max()
    assert 0 < difference < tolerance * reference.abs().max()


@pytest.mark.parametrize(("tile", "overlap", "message"), [
    (30, 8, "--tile must be a positive multiple of 8"),
    (32, 32, "--overlap (32) must be smaller than --tile (32)"),
    (32, -1, "--overlap must be at least 0"),
    (32, 28, "--tile minus --overlap must be at least the model's multiple 8"),
])
def test_bad_tile_settings_are_one_line_errors(tile, overlap, message) -> None:
    with pytest.raises(GlmhaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Restorer(tiny_model("restormer"), torch.device("cpu"), tiles=TileSettings(tile, overlap))


def test_device_and_precision_names_are_checked() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type in ("cpu", "cuda")
    with pytest.raises(GlmhaError, match="--device must be auto, cpu, cuda or cuda:N; got 'tpu'"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GlmhaError, match="has no CUDA device"):
            choose_device("cuda")
    with pytest.raises(GlmhaError, match="--precision must be one of fp32, bf16, fp16"):
        precision_dtype("int8")
