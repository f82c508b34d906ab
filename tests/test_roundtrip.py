"""Build random configurations, save them in every official container and in safetensors, load with
`glmha.load`: same family, same hyperparameters, bit-identical outputs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import glmha

from conftest import RANDOM_CONFIGS, example_batch, randomise, side_for


def _containers(state: dict[str, torch.Tensor], decoy: dict[str, torch.Tensor]) -> dict[str, object]:
    """The containers the official code bases save, keyed by a name for the test id."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    return {
        "params.pth": {"params": state},
        "params_ema.pth": {"params": decoy, "params_ema": state},  # EMA weights are preferred
        "state_dict_module.pth": {"epoch": 3, "iter": 300, "state_dict": prefixed,
                                  "optimizer": {"state": {}, "param_groups": [{"lr": 4e-4}]}},
        "model.pt": {"model": state},
        "net.pt": {"net": state},
        "bare.pth": state,
        "bare_module.pth": prefixed,
        "lightning.ckpt": {"epoch": 1, "state_dict": {f"net.{k}": v for k, v in state.items()}},
    }


def _save_all(model, tmp_path: Path, seed: int) -> list[Path]:
    state = model.state_dict()
    decoy = {k: torch.zeros_like(v) for k, v in state.items()}
    paths = []
    for name, obj in _containers(state, decoy).items():
        path = tmp_path / name
        torch.save(obj, path)
        paths.append(path)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    paths.append(path)
    half = tmp_path / "half.safetensors"  # fp16 checkpoints load into float32 models
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(half))
    return paths


@pytest.mark.parametrize("seed", range(5))
def test_roundtrip_every_container(family: str, seed: int, tmp_path: Path) -> None:
    cls, make_config = RANDOM_CONFIGS[family]
    model = randomise(cls(**make_config(random.Random(1000 + seed))), seed)
    size = side_for(family)
    inputs = example_batch(model, size, seed)
    with torch.no_grad():
        expected = model(*inputs)
    for path in _save_all(model, tmp_path, seed):
        loaded = glmha.load(path)
        assert type(loaded) is cls, path.name
        assert loaded.config == model.config, path.name
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(*inputs), expected), path.name
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
    half = glmha.load(tmp_path / "half.safetensors")
    assert half.config == model.config


@pytest.mark.parametrize("seed", range(20))
def test_inference_over_random_grid(family: str, seed: int) -> None:
    """Hyperparameters inferred from the state dict alone equal the ones the model was built with."""
    cls, make_config = RANDOM_CONFIGS[family]
    with torch.device("meta"):
        model = cls(**make_config(random.Random(seed)))
    assert cls.infer_config(model.state_dict()) == model.config
    assert cls.detect(model.state_dict())
    # detection is a cheap first test and may admit relatives (Restormer's keys are in PromptIR's); the strict
    # load must then pick exactly this family
    assert type(glmha.build_model(model.state_dict())) is cls


def test_forced_family(tmp_path: Path) -> None:
    model = randomise(glmha.archs.Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0), 0)
    path = tmp_path / "r.pth"
    torch.save({"params": model.state_dict()}, path)
    assert glmha.load(path, family="restormer").config == model.config
    with pytest.raises(glmha.GlmhaError, match="tried mst"):
        glmha.load(path, family="mst")
    with pytest.raises(glmha.GlmhaError, match="unknown family 'swinir'"):
        glmha.load(path, family="swinir")


def test_mst_forward_signature_and_default_mask() -> None:
    """MST takes (x, mask); without a mask it uses zeros on the input's device, like the official."""
    model = randomise(glmha.archs.MST(dim=28, stage=1, num_blocks=(1, 1)), 0)
    x = torch.rand(1, 28, 32, 32)
    zeros = torch.zeros(1, 28, 32, model.mask_width(32))
    with torch.no_grad():
        assert torch.equal(model(x), model(x, zeros))
        random_mask = (torch.rand_like(zeros) > 0.5).float()
        assert not torch.allclose(model(x, random_mask), model(x, zeros))
    assert glmha.archs.MST().mask_width(256) == 310
