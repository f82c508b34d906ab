"""GRL and RAMiT checkpoints are named, with the reason glmha does not convert them; nothing else is.

The fixtures in tests/data/unsupported/ are key lists taken from the official code (GRL: its model built
with the published configs; RAMiT: the checkpoints shipped in its repository's pretrained/ folder).
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
from pathlib import Path

import pytest
import torch

from glmha.archs import FAMILIES
from glmha.archs.unsupported import (
    GRL,
    KNOWN_UNSUPPORTED,
    RAMIT,
    KnownArchitecture,
    is_grl,
    is_ramit,
    prefixes_of,
    recognise_unsupported,
)

from conftest import RANDOM_CONFIGS

DATA = Path(__file__).parent / "data" / "unsupported"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
FIXTURES = {
    "grl_tiny_x4_keys": GRL,
    "grl_base_bsr_subset_keys": GRL,
    "ramit_1_cdn_keys": RAMIT,
    "ramit_slimlle_lle_keys": RAMIT,
}


def fixture_keys(name: str) -> list[str]:
    document = json.loads((DATA / f"{name}.json").read_text())
    assert document["count"] == len(document["keys"]) == len(set(document["keys"]))
    return document["keys"]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_is_recognised_with_its_message(name: str) -> None:
    message = recognise_unsupported(fixture_keys(name))
    assert message == FIXTURES[name].message
    assert "\n" not in message
    assert message.startswith(f"{FIXTURES[name].name} checkpoint recognised, not converted: ")


def test_messages_say_what_and_why() -> None:
    assert "spatial" in GRL.message and "channel-wise self-attention only" in GRL.message
    assert "squeeze-and-excitation" in GRL.message
    assert "one channel self-attention head (16 channels" in RAMIT.message
    assert "%" in RAMIT.message and "256x256" in RAMIT.message
    assert [k.name for k in KNOWN_UNSUPPORTED] == ["GRL", "RAMiT"]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_two_detectors_do_not_overlap(name: str) -> None:
    keys = set(fixture_keys(name))
    assert (is_grl(keys), is_ramit(keys)) == ((True, False) if FIXTURES[name] is GRL else (False, True))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_no_supported_family_claims_the_fixture(name: str) -> None:
    # the loader tries the supported families first: none of them may take these checkpoints
    keys = set(fixture_keys(name))
    assert not [family for family, cls in FAMILIES.items() if cls.detect(keys)]


def lightning(keys: list[str]) -> list[str]:
    """GRL's Lightning checkpoints: the network under "model.", plus the engine's metric buffers."""
    return [f"model.{k}" for k in keys] + ["current_val_metric", "best_val_metric", "best_iter"]


def gan(keys: list[str]) -> list[str]:
    """GRL's GAN checkpoints (bsr): generator under "model_g.", discriminator under "model_d."."""
    return [f"model_g.{k}" for k in keys] + ["model_d.conv0.weight", "model_d.conv1.weight_orig"]


@pytest.mark.parametrize(
    "wrap",
    [lightning, gan, lambda keys: [f"module.{k}" for k in keys], lambda keys: [f"net.g.{k}" for k in keys]],
    ids=["lightning", "gan", "module", "nested"],
)
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_wrapped_checkpoints_are_recognised(name: str, wrap) -> None:
    assert recognise_unsupported(wrap(fixture_keys(name))) == FIXTURES[name].message


def test_any_iterable_of_keys_is_accepted() -> None:
    keys = fixture_keys("ramit_slimlle_lle_keys")
    assert recognise_unsupported(dict.fromkeys(keys, None)) == RAMIT.message
    assert recognise_unsupported(k for k in keys) == RAMIT.message
    assert recognise_unsupported([]) is None


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("grl_tiny_x4_keys", lambda key: key == "norm_start.weight"),
        ("grl_tiny_x4_keys", lambda key: key == "conv_first.weight"),
        # no attention transform left: some other conv net that happens to use these names
        ("grl_tiny_x4_keys", lambda key: key.endswith(".logit_scale")),
        ("ramit_1_cdn_keys", lambda key: key == "shallow.conv.weight"),
        ("ramit_1_cdn_keys", lambda key: key == "to_target.final_conv.weight"),
        ("ramit_1_cdn_keys", lambda key: "_attn." in key),
    ],
    ids=["grl-norm_start", "grl-conv_first", "grl-attention", "ramit-shallow", "ramit-final_conv", "ramit-heads"],
)
def test_a_partial_key_set_is_not_recognised(name: str, dropped) -> None:
    assert recognise_unsupported([k for k in fixture_keys(name) if not dropped(k)]) is None


def test_stem_and_attention_must_share_one_prefix() -> None:
    keys = fixture_keys("grl_tiny_x4_keys")
    stem = [k for k in keys if not k.startswith("layers.")]
    body = [k for k in keys if k.startswith("layers.")]
    assert recognise_unsupported(stem + [f"other.{k}" for k in body]) is None


def test_prefixes_of_matches_whole_name_parts_only() -> None:
    keys = {"conv_first.weight", "model.conv_first.weight", "xconv_first.weight"}
    assert prefixes_of(keys, "conv_first.weight") == {"", "model."}


def test_known_architecture_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        GRL.name = "other"  # type: ignore[misc]
    known = KnownArchitecture("X", lambda keys: True, "why")
    assert known.message == "X checkpoint recognised, not converted: why"


@pytest.mark.parametrize("family", sorted(RANDOM_CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_glmha_models_are_not_recognised(family: str, seed: int) -> None:
    cls, make_config = RANDOM_CONFIGS[family]
    with torch.device("meta"):
        model = cls(**make_config(random.Random(seed)))
    assert recognise_unsupported(model.state_dict()) is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_published_defaults_of_supported_families_are_not_recognised(family: str) -> None:
    cls = FAMILIES[family]
    with torch.device("meta"):
        model = cls.from_config(cls.config_class())
    assert recognise_unsupported(model.state_dict()) is None


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("*_keys.json")) if REFERENCE.is_dir() else [], ids=str)
def test_reference_key_lists_are_not_recognised(path: Path) -> None:
    reference = json.loads(path.read_text())
    keys = reference["keys"] if isinstance(reference, dict) and "keys" in reference else reference
    assert recognise_unsupported(list(keys)) is None


def test_unrelated_key_sets_are_not_recognised() -> None:
    rng = random.Random(0)
    for _ in range(50):
        keys = {
            ".".join("".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(1, 8))) for _ in range(3))
            for _ in range(rng.randint(1, 40))
        }
        assert recognise_unsupported(keys) is None
    swinir_like = {
        "conv_first.weight", "patch_embed.norm.weight", "norm.weight", "conv_after_body.weight",
        "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
        "layers.0.residual_group.blocks.0.attn.qkv.weight", "conv_last.weight",
    }
    assert recognise_unsupported(swinir_like) is None
    resnet_like = {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias"}
    assert recognise_unsupported(resnet_like) is None
