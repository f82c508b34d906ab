"""Spectral distillation end to end on synthetic cubes: MST++ (RGB -> bands) and MST-L (CASSI), plus the
spectral recipe forms and their errors."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from glmha.archs import MST, MSTPlusPlus, Restormer
from glmha.distill import RecipeError, distill, parse_recipe
from glmha.distill.spectral_data import SpectralPatches, open_spectral_source

from conftest import randomise
from distill_helpers import tiny_recipe

BANDS = 8


def save(model, path, container):
    torch.save({container: model.state_dict()} if container else model.state_dict(), path)
    return str(path)


def spectral_recipe(tmp_path, teacher, kind, data=None, **sections):
    source = {"format": "synthetic", "kind": kind, "scenes": 3, "size": 32, "seed": 0}
    data = {"train": source, "val": {**source, "seed": 100}, "patch_size": 16, "batch_size": 2, "val_crop": None,
            **(data or {})}
    return tiny_recipe(tmp_path, teacher=teacher, data=data, **sections)


def test_mst_plus_plus_distils_on_synthetic_rgb(tmp_path):
    model = randomise(MSTPlusPlus(in_channels=3, out_channels=BANDS, n_feat=BANDS, stage=1,
                                  stage_blocks=(1, 1, 1)), 0)
    teacher = save(model, tmp_path / "mstpp.pth", "state_dict")
    result = distill(spectral_recipe(tmp_path, teacher, "rgb", train={"steps": 6}), progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metrics"] == ["mrae", "rmse", "psnr", "sam"]
    history = report["history"]
    assert result.finished and history[-1]["rmse_teacher"] < 0.9 * history[0]["rmse_teacher"]
    assert all(history[0][f"{m}_gt"] is not None for m in report["metrics"])
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| MRAE vs GT |" in md and "| SAM vs teacher |" in md
    # the exported student is the one with the lowest MRAE vs GT, as MST++'s own training keeps it
    errors = [row["mrae_gt"] for row in history]
    assert report["best_step"] == history[errors.index(min(errors))]["step"]
    assert "best student by MRAE vs GT" in md


def test_mst_l_distils_on_simulated_cassi(tmp_path):
    model = randomise(MST(dim=BANDS, stage=1, num_blocks=(1, 1), bands=BANDS), 0)
    teacher = save(model, tmp_path / "mst.pth", None)
    student = {"ratio": 0.5, "allow_bigger": True, "init": "merge"}  # C = 8: GLMHA cannot be smaller here
    result = distill(spectral_recipe(tmp_path, teacher, "sci", train={"steps": 6}, student=student),
                     progress=False)
    history = json.loads((tmp_path / "run" / "report.json").read_text())["history"]
    assert result.finished and history[-1]["rmse_teacher"] < 0.9 * history[0]["rmse_teacher"]


def test_selection_metric_must_be_evaluated(tmp_path):
    model = randomise(MSTPlusPlus(in_channels=3, out_channels=BANDS, n_feat=BANDS, stage=1,
                                  stage_blocks=(1, 1, 1)), 0)
    teacher = save(model, tmp_path / "mstpp.pth", "state_dict")
    message = "eval.select: 'ssim' is not among the evaluated metrics (mrae, rmse, psnr, sam)"
    with pytest.raises(RecipeError, match=re.escape(message)):
        distill(spectral_recipe(tmp_path, teacher, "rgb", eval={"select": "ssim"}), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(RecipeError, match=re.escape("eval.select: 'sam' is not among the evaluated metrics "
                                                    "(mrae, psnr)")):
        spectral_recipe(tmp_path, teacher, "rgb", eval={"select": "sam", "metrics": ["mrae", "psnr"]})


def test_cassi_training_samples_are_consistent_with_their_ground_truth():
    """The measurement and Phi of a training crop are computed from the augmented crop itself."""
    from glmha.spectral.cassi import mst_inputs

    recipe_source = parse_recipe({"version": 1, "teacher": "t.pth", "data": {
        "train": {"format": "synthetic", "kind": "sci", "scenes": 2, "size": 32, "seed": 0},
        "val": {"format": "synthetic", "kind": "sci", "scenes": 1, "size": 32, "seed": 9}}}).data.train
    source = open_spectral_source(recipe_source, where="data.train", bands=BANDS, training=True)
    patches = SpectralPatches(source, patch_size=16, length=8, seed=3)
    sample = patches[5]
    measurement, phi = mst_inputs(sample["target"][None], source.mask2d[:16, :16])
    assert torch.equal(sample["input"], measurement[0]) and torch.equal(sample["mask"], phi[0])
    assert torch.equal(patches[5]["target"], SpectralPatches(source, patch_size=16, length=8, seed=3)[5]["target"])


@pytest.mark.parametrize(("source", "message"), [
    ({"format": "ntire", "root": "x", "split": "train"},
     "data.train.format: expected one of ntire2022, sci, synthetic"),
    ({"format": "ntire2022", "root": "x"},
     "data.train: format ntire2022 takes exactly format, root, split (got: format, root)"),
    ({"format": "ntire2022", "root": "x", "split": "test"}, "data.train.split: expected one of train, valid"),
    ({"format": "sci", "root": "x", "mask": 3}, "data.train.mask: expected a string, got 3"),
    ({"format": "synthetic", "kind": "rgb", "scenes": 0, "size": 32, "seed": 0},
     "data.train.scenes: expected a positive integer, got 0"),
    ({"format": "synthetic", "kind": "cube", "scenes": 2, "size": 32, "seed": 0},
     "data.train.kind: expected one of rgb, sci"),
])
def test_spectral_source_errors(tmp_path, source, message):
    raw = {"version": 1, "teacher": "t.pth", "data": {"train": source, "val": source}}
    with pytest.raises(RecipeError, match=re.escape(message)):
        parse_recipe(raw)


def test_wrong_family_for_the_data_is_refused(tmp_path):
    mst = save(randomise(MST(dim=BANDS, stage=1, num_blocks=(1, 1), bands=BANDS), 0), tmp_path / "mst.pth", None)
    with pytest.raises(RecipeError, match=re.escape("data.train: MST takes CASSI measurements and masks")):
        distill(tiny_recipe(tmp_path, teacher=mst), progress=False)
    mstpp = save(randomise(MSTPlusPlus(in_channels=3, out_channels=BANDS, n_feat=BANDS, stage=1,
                                       stage_blocks=(1, 1, 1)), 0), tmp_path / "mstpp.pth", "state_dict")
    with pytest.raises(RecipeError, match=re.escape("MST++ reconstructs spectra from RGB")):
        distill(spectral_recipe(tmp_path, mstpp, "sci"), progress=False)
    with pytest.raises(RecipeError, match=re.escape("data.patch_size: MST's design hard-codes 256")):
        distill(spectral_recipe(tmp_path, mst, "sci", data={"patch_size": 512}), progress=False)


def test_spectral_distances_match_their_definitions():
    from glmha.distill.losses import MRAE_FLOOR, distance_fn

    a = torch.tensor([[0.5, 0.2], [0.1, 0.0]])
    b = torch.tensor([[0.25, 0.4], [0.0005, -0.5]])
    rmse = ((0.25**2 + 0.2**2 + 0.0995**2 + 0.5**2) / 4) ** 0.5
    mrae = (0.25 / 0.25 + 0.2 / 0.4 + 0.0995 / MRAE_FLOOR + 0.5 / 0.5) / 4
    assert distance_fn("rmse")(a, b).item() == pytest.approx(rmse, rel=1e-6)
    assert distance_fn("mrae")(a, b).item() == pytest.approx(mrae, rel=1e-6)


def test_selection_key_orientation_and_fallbacks():
    """Larger is better after orientation; ground truth first, the teacher otherwise; NaN never wins."""
    from glmha.distill.evaluate import Scores

    with_gt = Scores({"mrae_gt": 0.1, "mrae_teacher": 0.01, "psnr_gt": 30.0, "psnr_teacher": 40.0}, images=2)
    better = Scores({"mrae_gt": 0.05, "mrae_teacher": 0.2, "psnr_gt": 31.0, "psnr_teacher": 35.0}, images=2)
    assert with_gt.selection_key("mrae") == -0.1 and with_gt.selection_key("psnr") == 30.0
    assert better.selection_key("mrae") > with_gt.selection_key("mrae")
    assert better.selection_key("psnr") > with_gt.selection_key("psnr")
    teacher_only = Scores({"sam_gt": None, "sam_teacher": 2.5}, images=1)
    assert teacher_only.reference("sam") == "teacher" and teacher_only.selection_key("sam") == -2.5
    assert Scores({"psnr_gt": float("nan")}, images=1).selection_key("psnr") == float("-inf")
    assert Scores({}, images=1).selection_key("psnr") == float("-inf")
    selected = (MSTPlusPlus.selection_metric, MST.selection_metric, Restormer.selection_metric)
    assert selected == ("mrae", "psnr", "psnr")


def test_mst_plus_plus_distils_from_ntire2022_files(tmp_path):
    """ARAD_1K layout on disk -> recipe -> engine: the teacher is scored on the min-max RGB of the file."""
    from glmha.spectral.metrics import spectral_scores
    from glmha.spectral.synthetic import camera_response, capture_rgb, reflectance_cube

    from spectral_files import write_arad_cube, write_rgb, write_split

    root = tmp_path / "ARAD_1K"
    response = camera_response(tuple(float(w) for w in range(400, 701, 10)))
    ids = [f"ARAD_1K_{i:04d}" for i in range(1, 5)]
    for i, name in enumerate(ids):
        cube = reflectance_cube(24, 32, 31, torch.Generator().manual_seed(i))  # (31, 24, 32)
        rgb = (capture_rgb(cube, response) * 255).round().permute(1, 2, 0).numpy()  # (3, h, w) -> (h, w, 3)
        write_arad_cube(root / "Train_Spec" / f"{name}.mat", cube.double().numpy())
        write_rgb(root / "Train_RGB" / f"{name}.jpg", rgb)
    write_split(root, "train", ids[:3])
    write_split(root, "valid", ids[3:])
    model = randomise(MSTPlusPlus(in_channels=3, out_channels=31, n_feat=31, stage=1, stage_blocks=(1, 1, 1)), 0)
    teacher = save(model, tmp_path / "mstpp.pth", "state_dict")
    data = {"train": {"format": "ntire2022", "root": str(root), "split": "train"},
            "val": {"format": "ntire2022", "root": str(root), "split": "valid"},
            "patch_size": 16, "batch_size": 2, "val_crop": None}
    result = distill(tiny_recipe(tmp_path, teacher=teacher, data=data, train={"steps": 2},
                                 eval={"every": 2, "metrics": []}), progress=False)
    assert result.finished
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    teacher_row = report["rows"][0]
    # recompute the teacher's scores from the files by hand: one global min-max over the RGB, raw cube
    rgb = torch.from_numpy(np.asarray(Image.open(root / "Train_RGB" / f"{ids[3]}.jpg").convert("RGB"),
                                      dtype=np.float32)).permute(2, 0, 1)  # (h, w, 3) -> (3, h, w)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    with h5py.File(root / "Train_Spec" / f"{ids[3]}.mat") as handle:
        cube = torch.from_numpy(np.asarray(handle["cube"], dtype=np.float32)).transpose(1, 2)  # (C, W, H)
    with torch.no_grad():
        expected = spectral_scores(model(rgb[None]), cube[None])
    for name in ("mrae", "rmse", "psnr", "sam"):
        assert teacher_row[f"{name}_gt"] == pytest.approx(float(expected[name][0]), rel=1e-5), name


def test_mst_l_distils_from_cave_and_kaist_files(tmp_path):
    """CAVE-style training scenes (img_expand, x65536) and KAIST-style truth (img) on disk -> engine."""
    from glmha.spectral.cassi import mst_inputs
    from glmha.spectral.metrics import spectral_scores
    from glmha.spectral.synthetic import reflectance_cube

    from spectral_files import write_mask, write_scenes

    bands = 28
    train = {f"scene{i}": (reflectance_cube(260, 272, bands, torch.Generator().manual_seed(i)).double().numpy()
                           * 65536).round() for i in (1, 2)}
    truth = reflectance_cube(256, 256, bands, torch.Generator().manual_seed(7))
    write_scenes(tmp_path / "cave", train, key="img_expand")
    write_scenes(tmp_path / "kaist", {"scene01": truth.numpy()}, key="img")
    mask2d = torch.from_numpy((np.random.default_rng(0).random((256, 256)) > 0.5).astype(np.float32))
    mask_path = write_mask(tmp_path / "mask.mat", mask2d.numpy())
    model = randomise(MST(dim=bands, stage=1, num_blocks=(1, 1), bands=bands), 0)
    teacher = save(model, tmp_path / "mst.pth", None)
    data = {"train": {"format": "sci", "root": str(tmp_path / "cave"), "mask": str(mask_path)},
            "val": {"format": "sci", "root": str(tmp_path / "kaist"), "mask": str(mask_path)},
            "patch_size": 256, "batch_size": 1, "val_crop": None}
    recipe = tiny_recipe(tmp_path, teacher=teacher, data=data, train={"steps": 2},
                         eval={"every": 2, "metrics": []})
    # training targets are the stored values / 65536, cropped to 256x256
    source = open_spectral_source(recipe.data.train, where="data.train", bands=bands, training=True)
    sample = SpectralPatches(source, patch_size=256, length=2, seed=0, flips=False)[0]
    stored = torch.from_numpy(np.stack([train["scene1"], train["scene2"]]).astype(np.float32) / 65536)
    windows = stored.unfold(2, 256, 1).unfold(3, 256, 1)  # (2, C, 260, 272) -> (2, C, 5, 17, 256, 256)
    assert any(torch.equal(sample["target"], windows[s, :, i, j]) for s in range(2) for i in range(5)
               for j in range(17))
    assert distill(recipe, progress=False).finished
    teacher_row = json.loads((tmp_path / "run" / "report.json").read_text())["rows"][0]
    with torch.no_grad():
        expected = spectral_scores(model(*mst_inputs(truth[None], mask2d)), truth[None])
    for name in ("mrae", "rmse", "psnr", "sam"):
        assert teacher_row[f"{name}_gt"] == pytest.approx(float(expected[name][0]), rel=1e-5), name
