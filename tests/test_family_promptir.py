"""PromptIR: official parity (golden file), published size, detection, shape inference and its one-line errors.

The golden model is as small as PromptIR gets: its widths are literals for dim 48 (a 704-channel fusion block
among them), so only block counts, the FFN factor and the prompts can shrink; see tests/golden/README.md.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.archs.mdta import RestormerAttention
from glmha.archs.promptir import PromptIR, PromptIRConfig
from glmha.checkpoint import read_checkpoint
from glmha.errors import ArchitectureError, GlmhaError, InputShapeError

GOLDEN = Path(__file__).parent / "golden" / "promptir.safetensors"
PREFIX = "state_dict."
UNUSED = ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
          "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3")


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(metadata, the official weights as float64 under their plain names, the other tensors)."""
    with safe_open(str(GOLDEN), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    state = {k[len(PREFIX):]: v.double() for k, v in tensors.items() if k.startswith(PREFIX)}
    return metadata, state, {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def golden_model(golden: tuple) -> PromptIR:
    """Built from the official keys alone: detection, inference, strict load, in float64."""
    _, state, _ = golden
    assert PromptIR.detect(state)
    model = PromptIR.from_config(PromptIR.infer_config(state)).double().eval()
    model.load_state_dict(state, strict=True)
    return model


def _meta_state(**kwargs: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return PromptIR(**kwargs).state_dict()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# -- parity with the official code ------------------------------------------------------------------------


def test_golden_output_reproduces_in_float64(golden: tuple, golden_model: PromptIR) -> None:
    metadata, _, tensors = golden
    assert metadata["family"] == PromptIR.family == "promptir"
    assert golden_model.config == PromptIRConfig.from_dict(json.loads(metadata["config"]))
    with torch.no_grad():
        output = golden_model(tensors["input"])
    expected = tensors["output"]
    assert output.shape == expected.shape == tensors["input"].shape
    scale = expected.abs().max().item()
    assert (output - expected).abs().max().item() <= 1e-12 * max(scale, 1.0)


def test_prompt_path_changes_the_golden_output(golden: tuple, golden_model: PromptIR) -> None:
    """The golden comparison would miss a broken prompt path if the prompts did not reach the output."""
    _, _, tensors = golden
    with torch.no_grad():
        before = golden_model(tensors["input"][:1])
        saved = golden_model.prompt1.prompt_param.clone()
        golden_model.prompt1.prompt_param.add_(0.1)
        after = golden_model(tensors["input"][:1])
        golden_model.prompt1.prompt_param.copy_(saved)
    assert (after - before).abs().max().item() > 1e-3


def test_unused_official_modules_exist_and_are_never_called(golden: tuple, golden_model: PromptIR) -> None:
    _, state, tensors = golden
    calls = []
    handles = [getattr(golden_model, name).register_forward_pre_hook(lambda m, a, n=name: calls.append(n))
               for name in UNUSED]
    try:
        with torch.no_grad():
            golden_model(tensors["input"][:1])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert all(f"{name}.weight" in state for name in UNUSED)


def test_lightning_checkpoint_loads_to_plain_keys(golden: tuple, tmp_path: Path) -> None:
    """The official training saves a PyTorch-Lightning .ckpt: weights under state_dict with a `net.` prefix."""
    _, state, _ = golden
    path = tmp_path / "epoch=119-step=0.ckpt"
    torch.save({"epoch": 119, "global_step": 0, "pytorch-lightning_version": "2.0.1",
                "state_dict": {f"net.{k}": v.half() for k, v in state.items()},
                "optimizer_states": [], "lr_schedulers": []}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.container == "state_dict/net."
    assert list(checkpoint.state_dict) == list(state)
    assert PromptIR.detect(checkpoint.state_dict)
    model = PromptIR.from_config(PromptIR.infer_config(checkpoint.state_dict))
    model.load_state_dict(checkpoint.state_dict, strict=True)


# -- the published model ------------------------------------------------------------------------------------


def test_published_default_size_and_layers() -> None:
    with torch.device("meta"):
        model = PromptIR()
    assert sum(p.numel() for p in model.parameters()) == 35_592_263
    layers = model.csa_layers()
    assert len(layers) == 47
    assert all(type(layer) is RestormerAttention for _, layer in layers)
    fusion = {name: (layer.channels, layer.num_heads) for name, layer in layers if name.startswith("noise")}
    assert fusion == {"noise_level3.attn": (704, 4), "noise_level2.attn": (320, 4), "noise_level1.attn": (160, 4)}
    assert PromptIR.infer_config(model.state_dict()) == PromptIRConfig() == model.config
    assert sum(p.numel() for name in UNUSED for p in getattr(model, name).parameters()) == 215_296


def test_csa_levels_follow_resolution_and_block_outputs() -> None:
    with torch.device("meta"):
        model = PromptIR(num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    levels = {name: model.csa_level(name) for name, _ in model.csa_layers()}
    assert levels == {
        "encoder_level1.0.attn": "1", "encoder_level2.0.attn": "2", "encoder_level3.0.attn": "3",
        "latent.0.attn": "bottleneck", "noise_level3.attn": "bottleneck", "decoder_level3.0.attn": "3",
        "noise_level2.attn": "3", "decoder_level2.0.attn": "2", "noise_level1.attn": "2",
        "decoder_level1.0.attn": "1", "refinement.0.attn": "1",
    }
    assert model.block_output("noise_level2.attn") == ("noise_level2", False)
    assert model.block_output("latent.0.attn") == ("latent.0", False)


# -- detection and inference --------------------------------------------------------------------------------


def test_detection() -> None:
    assert PromptIR.detect(_meta_state(num_blocks=(1, 1, 1, 1), num_refinement_blocks=0))
    with torch.device("meta"):
        others = [Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
                  Restormer(dim=8, inp_channels=6, dual_pixel_task=True, layernorm_type="BiasFree"),
                  MSTPlusPlus(stage=1), MST(num_blocks=(1, 1, 1))]
    for model in others:
        assert not PromptIR.detect(model.state_dict()), type(model).__name__


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _random_config(rng: random.Random) -> PromptIRConfig:
    blocks = tuple(rng.choice([0, 1, 2, 3]) for _ in range(4))
    refinement = rng.choice([0, 1, 2])
    heads = [rng.choice(_divisors(48)), rng.choice(_divisors(96)), rng.choice([1, 2, 4, 8, 16, 32]),
             rng.choice(_divisors(384))]
    # a level without blocks leaves no trace of its heads: inference reports the published default there
    visible = (blocks[0] + refinement > 0, blocks[1] > 0, True, blocks[3] > 0)
    heads = [h if seen else default for h, seen, default in zip(heads, visible, (1, 2, 4, 8), strict=True)]
    channels = rng.choice([1, 3])
    return PromptIRConfig(
        inp_channels=channels, out_channels=channels, num_blocks=blocks, num_refinement_blocks=refinement,
        heads=tuple(heads), ffn_expansion_factor=rng.choice([2.66, 2.0, 1.5, 3.0, 1.0, 0.5, 0.25]),
        bias=rng.random() < 0.4, layernorm_type=rng.choice(["WithBias", "BiasFree"]),
        prompt_len=rng.choice([1, 2, 5, 7]), prompt_sizes=tuple(rng.choice([1, 3, 16, 64]) for _ in range(3)),
    )


@pytest.mark.parametrize("seed", range(12))
def test_inference_round_trips(seed: int) -> None:
    config = _random_config(random.Random(seed))
    state = _meta_state(**config.to_dict())
    assert PromptIR.infer_config(state) == config
    assert PromptIRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# -- one-line errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"dim": 24}, "only fit dim 48; got dim 24"),
    ({"num_blocks": (1, 1, 1)}, "num_blocks and heads need 4 entries"),
    ({"heads": (1, 2, 4)}, "num_blocks and heads need 4 entries"),
    ({"layernorm_type": "LayerNorm"}, "layernorm_type must be one of"),
    ({"num_blocks": (1, -1, 1, 1)}, "block counts must be >= 0"),
    ({"num_refinement_blocks": -1}, "block counts must be >= 0"),
    ({"inp_channels": 0, "out_channels": 0}, "channels and heads must be >= 1"),
    ({"heads": (1, 0, 4, 8)}, "channels and heads must be >= 1"),
    ({"out_channels": 1}, "out_channels must equal inp_channels"),
    ({"heads": (5, 2, 4, 8)}, "48 channels do not split into 5 heads"),
    ({"heads": (1, 2, 64, 8)}, "160 channels do not split into 64 heads"),
    ({"heads": (1, 2, 3, 8)}, "160 channels do not split into 3 heads"),
    ({"heads": (1, 2, 4, 5)}, "384 channels do not split into 5 heads"),
    ({"ffn_expansion_factor": 0.01}, "ffn_expansion_factor 0.01 leaves no hidden channel"),
    ({"ffn_expansion_factor": float("nan")}, "leaves no hidden channel"),
    ({"prompt_sizes": (64, 32)}, "prompt_sizes needs 3 entries"),
    ({"prompt_len": 0}, "prompt_len and prompt_sizes must be >= 1"),
    ({"prompt_sizes": (64, 0, 16)}, "prompt_len and prompt_sizes must be >= 1"),
])
def test_config_errors(overrides: dict, expected: str) -> None:
    with pytest.raises(ArchitectureError) as error:
        PromptIRConfig(**overrides)
    message = _one_line(error)
    assert message.startswith("PromptIR: ") and expected in message


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(GlmhaError) as error:
        PromptIRConfig.from_dict({"decoder": True})
    assert "unknown key(s) decoder" in _one_line(error)


def _small_state() -> dict[str, torch.Tensor]:
    return _meta_state(num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)


def test_inference_errors() -> None:
    state = _small_state()
    state["patch_embed.proj.weight"] = torch.empty(24, 3, 3, 3, device="meta")
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert "patch_embed has 24 channels" in _one_line(error)

    state = _small_state()
    state["prompt2.prompt_param"] = torch.empty(1, 5, 96, 32, 32, device="meta")
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert "prompt2.prompt_param has shape [1, 5, 96, 32, 32]; expected [1, length, 128, size, size]" in \
        _one_line(error)

    state = _small_state()
    state["prompt3.prompt_param"] = torch.empty(1, 5, 320, 16, 8, device="meta")
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert "prompt3.prompt_param has shape" in _one_line(error)

    state = _small_state()
    state["prompt3.prompt_param"] = torch.empty(1, 4, 320, 16, 16, device="meta")
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert "different numbers of prompts [4, 5]" in _one_line(error)

    state = _small_state()
    state["noise_level3.ffn.project_out.weight"] = torch.empty(704, 100, 1, 1, device="meta")
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert _one_line(error).startswith("PromptIR: feed-forward widths")

    state = _small_state()
    del state["prompt1.prompt_param"]
    with pytest.raises(ArchitectureError) as error:
        PromptIR.infer_config(state)
    assert "missing key 'prompt1.prompt_param'" in _one_line(error)


def test_input_and_layer_name_errors() -> None:
    with torch.device("meta"):
        model = PromptIR(num_blocks=(1, 0, 0, 0), num_refinement_blocks=0)
    model.check_input_size(16, 24)
    for height, width in ((16, 20), (4, 8), (0, 16)):
        with pytest.raises(InputShapeError) as error:
            model.check_input_size(height, width)
        assert f"got {height}x{width}" in _one_line(error)
    with pytest.raises(ArchitectureError) as error:
        model.csa_level("prompt1.conv3x3")
    assert "not a CSA layer of PromptIR" in _one_line(error)
    with pytest.raises(ArchitectureError) as error:
        model.block_output("noise_level1.ffn")
    assert "not the attention of a PromptIR transformer block" in _one_line(error)


# -- calibration ----------------------------------------------------------------------------------------------


def test_calibration_samples_are_photographs_like_restormers() -> None:
    with torch.device("meta"):
        rgb, grey, odd = (PromptIR(inp_channels=c, out_channels=c, num_blocks=(0, 0, 0, 0),
                                   num_refinement_blocks=0) for c in (3, 1, 2))
    (images,) = rgb.calibration_samples(32, 2)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0.0 and images.max() <= 1.0
    (reference,) = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0).calibration_samples(32, 2)
    assert torch.equal(images, reference)
    (grey_images,) = grey.calibration_samples(32, 2)
    assert torch.equal(grey_images, images.mean(dim=1, keepdim=True))
    with pytest.raises(ArchitectureError) as error:
        odd.calibration_samples(32, 2)
    assert "2 input channels has no offline calibration images" in _one_line(error)
    with pytest.raises(InputShapeError):
        rgb.calibration_samples(30, 1)
