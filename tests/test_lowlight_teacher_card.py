"""The shipped low-light Retinexformer teacher: loads with glmha.load, matches its card, and the card's
held-out numbers are reproducible from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import glmha
from glmha.data import TEST_IMAGES, TRAIN_IMAGES
from glmha.data.degrade import LowLightSpec

from teacher_cards import card_fixtures, check_card_describes, check_official_container, run_training_script

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "retinexformer_lowlight.pth"
CARD = ROOT / "checkpoints" / "retinexformer_lowlight.json"
SCRIPT = "train_lowlight_teacher.py"
# the teacher runs in float32 and the means reduce in thread-dependent order: with 1 thread instead of the
# card's 2, the teacher's PSNR moved by 3.5e-7 dB, its SSIM by 1.5e-9, the oracle-gain PSNR by 2e-11 dB
PSNR_ABS = 1e-5  # dB
SSIM_ABS = 1e-7
NO_MODEL_REL = 1e-9


script, card, teacher = card_fixtures("train_lowlight_teacher", CARD, CHECKPOINT)


def test_checkpoint_is_small_and_in_the_official_container():
    check_official_container(CHECKPOINT, "params", max_mib=2)


def test_card_describes_the_model(card, teacher, script):
    check_card_describes(card, teacher, script, CHECKPOINT, "retinexformer")
    assert card["task"]["degradation"] == LowLightSpec().to_dict() == script.LOW_LIGHT.to_dict()
    assert card["evaluation"]["degradation"] == card["task"]["degradation"]
    assert card["data"]["train_images"] == list(TRAIN_IMAGES)
    assert card["data"]["held_out_images"] == list(TEST_IMAGES)
    assert card["command"].startswith(f"python examples/{SCRIPT} --out checkpoints/retinexformer_lowlight.pth")
    for key in ("steps", "seed", "threads", "optimizer", "lr", "schedule", "loss", "log"):
        assert key in card["training"], key
    assert card["training"]["deterministic_algorithms"] is True


def test_card_numbers_are_reproducible_and_the_teacher_is_good(card, teacher, script):
    evaluation = card["evaluation"]
    spec = LowLightSpec.from_dict(evaluation["degradation"])
    again = script.evaluate_teacher(teacher, card["data"]["held_out_images"], spec, evaluation["seed"])
    assert [row["name"] for row in again["images"]] == list(TEST_IMAGES)
    for row, fresh in zip(evaluation["images"], again["images"], strict=True):
        assert row["seed"] == fresh["seed"]
        for key in ("mean_dark", "psnr_dark", "psnr_scaled", "ssim_dark", "ssim_scaled"):  # no model involved
            assert fresh[key] == pytest.approx(row[key], rel=NO_MODEL_REL), (row["name"], key)
        assert fresh["psnr_teacher"] == pytest.approx(row["psnr_teacher"], abs=PSNR_ABS), row["name"]
        assert fresh["ssim_teacher"] == pytest.approx(row["ssim_teacher"], abs=SSIM_ABS), row["name"]
        assert fresh["mean_dark"] < 0.1 * fresh["mean_clean"]  # genuinely dark: a tenth of the brightness or less
        assert fresh["psnr_teacher"] > fresh["psnr_scaled"] + 2.5, row["name"]
        assert fresh["ssim_teacher"] > fresh["ssim_scaled"] + 0.2, row["name"]
    mean = again["mean"]
    # shipped: 21.49 dB vs 16.20 dB for the dark input times the oracle gain, 6.69 dB for the dark input
    assert mean["psnr_teacher"] > mean["psnr_dark"] + 12.0
    assert mean["psnr_teacher"] > mean["psnr_scaled"] + 4.0
    assert mean["ssim_teacher"] > 2 * mean["ssim_scaled"]


def test_training_script_end_to_end_on_a_tiny_budget(tmp_path, script, monkeypatch):
    """Two steps on small patches, evaluated on one image: the files, the card and the reload agree."""
    monkeypatch.setattr(script, "TEST_IMAGES", ("text",))  # the smallest image: 172x448
    out = tmp_path / "tiny.pth"
    argv = ["--out", str(out), "--steps", "2", "--warmup", "1", "--patch", "16", "--batch", "2",
            "--log-every", "1"]
    assert run_training_script(script, argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pth"]  # no temporary left
    card = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert card["training"]["steps"] == 2 and len(card["training"]["log"]) == 2
    assert card["command"] == f"python examples/{SCRIPT} " + " ".join(argv)
    assert [row["name"] for row in card["evaluation"]["images"]] == ["text"]
    model = glmha.load(out)
    assert model.family == "retinexformer"
    again = script.evaluate_teacher(model, ["text"], LowLightSpec(), card["evaluation"]["seed"])
    assert again["images"][0]["psnr_teacher"] == pytest.approx(card["evaluation"]["images"][0]["psnr_teacher"],
                                                              abs=PSNR_ABS)


@pytest.mark.parametrize(("argv", "message"), [
    (["--patch", "18"], "--patch must be a positive multiple of 4, got 18"),
    (["--steps", "0"], "--steps and --batch must be >= 1"),
    (["--steps", "10", "--warmup", "10"], "--warmup must lie in [0, --steps), got 10"),
])
def test_training_script_rejects_bad_settings_before_any_work(tmp_path, script, capsys, argv, message):
    assert script.main(["--out", str(tmp_path / "x.pth"), *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_training_is_deterministic_for_a_seed(script):
    """Same seed -> bitwise the same patches, darkening and weights; another seed -> other weights."""
    args = script.build_parser().parse_args(["--out", "unused.pth", "--steps", "2", "--warmup", "1",
                                             "--patch", "16", "--batch", "2"])

    def run(seed: int) -> dict[str, torch.Tensor]:
        args.seed = seed
        torch.manual_seed(seed)
        model = glmha.archs.Retinexformer(**script.TEACHER_CONFIG)
        script.train(model, args)
        return model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    clean = script.PatchSampler(TRAIN_IMAGES, 16, glmha.data.seeded_generator(1)).sample(3)
    dark = script.darken(clean, script.LOW_LIGHT, glmha.data.seeded_generator(2))
    assert dark.shape == clean.shape == (3, 3, 16, 16)
    assert torch.equal(dark, script.darken(clean, script.LOW_LIGHT, glmha.data.seeded_generator(2)))
    assert float(dark.mean()) < 0.5 * float(clean.mean())
