"""The published default configurations produce exactly the official key names, shapes and order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.counting import count_parameters

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

CASES = {
    "restormer_default_keys": (Restormer, {}),
    "restormer_biasfree_default_keys": (Restormer, {"layernorm_type": "BiasFree"}),
    "mst_plus_plus_default_keys": (MSTPlusPlus, {}),
    "mst_l_default_keys": (MST, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_config_matches_reference_keys(name: str) -> None:
    reference = json.loads((REFERENCE / f"{name}.json").read_text())
    cls, overrides = CASES[name]
    with torch.device("meta"):
        model = cls(**overrides)
    state = model.state_dict()
    assert list(state) == list(reference["keys"])  # same names, same order
    assert {k: list(v.shape) for k, v in state.items()} == reference["keys"]
    assert len(state) == reference["num_state_dict_tensors"]
    assert count_parameters(model) == reference["total_params"]
    assert [name for name, _ in model.csa_layers()] == reference["csa_modules"]
    assert list(model.buffers()) == [] and reference["buffers"] == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_recovers_published_kwargs(name: str) -> None:
    """Hyperparameters read back from the reference shapes equal the published constructor's."""
    reference = json.loads((REFERENCE / f"{name}.json").read_text())
    cls, _ = CASES[name]
    fake_state = {k: torch.empty(shape, device="meta") for k, shape in reference["keys"].items()}
    config = cls.infer_config(fake_state).to_dict()
    kwargs = reference["kwargs"]
    renamed = {"LayerNorm_type": "layernorm_type"}
    for key, value in kwargs.items():
        assert config[renamed.get(key, key)] == value, key
