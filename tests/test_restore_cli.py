"""`glmha-restore`: files in, restored files out, with the model's own numbers, never over an input."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import glmha
from glmha.archs import MST
from glmha.restore.cli import main
from glmha.restore.files import quantise, read_cube_mat, read_image_file, write_image_file
from glmha.restore.runner import Restorer
from glmha.restore.tiling import TileSettings
from glmha.spectral.readers import minmax_normalise

from conftest import randomise, tiny_model
from spectral_files import write_mask, write_scenes

CPU = torch.device("cpu")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pixels(seed: int, height: int, width: int, channels: int) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)  # (H, W, C)


def _write(path: Path, pixels: np.ndarray, depth: int, container: str) -> None:
    """Inputs as users have them; JPEG through Pillow (glmha never writes JPEG)."""
    if container != "jpeg":
        write_image_file(path, pixels, bit_depth=depth, container=container)
        return
    from PIL import Image

    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path, format="JPEG", quality=95)


def _expected(model, pixels: np.ndarray, **settings) -> np.ndarray:
    """The model's output on `pixels` (H, W, C) as the CLI must save it, before rounding."""
    image = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]  # (H, W, C) -> (1, C, H, W)
    return Restorer(model, CPU, **settings)((image,))[0].permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory) -> tuple[Path, glmha.RestorationModel]:
    path = tmp_path_factory.mktemp("model") / "restormer.pth"
    model = tiny_model("restormer")
    torch.save({"params": model.state_dict()}, path)
    return path, glmha.load(path)


def test_images_of_every_container_and_depth_are_restored_at_their_own_depth(tmp_path, denoiser, capsys) -> None:
    path, model = denoiser
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = {"a.png": (8, "png", 3), "b.png": (16, "png", 3), "c.tif": (16, "tiff", 3), "d.jpg": (8, "jpeg", 3),
             "e.png": (16, "png", 1)}
    for index, (name, (depth, container, channels)) in enumerate(files.items()):
        _write(inputs / name, _pixels(index, 20, 28, channels), depth, container)
    before = {p.name: _digest(p) for p in inputs.iterdir()}
    out = tmp_path / "out"
    assert main([str(path), str(inputs), "-o", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "5 file(s) restored" in printed
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.tif", "d.png", "e.png"]
    for name, (depth, _, _) in files.items():
        source = read_image_file(inputs / name, channels=3)
        saved = read_image_file(out / (Path(name).stem + (".tif" if name.endswith(".tif") else ".png")))
        assert saved.bit_depth == depth and saved.pixels.shape == (20, 28, 3)  # grey input: an RGB model's output
        expected = quantise(_expected(model, source.pixels), depth)
        assert np.array_equal(saved.pixels, expected), name
    assert {p.name: _digest(p) for p in inputs.iterdir()} == before


def test_ground_truth_gives_psnr_ssim_per_file_and_the_mean(tmp_path, denoiser, capsys) -> None:
    from glmha.metrics import psnr_per_image, ssim_per_image

    path, _model = denoiser
    (tmp_path / "in").mkdir()
    (tmp_path / "gt").mkdir()
    for index in range(2):
        write_image_file(tmp_path / "in" / f"x{index}.png", _pixels(index, 24, 24, 3), bit_depth=8,
                         container="png")
        write_image_file(tmp_path / "gt" / f"x{index}.tif", _pixels(9 + index, 24, 24, 3), bit_depth=16,
                         container="tiff")
    out = tmp_path / "out"
    args = [str(path), str(tmp_path / "in"), "-o", str(out), "--gt", str(tmp_path / "gt"), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0] == ["file", "output", "truth", "psnr", "ssim"]
    values = []
    for index in range(2):
        saved = torch.from_numpy(read_image_file(out / f"x{index}.png").pixels.transpose(2, 0, 1))[None]
        truth_pixels = read_image_file(tmp_path / "gt" / f"x{index}.tif").pixels
        truth = torch.from_numpy(truth_pixels.transpose(2, 0, 1))[None]
        values.append((float(psnr_per_image(saved, truth)[0]), float(ssim_per_image(saved, truth)[0])))
        assert rows[1 + index][:3] == [f"x{index}.png", f"x{index}.png", f"x{index}.tif"]
        assert float(rows[1 + index][3]) == pytest.approx(values[-1][0], abs=1e-9)
        assert float(rows[1 + index][4]) == pytest.approx(values[-1][1], abs=1e-9)
        assert f"PSNR {values[-1][0]:.4f}" in printed
    mean_psnr = (values[0][0] + values[1][0]) / 2
    assert float(rows[3][3]) == pytest.approx(mean_psnr, abs=1e-9)
    assert f"mean  PSNR {mean_psnr:.4f}" in printed

    # rerunning keeps the outputs with --skip-existing and prints the same scores again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("x*.png")}
    assert main([*args, "--skip-existing"]) == 0
    again = capsys.readouterr().out
    assert "kept (exists)" in again and f"mean  PSNR {mean_psnr:.4f}" in again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("x*.png")} == stamps


def test_existing_outputs_are_refused_unless_asked(tmp_path, denoiser, capsys) -> None:
    path, _ = denoiser
    write_image_file(tmp_path / "a.png", _pixels(0, 16, 16, 3), bit_depth=8, container="png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"earlier")
    assert main([str(path), str(tmp_path / "a.png"), "-o", str(out), "--no-progress"]) == 1
    assert f"{out / 'a.png'} exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"earlier"
    assert main([str(path), str(tmp_path / "a.png"), "-o", str(out), "--overwrite", "--no-progress"]) == 0
    assert read_image_file(out / "a.png").pixels.shape == (16, 16, 3)


def test_tiled_restoration_from_the_command_line_matches_the_restorer(tmp_path, denoiser) -> None:
    path, model = denoiser
    write_image_file(tmp_path / "big.tif", _pixels(5, 72, 88, 3), bit_depth=16, container="tiff")
    out = tmp_path / "out"
    assert main([str(path), str(tmp_path / "big.tif"), "-o", str(out), "--tile", "32", "--overlap", "16",
                 "--no-progress"]) == 0
    source = read_image_file(tmp_path / "big.tif").pixels
    expected = quantise(_expected(model, source, tiles=TileSettings(32, 16)), 16)
    assert np.array_equal(read_image_file(out / "big.tif").pixels, expected)


def test_a_converted_glmha_export_restores_like_the_converted_model(tmp_path) -> None:
    model = tiny_model("restormer")
    spectra = glmha.analyse(model)
    student = glmha.convert_model(model, glmha.plan_conversion(model, spectra, energy=0.9), spectra)
    export = tmp_path / "student.glmha.safetensors"
    glmha.export(student, export)
    write_image_file(tmp_path / "a.png", _pixels(1, 24, 32, 3), bit_depth=16, container="png")
    assert main([str(export), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    reloaded = glmha.load(export)
    assert reloaded.record.converted
    expected = quantise(_expected(reloaded, read_image_file(tmp_path / "a.png").pixels), 16)
    assert np.array_equal(read_image_file(tmp_path / "out" / "a.png").pixels, expected)


def test_rgb_to_spectrum_writes_cubes_and_scores_them(tmp_path, capsys) -> None:
    model = tiny_model("mst_plus_plus")
    path = tmp_path / "mstpp.pth"
    torch.save(model.state_dict(), path)
    model = glmha.load(path)
    _write(tmp_path / "scene.jpg", _pixels(2, 20, 24, 3), 8, "jpeg")
    rgb = read_image_file(tmp_path / "scene.jpg").pixels  # what the JPEG decodes to
    normalised = minmax_normalise(rgb.transpose(2, 0, 1), what="test")  # (3, H, W)
    expected = Restorer(model, CPU)((torch.from_numpy(normalised)[None],))[0].numpy()  # (bands, H, W)
    truth = tmp_path / "gt"
    truth.mkdir()
    from glmha.restore.files import write_cube_mat

    write_cube_mat(truth / "scene.mat", expected.clip(0, 1) + 0.01)
    out = tmp_path / "out"
    assert main([str(path), str(tmp_path / "scene.jpg"), "-o", str(out), "--gt", str(truth), "--no-progress"]) == 0
    cube = read_cube_mat(out / "scene.mat", bands=model.output_channels)
    assert np.array_equal(cube, expected.clip(0, 1))  # clamped, as the official test saves predictions
    printed = capsys.readouterr().out
    assert "MRAE" in printed and "SAM" in printed
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0] == ["file", "output", "truth", "mrae", "rmse", "psnr", "sam"]
    assert float(rows[1][4]) == pytest.approx(0.01, rel=1e-4)  # RMSE of a constant 0.01 offset


def test_cassi_scenes_are_simulated_with_the_mask_and_reconstructed(tmp_path, capsys) -> None:
    from glmha.spectral.cassi import mst_inputs

    model = randomise(MST(dim=28, stage=2, num_blocks=(1, 1, 1)), 0)  # the coded aperture has dim = 28 bands
    path = tmp_path / "mst.pth"
    torch.save(model.state_dict(), path)
    model = glmha.load(path)
    side, bands = 64, model.output_channels
    rng = np.random.default_rng(3)
    scene = rng.random((bands, side, side), dtype=np.float32)
    write_scenes(tmp_path / "scenes", {"scene01": scene})  # stored (H, W, bands) as the KAIST files are
    mask = (rng.random((side, side)) > 0.5).astype(np.float32)
    write_mask(tmp_path / "mask.mat", mask)
    out = tmp_path / "out"
    assert main([str(path), str(tmp_path / "scenes"), "-o", str(out), "--mask", str(tmp_path / "mask.mat"),
                 "--gt", str(tmp_path / "scenes"), "--no-progress"]) == 0
    cube = torch.from_numpy(scene)[None]  # (1, bands, H, W)
    expected = Restorer(model, CPU)(mst_inputs(cube, torch.from_numpy(mask)))[0].numpy()
    assert np.array_equal(read_cube_mat(out / "scene01.mat", bands=bands), expected)
    assert "PSNR" in capsys.readouterr().out
    assert main([str(path), str(tmp_path / "scenes"), "-o", str(tmp_path / "o2"), "--no-progress"]) == 1
    assert "give the coded aperture with --mask" in capsys.readouterr().err
    assert main([str(path), str(tmp_path / "scenes"), "-o", str(tmp_path / "o3"), "--mask",
                 str(tmp_path / "mask.mat"), "--tile", "32", "--no-progress"]) == 1
    assert "--tile is for image models" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "message"), [
    (["{model}", "{missing}", "-o", "{out}"], "input {missing}: does not exist"),
    (["{model}", "{notes}", "-o", "{out}"],
     "input {notes}: this model reads .png, .jpg, .jpeg, .tif, .tiff files"),
    (["{model}", "{empty}", "-o", "{out}"], "input folder {empty}: no files ending in .png"),
    (["{model}", "{inputs}", "-o", "{inputs}"], "is an input; choose another -o folder"),
    (["{model}", "{inputs}", "{pair}", "-o", "{out}"], "would both be written to"),
    (["{model}", "{inputs}", "-o", "{out}", "--gt", "{empty}"], "--gt {empty}: no ground truth for a.png"),
    (["{model}", "{inputs}", "-o", "{out}", "--tile", "20"], "--tile must be a positive multiple of 8"),
    (["{model}", "{inputs}", "-o", "{out}", "--mask", "{notes}"], "--mask is for CASSI models"),
    (["{model}", "{inputs}", "-o", "{out}", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["{missing}", "{inputs}", "-o", "{out}"], "{missing}"),
])
def test_mistakes_are_one_line_errors_and_nothing_is_written(tmp_path, denoiser, capsys, arguments,
                                                              message) -> None:
    path, _ = denoiser
    places = {"model": path, "missing": tmp_path / "nothing.png", "notes": tmp_path / "notes.txt",
              "empty": tmp_path / "empty", "inputs": tmp_path / "inputs", "pair": tmp_path / "pair" / "a.jpg",
              "out": tmp_path / "out"}
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "inputs").mkdir()
    (tmp_path / "pair").mkdir()
    write_image_file(tmp_path / "inputs" / "a.png", _pixels(0, 16, 16, 3), bit_depth=8, container="png")
    _write(tmp_path / "pair" / "a.jpg", _pixels(0, 16, 16, 3), 8, "jpeg")
    code = main([a.format(**places) for a in arguments] + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("glmha-restore: error: ") and err.count("\n") == 1
    assert message.format(**places) in err
    assert not (tmp_path / "out").exists()
