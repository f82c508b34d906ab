"""Shared helpers: tiny models of every family, randomised so that outputs depend on every weight."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

# Two test workers share the cores (pytest -n 2): OpenMP threads that spin while waiting would fight each
# other (the suite took 2.8x as long). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from glmha.archs import (
    MST,
    AdaIR,
    DRSformer,
    MSTPlusPlus,
    PromptIR,
    RestorationModel,
    Restormer,
    Retinexformer,
    XRestormer,
)


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter random values (default init leaves temperatures at 1, biases at 0).

    Weights are scaled by 1/sqrt(fan-in) so that deep models keep outputs of order one.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("temperature", "rescale")):
                param.copy_(torch.rand(param.shape, generator=generator) * 1.5 + 0.5)
            elif param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):  # normalisation scales
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def random_restormer_config(rng: random.Random) -> dict:
    heads = [rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([2, 4])]
    dim = 4 * rng.choice([1, 2, 3])
    layernorm = rng.choice(["WithBias", "BiasFree"])
    dual = rng.random() < 0.25
    return dict(
        inp_channels=6 if dual else rng.choice([1, 3]),
        out_channels=3 if dual else rng.choice([1, 3]),
        dim=dim,
        num_blocks=tuple(rng.choice([1, 2]) for _ in range(4)),
        num_refinement_blocks=rng.choice([0, 1, 2]),
        heads=tuple(heads),
        ffn_expansion_factor=rng.choice([2.66, 2.0, 1.5, 3.0, 2.5]),
        bias=rng.random() < 0.3,
        layernorm_type=layernorm,
        dual_pixel_task=dual,
    )


def random_mst_plus_plus_config(rng: random.Random) -> dict:
    n_feat = rng.choice([4, 6, 31])
    return dict(
        in_channels=rng.choice([1, 3]),
        out_channels=n_feat,
        n_feat=n_feat,
        stage=rng.choice([1, 2, 3]),
        stage_blocks=rng.choice([(1, 1, 1), (1, 2, 1), (2, 1), (1, 1, 1, 1)]),
    )


def random_mst_config(rng: random.Random) -> dict:
    stage = rng.choice([1, 2])
    return dict(
        dim=rng.choice([4, 8, 28]),
        stage=stage,
        num_blocks=tuple(rng.choice([1, 2]) for _ in range(stage + 1)),
        bands=rng.choice([4, 28]),
    )


def random_promptir_config(rng: random.Random) -> dict:
    """The official widths are fixed for dim 48; blocks, heads, the FFN and the prompts are what can vary."""
    return dict(
        inp_channels=3, out_channels=3,
        num_blocks=(1, 1, 1, 1),  # a level without blocks keeps no trace of its heads
        num_refinement_blocks=rng.choice([0, 1]),
        heads=(rng.choice([1, 2]), rng.choice([2, 4]), rng.choice([2, 4, 8]), rng.choice([4, 8])),
        ffn_expansion_factor=rng.choice([0.25, 0.5]),
        bias=rng.random() < 0.3,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]),
        prompt_len=rng.choice([2, 3]),
        prompt_sizes=(rng.choice([3, 5]), rng.choice([2, 4]), rng.choice([2, 3])),
    )


def random_drsformer_config(rng: random.Random) -> dict:
    channels = rng.choice([1, 3])
    return dict(
        inp_channels=channels, out_channels=channels,
        dim=4 * rng.choice([1, 2]),
        num_blocks=tuple(rng.choice([1, 2]) for _ in range(4)),
        heads=(rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([2, 4])),
        ffn_expansion_factor=rng.choice([2.66, 1.5]),
        bias=rng.random() < 0.3,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]),
        mefc=rng.random() < 0.5,
    )


def random_retinexformer_config(rng: random.Random) -> dict:
    return dict(n_feat=4 * rng.choice([1, 2]), stage=rng.choice([1, 2]),
                num_blocks=tuple(rng.choice([1, 2]) for _ in range(3)))


def random_adair_config(rng: random.Random) -> dict:
    """dim 8 at least (the frequency gates divide it by 8); the frequency blocks use heads[2] at 2*dim."""
    return dict(
        dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=rng.choice([0, 1]),
        heads=(rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([2, 4])),
        ffn_expansion_factor=rng.choice([2.66, 1.5]), bias=rng.random() < 0.3,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]),
    )


def random_xrestormer_config(rng: random.Random) -> dict:
    """Window 8 (what inference assumes); inputs must be multiples of 64 (TEST_SIDE)."""
    dim = 4 * rng.choice([1, 2])
    channels = rng.choice([1, 3])
    return dict(
        inp_channels=channels, out_channels=channels, dim=dim, num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=rng.choice([0, 1]),
        channel_heads=(rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([2, 4])),
        spatial_heads=tuple(rng.choice([1, 2]) for _ in range(4)),
        overlap_ratio=tuple(rng.choice([0.0, 0.5]) for _ in range(4)),
        spatial_dim_head=rng.choice([2, 4]), ffn_expansion_factor=rng.choice([2.66, 1.5]),
        bias=rng.random() < 0.3, layernorm_type=rng.choice(["WithBias", "BiasFree"]),
    )


RANDOM_CONFIGS = {
    "restormer": (Restormer, random_restormer_config),
    "mst_plus_plus": (MSTPlusPlus, random_mst_plus_plus_config),
    "mst": (MST, random_mst_config),
    "promptir": (PromptIR, random_promptir_config),
    "drsformer": (DRSformer, random_drsformer_config),
    "retinexformer": (Retinexformer, random_retinexformer_config),
    "adair": (AdaIR, random_adair_config),
    "xrestormer": (XRestormer, random_xrestormer_config),
}
TEST_SIDE = {"mst": 64, "xrestormer": 64}  # the smallest convenient input side of a family's tiny models


def side_for(family: str) -> int:
    return TEST_SIDE.get(family, 16)


def tiny_model(family: str, seed: int = 0) -> RestorationModel:
    cls, make_config = RANDOM_CONFIGS[family]
    return randomise(cls(**make_config(random.Random(seed))), seed)


def example_batch(model: RestorationModel, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the model's forward shapes; MST masks are binary like real coded apertures."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [t.shape for t in model.example_inputs(size, size)]
    x = torch.rand(shapes[0], generator=generator)
    if len(shapes) == 1:
        return (x,)
    mask = (torch.rand(shapes[1], generator=generator) > 0.5).float()
    return (x, mask)


@pytest.fixture(params=sorted(RANDOM_CONFIGS))
def family(request) -> str:
    return request.param


def load_example(stem: str) -> ModuleType:
    """Import examples/<stem>.py as a module (examples/ is not a package), once per session."""
    name = f"glmha_example_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "examples" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
