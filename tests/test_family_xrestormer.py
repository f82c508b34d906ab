"""X-Restormer: official parity (golden files), published sizes, detection, shape inference, conversion of its
MDTA layers (the spatial attention is left alone) and its one-line errors."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from glmha.archs import MST, DRSformer, MSTPlusPlus, PromptIR, Restormer, Retinexformer
from glmha.archs.mdta import MDTA_ADAPTER, RestormerAttention
from glmha.archs.xrestormer import OverlappingCrossAttention, XRestormer, XRestormerConfig
from glmha.convert.api import analyse, convert, convert_to_glmha, plan
from glmha.errors import ArchitectureError, GlmhaError, InputShapeError
from glmha.layers import CSALayer, GLMHALayer

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CASES = ("xrestormer.safetensors", "sr/xrestormer_sr.safetensors")  # sr/: its stored scale is not inferable
PREFIX = "state_dict."
TINY = dict(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, channel_heads=(1, 2, 2, 4),
            spatial_heads=(1, 2, 1, 2), spatial_dim_head=4)
OVERLAPS = (0.0, 0.25, 0.5, 0.75, 1.0)  # window 8: widenings 0, 2, 4, 6, 8 (binary fractions: exact)


def _read(case: str) -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(metadata, the official weights as float64 under their plain names, the other tensors)."""
    with safe_open(str(GOLDEN / case), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    state = {k[len(PREFIX):]: v.double() for k, v in tensors.items() if k.startswith(PREFIX)}
    return metadata, state, {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}


def _keys(cls: type, **config: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return cls(**config).state_dict()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random, of order one in its effect (temperatures in [0.5, 2], norms 1 +- 0.2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("temperature"):
                param.copy_(torch.rand(param.shape, generator=generator) * 1.5 + 0.5)
            elif param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def random_xrestormer_config(rng: random.Random) -> dict:
    """Tiny configurations that infer back exactly: window 8 (the only size inference assumes), overlaps
    that are binary fractions of it, and the published defaults where a level has no block to show its own."""
    blocks = tuple(rng.choice([0, 1, 2]) for _ in range(4))
    refinement = rng.choice([0, 1])
    dim = 2 * rng.choice([2, 3, 4])
    visible = (blocks[0] + refinement > 0, blocks[1] > 0, blocks[2] > 0, blocks[3] > 0)
    channel = [rng.choice([h for h in (1, 2, 4) if dim * 2**level % h == 0]) for level in range(4)]
    if dim % channel[0]:
        channel[0] = 1
    spatial = [rng.choice([1, 2, 3]) for _ in range(4)]
    overlap = [rng.choice(OVERLAPS) for _ in range(4)]
    for level, seen in enumerate(visible):
        if not seen:
            channel[level], spatial[level], overlap[level] = (1, 2, 4, 8)[level], (1, 2, 4, 8)[level], 0.5
    channels = rng.choice([1, 3])
    return dict(
        inp_channels=channels, out_channels=channels, dim=dim, num_blocks=blocks, num_refinement_blocks=refinement,
        channel_heads=tuple(channel), spatial_heads=tuple(spatial), overlap_ratio=tuple(overlap),
        spatial_dim_head=rng.choice([2, 3, 4, 16]) if any(visible) else 16,
        ffn_expansion_factor=rng.choice([2.66, 2.0, 1.5, 1.0]) if any(visible) else 2.66,
        bias=rng.random() < 0.4,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]) if any(visible) else "WithBias",
    )


# -- parity with the official code ------------------------------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_output_reproduces_in_float64(case: str) -> None:
    metadata, state, tensors = _read(case)
    assert metadata["family"] == XRestormer.family == "xrestormer"
    assert XRestormer.detect(state)
    published = XRestormerConfig.from_dict(json.loads(metadata["config"]))
    inferred = XRestormer.infer_config(state)
    assert inferred == dataclasses.replace(published, scale=1)  # the SR scale leaves no trace in the weights
    model = XRestormer.from_config(dataclasses.replace(inferred, scale=published.scale)).double().eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        output = model(tensors["input"])
    expected = tensors["output"]
    assert output.shape == expected.shape
    scale = max(expected.abs().max().item(), 1.0)
    assert (output - expected).abs().max().item() <= 1e-12 * scale
    if published.scale > 1:  # the inferred scale-1 network is the SR network after its bilinear upsampling
        plain = XRestormer.from_config(inferred).double().eval()
        plain.load_state_dict(state, strict=True)
        upsampled = F.interpolate(tensors["input"], scale_factor=published.scale, mode="bilinear",
                                  align_corners=False)
        with torch.no_grad():
            assert (plain(upsampled) - expected).abs().max().item() <= 1e-12 * scale


def test_relative_positions_reach_the_golden_output() -> None:
    """The golden comparison would miss a wrong relative-position index if the tables did not matter."""
    _, state, tensors = _read(GOLDEN_CASES[0])
    model = XRestormer.from_config(XRestormer.infer_config(state)).double().eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        table = model.latent[0].spatial_attn.rel_pos_emb.rel_width
        table.copy_(table.flip(0))
        changed = model(tensors["input"])
    assert (changed - tensors["output"]).abs().max().item() > 1e-3


# -- sizes and layout -------------------------------------------------------------------------------------


def test_published_parameter_counts_and_layers() -> None:
    with torch.device("meta"):
        published = XRestormer()  # options/*/00[1-5]_xrestormer_*.yml: all five tasks
        small = XRestormer(dim=44, spatial_dim_head=20)  # options/train/001_xrestormer_s_sr.yml
        class_defaults = XRestormer(num_blocks=(4, 6, 6, 8), spatial_heads=(2, 2, 3, 4))
    assert sum(p.numel() for p in published.parameters()) == 26_041_208
    assert sum(p.numel() for p in small.parameters()) == 22_346_668
    assert sum(p.numel() for p in class_defaults.parameters()) == 42_522_852
    layers = published.csa_layers()
    assert len(layers) == 28  # 2 * (2 + 4 + 4) encoder/decoder blocks + 4 latent + 4 refinement
    assert all(type(layer) is RestormerAttention and isinstance(layer, CSALayer) for _, layer in layers)
    assert all(name.endswith(".channel_attn") for name, _ in layers)
    spatial = [m for m in published.modules() if isinstance(m, OverlappingCrossAttention)]
    assert len(spatial) == 28 and not any(isinstance(m, CSALayer) for m in spatial)
    assert XRestormer.attention_adapters == (MDTA_ADAPTER,)
    assert XRestormer.infer_config(published.state_dict()) == XRestormerConfig() == published.config
    assert XRestormer.infer_config(small.state_dict()) == small.config


def test_levels_and_block_outputs() -> None:
    with torch.device("meta"):
        model = XRestormer(**TINY)
    levels = {name: model.csa_level(name) for name, _ in model.csa_layers()}
    assert levels == {
        "encoder_level1.0.channel_attn": "1", "encoder_level2.0.channel_attn": "2",
        "encoder_level3.0.channel_attn": "3", "latent.0.channel_attn": "bottleneck",
        "decoder_level3.0.channel_attn": "3", "decoder_level2.0.channel_attn": "2",
        "decoder_level1.0.channel_attn": "1", "refinement.0.channel_attn": "1",
    }
    assert model.block_output("latent.0.channel_attn") == ("latent.0", False)


# -- detection and inference --------------------------------------------------------------------------------


def test_detection() -> None:
    assert XRestormer.detect(_keys(XRestormer, **TINY))
    assert XRestormer.detect(_keys(XRestormer, **{**TINY, "num_blocks": (0, 0, 0, 1), "num_refinement_blocks": 0}))
    others = [
        _keys(Restormer, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
        _keys(Restormer, dim=8, inp_channels=6, dual_pixel_task=True, layernorm_type="BiasFree"),
        _keys(PromptIR, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0),
        _keys(DRSformer, dim=4, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4)),
        _keys(MST, dim=8, stage=2, num_blocks=(1, 1, 1)),
        _keys(MSTPlusPlus, stage=1),
        _keys(Retinexformer, n_feat=4, stage=1, num_blocks=(1, 1, 1)),
    ]
    for keys in others:
        assert not XRestormer.detect(keys)
    mine = _keys(XRestormer, **TINY)
    for family in (PromptIR, DRSformer, MST, MSTPlusPlus, Retinexformer):
        assert not family.detect(mine), family.family
    # Restormer's key test (patch embed, down-sampler, output) also matches; its strict key check then
    # refuses, so detection order in the registry does not matter


@pytest.mark.parametrize("seed", range(10))
def test_inference_round_trips(seed: int) -> None:
    config = XRestormerConfig(**random_xrestormer_config(random.Random(seed)))
    assert XRestormer.infer_config(_keys(XRestormer, **config.to_dict())) == config
    assert XRestormerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_inference_reads_overlaps_in_their_canonical_form() -> None:
    """Ratios that widen the windows by the same pixels build the same network: inference gives k/8."""
    rough = XRestormerConfig(**{**TINY, "overlap_ratio": (0.3, 0.6, 0.1, 0.8)})  # + 2, 4, 0, 6 pixels
    inferred = XRestormer.infer_config(_keys(XRestormer, **rough.to_dict()))
    assert inferred == dataclasses.replace(rough, overlap_ratio=(0.25, 0.5, 0.0, 0.75))
    torch.manual_seed(0)
    a = _randomise(XRestormer.from_config(rough), 1)
    b = XRestormer.from_config(inferred).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# -- conversion ---------------------------------------------------------------------------------------------


def test_full_width_conversion_is_exact_and_half_width_runs() -> None:
    model = _randomise(XRestormer(**TINY), 4)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    spectra = analyse(model)
    patterns = [f"^{name.replace('.', '[.]')}$={layer.channels}" for name, layer in model.csa_layers()]
    forced = plan(model, spectra, rank_patterns=patterns, allow_bigger=True, input_size=(64, 64))
    converted = convert(model, forced, spectra)
    assert len(converted.csa_layers()) == 8
    assert all(isinstance(layer, GLMHALayer) for _, layer in converted.csa_layers())
    spatial = [m for n, m in converted.named_modules() if n.endswith("spatial_attn")]
    assert len(spatial) == 8 and all(type(m) is OverlappingCrossAttention for m in spatial)
    with torch.no_grad():
        scale = max(expected.abs().max().item(), 1.0)
        assert (converted(x) - expected).abs().max().item() <= 1e-5 * scale
    student, conversion = convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(64, 64))
    assert any(layer.convert for layer in conversion.layers)
    with torch.no_grad():
        assert torch.isfinite(student(x)).all()


# -- inputs ---------------------------------------------------------------------------------------------------


def test_calibration_samples_are_photographs_like_restormers() -> None:
    with torch.device("meta"):
        rgb, grey, odd = (XRestormer(**{**TINY, "inp_channels": c, "out_channels": c}) for c in (3, 1, 2))
        sr = XRestormer(**{**TINY, "scale": 2})
    (images,) = rgb.calibration_samples(64, 2)
    assert images.shape == (2, 3, 64, 64) and images.device.type == "cpu"
    assert images.min() >= 0.0 and images.max() <= 1.0
    (reference,) = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0).calibration_samples(64, 2)
    assert torch.equal(images, reference)
    (grey_images,) = grey.calibration_samples(64, 2)
    assert torch.equal(grey_images, images.mean(dim=1, keepdim=True))
    (low,) = sr.calibration_samples(32, 2)  # the SR model's low-resolution input: photographs downscaled x2
    assert low.shape == (2, 3, 32, 32) and low.min() >= 0.0 and low.max() <= 1.0
    assert (low - F.avg_pool2d(images, 2)).abs().mean() < 0.05
    with pytest.raises(ArchitectureError) as error:
        odd.calibration_samples(64, 2)
    assert "2 input channels has no offline calibration images" in _one_line(error)


def test_input_sizes() -> None:
    with torch.device("meta"):
        plain, sr4, sr3 = (XRestormer(**{**TINY, "scale": s}) for s in (1, 4, 3))
    assert (plain.size_multiple, sr4.size_multiple, sr3.size_multiple) == (64, 16, 64)
    plain.check_input_size(64, 192)
    sr4.check_input_size(16, 48)
    for height, width in ((64, 96), (32, 64), (0, 64)):
        with pytest.raises(InputShapeError) as error:
            plain.check_input_size(height, width)
        assert _one_line(error) == ("X-Restormer needs height and width that are multiples of 64 (three 2x "
                                    f"down-samplings, then 8x8 windows); got {height}x{width}")
    with pytest.raises(InputShapeError) as error:
        sr4.check_input_size(24, 16)
    assert _one_line(error) == ("X-Restormer needs height and width that are multiples of 16 (x4 upsampling, "
                                "three 2x down-samplings, then 8x8 windows); got 24x16")
    with pytest.raises(InputShapeError) as error:
        plain.calibration_samples(48, 1)
    assert "got 48x48" in _one_line(error)
    layer = OverlappingCrossAttention(4, 8, 12, 1, 4, bias=False)
    with pytest.raises(InputShapeError) as error:
        layer(torch.zeros(1, 4, 8, 12))
    assert _one_line(error) == ("X-Restormer spatial attention needs sides that are multiples of its 8-pixel "
                                "windows; got 8x12")


# -- one-line errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"num_blocks": (1, 1, 1)}, "num_blocks, channel_heads, spatial_heads and overlap_ratio need 4 entries"),
    ({"spatial_heads": (1, 2, 4)}, "need 4 entries each"),
    ({"overlap_ratio": (0.5,) * 5}, "need 4 entries each"),
    ({"layernorm_type": "LayerNorm"}, "layernorm_type must be one of"),
    ({"num_blocks": (1, -1, 1, 1)}, "block counts must be >= 0"),
    ({"num_refinement_blocks": -1}, "block counts must be >= 0"),
    ({"window_size": 0}, "channels, dim, heads, window_size, spatial_dim_head and scale must be >= 1"),
    ({"spatial_heads": (1, 0, 4, 8)}, "must be >= 1"),
    ({"scale": 0}, "must be >= 1"),
    ({"out_channels": 1}, "out_channels must equal inp_channels"),
    ({"dim": 7}, "dim must be even"),
    ({"channel_heads": (5, 2, 4, 8)}, "48 channels do not split into 5 heads"),
    ({"dim": 6, "channel_heads": (1, 5, 4, 8)}, "12 channels do not split into 5 heads"),
    ({"overlap_ratio": (0.5, -0.25, 0.5, 0.5)}, "overlap_ratio must be finite and >= 0, got -0.25 at level 2"),
    ({"overlap_ratio": (0.5, 0.5, float("inf"), 0.5)}, "got inf at level 3"),
    ({"overlap_ratio": (0.5, 0.5, 0.5, 0.125)},
     "overlap_ratio 0.125 at level 4 widens the 8-pixel windows by 1; the overlapping key windows need an "
     "even widening"),
    ({"ffn_expansion_factor": 0.01}, "ffn_expansion_factor 0.01 leaves no hidden channel at 48 channels"),
    ({"ffn_expansion_factor": float("nan")}, "leaves no hidden channel"),
])
def test_config_errors(overrides: dict, expected: str) -> None:
    with pytest.raises(ArchitectureError) as error:
        XRestormerConfig(**overrides)
    message = _one_line(error)
    assert message.startswith("X-Restormer: ") and expected in message


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(GlmhaError) as error:
        XRestormerConfig.from_dict({"dual_pixel_task": False})
    assert "unknown key(s) dual_pixel_task" in _one_line(error)


def test_inference_errors() -> None:
    def fails(state: dict, expected: str) -> None:
        with pytest.raises(ArchitectureError) as error:
            XRestormer.infer_config(state)
        assert _one_line(error) == expected

    state = dict(_keys(XRestormer, **TINY))
    del state["patch_embed.proj.weight"]
    fails(state, "missing key 'patch_embed.proj.weight'")

    state = dict(_keys(XRestormer, **{**TINY, "window_size": 4}))  # windows 6 at every level
    fails(state, "X-Restormer: overlapping windows of [6] pixels do not fit the published window size 8 (plus an "
          "even overlap); the window size leaves no trace in the weights, so glmha cannot tell which one was used")
    state = dict(_keys(XRestormer, **{**TINY, "window_size": 9, "overlap_ratio": (0.0, 0.0, 0.25, 0.0)}))
    fails(state, "X-Restormer: overlapping windows of [9, 11] pixels do not fit the published window size 8 "
          "(plus an even overlap); the window size leaves no trace in the weights, so glmha cannot tell which one "
          "was used")

    state = dict(_keys(XRestormer, **TINY))
    state["latent.0.spatial_attn.rel_pos_emb.rel_height"] = torch.empty(22, 4, device="meta")
    fails(state, "X-Restormer: latent.0.spatial_attn.rel_pos_emb.rel_height has shape [22, 4]; expected "
          "[2 * window - 1, dim_head]")

    state = dict(_keys(XRestormer, **TINY))
    state["encoder_level2.0.spatial_attn.qkv.weight"] = torch.empty(20, 8, 1, 1, device="meta")
    fails(state, "X-Restormer: encoder_level2.0.spatial_attn.qkv has 20 output channels; expected 3 x heads x 4 "
          "(the relative-position tables' width)")

    state = dict(_keys(XRestormer, **TINY))
    state["encoder_level1.0.channel_ffn.project_out.weight"] = torch.empty(4, 3, 1, 1, device="meta")
    fails(state, "X-Restormer: feed-forward widths {4: 3, 8: 21, 16: 42, 32: 85} fit no single "
          "ffn_expansion_factor")


def test_layer_name_errors() -> None:
    with torch.device("meta"):
        model = XRestormer(**TINY)
    for name in ("latent.0.spatial_attn", "prompt1.channel_attn"):
        with pytest.raises(ArchitectureError) as error:
            model.csa_level(name)
        assert _one_line(error) == f"{name} is not a CSA layer of X-Restormer"
    with pytest.raises(ArchitectureError) as error:
        model.block_output("latent.0.spatial_attn")
    assert _one_line(error) == "latent.0.spatial_attn is not the channel attention of an X-Restormer block"
