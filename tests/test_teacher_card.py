"""The shipped teacher: loads with glmha.load, matches its card, and its card's numbers are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import glmha
from glmha.data import TEST_IMAGES, TRAIN_IMAGES

from teacher_cards import card_fixtures, check_card_describes, check_official_container, run_training_script

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "restormer_denoise_s25.pth"
CARD = ROOT / "checkpoints" / "restormer_denoise_s25.json"
MIN_GAIN_DB = 8.0


script, card, teacher = card_fixtures("train_teacher", CARD, CHECKPOINT)


def test_checkpoint_is_small_and_in_the_official_container():
    check_official_container(CHECKPOINT, "params", max_mib=10)


def test_card_describes_the_model(card, teacher, script):
    check_card_describes(card, teacher, script, CHECKPOINT, "restormer")
    assert card["task"]["sigma"] == 25
    assert card["data"]["train_images"] == list(TRAIN_IMAGES)
    assert card["data"]["held_out_images"] == list(TEST_IMAGES)
    assert card["command"].startswith(
        "python examples/train_teacher.py --out checkpoints/restormer_denoise_s25.pth"
    )
    for key in ("steps", "seed", "threads", "optimizer", "lr", "schedule", "loss"):
        assert key in card["training"], key


def test_card_numbers_are_reproducible_and_the_teacher_is_good(card, teacher, script):
    evaluation = card["evaluation"]
    again = script.evaluate_teacher(teacher, card["data"]["held_out_images"], evaluation["sigma"],
                                    evaluation["seed"])
    assert [row["name"] for row in again["images"]] == list(TEST_IMAGES)
    for row, fresh in zip(evaluation["images"], again["images"], strict=True):
        assert row["noise_seed"] == fresh["noise_seed"]
        assert fresh["psnr_noisy"] == pytest.approx(row["psnr_noisy"], abs=0.01), row["name"]
        assert fresh["psnr_teacher"] == pytest.approx(row["psnr_teacher"], abs=0.01), row["name"]
        assert fresh["ssim_teacher"] == pytest.approx(row["ssim_teacher"], abs=1e-4), row["name"]
        assert 20.0 < fresh["psnr_noisy"] < 20.4  # sigma 25 on [0, 1], unclipped: 20.17 dB
        assert fresh["psnr_teacher"] > fresh["psnr_noisy"] + MIN_GAIN_DB - 1.0, row["name"]
    mean = again["mean"]
    assert mean["psnr_teacher"] - mean["psnr_noisy"] >= MIN_GAIN_DB
    assert mean["ssim_teacher"] > mean["ssim_noisy"] + 0.3


def test_training_script_end_to_end_on_a_tiny_budget(tmp_path, script, monkeypatch):
    """Two steps on small patches, evaluated on one image: the files, the card and the reload agree."""
    monkeypatch.setattr(script, "TEST_IMAGES", ("text",))  # the smallest image: 172x448
    out = tmp_path / "tiny.pth"
    argv = ["--out", str(out), "--steps", "2", "--patch", "16", "--batch", "2", "--log-every", "1"]
    assert run_training_script(script, argv) == 0
    card = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pth"]  # no temporary left
    assert card["training"]["steps"] == 2 and len(card["training"]["log"]) == 2
    assert card["command"] == "python examples/train_teacher.py " + " ".join(argv)
    model = glmha.load(out)
    again = script.evaluate_teacher(model, ["text"], 25, card["evaluation"]["seed"])
    assert again["images"][0]["psnr_teacher"] == pytest.approx(card["evaluation"]["images"][0]["psnr_teacher"],
                                                              abs=1e-6)


def test_training_script_rejects_a_bad_patch_before_any_work(tmp_path, script, capsys):
    assert script.main(["--out", str(tmp_path / "x.pth"), "--patch", "20"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_training_is_deterministic_for_a_seed(script):
    """Same seed -> bitwise the same patches, noise and weights; another seed -> other patches."""
    argv = ["--out", "unused.pth", "--steps", "2", "--patch", "16", "--batch", "2"]
    args = script.build_parser().parse_args(argv)

    def run(seed: int) -> dict[str, torch.Tensor]:
        args.seed = seed
        torch.manual_seed(seed)
        model = glmha.archs.Restormer(**script.TEACHER_CONFIG)
        script.train(model, args)
        return model.state_dict()

    first, second = run(0), run(0)
    assert all(torch.equal(first[k], second[k]) for k in first)
    sampler = script.PatchSampler(TRAIN_IMAGES, 16, glmha.data.seeded_generator(1))
    again = script.PatchSampler(TRAIN_IMAGES, 16, glmha.data.seeded_generator(1))
    other = script.PatchSampler(TRAIN_IMAGES, 16, glmha.data.seeded_generator(2))
    batch = sampler.sample(4)
    assert batch.shape == (4, 3, 16, 16)
    assert torch.equal(batch, again.sample(4))
    assert not torch.equal(batch, other.sample(4))
