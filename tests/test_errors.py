"""Every bad input gets one clear line: from the API as GlmhaError, from the CLI on stderr with a
non-zero exit, no traceback, and nothing written."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import glmha
from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.cli.convert import main as convert_main

from conftest import tiny_model


class NotAWeight:
    """A custom class: unpickling it needs code, which weights-only loading refuses."""

    def __init__(self) -> None:
        self.value = 3


def _restormer_file(tmp_path: Path, **kwargs) -> Path:
    config = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0) | kwargs
    path = tmp_path / "restormer.pth"
    torch.save({"params": Restormer(**config).state_dict()}, path)
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the one-line error must contain)."""
    good = _restormer_file(tmp_path)
    cases = {}
    cases["missing"] = (tmp_path / "nope.pth", "no such file")
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    cases["directory"] = (folder, "is a directory")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "empty")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (truncated, "truncated or corrupt")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    cases["corrupt"] = (garbage, "not a PyTorch")
    safetensors = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in Restormer(dim=8, num_blocks=(1, 1, 1, 1)).state_dict().items()},
              str(safetensors))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(safetensors.read_bytes()[:-100])
    cases["truncated_safetensors"] = (cut, "truncated or corrupt safetensors")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"params": NotAWeight()}, unsafe)
    cases["needs_code"] = (unsafe, "refused to load")
    cnn = tmp_path / "cnn.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 3)).state_dict(), cnn)
    cases["unknown"] = (cnn, "unknown architecture; tried restormer")
    no_csa = tmp_path / "no_csa.pth"
    torch.save(Restormer(dim=8, num_blocks=(0, 0, 0, 0), num_refinement_blocks=0).state_dict(), no_csa)
    cases["no_csa"] = (no_csa, "no channel-wise self-attention")
    no_csa_mst = tmp_path / "no_csa_mst.pth"
    torch.save(MSTPlusPlus(n_feat=4, out_channels=4, stage=1, stage_blocks=(0, 0, 0)).state_dict(), no_csa_mst)
    cases["no_csa_mst"] = (no_csa_mst, "no channel-wise self-attention")
    broken = tmp_path / "broken.pth"
    state = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0).state_dict()
    state["latent.0.attn.qkv.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, broken)
    cases["wrong_shape"] = (broken, "latent.0.attn.qkv.weight")
    extra = tmp_path / "extra.pth"
    state = collections.OrderedDict(Restormer(dim=8, num_blocks=(1, 1, 1, 1)).state_dict())
    state["encoder_level1.0.attn.attn1"] = torch.zeros(1)  # DRSformer's top-k mixing weights
    torch.save({"params": state}, extra)
    cases["unexpected_keys"] = (extra, "unexpected key")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    cases["not_a_dict"] = (listed, "expected a dict of tensors")
    return cases


CASE_NAMES = ["missing", "directory", "empty", "truncated", "corrupt", "truncated_safetensors",
              "needs_code", "unknown", "no_csa", "no_csa_mst", "wrong_shape", "unexpected_keys",
              "not_a_dict"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_load_errors(case: str, tmp_path: Path) -> None:
    path, phrase = _bad_files(tmp_path)[case]
    with pytest.raises(glmha.GlmhaError) as info:
        glmha.load(path)
    message = str(info.value)
    assert phrase in message
    assert "\n" not in message
    assert str(path) in message or case in {"wrong_shape", "unexpected_keys"}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_errors_are_one_line_and_write_nothing(case: str, tmp_path: Path, capsys) -> None:
    path, phrase = _bad_files(tmp_path)[case]
    out_json = tmp_path / "report.json"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = convert_main([str(path), "--dry-run", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0] and lines[0].startswith("glmha-convert: error:")
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_architecture_names_every_family(tmp_path: Path) -> None:
    path, _ = _bad_files(tmp_path)["unknown"]
    with pytest.raises(glmha.GlmhaError) as info:
        glmha.load(path)
    for family in glmha.FAMILIES:
        assert family in str(info.value)


def test_refused_pickle_says_why(tmp_path: Path) -> None:
    path, _ = _bad_files(tmp_path)["needs_code"]
    with pytest.raises(glmha.GlmhaError, match=r"needs code to run.*NotAWeight.*weights_only=True"):
        glmha.load(path)


@pytest.mark.parametrize(
    ("family", "size", "phrase"),
    [
        ("restormer", "250", "multiples of 8"),
        ("restormer", "256x100", "multiples of 8"),
        ("mst", "128x64", "square"),
        ("mst", "512", "at most 256"),
        ("mst", "30", "divisible by"),
        ("mst_plus_plus", "3", "at least 5"),
        ("promptir", "100", "multiples of 8"),
        ("drsformer", "64x20", "multiples of 8"),
        ("retinexformer", "30", "multiples of 4"),
        ("adair", "36", "multiples of 8"),
        ("xrestormer", "96", "multiples of 64"),
    ],
)
def test_input_size_errors(family: str, size: str, phrase: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_model(family).state_dict(), path)
    out_json = tmp_path / "report.json"
    code = convert_main([str(path), "--dry-run", "--input-size", size, "--json", str(out_json)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and phrase in err[0]
    assert not out_json.exists()


def test_mst_rejects_a_mask_of_the_wrong_shape() -> None:
    model = MST(dim=28, stage=1, num_blocks=(1, 1))
    x = torch.rand(1, 28, 64, 64)
    with pytest.raises(glmha.GlmhaError, match="mask must be"):
        model(x, torch.zeros(1, 4, 64, 80))
    assert model.mask_width(64) == 67  # 28 bands at 64 px: the shift-back reads 3 extra columns
    with pytest.raises(glmha.GlmhaError, match="mask too narrow"):
        model(x, torch.zeros(1, 28, 64, 66))


@pytest.mark.parametrize(
    "argv_tail",
    [["--json", "{missing}/r.json"], ["--json", "{tmp}"]],
    ids=["json_folder_missing", "json_is_directory"],
)
def test_bad_json_target_fails_before_work(argv_tail, tmp_path: Path, capsys) -> None:
    path = _restormer_file(tmp_path)
    tail = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in argv_tail]
    assert convert_main([str(path), "--dry-run", *tail]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_config_rejects_bad_values() -> None:
    from glmha.archs import RestormerConfig

    with pytest.raises(glmha.GlmhaError, match="unknown key"):
        RestormerConfig.from_dict({"dim": 8, "depth": 3})
    with pytest.raises(glmha.GlmhaError, match="expected an integer"):
        RestormerConfig.from_dict({"dim": "8"})
    with pytest.raises(glmha.GlmhaError, match="do not split"):
        RestormerConfig(dim=6, heads=(4, 2, 4, 8))
    assert RestormerConfig.from_dict(RestormerConfig().to_dict()) == RestormerConfig()
