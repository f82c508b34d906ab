"""Parameter and MAC counts: the published reference figures, and per-layer hand counts."""

from __future__ import annotations

import pytest
import torch

from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.archs.restormer import RestormerAttention
from glmha.archs.spectral_blocks import SpectralAttention
from glmha.counting import count_macs, count_parameters
from glmha.report import describe


def meta(cls, **kwargs):
    with torch.device("meta"):
        return cls(**kwargs)


def test_restormer_reference_figures() -> None:
    report = describe(meta(Restormer), 256, 256)
    assert report.params == 26_126_644
    assert report.macs_linear == 140_990_496_768  # the published 140.99 G (convolutions only)
    assert round(report.macs_total / 1e9, 2) == 154.88
    assert round((report.macs_total - report.macs_linear) / 1e9, 2) == 13.89  # attention matmuls
    assert report.input_shape == [1, 3, 256, 256]
    assert len(report.layers) == 44


def test_spectral_reference_parameter_counts() -> None:
    assert describe(meta(MSTPlusPlus), 256, 256).params == 1_619_625
    mst_l = describe(meta(MST), 256, 256)
    assert mst_l.params == 2_018_156
    assert mst_l.input_shapes == [[1, 28, 256, 256], [1, 28, 256, 310]]
    assert len(mst_l.layers) == 27


def test_restormer_layer_macs_match_hand_count() -> None:
    report = describe(meta(Restormer), 256, 256)
    for row in report.layers:
        c, d = row.channels, row.head_dim
        n = row.resolution[0] * row.resolution[1]
        linear = n * c * 3 * c + n * 3 * c * 9 + n * c * c  # qkv, depthwise 3x3, project_out
        attention = 2 * n * c * d  # Q K^T and A V
        assert row.macs_linear == linear
        assert row.macs_total == linear + attention
        assert row.params == 4 * c * c + 27 * c + row.heads
    by_name = {row.name: row for row in report.layers}
    assert by_name["decoder_level1.0.attn"].channels == 96
    assert by_name["decoder_level1.0.attn"].head_dim == 96
    assert by_name["latent.0.attn"].resolution == [32, 32]
    assert by_name["latent.0.attn"].scale == "1/8"


def test_spectral_layer_macs_match_hand_count() -> None:
    for cls in (MSTPlusPlus, MST):
        report = describe(meta(cls), 64, 64)
        for row in report.layers:
            c, d = row.channels, row.head_dim
            n = row.resolution[0] * row.resolution[1]
            linear = 4 * n * c * c + 2 * n * c * 9  # to_q/k/v, proj, two depthwise 3x3
            if cls is MST:
                width = report.input_shapes[1][3] >> {28: 0, 56: 1, 112: 2}[c]
                linear += 2 * row.resolution[0] * width * c * c + row.resolution[0] * width * c * 25
            assert row.macs_linear == linear, row.name
            assert row.macs_total == linear + 2 * n * c * d, row.name


def test_count_macs_on_a_single_module_and_real_tensors() -> None:
    torch.manual_seed(0)
    attention = RestormerAttention(8, 2, bias=False)
    cost = count_macs(attention, (torch.randn(1, 8, 4, 6),))
    n, c, d = 24, 8, 4
    assert cost.macs.linear == n * c * 3 * c + n * 3 * c * 9 + n * c * c
    assert cost.macs.total == cost.macs.linear + 2 * n * c * d
    spectral = SpectralAttention(6, 3, 2)
    cost = count_macs(spectral, (torch.randn(2, 4, 4, 6),))
    assert cost.macs.linear == 2 * (4 * 16 * 36 + 2 * 16 * 6 * 9)  # batch 2
    assert count_parameters(spectral) == 4 * 36 + 19 * 6 + 2


def test_counting_leaves_the_model_untouched() -> None:
    model = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    describe(model, 32, 32)
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())


@pytest.mark.parametrize("size", [(64, 64), (128, 96)])
def test_macs_scale_with_pixels_for_convolutions(size: tuple[int, int]) -> None:
    """Conv MACs are linear in the pixel count; a 2x2 larger image has exactly 4x the conv MACs."""
    model = meta(Restormer, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    small = describe(model, *size)
    large = describe(model, size[0] * 2, size[1] * 2)
    assert large.macs_linear == 4 * small.macs_linear


@pytest.mark.parametrize(
    ("cls", "kwargs", "params"),
    [
        (Restormer, {"inp_channels": 6, "dual_pixel_task": True}, 26_132_548),
        (Restormer, {"layernorm_type": "BiasFree"}, 26_111_668),
        (Restormer, {"layernorm_type": "BiasFree", "inp_channels": 1, "out_channels": 1}, 26_109_076),
        (MST, {"num_blocks": (2, 2, 2)}, 922_648),
        (MST, {"num_blocks": (2, 4, 4)}, 1_487_592),
    ],
    ids=["restormer_dual_pixel", "restormer_biasfree", "restormer_grey", "mst_s", "mst_m"],
)
def test_other_published_configurations(cls, kwargs, params: int) -> None:
    """Parameter counts of the other published variants, as measured with the official code."""
    assert count_parameters(meta(cls, **kwargs)) == params
