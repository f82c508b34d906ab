"""GLMHA numerics must not drift: converted tiny models (with non-zero calibration weights, so the
calibration path counts), stored in the export format, against their float64 outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import glmha
from glmha.convert.layers import GLMHALayer

GOLDEN = Path(__file__).parent / "golden" / "glmha"


@pytest.mark.parametrize("family", ["restormer", "mst_plus_plus", "mst"])
def test_converted_model_output_does_not_drift(family: str) -> None:
    model = glmha.load(GOLDEN / f"{family}.safetensors").double()
    assert model.family == family
    layers = [layer for _, layer in model.csa_layers() if isinstance(layer, GLMHALayer)]
    assert layers and all(layer.calibrate.linear.weight.abs().sum() > 0 for layer in layers)
    data = load_file(str(GOLDEN / f"{family}_io.safetensors"))
    inputs = [data["input"]] + ([data["mask"]] if "mask" in data else [])
    with torch.no_grad():
        output = model(*inputs)
    assert (output - data["output"]).abs().max().item() <= 1e-12 * max(data["output"].abs().max().item(), 1.0)
