"""Outputs computed by the official implementations (float64) for small random models.

Each file in tests/golden/ holds float16-exact weights under `state_dict.<key>`, the input (and the
MST mask), and the official output; see tests/golden/README.md for how they were made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import glmha

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
PREFIX = "state_dict."


def _read(case: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN / f"{case}.safetensors"), framework="pt") as handle:
        return dict(handle.metadata()), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def test_every_family_has_golden_outputs() -> None:
    families = {_read(case)[0]["family"] for case in CASES}
    assert families == set(glmha.FAMILIES)


@pytest.mark.parametrize("case", CASES)
def test_matches_official_output_in_float64(case: str) -> None:
    metadata, tensors = _read(case)
    state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    model = glmha.build_model(state)  # detection and inference from the official keys alone
    assert model.family == metadata["family"]
    assert model.config == type(model.config).from_dict(json.loads(metadata["config"]))
    model = model.double()
    inputs = [tensors["input"]] + ([tensors["mask"]] if "mask" in tensors else [])
    with torch.no_grad():
        output = model(*inputs)
    expected = tensors["output"]
    assert output.shape == expected.shape
    scale = expected.abs().max().item()
    assert (output - expected).abs().max().item() <= 1e-12 * max(scale, 1.0)
