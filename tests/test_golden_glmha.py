"""GLMHA numerics must not drift: converted tiny models (with non-zero calibration weights and token biases,
so those paths count), stored in the export format, against their float64 outputs. `format1/` holds exports
of the first export format, which must keep loading and computing exactly what they did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import glmha
from glmha.layers import GLMHALayer

GOLDEN = Path(__file__).parent / "golden" / "glmha"
CURRENT = ["restormer", "restormer_lowrank_merge", "mst_plus_plus", "mst"]
FORMAT1 = ["format1/restormer", "format1/mst_plus_plus", "format1/mst"]


@pytest.mark.parametrize("name", CURRENT + FORMAT1)
def test_converted_model_output_does_not_drift(name: str) -> None:
    path = GOLDEN / f"{name}.safetensors"
    model = glmha.load(path).double()
    assert name.split("/")[-1].startswith(model.family)
    layers = [layer for _, layer in model.csa_layers() if isinstance(layer, GLMHALayer)]
    assert layers and all(sum(p.abs().sum() for p in layer.calibrate.parameters()) > 0 for layer in layers)
    data = load_file(str(GOLDEN / f"{name}_io.safetensors"))
    inputs = [data["input"]] + ([data["mask"]] if "mask" in data else [])
    with torch.no_grad():
        output = model(*inputs)
    assert (output - data["output"]).abs().max().item() <= 1e-12 * max(data["output"].abs().max().item(), 1.0)
    metadata = safe_open(str(path), framework="pt").metadata()
    settings = json.loads(metadata["glmha"])
    if name.startswith("format1/"):  # read with the settings format 1 implied
        assert metadata["format_version"] == "1" and set(settings) == {"alpha", "pool", "kernel"}
        assert all(layer.calibrate.form == "full" and layer.calibrate.grid == 0 and layer.token_bias is None
                   for layer in layers)
    else:
        assert metadata["format_version"] == "2" and settings["grid"] == 8
        assert all(layer.token_bias is not None for layer in layers)
