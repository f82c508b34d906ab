"""Calibration inputs for activation spectra: each family gets what its official pipeline feeds it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.cli.convert import main as convert_main
from glmha.convert.calibration import calibration_inputs
from glmha.data.image_folder import read_calibration_images
from glmha.errors import GlmhaError
from glmha.spectral.cassi import mst_inputs

from conftest import randomise
from spectral_files import write_mask, write_scenes

BANDS = 28


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(50, 201, (20, 28, 3), dtype=np.uint8), "RGB").save(folder / name)
    return folder


def _scenes(folder: Path, cubes: dict[str, np.ndarray], key: str = "img") -> Path:
    """Scene files as KAIST stores them plus a binary 256x256 mask.mat beside the folder; returns its path."""
    write_scenes(folder, cubes, key)
    mask = (np.random.default_rng(1).random((256, 256)) > 0.5).astype(np.float32)
    return write_mask(folder.parent / "mask.mat", mask)


def _mst() -> MST:
    return randomise(MST(dim=BANDS, stage=1, num_blocks=(1, 1), bands=BANDS), 0)


def test_mst_plus_plus_images_are_min_max_normalised_restormer_images_are_not(tmp_path):
    folder = _images(tmp_path / "rgb")
    raw = read_calibration_images(folder, 3, multiple=1)
    mstpp = MSTPlusPlus(in_channels=3, out_channels=8, n_feat=8, stage=1, stage_blocks=(1, 1, 1))
    spectral = calibration_inputs(mstpp, folder)
    assert len(spectral) == 2
    for (image,), original in zip(spectral, raw, strict=True):
        low, high = original.min(), original.max()
        assert float(low) > 0.15 and float(high) < 0.8  # the files span 50..200 of 255
        assert torch.allclose(image, (original - low) / (high - low), atol=1e-7)
        assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0, abs=1e-6)
    restormer = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
    plain = calibration_inputs(restormer, folder, limit=1)
    assert len(plain) == 1 and torch.equal(plain[0][0], read_calibration_images(folder, 3, multiple=8)[0])
    assert plain[0][0].shape == (1, 3, 16, 24)  # crops to multiples of 8


def test_mst_scenes_are_centre_cropped_and_measured_as_the_official_test(tmp_path):
    rng = np.random.default_rng(2)
    big = rng.random((BANDS, 300, 262)).astype(np.float32)
    mask_path = _scenes(tmp_path / "truth", {"scene02": big, "scene10": big[:, :256, :256] * 0.5})
    inputs = calibration_inputs(_mst(), tmp_path / "truth", mask=mask_path)
    assert [len(pair) for pair in inputs] == [2, 2]
    mask2d = torch.from_numpy(scipy.io.loadmat(mask_path)["mask"].astype(np.float32))
    crop = torch.from_numpy(big[:, 22:278, 3:259])[None]  # centre 256x256 of 300x262
    expected = mst_inputs(crop, mask2d)
    assert torch.equal(inputs[0][0], expected[0]) and torch.equal(inputs[0][1], expected[1])
    assert inputs[0][1].shape == (1, BANDS, 256, 256 + 2 * (BANDS - 1))
    assert torch.equal(inputs[1][0], mst_inputs(torch.from_numpy(big[None, :, :256, :256] * 0.5), mask2d)[0])
    assert len(calibration_inputs(_mst(), tmp_path / "truth", mask=mask_path, limit=1)) == 1


def test_calibration_errors(tmp_path):
    folder = _images(tmp_path / "rgb")
    restormer = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
    with pytest.raises(GlmhaError, match="MST takes CASSI measurements, not images"):
        calibration_inputs(_mst(), folder)
    with pytest.raises(GlmhaError, match=re.escape("a calibration mask is for CASSI models only; this "
                                                   "model is Restormer")):
        calibration_inputs(restormer, folder, mask=tmp_path / "mask.mat")
    with pytest.raises(GlmhaError, match="calibration limit must be at least 1, got 0"):
        calibration_inputs(restormer, folder, limit=0)
    stored = (np.random.default_rng(3).random((BANDS, 256, 256)) * 65535).astype(np.float64)
    mask_path = _scenes(tmp_path / "cave", {"scene1": stored}, key="img_expand")
    with pytest.raises(GlmhaError, match=r"scene1\.mat: values reach 6553[45]\.\d\d; calibration scenes must hold "
                                         r"reflectance in \[0, 1\]"):
        calibration_inputs(_mst(), tmp_path / "cave", mask=mask_path)


def test_cli_converts_mst_with_activation_spectra(tmp_path, capsys):
    rng = np.random.default_rng(4)
    mask_path = _scenes(tmp_path / "truth", {f"scene{i}": rng.random((BANDS, 256, 256)) for i in (1, 2)})
    source = tmp_path / "mst.pth"
    torch.save(_mst().state_dict(), source)
    report = tmp_path / "plan.json"
    argv = [str(source), "--dry-run", "--ratio", "0.5", "--input-size", "256", "--json", str(report)]
    assert convert_main([*argv, "--calib", str(tmp_path / "truth"), "--calib-mask", str(mask_path)]) == 0
    plan = json.loads(report.read_text())["plan"]
    assert plan["spectrum_source"] == "activations"
    assert convert_main(argv) == 0
    assert json.loads(report.read_text())["plan"]["spectrum_source"] == "weights"
    capsys.readouterr()
    for extra, message in [(["--calib-mask", str(mask_path)], "--calib-mask: give the calibration scenes with "
                                                              "--calib DIR too"),
                           (["--calib", str(tmp_path / "truth")], "--calib: MST takes CASSI measurements")]:
        assert convert_main([*argv, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(re.escape(message), err[0]), err
