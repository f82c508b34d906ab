"""The example scripts run end to end on tiny settings and their numbers are consistent.

Why: examples are what users copy; an API change that breaks them would otherwise go unnoticed.
Crops are 64x64 and the distillation runs a step or two, so the whole file stays fast on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

import glmha

from conftest import load_example

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "checkpoints" / "restormer_denoise_s25.pth"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CROP = "64"


@pytest.fixture(scope="module")
def walkthrough() -> ModuleType:
    return load_example("api_walkthrough")


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_example("energy_sweep")


@pytest.fixture(scope="module")
def teacher_cost() -> glmha.report.ModelReport:
    return glmha.describe(glmha.load(TEACHER), 256, 256)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


# -- api_walkthrough.py -------------------------------------------------------------------------------


def test_walkthrough_end_to_end(walkthrough, teacher_cost, tmp_path, capsys):
    out = tmp_path / "walk"
    assert walkthrough.main(["--out", str(out), "--steps", "2", "--crop", CROP]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "walkthrough.json").read_text(encoding="utf-8"))
    rows = {row["key"]: row for row in summary["rows"]}
    assert list(rows) == ["noisy", "teacher", "converted", "distilled"]
    for row in summary["rows"]:
        assert row["name"] in printed
        assert len(row["psnr"]) == 3
        assert row["psnr_mean"] == pytest.approx(sum(row["psnr"]) / 3)
    assert 19.5 < rows["noisy"]["psnr_mean"] < 21.0  # sigma 25 on [0, 1], unclipped: about 20.2 dB
    assert rows["teacher"]["psnr_mean"] > rows["noisy"]["psnr_mean"] + 5.0
    assert rows["converted"]["psnr_mean"] > rows["noisy"]["psnr_mean"] + 3.0
    assert rows["distilled"]["psnr_mean"] > rows["noisy"]["psnr_mean"] + 3.0

    assert rows["teacher"]["params"] == teacher_cost.params
    assert rows["teacher"]["macs_total"] == teacher_cost.macs_total
    assert rows["converted"]["macs_total"] < rows["teacher"]["macs_total"]
    assert rows["converted"]["macs_linear"] < rows["teacher"]["macs_linear"]
    for key in ("params", "macs_linear", "macs_total"):  # distillation trains weights, not shapes
        assert rows["distilled"][key] == rows["converted"][key]

    exported = glmha.load(summary["export"])
    distilled = glmha.load(out / "distill" / "student.safetensors")
    assert Path(summary["distilled"]) == out / "distill" / "student.safetensors"
    assert distilled.record.conversion.reduced == exported.record.conversion.reduced
    assert len(distilled.record.conversion.reduced) == len(teacher_cost.layers)  # energy 0.8 converts them all
    assert (out / "distill" / "report.md").is_file()


def test_walkthrough_refuses_an_energy_that_converts_nothing(walkthrough, tmp_path, capsys):
    out = tmp_path / "walk"
    assert walkthrough.main(["--out", str(out), "--energy", "1.0", "--crop", CROP]) == 2
    assert "no layer was converted" in capsys.readouterr().err
    assert not (out / "distill").exists()


# -- energy_sweep.py ----------------------------------------------------------------------------------


def test_energy_sweep_end_to_end(sweep, teacher_cost, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep.main(["--out", str(out), "--energies", "1.0", "0.6", "--crop", CROP]) == 0
    printed = capsys.readouterr().out
    assert _is_png(out / "psnr_vs_macs.png")
    result = json.loads((out / "psnr_vs_macs.json").read_text(encoding="utf-8"))
    teacher = result["teacher"]
    assert (teacher["params"], teacher["macs_linear"], teacher["macs_total"]) == (
        teacher_cost.params, teacher_cost.macs_linear, teacher_cost.macs_total)

    points = result["points"]
    assert [p["energy"] for p in points] == [0.6, 1.0]  # sorted
    low, full = points
    # Energy 1 keeps every channel, where GLMHA costs more than CSA: nothing converts, the student is the teacher.
    assert full["converted_layers"] == 0
    for key in ("params", "macs_linear", "macs_total"):
        assert full[key] == teacher[key]
    assert full["psnr_mean"] == pytest.approx(teacher["psnr_mean"], abs=1e-6)
    assert low["converted_layers"] == low["csa_layers"] == len(teacher_cost.layers)
    assert low["macs_linear"] < full["macs_linear"] and low["macs_total"] < full["macs_total"]
    for p in points:
        assert 20.0 < p["psnr_mean"] < teacher["psnr_mean"] + 1e-6
        assert p["distilled"] is None
        assert len(p["plots"]) == 4 and all(_is_png(Path(path)) for path in p["plots"])  # levels 1-3, bottleneck
        assert Path(p["plots"][0]).parent == out / "spectra" / f"energy_{p['energy']:g}"
    for label in ("teacher", "energy 0.6", "energy 1"):
        assert f"\n{label} " in printed
    assert not (out / "distill").exists()


def test_energy_sweep_with_distillation(sweep, tmp_path, capsys):
    """One step is enough to check the plumbing: a distilled curve, reloaded students, the extra columns."""
    out = tmp_path / "sweep"
    assert sweep.main(["--out", str(out), "--energies", "0.6", "--distil-steps", "1", "--crop", CROP]) == 0
    printed = capsys.readouterr().out
    (point,) = json.loads((out / "psnr_vs_macs.json").read_text(encoding="utf-8"))["points"]
    distilled = point["distilled"]
    assert distilled["steps"] == 1 and distilled["best_step"] in (0, 1)
    for key in ("params", "macs_linear", "macs_total"):
        assert distilled[key] == point[key]
    assert 20.0 < distilled["psnr_mean"] < 40.0
    student = glmha.load(Path(distilled["run_dir"]) / "student.safetensors")
    assert len(student.record.conversion.reduced) == point["converted_layers"]
    header = next(line for line in printed.splitlines() if line.startswith("model "))
    assert "distilled" in header  # the table has the extra columns
    assert _is_png(out / "psnr_vs_macs.png")


def test_energy_sweep_rejects_bad_arguments(sweep, tmp_path, capsys):
    assert sweep.main(["--out", str(tmp_path / "x"), "--energies", "0.8", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert sweep.main(["--out", str(tmp_path / "x"), "--distil-steps", "-1"]) == 2
    assert not (tmp_path / "x").exists()
