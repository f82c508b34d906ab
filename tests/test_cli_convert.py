"""`glmha-convert CKPT --dry-run`: the printed report and its JSON form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glmha.archs import MST, Restormer
from glmha.cli.convert import main as convert_main
from glmha.report import describe

from conftest import tiny_model


def test_dry_run_prints_report_and_writes_json(tmp_path: Path, capsys) -> None:
    model = Restormer(dim=8, num_blocks=(1, 2, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4),
                      layernorm_type="BiasFree")
    path = tmp_path / "restormer.pth"
    torch.save({"params": model.state_dict()}, path)
    out = tmp_path / "report.json"
    assert convert_main([str(path), "--dry-run", "--input-size", "64x32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "restormer" in printed and "layernorm_type=BiasFree" in printed
    assert "encoder_level2.1.attn" in printed and "1x2x64x32" not in printed
    data = json.loads(out.read_text())
    assert {"family", "hyperparameters", "params", "macs_linear", "macs_total", "input_shape",
            "layers"} <= set(data)
    expected = describe(model, 64, 32)
    assert data["family"] == "restormer"
    assert data["input_shape"] == [1, 3, 64, 32]
    assert data["params"] == expected.params == sum(p.numel() for p in model.parameters())
    assert data["macs_linear"] == expected.macs_linear and data["macs_total"] == expected.macs_total
    assert data["hyperparameters"]["num_blocks"] == [1, 2, 1, 1]
    assert [layer["name"] for layer in data["layers"]] == [n for n, _ in model.csa_layers()]
    first = data["layers"][0]
    assert (first["channels"], first["heads"], first["head_dim"], first["resolution"]) == (8, 1, 8, [64, 32])
    assert data["layers"][-1]["name"] == "refinement.0.attn" and data["layers"][-1]["channels"] == 16
    assert not list(tmp_path.glob(".*.tmp"))
    assert f"{expected.macs_linear:,}" in printed


def test_mst_gets_its_mask_automatically(tmp_path: Path, capsys) -> None:
    model = MST(dim=28, stage=2, num_blocks=(1, 1, 1))
    path = tmp_path / "mst.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "mst.json"
    assert convert_main([str(path), "--dry-run", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["family"] == "mst"
    assert data["input_shapes"] == [[1, 28, 256, 256], [1, 28, 256, 310]]
    assert [layer["resolution"] for layer in data["layers"]] == [[256, 256], [128, 128], [64, 64],
                                                                  [128, 128], [256, 256]]
    assert "256x310" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "abc", "12x", "-4"])
def test_bad_input_size_is_a_usage_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        convert_main([str(tmp_path / "m.pth"), "--dry-run", "--input-size", bad])
    assert info.value.code == 2


def test_console_script_runs(tmp_path: Path) -> None:
    """The installed entry point and `python -m` both work in a fresh process."""
    path = tmp_path / "m.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_model("mst_plus_plus").state_dict().items()}, str(path))
    result = subprocess.run([sys.executable, "-m", "glmha.cli.convert", str(path), "--dry-run",
                             "--input-size", "20x28"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "mst_plus_plus" in result.stdout and "1x" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "glmha.cli.convert", str(tmp_path / "x.pth"),
                              "--dry-run"], capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr
