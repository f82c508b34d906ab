"""DRSformer: official parity (golden files of both architecture files), published size, detection,
inference, the top-k step and its errors."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmha.archs.base import CSALayer
from glmha.archs.drsformer import (
    DRSformer,
    DRSformerConfig,
    TopKAttention,
    sparse_attention,
    topk_counts,
)
from glmha.archs.mst import MST
from glmha.archs.mst_plus_plus import MSTPlusPlus
from glmha.archs.restormer import Restormer
from glmha.errors import ArchitectureError, InputShapeError

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CASES = ("drsformer.safetensors", "drsformer_200l.safetensors")
PREFIX = "state_dict."
TINY = dict(dim=4, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4))


def _read(case: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN / case), framework="pt") as handle:
        return dict(handle.metadata()), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def _state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v.double() for k, v in tensors.items() if k.startswith(PREFIX)}


def _keys(cls: type, **config: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return cls(**config).state_dict()


def _random_config(rng: random.Random) -> dict:
    heads = (rng.choice([1, 2]), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([2, 4]))
    return dict(
        inp_channels=(channels := rng.choice([1, 3])),
        out_channels=channels,
        dim=4 * rng.choice([1, 2, 3]),
        num_blocks=tuple(rng.choice([1, 2]) for _ in range(4)),
        heads=heads,
        ffn_expansion_factor=rng.choice([2.66, 2.0, 1.5, 3.0, 2.5]),
        bias=rng.random() < 0.4,
        layernorm_type=rng.choice(["WithBias", "BiasFree"]),
        mefc=rng.random() < 0.5,
    )


# -- parity with the official code ---------------------------------------------------------------


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_output_reproduces_in_float64(case: str) -> None:
    metadata, tensors = _read(case)
    state = _state(tensors)
    assert metadata["family"] == DRSformer.family
    assert DRSformer.detect(state)
    config = DRSformer.infer_config(state)
    assert config == DRSformerConfig.from_dict(json.loads(metadata["config"]))
    assert config.mefc == (case == "drsformer.safetensors")  # one file per official architecture file
    model = DRSformer.from_config(config).double()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        output = model.eval()(tensors["input"])
    expected = tensors["output"]
    assert output.shape == expected.shape
    scale = max(expected.abs().max().item(), 1.0)
    assert (output - expected).abs().max().item() <= 1e-12 * scale


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_logits_have_no_topk_ties(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kept/dropped boundary is far from a tie (>= 1e-5 of the row's scale), so float64 rounding
    differences between implementations cannot change which entries the official torch.topk keeps."""
    _, tensors = _read(case)
    state = _state(tensors)
    model = DRSformer.from_config(DRSformer.infer_config(state)).double()
    model.load_state_dict(state, strict=True)
    gaps, calls, topk = [], [], torch.topk

    def measuring(values: torch.Tensor, k: int, **kwargs: object) -> torch.return_types.topk:
        ordered = values.sort(dim=-1, descending=True).values  # (..., K)
        gaps.append(((ordered[..., k - 1] - ordered[..., k]) / values.abs().amax(dim=-1)).min().item())
        calls.append((values.shape[-1], k))
        return topk(values, k=k, **kwargs)

    monkeypatch.setattr(torch, "topk", measuring)
    with torch.no_grad():
        model.eval()(tensors["input"])
    assert len(gaps) == 4 * len(model.csa_layers())
    assert min(gaps) >= 1e-5
    for layer in range(0, len(calls), 4):  # each layer's four branches keep topk_counts(d) of its d keys
        (keys, _), *_ = calls[layer:layer + 4]
        assert tuple(k for _, k in calls[layer:layer + 4]) == topk_counts(keys)


# -- sizes and layout ------------------------------------------------------------------------------


def test_published_parameter_counts() -> None:
    with torch.device("meta"):
        full, spa = DRSformer(), DRSformer(mefc=False)
    assert sum(p.numel() for p in full.parameters()) == 33_655_424  # DRSformer_arch.py defaults
    assert sum(p.numel() for p in spa.parameters()) == 32_610_304  # DRSformer_arch_200L+SPA.py defaults
    layers = full.csa_layers()
    assert len(layers) == 40
    assert all(isinstance(m, TopKAttention) and isinstance(m, CSALayer) and not m.channels_last for _, m in layers)
    assert {m.head_dim for _, m in layers} == {48, 96}  # 96 only at decoder level 1


def test_levels_and_block_outputs() -> None:
    with torch.device("meta"):
        model = DRSformer(**TINY)
    levels = {name: model.csa_level(name) for name, _ in model.csa_layers()}
    assert levels == {
        "encoder_level1.0.attn": "1", "encoder_level2.0.attn": "2", "encoder_level3.0.attn": "3",
        "latent.0.attn": "bottleneck", "decoder_level3.0.attn": "3", "decoder_level2.0.attn": "2",
        "decoder_level1.0.attn": "1",
    }
    assert model.block_output("latent.0.attn") == ("latent.0", False)
    with pytest.raises(ArchitectureError, match=r"^latent\.0\.ffn is not the attention of a DRSformer"):
        model.block_output("latent.0.ffn")


# -- the top-k step ----------------------------------------------------------------------------------


def test_topk_counts_equal_the_official_float_expressions() -> None:
    for keys in range(2, 5000):
        assert topk_counts(keys) == (int(keys / 2), int(keys * 2 / 3), int(keys * 3 / 4), int(keys * 4 / 5))
    assert topk_counts(48) == (24, 32, 36, 38) and topk_counts(96) == (48, 64, 72, 76)


def test_sparse_attention_follows_the_equation_with_fewer_keys_than_queries() -> None:
    """A converted layer: 8 queries, 5 keys, so each branch keeps int(5/2), int(10/3), ... of the 5."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 5, generator=generator, dtype=torch.float64)
    value = torch.randn(2, 3, 5, 7, generator=generator, dtype=torch.float64)
    weights = [torch.tensor([w], dtype=torch.float64) for w in (0.1, 0.2, 0.3, 0.4)]
    expected = torch.zeros(2, 3, 8, 7, dtype=torch.float64)
    for count, weight in zip((2, 3, 3, 4), weights, strict=True):
        kth = logits.sort(dim=-1, descending=True).values[..., count - 1 : count]  # (..., 8, 1)
        probs = torch.where(logits >= kth, logits.exp(), torch.zeros_like(logits))  # no ties here
        expected += (probs / probs.sum(dim=-1, keepdim=True)) @ value * weight
    assert torch.allclose(sparse_attention(logits, value, weights), expected, rtol=0, atol=1e-13)


def test_sparse_attention_breaks_ties_as_torch_topk_does() -> None:
    """All-equal rows (a flat region gives them): the kept entries are torch.topk's choice, which on the CPU
    is neither the first nor the last k; each branch's output is the mean of exactly those value rows."""
    logits = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    value = torch.arange(8, dtype=torch.float64).view(1, 1, 8, 1)  # value row i is i
    for branch, count in enumerate(topk_counts(8)):
        kept = torch.topk(logits, k=count, dim=-1, largest=True).indices.flatten().tolist()
        weights = [torch.tensor([1.0 if i == branch else 0.0], dtype=torch.float64) for i in range(4)]
        output = sparse_attention(logits, value, weights).item()
        assert output == pytest.approx(sum(kept) / count, abs=1e-15)


def test_float32_forward_is_finite_and_batch_independent() -> None:
    """MEFC mixes its experts per image: a batch of two equals the two images run alone."""
    torch.manual_seed(0)
    model = DRSformer(**TINY).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        both = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    assert torch.isfinite(both).all()
    assert torch.allclose(both, alone, atol=1e-5)


# -- detection and inference -----------------------------------------------------------------------


def test_detection() -> None:
    assert DRSformer.detect(_keys(DRSformer, **TINY))
    assert DRSformer.detect(_keys(DRSformer, mefc=False, **TINY))
    no_branch_weights = [k for k in _keys(DRSformer, **TINY) if not re.search(r"\.attn\.attn\d$", k)]
    assert DRSformer.detect(no_branch_weights)  # still found, so that the error below names the problem
    assert not DRSformer.detect(_keys(Restormer, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1))
    assert not DRSformer.detect(_keys(MST, dim=8, stage=2, num_blocks=(1, 1, 1)))
    assert not DRSformer.detect(_keys(MSTPlusPlus, stage=1))


def test_inference_round_trips_random_configs() -> None:
    rng = random.Random(4)
    for _ in range(8):
        config = DRSformerConfig(**_random_config(rng))
        assert DRSformer.infer_config(_keys(DRSformer, **config.to_dict())) == config
    assert DRSformer.infer_config(_keys(DRSformer)) == DRSformerConfig()
    assert DRSformer.infer_config(_keys(DRSformer, mefc=False)) == DRSformerConfig(mefc=False)


def test_calibration_samples_are_rainy_photographs_in_range() -> None:
    with torch.device("meta"):
        model = DRSformer(**TINY)
    (first,) = model.calibration_samples(32, 2)
    (again,) = model.calibration_samples(32, 2)
    assert first.shape == (2, 3, 32, 32) and first.device.type == "cpu"
    assert torch.equal(first, again)
    assert first.min().item() >= 0.0 and first.max().item() <= 1.0


# -- errors ------------------------------------------------------------------------------------------


def test_missing_branch_weights_are_named() -> None:
    """cschenxiang/DRSformer issue #4: the rain100l checkpoint has no attn1..attn4."""
    state = {k: v for k, v in _keys(DRSformer, **TINY).items() if not re.search(r"\.attn\.attn\d$", k)}
    with pytest.raises(ArchitectureError, match=r"^DRSformer: the top-k branch weights attn1\.\.attn4 are "
                       r"missing in 7 of 7 attention layers \(28 keys, e.g\. decoder_level1\.0\.attn\.attn1\); "
                       r"this checkpoint comes from an older attention class \(see cschenxiang/DRSformer "
                       r"issue #4\)") as error:
        DRSformer.infer_config(state)
    assert "\n" not in str(error.value)
    state = dict(_keys(DRSformer, **TINY))
    del state["latent.0.attn.attn3"]
    with pytest.raises(ArchitectureError, match=r"missing in 1 of 7 attention layers \(1 keys, e\.g\. latent\.0"):
        DRSformer.infer_config(state)


def test_mefc_errors() -> None:
    state = _keys(DRSformer, **TINY)
    half = {k: v for k, v in state.items() if not k.startswith("refinement.")}
    with pytest.raises(ArchitectureError, match=r"^DRSformer: the MEFC sub-networks encoder_level0 and "
                       r"refinement come together, but only encoder_level0 is in the state dict$"):
        DRSformer.infer_config(half)
    fourth_step = re.compile(r"(encoder_level0|refinement)\.layers\.1\._ops\.3\.")
    three_steps = {k: v for k, v in state.items() if not fourth_step.match(k)}
    with pytest.raises(ArchitectureError, match=r"^DRSformer: encoder_level0 has 2 MEFC sub-layers and 3 steps"):
        DRSformer.infer_config(three_steps)


def test_config_errors() -> None:
    cases = [
        (dict(heads=(1, 2, 4)), "num_blocks and heads need 4 entries each"),
        (dict(layernorm_type="Other"), "layernorm_type must be one of"),
        (dict(num_blocks=(1, -1, 1, 1)), "block counts must be >= 0"),
        (dict(dim=0), "channels, dim and heads must be >= 1"),
        (dict(out_channels=1), "out_channels must equal inp_channels"),
        (dict(dim=7), "dim must be even"),
        (dict(dim=12, heads=(5, 1, 1, 1)), "12 channels do not split into 5 heads"),
        (dict(dim=4, heads=(4, 1, 1, 1)),
         "4 channels in 4 heads leave 1 per head; top-k attention needs at least 2"),
    ]
    for changes, message in cases:
        with pytest.raises(ArchitectureError, match=f"^DRSformer: {re.escape(message)}"):
            DRSformerConfig(**changes)


def test_inference_errors() -> None:
    state = dict(_keys(DRSformer, **TINY))
    del state["patch_embed.proj.weight"]
    with pytest.raises(ArchitectureError, match=r"^missing key 'patch_embed\.proj\.weight'$"):
        DRSformer.infer_config(state)
    state = dict(_keys(DRSformer, **TINY))
    state["encoder_level1.0.ffn.dwconv3x3_1.weight"] = torch.empty(3, 2, 3, 3, device="meta")  # F: 10 -> 3
    with pytest.raises(ArchitectureError, match=r"^DRSformer: feed-forward widths \{4: 3, 8: 21, 16: 42, 32: 85\} "
                       r"fit no single ffn_expansion_factor$"):
        DRSformer.infer_config(state)


def test_topk_and_layer_errors() -> None:
    with pytest.raises(ArchitectureError, match=r"^DRSformer top-k attention needs at least 2 keys per head .*1$"):
        topk_counts(1)
    with pytest.raises(ArchitectureError, match=r"^DRSformer: 8 channels do not split into 3 heads$"):
        TopKAttention(8, 3, bias=False)
    with pytest.raises(ArchitectureError, match=r"needs at least 2 keys per head"):
        TopKAttention(4, 4, bias=False)
    with pytest.raises(InputShapeError, match=r"^sparse_attention: the logits have 4 keys but the value has 3 "):
        sparse_attention(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 5), [torch.ones(1)] * 4)
    with pytest.raises(ArchitectureError, match=r"^sparse_attention needs 4 branch weights, got 3$"):
        sparse_attention(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), [torch.ones(1)] * 3)


def test_input_size_errors() -> None:
    with torch.device("meta"):
        model = DRSformer(**TINY)
    model.check_input_size(8, 24)
    for height, width in ((12, 16), (16, 4), (0, 8)):
        with pytest.raises(InputShapeError, match=f"^DRSformer needs height and width that are multiples of 8 "
                           rf"\(three 2x down-samplings\); got {height}x{width}$"):
            model.check_input_size(height, width)
    with pytest.raises(InputShapeError, match=r"^DRSformer needs"):
        model.calibration_samples(20, 1)
    with torch.device("meta"):
        six = DRSformer(inp_channels=6, out_channels=6, **TINY)
    with pytest.raises(ArchitectureError, match=r"^DRSformer with 6 input channels has no offline calibration"):
        six.calibration_samples(16, 1)
