"""The synthetic low-light degradation (LowLightSpec): its maths, noise statistics, seeding, clipping,
validation, recipe form, and a tiny distillation of the shipped low-light recipe."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import glmha
from glmha.data.degrade import DEGRADATIONS, LowLightSpec, degrade, margin, seeded_generator
from glmha.distill import distill, load_recipe, parse_recipe
from glmha.errors import GlmhaError

from distill_helpers import recipe_dict

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes" / "tiny_cpu_lowlight.yaml"
QUIET = dict(shot=0.0, read=0.0)


def flat(value: float, side: int = 8, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.full((3, side, side), value, dtype=dtype)


# -- the maths --------------------------------------------------------------------------------------


def test_noise_off_is_exactly_exposure_times_the_gamma_power():
    spec = LowLightSpec(exposure=0.2, gamma=2.0, **QUIET)
    generator = seeded_generator(0)
    state = generator.get_state()
    out = degrade(spec, flat(0.5), generator)
    assert out.dtype == torch.float64 and out.shape == (3, 8, 8)
    assert torch.equal(out, flat(0.2 * 0.5**2))  # 0.05 exactly
    assert torch.equal(generator.get_state(), state)  # fixed values and no noise draw nothing
    assert torch.equal(degrade(LowLightSpec(exposure=1.0, gamma=1.0, **QUIET), flat(0.3), generator), flat(0.3))


def test_ranges_are_drawn_in_order_exposure_then_gamma():
    spec = LowLightSpec(exposure=(0.1, 0.3), gamma=(1.5, 2.5), **QUIET)
    out = degrade(spec, flat(0.6), seeded_generator(7))
    mirror = seeded_generator(7)
    u1, u2 = (float(torch.rand((), generator=mirror, dtype=torch.float64)) for _ in range(2))
    exposure, gamma = 0.1 + 0.2 * u1, 1.5 + 1.0 * u2
    assert out[0, 0, 0].item() == pytest.approx(exposure * 0.6**gamma, rel=1e-15)
    assert torch.equal(out, out[0, 0, 0].expand_as(out))  # one draw per image, not per pixel


@pytest.mark.parametrize(("shot", "read", "level"), [(0.01, 0.0, 0.4), (0.002, 0.0, 0.1), (0.0, 5.0, 0.4),
                                                     (0.004, 3.0, 0.25)])
def test_noise_variance_is_shot_times_signal_plus_read_squared(shot, read, level):
    """A flat 3x512x512 image: the sample variance is within 1 % of a * dark + (r/255)^2 (the standard
    error is sqrt(2/n) = 0.16 %, and clipping at 0 is > 6 sigma away)."""
    clean = flat(level / 0.5, side=512)  # exposure 0.5, gamma 1: dark = level
    out = degrade(LowLightSpec(exposure=0.5, gamma=1.0, shot=shot, read=read), clean, seeded_generator(3))
    expected = shot * level + (read / 255.0) ** 2
    assert level / math.sqrt(expected) > 6.0
    assert float(out.var()) == pytest.approx(expected, rel=0.01)
    assert float(out.mean()) == pytest.approx(level, abs=4 * math.sqrt(expected / out.numel()))


def test_shot_noise_grows_with_the_signal():
    spec = LowLightSpec(exposure=1.0, gamma=1.0, shot=0.002, read=0.0)
    bright, dark = (float(degrade(spec, flat(v, 256), seeded_generator(1)).var()) for v in (0.4, 0.1))
    assert bright / dark == pytest.approx(4.0, rel=0.02)


# -- seeding, dtype, clipping -----------------------------------------------------------------------


def test_a_seed_fixes_the_image_and_another_seed_changes_it():
    image = torch.rand(3, 32, 40, generator=seeded_generator(5))
    spec = LowLightSpec()
    first = degrade(spec, image, seeded_generator(11))
    assert torch.equal(first, degrade(spec, image, seeded_generator(11)))
    assert not torch.equal(first, degrade(spec, image, seeded_generator(12)))
    assert first.dtype == image.dtype and first.shape == image.shape
    assert first is not image and torch.equal(image, torch.rand(3, 32, 40, generator=seeded_generator(5)))
    halves = degrade(spec, image.half(), seeded_generator(11))
    assert halves.dtype == torch.float16
    assert torch.allclose(halves.float(), first, atol=2e-3)  # same draws, computed in half precision


def test_output_is_clipped_to_the_unit_range():
    bright = degrade(LowLightSpec(exposure=1.0, gamma=1.0, shot=0.0, read=60.0), flat(0.95, 64),
                     seeded_generator(0))
    assert float(bright.max()) == 1.0 and (bright == 1.0).float().mean() > 0.3
    dark = degrade(LowLightSpec(exposure=0.05, gamma=2.0, shot=0.0, read=10.0), flat(0.1, 64), seeded_generator(0))
    assert float(dark.min()) == 0.0 and (dark == 0.0).float().mean() > 0.3
    assert float(dark.mean()) > 0.05 * 0.1**2  # clipping biases the noise upwards near black
    wild = torch.tensor([-0.5, 0.0, 0.5, 1.5], dtype=torch.float64).view(1, 1, 4)
    out = degrade(LowLightSpec(exposure=0.5, gamma=2.5, **QUIET), wild, seeded_generator(0))
    assert out.flatten().tolist() == [0.0, 0.0, 0.5 * 0.5**2.5, 0.5]  # clean clamped first: no NaN


def test_low_light_needs_no_crop_margin_and_is_registered():
    assert margin(LowLightSpec()) == 0
    assert DEGRADATIONS["low_light"] is LowLightSpec


# -- validation --------------------------------------------------------------------------------------


BAD = [
    ({"exposure": 0}, "exposure: must be > 0, got 0"),
    ({"exposure": 1.5}, "exposure: must be <= 1, got 1.5"),
    ({"exposure": [0.3, 0.1]}, "exposure: a range must be [low, high] with low <= high, got [0.3, 0.1]"),
    ({"exposure": [0.1, 0.2, 0.3]}, "exposure: a range must be [low, high], got [0.1, 0.2, 0.3]"),
    ({"gamma": 0.5}, "gamma: must be >= 1, got 0.5"),
    ({"gamma": [2, 6]}, "gamma: must be <= 5, got [2, 6]"),
    ({"shot": -0.001}, "shot: must be >= 0, got -0.001"),
    ({"shot": 2}, "shot: must be <= 1, got 2"),
    ({"read": -1}, "read: must be >= 0, got -1"),
    ({"read": 300}, "read: must be <= 255, got 300"),
    ({"read": float("nan")}, "read: must be a finite number, got nan"),
    ({"type": "rain"}, "type: must be 'low_light' for LowLightSpec, got 'rain'"),
]
BAD_IDS = [f"{message.split(':')[0]}-{index}" for index, (_, message) in enumerate(BAD)]


@pytest.mark.parametrize(("fields", "message"), BAD, ids=BAD_IDS)
def test_each_bad_value_is_one_clear_line(fields, message):
    with pytest.raises(GlmhaError) as caught:
        LowLightSpec(**fields)
    assert str(caught.value) == message


@pytest.mark.parametrize(("fields", "message"), [
    ({"exposure": 0}, "data.train.degrade.exposure: must be > 0, got 0"),
    ({"brightness": 0.2},
     "data.train.degrade: unknown key(s) brightness (known: type, exposure, gamma, shot, read)"),
    ({"gamma": "steep"}, "data.train.degrade.gamma"),
])
def test_recipe_errors_name_the_key_path(tmp_path, fields, message):
    raw = recipe_dict(tmp_path, data={"train": {"samples": "train", "degrade": {"type": "low_light", **fields}}})
    with pytest.raises(GlmhaError) as caught:
        parse_recipe(copy.deepcopy(raw))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(message)


# -- recipes -----------------------------------------------------------------------------------------


def test_recipe_form_parses_and_round_trips(tmp_path):
    degrade_form = {"type": "low_light", "exposure": [0.1, 0.2], "gamma": 2.2, "shot": 0.002, "read": [1, 3]}
    raw = recipe_dict(tmp_path, data={"train": {"samples": "train", "degrade": degrade_form}})
    recipe = parse_recipe(copy.deepcopy(raw))
    spec = recipe.data.train.degrade
    assert spec == LowLightSpec(exposure=(0.1, 0.2), gamma=2.2, shot=0.002, read=(1, 3))
    assert recipe.data.train.to_dict()["degrade"] == degrade_form
    assert parse_recipe(recipe.to_dict()) == recipe
    assert parse_recipe(copy.deepcopy(recipe_dict(
        tmp_path, data={"train": {"samples": "train", "degrade": {"type": "low_light"}}}))).data.train.degrade == \
        LowLightSpec()


def test_the_shipped_recipes_parse(monkeypatch):
    monkeypatch.chdir(ROOT)
    tiny = load_recipe(TINY_RECIPE)  # checks the shipped teacher exists
    assert tiny.data.train.degrade == tiny.data.val.degrade == LowLightSpec()
    assert tiny.data.patch_size % 4 == 0
    lol = load_recipe(ROOT / "recipes" / "retinexformer_lol_v1.yaml", check=False)  # LOL is not shipped
    assert lol.data.train.inputs and lol.data.train.targets and lol.data.patch_size == 128
    assert lol.student.target_macs == 0.95 and lol.train.max_grad_norm == 0.01


def test_tiny_lowlight_recipe_distils_end_to_end(tmp_path, monkeypatch):
    """Two steps of the shipped smoke test: the converted Retinexformer student trains and is exported."""
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(TINY_RECIPE, ["train.steps=2", "train.checkpoint_every=2", "eval.every=2",
                                       "data.val_limit=1", "data.val_crop=128", f"output.dir={tmp_path / 'run'}",
                                       "output.tensorboard=false"])
    result = distill(recipe, progress=False, say=lambda line: None)
    student = tmp_path / "run" / "student.safetensors"
    assert result.finished and result.step == 2 and student.is_file()
    model = glmha.load(student)
    assert model.family == "retinexformer"
    converted = [name for name, module in model.named_modules() if type(module).__name__.startswith("GLMHA")]
    assert converted, "ratio 0.5 converts the attention layers"
