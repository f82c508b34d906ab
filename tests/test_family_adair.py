"""AdaIR: official parity (golden file, with and without the frequency band mask), published size, detection,
shape inference, conversion of its MDTA layers and its one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmha.archs import MST, DRSformer, MSTPlusPlus, PromptIR, Restormer, Retinexformer
from glmha.archs.adair import AdaIR, AdaIRConfig, FrequencyBlock
from glmha.archs.mdta import RestormerAttention
from glmha.checkpoint import read_checkpoint
from glmha.convert.api import analyse, convert, plan
from glmha.errors import ArchitectureError, GlmhaError, InputShapeError
from glmha.layers import CSALayer, GLMHALayer

from conftest import randomise

GOLDEN = Path(__file__).parent / "golden" / "adair.safetensors"
PREFIX = "state_dict."
FREQUENCY = ("fre1", "fre2", "fre3")
UNUSED = ("conv", "score_gen")  # built in every frequency block, never called
TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 2))


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(metadata, the official weights as float64 under their plain names, the other tensors)."""
    with safe_open(str(GOLDEN), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    state = {k[len(PREFIX):]: v.double() for k, v in tensors.items() if k.startswith(PREFIX)}
    return metadata, state, {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}


@pytest.fixture
def golden_model(golden: tuple) -> AdaIR:
    """Built from the official keys alone: detection, inference, strict load, in float64."""
    _, state, _ = golden
    assert AdaIR.detect(state)
    model = AdaIR.from_config(AdaIR.infer_config(state)).double().eval()
    model.load_state_dict(state, strict=True)
    return model


def _meta_state(**kwargs: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return AdaIR(**kwargs).state_dict()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def _close(output: torch.Tensor, expected: torch.Tensor) -> None:
    assert output.shape == expected.shape
    scale = expected.abs().max().item()
    assert (output - expected).abs().max().item() <= 1e-12 * max(scale, 1.0)


# -- parity with the official code ------------------------------------------------------------------------


def test_golden_output_reproduces_in_float64(golden: tuple, golden_model: AdaIR) -> None:
    metadata, _, tensors = golden
    assert metadata["family"] == AdaIR.family == "adair"
    assert golden_model.config == AdaIRConfig.from_dict(json.loads(metadata["config"]))
    with torch.no_grad():
        _close(golden_model(tensors["input"]), tensors["output"])


def test_golden_band_mask_reproduces_in_float64(golden: tuple, golden_model: AdaIR) -> None:
    """`output_band2`: the official model with band unit 2 instead of 128, so the adaptive low-frequency band is
    non-empty at this size (half-sides differing per image); the mask path must match it too."""
    _, _, tensors = golden
    for name in FREQUENCY:
        getattr(golden_model, name).band_unit = 2
    with torch.no_grad():
        output = golden_model(tensors["input"])
    _close(output, tensors["output_band2"])
    assert (output - tensors["output"]).abs().max().item() > 1e-2  # the band changes the output


@pytest.mark.parametrize(("height", "width", "unit"), [(8, 12, 2), (9, 7, 2), (16, 5, 3), (6, 6, 128)])
def test_band_split_equals_the_rolled_centred_mask(height: int, width: int, unit: int) -> None:
    """The mask built on the unshifted spectrum equals the published recipe: roll the spectrum by half its
    sides, keep the centred rectangle of half-sides int(side // unit * rate), roll back."""
    block = randomise(FrequencyBlock(16, 2, bias=False), 5).double()
    block.band_unit = unit
    with torch.no_grad():
        block.rate_conv[2].weight.mul_(4)  # rates spread over (0, 1)
    x = torch.randn(3, 16, height, width, generator=torch.Generator().manual_seed(height), dtype=torch.float64)
    with torch.no_grad():
        high, low = block.bands(x)
        rate = block.rate_conv(x.mean(dim=(2, 3), keepdim=True)).sigmoid()
    spectrum = torch.roll(torch.fft.fft2(x, norm="forward"), (height // 2, width // 2), dims=(2, 3))
    mask = torch.zeros(x.shape, dtype=torch.float64)
    for i in range(x.shape[0]):
        half_h, half_w = int(height // unit * rate[i, 0]), int(width // unit * rate[i, 1])
        mask[i, :, height // 2 - half_h:height // 2 + half_h, width // 2 - half_w:width // 2 + half_w] = 1
    for band, keep in ((high, 1 - mask), (low, mask)):
        expected = torch.fft.ifft2(torch.roll(spectrum * keep, (-(height // 2), -(width // 2)), dims=(2, 3)),
                                   norm="forward").abs()
        assert torch.allclose(band, expected, rtol=0, atol=1e-13)


def test_unused_official_modules_exist_and_are_never_called(golden: tuple, golden_model: AdaIR) -> None:
    _, state, tensors = golden
    calls = []
    modules = [(f"{block}.{name}", getattr(getattr(golden_model, block), name))
               for block in FREQUENCY for name in UNUSED]
    handles = [module.register_forward_pre_hook(lambda m, a, n=name: calls.append(n)) for name, module in modules]
    try:
        with torch.no_grad():
            golden_model(tensors["input"][:1])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert all(f"{name}.weight" in state for name, _ in modules)


def test_lightning_checkpoint_loads_to_plain_keys(golden: tuple, tmp_path: Path) -> None:
    """The official training saves a PyTorch-Lightning .ckpt: weights under state_dict with a `net.` prefix."""
    _, state, _ = golden
    path = tmp_path / "adair5d.ckpt"
    torch.save({"epoch": 149, "global_step": 0, "pytorch-lightning_version": "2.0.1",
                "state_dict": {f"net.{k}": v.half() for k, v in state.items()},
                "optimizer_states": [], "lr_schedulers": []}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.container == "state_dict/net."
    assert AdaIR.detect(checkpoint.state_dict)
    model = AdaIR.from_config(AdaIR.infer_config(checkpoint.state_dict))
    model.load_state_dict(checkpoint.state_dict, strict=True)


# -- the published model ------------------------------------------------------------------------------------


def test_published_default_size_and_layers() -> None:
    with torch.device("meta"):
        model = AdaIR()
    assert sum(p.numel() for p in model.parameters()) == 28_784_824  # AdaIR(decoder=True), official file
    layers = model.csa_layers()
    assert len(layers) == 4 + 6 + 6 + 8 + 6 + 6 + 4 + 4
    assert all(type(layer) is RestormerAttention for _, layer in layers)
    assert not any(name.startswith(FREQUENCY) for name, _ in layers)  # the cross attentions stay as they are
    assert not any(isinstance(m, CSALayer) for block in FREQUENCY for m in getattr(model, block).modules())
    assert AdaIR.infer_config(model.state_dict()) == AdaIRConfig() == model.config
    widths = {block: getattr(model, block).channel_cross_agg.q.in_channels for block in FREQUENCY}
    assert widths == {"fre1": 384, "fre2": 192, "fre3": 96}
    assert list(model.state_dict())[:2] == ["patch_embed.proj.weight", "fre1.para1"]  # the official order


def test_csa_levels_follow_resolution_and_block_outputs() -> None:
    with torch.device("meta"):
        model = AdaIR(**TINY)
    levels = {name: model.csa_level(name) for name, _ in model.csa_layers()}
    assert levels == {
        "encoder_level1.0.attn": "1", "encoder_level2.0.attn": "2", "encoder_level3.0.attn": "3",
        "latent.0.attn": "bottleneck", "decoder_level3.0.attn": "3", "decoder_level2.0.attn": "2",
        "decoder_level1.0.attn": "1", "refinement.0.attn": "1",
    }
    assert model.block_output("latent.0.attn") == ("latent.0", False)


# -- detection and inference --------------------------------------------------------------------------------


def test_detection() -> None:
    assert AdaIR.detect(_meta_state(**TINY))
    assert AdaIR.detect(_meta_state(dim=8, num_blocks=(0, 0, 0, 0), num_refinement_blocks=0))
    with torch.device("meta"):
        others = [Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
                  Restormer(dim=8, inp_channels=6, dual_pixel_task=True, layernorm_type="BiasFree"),
                  MSTPlusPlus(stage=1), MST(num_blocks=(1, 1, 1)),
                  PromptIR(num_blocks=(1, 1, 1, 1), num_refinement_blocks=0),
                  DRSformer(dim=4, num_blocks=(1, 1, 1, 1)), Retinexformer(n_feat=8, stage=1)]
    for model in others:
        assert not AdaIR.detect(model.state_dict()), type(model).__name__
    # a decoder-less AdaIR has exactly Restormer's keys (and computation): it is Restormer's to load
    assert not AdaIR.detect(others[0].state_dict())


def _random_config(rng: random.Random) -> AdaIRConfig:
    dim = rng.choice([8, 12, 16])
    blocks = tuple(rng.choice([0, 1, 2]) for _ in range(4))
    refinement = rng.choice([0, 1, 2])
    heads = [rng.choice([1, 2, 4]), rng.choice([1, 2, 4]), rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 8])]
    # a level without blocks leaves no trace of its heads: inference reports the published default there
    visible = (blocks[0] + refinement > 0, blocks[1] > 0, True, blocks[3] > 0)
    heads = [h if seen else default for h, seen, default in zip(heads, visible, (1, 2, 4, 8), strict=True)]
    any_block = sum(blocks) + refinement > 0
    return AdaIRConfig(
        dim=dim, num_blocks=blocks, num_refinement_blocks=refinement, heads=tuple(heads),
        ffn_expansion_factor=rng.choice([2.66, 2.0, 1.5, 3.0, 0.5]) if any_block else 2.66,
        bias=rng.random() < 0.4,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]) if any_block else "WithBias",
    )


@pytest.mark.parametrize("seed", range(12))
def test_inference_round_trips(seed: int) -> None:
    config = _random_config(random.Random(seed))
    state = _meta_state(**config.to_dict())
    assert AdaIR.detect(state)
    assert AdaIR.infer_config(state) == config
    assert AdaIRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# -- conversion of the MDTA layers --------------------------------------------------------------------------


def test_full_width_conversion_is_exact_and_half_width_runs() -> None:
    model = randomise(AdaIR(**TINY), 3)
    inputs = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    spectra = analyse(model)
    full = [f"^{name.replace('.', '[.]')}$={layer.channels}" for name, layer in model.csa_layers()]
    converted = convert(model, plan(model, spectra, rank_patterns=full, allow_bigger=True, input_size=(16, 16)),
                        spectra, inputs=[inputs])
    assert all(isinstance(layer, GLMHALayer) for _, layer in converted.csa_layers())
    assert type(converted.fre1.channel_cross_agg) is type(model.fre1.channel_cross_agg)
    with torch.no_grad():
        expected = model(*inputs)
        scale = expected.abs().max().item()
        assert (converted(*inputs) - expected).abs().max().item() <= 1e-5 * max(scale, 1.0)
        half = convert(model, plan(model, spectra, ratio=0.5, allow_bigger=True, input_size=(16, 16)), spectra,
                       inputs=[inputs])
        assert torch.isfinite(half(*inputs)).all()


# -- one-line errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"num_blocks": (1, 1, 1)}, "num_blocks and heads need 4 entries"),
    ({"heads": (1, 2, 4)}, "num_blocks and heads need 4 entries"),
    ({"layernorm_type": "LayerNorm"}, "layernorm_type must be one of"),
    ({"num_blocks": (1, -1, 1, 1)}, "block counts must be >= 0"),
    ({"num_refinement_blocks": -1}, "block counts must be >= 0"),
    ({"dim": 0}, "channels, dim and heads must be >= 1"),
    ({"heads": (1, 0, 4, 8)}, "channels, dim and heads must be >= 1"),
    ({"inp_channels": 1, "out_channels": 1}, "inp_channels must be 3 (the frequency blocks read the RGB image"),
    ({"out_channels": 1}, "out_channels must equal inp_channels"),
    ({"dim": 9}, "dim must be even"),
    ({"dim": 6}, "dim must be >= 8 (fre3's channel gate has 2*dim // 16 hidden channels); got dim 6"),
    ({"heads": (5, 2, 4, 8)}, "48 channels do not split into 5 heads"),
    ({"heads": (1, 5, 4, 8)}, "96 channels do not split into 5 heads"),
    ({"heads": (1, 2, 64, 8)}, "96 channels do not split into 64 heads"),
    ({"heads": (1, 2, 4, 7)}, "384 channels do not split into 7 heads"),
    ({"dim": 8, "heads": (1, 2, 32, 8)}, "16 channels do not split into 32 heads"),  # fre3's cross attentions
    ({"ffn_expansion_factor": 0.01}, "ffn_expansion_factor 0.01 leaves no hidden channel"),
    ({"ffn_expansion_factor": float("nan")}, "leaves no hidden channel"),
])
def test_config_errors(overrides: dict, expected: str) -> None:
    with pytest.raises(ArchitectureError) as error:
        AdaIRConfig(**overrides)
    message = _one_line(error)
    assert message.startswith("AdaIR: ") and expected in message


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(GlmhaError) as error:
        AdaIRConfig.from_dict({"decoder": True})
    assert "unknown key(s) decoder" in _one_line(error)


def test_inference_errors() -> None:
    state = _meta_state(**TINY)
    state["fre2.conv1.weight"] = torch.empty(32, 1, 3, 3, device="meta")
    with pytest.raises(ArchitectureError) as error:
        AdaIR.infer_config(state)
    assert "fre2.conv1.weight has shape [32, 1, 3, 3]; expected [32, 3, 3, 3] for dim 8" in _one_line(error)

    state = _meta_state(**TINY)
    state["latent.0.ffn.project_out.weight"] = torch.empty(64, 100, 1, 1, device="meta")
    with pytest.raises(ArchitectureError) as error:
        AdaIR.infer_config(state)
    assert _one_line(error).startswith("AdaIR: feed-forward widths")

    state = _meta_state(**TINY)
    del state["fre3.conv1.weight"]
    with pytest.raises(ArchitectureError) as error:
        AdaIR.infer_config(state)
    assert "missing key 'fre3.conv1.weight'" in _one_line(error)


def test_input_and_layer_name_errors() -> None:
    with torch.device("meta"):
        model = AdaIR(**TINY)
    model.check_input_size(16, 24)
    for height, width in ((16, 20), (4, 8), (0, 16)):
        with pytest.raises(InputShapeError) as error:
            model.check_input_size(height, width)
        assert f"got {height}x{width}" in _one_line(error)
    with pytest.raises(ArchitectureError) as error:
        model.csa_level("fre1.channel_cross_agg")
    assert "not a CSA layer of AdaIR" in _one_line(error)
    with pytest.raises(ArchitectureError) as error:
        model.block_output("latent.0.ffn")
    assert "not the attention of an AdaIR transformer block" in _one_line(error)


# -- calibration ----------------------------------------------------------------------------------------------


def test_calibration_samples_are_photographs_like_restormers() -> None:
    with torch.device("meta"):
        model = AdaIR(dim=8, num_blocks=(0, 0, 0, 0), num_refinement_blocks=0)
    (images,) = model.calibration_samples(32, 2)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0.0 and images.max() <= 1.0
    (reference,) = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0).calibration_samples(32, 2)
    assert torch.equal(images, reference)
    with pytest.raises(InputShapeError):
        model.calibration_samples(30, 1)
