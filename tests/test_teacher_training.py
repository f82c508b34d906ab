"""The shared pieces of the teacher-training scripts: schedule, loss log, crops, checkpoint and card fields."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from glmha.teacher_training import LossLog, cosine_lr, random_dihedral_crop, run_record, save_teacher

from conftest import tiny_model


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    peak, floor = 2e-3, 1e-6
    assert [cosine_lr(s, 10, peak, floor, warmup=4) for s in range(4)] == pytest.approx(
        [peak / 4, peak / 2, 3 * peak / 4, peak], rel=1e-12)
    assert cosine_lr(4, 10, peak, floor, warmup=4) == pytest.approx(peak, rel=1e-12)  # cosine starts at peak
    assert cosine_lr(9, 10, peak, floor, warmup=4) == pytest.approx(floor, rel=1e-12)  # and ends at floor
    middle = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * 0.5))
    assert cosine_lr(5, 11, peak, floor) == pytest.approx(middle, rel=1e-12)
    values = [cosine_lr(s, 20, peak, floor) for s in range(20)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_loss_log_keeps_window_means(capsys):
    log = LossLog(total=7, every=3, label="MRAE")
    for step, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0]):
        log.add(step, loss, lr=0.5)
    assert [(e["step"], e["loss"]) for e in log.entries] == [(3, 2.0), (6, 5.0), (7, 10.0)]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("step      3/7  MRAE 2.00000  lr 5.00e-01")


def test_random_dihedral_crop_is_a_transformed_window_fixed_by_the_seed():
    image = torch.arange(2 * 9 * 11, dtype=torch.float32).reshape(2, 9, 11)
    windows = image.unfold(1, 4, 1).unfold(2, 4, 1)  # (2, 9, 11) -> (2, 6, 8, 4, 4)
    candidates = []
    for i in range(6):
        for j in range(8):
            window = windows[:, i, j]
            for k in range(4):
                turned = torch.rot90(window, k, dims=(1, 2))
                candidates += [turned, torch.flip(turned, dims=(2,))]
    seen = set()
    generator = torch.Generator().manual_seed(3)
    for _ in range(40):
        crop = random_dihedral_crop(image, 4, generator)
        matches = [n for n, c in enumerate(candidates) if torch.equal(crop, c)]
        assert matches
        seen.add(matches[0] % 8)
    assert len(seen) == 8  # every rotation/flip occurs
    first = random_dihedral_crop(image, 4, torch.Generator().manual_seed(5))
    assert torch.equal(first, random_dihedral_crop(image, 4, torch.Generator().manual_seed(5)))


def test_save_teacher_writes_the_container_and_describes_it(tmp_path):
    model = tiny_model("restormer", 0)
    out = tmp_path / "teacher.pth"
    fields = save_teacher(model, out, family="restormer", container_key="params")
    raw = torch.load(out, weights_only=True)
    assert list(raw) == ["params"] and all(torch.equal(raw["params"][k], v) for k, v in model.state_dict().items())
    assert fields == {"architecture": "restormer", "hyperparameters": model.config.to_dict(),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "checkpoint": {"file": "teacher.pth", "container": "{'params': state_dict}",
                                     "bytes": out.stat().st_size}}
    record = run_record("train_teacher.py", ["--out", "a b.pth"], 1.234, 5.678)
    assert record["command"] == "python examples/train_teacher.py --out 'a b.pth'"
    assert (record["train_seconds"], record["wall_seconds"]) == (1.2, 5.7) and "torch" in record["environment"]
