"""Retinexformer: official parity (golden files), published size, detection, inference and its errors."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmha.archs.mst import MST
from glmha.archs.mst_plus_plus import MSTPlusPlus
from glmha.archs.restormer import Restormer
from glmha.archs.retinexformer import (
    IlluminationGuidedAttention,
    Retinexformer,
    RetinexformerConfig,
)
from glmha.archs.spectral_blocks import SpectralAttention
from glmha.errors import ArchitectureError, InputShapeError

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CASES = sorted(p.name for p in GOLDEN.glob("retinexformer*.safetensors"))
PREFIX = "state_dict."


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of order 1/sqrt(fan-in), rescale in [0.5, 2], so every parameter moves the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("rescale"):
                param.copy_(torch.rand(param.shape, generator=generator) * 1.5 + 0.5)
            elif param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.2 * noise)
    return model.eval()


def _random_config(rng: random.Random) -> dict:
    return dict(n_feat=4 * rng.choice([1, 2, 3]), stage=rng.choice([1, 2, 3]),
                num_blocks=tuple(rng.choice([0, 1, 2]) for _ in range(3)))


def _keys(cls: type, **config: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return cls(**config).state_dict()


# -- parity with the official code ---------------------------------------------------------------


def test_stage_one_golden_file_is_present() -> None:
    assert "retinexformer.safetensors" in GOLDEN_CASES


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_output_reproduces_in_float64(case: str) -> None:
    with safe_open(str(GOLDEN / case), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    state = {k[len(PREFIX):]: v.double() for k, v in tensors.items() if k.startswith(PREFIX)}
    assert metadata["family"] == Retinexformer.family
    assert Retinexformer.detect(state)
    config = Retinexformer.infer_config(state)
    assert config == RetinexformerConfig.from_dict(json.loads(metadata["config"]))
    model = Retinexformer.from_config(config).double()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        output = model.eval()(tensors["input"])
    expected = tensors["output"]
    assert output.shape == expected.shape
    scale = max(expected.abs().max().item(), 1.0)
    assert (output - expected).abs().max().item() <= 1e-12 * scale


def test_published_default_size_and_attention_layout() -> None:
    with torch.device("meta"):
        model = Retinexformer()
    assert model.config == RetinexformerConfig(in_channels=3, out_channels=3, n_feat=40, stage=1,
                                               num_blocks=(1, 2, 2))
    assert sum(p.numel() for p in model.parameters()) == 1_605_701
    layers = model.csa_layers()
    assert all(type(layer) is IlluminationGuidedAttention and layer.channels_last for _, layer in layers)
    widths = sorted((layer.channels, layer.num_heads, layer.head_dim) for _, layer in layers)
    assert widths == [(40, 1, 40)] * 2 + [(80, 2, 40)] * 4 + [(160, 4, 40)] * 2
    levels = {name: model.csa_level(name) for name, _ in layers}
    assert levels == {
        "body.0.denoiser.encoder_layers.0.0.blocks.0.0": "1",
        "body.0.denoiser.encoder_layers.1.0.blocks.0.0": "2",
        "body.0.denoiser.encoder_layers.1.0.blocks.1.0": "2",
        "body.0.denoiser.bottleneck.blocks.0.0": "bottleneck",
        "body.0.denoiser.bottleneck.blocks.1.0": "bottleneck",
        "body.0.denoiser.decoder_layers.0.2.blocks.0.0": "2",
        "body.0.denoiser.decoder_layers.0.2.blocks.1.0": "2",
        "body.0.denoiser.decoder_layers.1.2.blocks.0.0": "1",
    }


# -- the attention ---------------------------------------------------------------------------------


def test_illumination_scales_only_the_attended_values() -> None:
    """All-ones illumination gives plain MS-MSA; all-zero leaves proj's bias plus pos_emb of the UNSCALED V."""
    torch.manual_seed(0)
    layer = _randomise(IlluminationGuidedAttention(8, 4, 2), 1).double()
    plain = SpectralAttention(8, 4, 2).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64)  # (b, h, w, C)
    with torch.no_grad():
        assert torch.allclose(layer(x, torch.ones_like(x)), plain(x), rtol=0, atol=1e-13)
        v_img = layer.to_v(x).permute(0, 3, 1, 2)  # (b, C, h, w)
        expected = layer.proj.bias + layer.pos_emb(v_img).permute(0, 2, 3, 1)
        assert torch.allclose(layer(x, torch.zeros_like(x)), expected, rtol=0, atol=1e-13)
        guided = layer(x, torch.rand_like(x) + 0.5)
    assert not torch.allclose(guided, plain(x), atol=1e-3)


def test_block_output_taps_what_the_next_block_receives() -> None:
    model = _randomise(Retinexformer(n_feat=4, stage=1, num_blocks=(1, 1, 1)), 2)
    modules = dict(model.named_modules())
    taps, seen = {}, {}
    handles = []
    for name, _ in model.csa_layers():
        point, add_input = model.block_output(name)
        assert point == name[:-1] + "1" and add_input

        def tap(_m, inputs, output, name=name):
            taps[name] = (output + inputs[0]).permute(0, 3, 1, 2)  # (b, h, w, C) -> (b, C, h, w)

        def igab(_m, _inputs, output, name=name):
            seen[name] = output

        handles.append(modules[point].register_forward_hook(tap))
        handles.append(modules[name.rsplit(".blocks.", 1)[0]].register_forward_hook(igab))
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    for handle in handles:
        handle.remove()
    assert taps.keys() == seen.keys() and len(taps) == 5
    for name in taps:
        assert torch.equal(taps[name], seen[name]), name
    with pytest.raises(ArchitectureError, match="is not the attention of a spectral block"):
        model.block_output("body.0.denoiser.bottleneck.blocks.0.1")


# -- detection and inference -----------------------------------------------------------------------


def test_detection_separates_the_families() -> None:
    own = [_keys(Retinexformer, n_feat=4, stage=s, num_blocks=(1, 0, 1)) for s in (1, 2)]
    others = [
        _keys(Restormer, dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0, heads=(1, 1, 1, 1)),
        _keys(MST, dim=4, stage=1, num_blocks=(1, 1), bands=4),
        _keys(MSTPlusPlus, in_channels=3, out_channels=4, n_feat=4, stage=1),
    ]
    assert all(Retinexformer.detect(keys) for keys in own)
    assert not any(Retinexformer.detect(keys) for keys in others)
    assert not any(cls.detect(keys) for cls in (Restormer, MST, MSTPlusPlus) for keys in own)


@pytest.mark.parametrize("seed", range(8))
def test_inference_round_trips(seed: int) -> None:
    config = _random_config(random.Random(seed))
    state = _keys(Retinexformer, **config)
    assert Retinexformer.detect(state)
    inferred = Retinexformer.infer_config(state)
    assert inferred == RetinexformerConfig(**config)
    assert RetinexformerConfig.from_dict(inferred.to_dict()) == inferred


def test_inference_errors() -> None:
    state = dict(_keys(Retinexformer, n_feat=4, stage=2, num_blocks=(1, 1, 1)))
    wrong_estimator = dict(state, **{"body.0.estimator.conv1.weight": torch.empty(4, 3, 1, 1)})
    with pytest.raises(ArchitectureError, match="estimator must read 4 channels"):
        Retinexformer.infer_config(wrong_estimator)
    deeper = dict(state, **{"body.0.denoiser.encoder_layers.2.1.weight": torch.empty(1)})
    with pytest.raises(ArchitectureError, match="expected 2 encoder levels, found 3"):
        Retinexformer.infer_config(deeper)
    uneven = {k: v for k, v in state.items() if not k.startswith("body.1.denoiser.bottleneck.blocks.0.")}
    with pytest.raises(ArchitectureError, match=r"stage 1 has blocks \(1, 1, 0\) but stage 0 has \(1, 1, 1\)"):
        Retinexformer.infer_config(uneven)
    with pytest.raises(ArchitectureError, match=re.escape("missing key 'body.0.estimator.conv1.weight'")):
        Retinexformer.infer_config({k: v for k, v in state.items() if "estimator.conv1.weight" not in k})


@pytest.mark.parametrize(("config", "message"), [
    (dict(in_channels=1), "in_channels and out_channels must be 3"),
    (dict(out_channels=31), "in_channels and out_channels must be 3"),
    (dict(n_feat=6), "n_feat must be a positive multiple of 4"),
    (dict(n_feat=0), "n_feat must be a positive multiple of 4"),
    (dict(stage=0), "stage must be >= 1"),
    (dict(num_blocks=(1, 1)), "num_blocks needs 3 block counts"),
    (dict(num_blocks=(1, -1, 1)), "num_blocks needs 3 block counts"),
])
def test_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        RetinexformerConfig(**config)


# -- inputs ------------------------------------------------------------------------------------------


def test_input_rules() -> None:
    model = Retinexformer(n_feat=4, num_blocks=(0, 0, 0))
    assert (model.input_channels, model.output_channels, model.size_multiple) == (3, 3, 4)
    assert model.example_inputs(8, 12)[0].shape == (1, 3, 8, 12)
    for height, width in ((8, 10), (6, 8), (0, 4)):
        with pytest.raises(InputShapeError, match=f"multiples of 4 .*got {height}x{width}"):
            model.check_input_size(height, width)
    with pytest.raises(InputShapeError, match="multiples of 4"):
        model(torch.zeros(1, 3, 8, 6))
    with pytest.raises(InputShapeError, match=r"takes \(b, 3, H, W\) RGB images; got \(1, 1, 8, 8\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_calibration_samples_are_dark_deterministic_photographs() -> None:
    model = Retinexformer(n_feat=4, num_blocks=(0, 0, 0))
    (first,) = model.calibration_samples(32, 2)
    (again,) = model.calibration_samples(32, 2)
    assert first.shape == (2, 3, 32, 32) and torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 0.3 and first.mean() < 0.15 and first.std() > 0
    with pytest.raises(InputShapeError, match="multiples of 4"):
        model.calibration_samples(30, 1)
