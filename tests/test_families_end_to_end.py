"""The families added after the first three, end to end from official-container files: glmha-convert at
energy 1.0 (unchanged), at ratio 0.5 and at a MAC budget, the exports read back, and a short distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glmha
from glmha.cli.convert import main as convert_main
from glmha.distill import distill, parse_recipe
from glmha.distill.engine import STUDENT_FILE

from conftest import example_batch, side_for, tiny_model
from distill_helpers import recipe_dict

NEW_FAMILIES = ("promptir", "drsformer", "retinexformer", "adair", "xrestormer")


def _official_file(family: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny random teacher saved the way its authors' training code saves one."""
    model = tiny_model(family, 7)
    with torch.no_grad():  # a restoration-like map: the input plus a moderate learned correction
        for name, param in model.named_parameters():
            if name.startswith("output."):
                param.mul_(0.05)
    state = model.state_dict()
    path = folder / f"{family}.pth"
    if family in ("promptir", "adair"):  # Lightning: the LightningModule's `net` attribute, with trainer state
        torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.0.1",
                    "state_dict": {f"net.{k}": v for k, v in state.items()},
                    "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
                    "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.1),
                                                                       "best_model_path": "ckpt/epoch=3.ckpt"}},
                    "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0)}},
                                          "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0]}]}],
                    "lr_schedulers": [{"base_lrs": [2e-4], "last_epoch": 3, "warmup_epochs": 15}]}, path)
    else:  # basicsr: {'params': ...}
        torch.save({"params": state}, path)
    return path, model


def _outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_convert_at_energy_one_ratio_and_budget(family: str, tmp_path: Path, capsys) -> None:
    path, teacher = _official_file(family, tmp_path)
    inputs = example_batch(teacher, side_for(family))
    expected = _outputs(teacher, inputs)
    size = ["--input-size", str(side_for(family))]

    # energy 1.0 keeps every channel: the model is unchanged, so nothing is written (full-width GLMHA layers
    # reproduce the teacher: tests/test_convert.py::test_energy_one_and_full_width_select_are_exact)
    exact = tmp_path / "exact.safetensors"
    assert convert_main([str(path), "--energy", "1.0", "-o", str(exact), *size]) == 0
    assert "the model would be unchanged; nothing written" in capsys.readouterr().out
    assert not exact.exists()
    assert torch.equal(_outputs(glmha.load(path), inputs), expected)

    half = tmp_path / "half.safetensors"
    assert convert_main([str(path), "--ratio", "0.5", "--allow-bigger", "-o", str(half), *size]) == 0
    student = glmha.load(half)
    widths = student.record.conversion.reduced
    layers = dict(teacher.csa_layers())
    assert widths and all(width < layers[name].channels for name, width in widths.items())
    assert torch.isfinite(_outputs(student, inputs)).all()

    budget = tmp_path / "budget.safetensors"
    assert convert_main([str(path), "--target-macs", "0.99", "--calib-size", str(side_for(family)),
                         "-o", str(budget), *size]) == 0
    planned = glmha.load(budget).record.conversion.plan["budget"]
    assert planned["requested"] == {"target_macs": 0.99}
    assert 0.98 <= planned["achieved"]["target_macs"] <= 0.99  # within 1 % of the budget, never over


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_short_distillation_exports_a_student(family: str, tmp_path: Path) -> None:
    path, _ = _official_file(family, tmp_path)
    side = side_for(family)
    raw = recipe_dict(tmp_path, student={"ratio": 0.5, "allow_bigger": True},
                      data={"patch_size": side, "val_crop": max(32, side)},
                      train={"steps": 2, "checkpoint_every": 2}, eval={"every": 2, "input_size": [side, side]})
    raw["teacher"] = str(path)
    lines: list[str] = []
    result = distill(parse_recipe(raw), progress=False, say=lines.append)
    assert result.finished and result.step == 2
    student = glmha.load(result.run_dir / STUDENT_FILE)
    assert student.family == family and student.record.conversion.reduced
    assert result.table is not None and "teacher" in result.table
