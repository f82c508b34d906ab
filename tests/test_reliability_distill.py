"""glmha-distill against damaged inputs and interrupted runs (issue 12, items 3, 8, 9 and 10).

Every damaged image, scene or checkpoint stops the command with one stderr line that names the file,
before any training, leaving no run folder and every input byte-identical; an error inside a
DataLoader worker reads the same; a diverging student is never exported; a run killed with SIGKILL at
a random moment resumes to exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import glmha
from glmha.archs import MST, MSTPlusPlus
from glmha.distill import RecipeError, distill, engine
from glmha.distill import checkpointing as ckpt
from glmha.distill.cli import main
from glmha.distill.data import stop_workers, unwrap_worker_error
from glmha.distill.engine import build_student, load_teacher
from glmha.errors import GlmhaError

from conftest import randomise
from distill_helpers import final_weights, recipe_dict, tiny_recipe, write_teacher

PREFIX = "glmha-distill: error: "
NOISE = {"type": "gaussian_noise", "sigma": 25}
BANDS = 8  # spectral teachers and files are kept this small


# -- helpers ------------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """glmha-distill in this process: (exit code, stderr)."""
    code = main([*(str(a) for a in args), "--no-progress"])
    return code, capsys.readouterr().err


def one_error_line(err: str, *names: object) -> str:
    """The single stderr line, checked to be the CLI's error line naming each of `names`, with no
    traceback or DataLoader worker text."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    for leaked in ("Traceback", "Caught", "DataLoader worker"):
        assert leaked not in err, err
    line = err[:-1]
    assert line.startswith(PREFIX), line
    for name in names:
        assert str(name) in line, (name, line)
    return line


def digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` by relative path (size only where the file is unreadable)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:
            found[str(path.relative_to(root))] = f"unreadable, {path.stat().st_size} bytes"
    return found


def write_yaml(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def save_rgb(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def image_recipe(folder: Path, **data: object) -> Path:
    """Paired training folders (train_in/, train_gt/, 3 images) and a clean validation folder (val/,
    2 images, degraded on the fly), as a recipe file."""
    for index in range(3):
        save_rgb(folder / "train_in" / f"img{index}.png", index)
        save_rgb(folder / "train_gt" / f"img{index}.png", index)
    for index in range(2):
        save_rgb(folder / "val" / f"img{index}.png", 10 + index)
    sources = {"train": {"inputs": str(folder / "train_in"), "targets": str(folder / "train_gt")},
               "val": {"clean": str(folder / "val"), "degrade": NOISE}}
    return write_yaml(folder / "recipe.yaml", recipe_dict(folder, data={**sources, **data}))


# Damages: each takes a good file and returns the damaged file (a JPEG one replaces the PNG).


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_jpeg(path: Path) -> Path:
    jpeg = path.with_suffix(".jpg")  # pairs with its partner by stem
    with Image.open(path) as image:
        image.save(jpeg, quality=90)
    path.unlink()
    return truncate(jpeg)


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(2000))
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


@pytest.fixture
def honour_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads a file of mode 000 anyway; as root, Pillow is made to refuse it as the kernel would
    refuse an ordinary user, so the unreadable-file case means the same whoever runs the tests."""
    if os.geteuid() != 0:
        return
    opened = Image.open

    def open_as_a_user(path, *args, **kwargs):
        if isinstance(path, (str, Path)) and stat.S_IMODE(os.stat(path).st_mode) & 0o444 == 0:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_as_a_user)


# -- damaged images -------------------------------------------------------------------------------------

IMAGE_CASES = [
    pytest.param("train_in", truncate, "data.train.inputs", "(OSError: image file is truncated)", 0,
                 id="train-input-truncated-png"),
    pytest.param("train_gt", truncated_jpeg, "data.train.targets", "(OSError: image file is truncated (", 0,
                 id="train-target-truncated-jpeg"),
    pytest.param("train_in", random_bytes, "data.train.inputs", "(not an image format Pillow recognises)", 0,
                 id="train-input-random-bytes"),
    pytest.param("val", empty, "data.val.clean", "(empty file)", 0, id="val-zero-bytes"),
    pytest.param("val", unreadable, "data.val.clean", "(Permission denied)", 0, id="val-unreadable"),
    pytest.param("train_gt", truncate, "data.train.targets", "(OSError: image file is truncated)", 2,
                 id="train-target-truncated-png-with-workers"),
]


@pytest.mark.parametrize(("folder", "damage", "key", "reason", "workers"), IMAGE_CASES)
def test_a_damaged_image_stops_the_run_before_it_starts(tmp_path, capsys, honour_permissions, folder, damage,
                                                         key, reason, workers):
    recipe = image_recipe(tmp_path, workers=workers)
    bad = damage(tmp_path / folder / "img1.png")
    before = digest(tmp_path)
    code, err = run_cli(capsys, recipe)
    assert code == 1
    one_error_line(err, f"{key}: image {bad}: cannot be read {reason}")
    assert not (tmp_path / "run").exists()
    assert digest(tmp_path) == before


DAMAGE_AFTER_CHECK = """
import sys, tempfile
from pathlib import Path
from glmha.distill.cli import main
from glmha.distill.data import ImageSource

recipe, victim, temp = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
checked = ImageSource.verify

def verify_then_damage(self, threads=None):
    checked(self, threads)
    if any(path == victim for path, _ in self.labelled_files()):
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])

ImageSource.verify = verify_then_damage
tempfile.tempdir = temp  # where the worker processes make their pymp-* folders
sys.exit(main([recipe, "--no-progress"]))
"""


@pytest.mark.parametrize(("split", "folder", "key"), [("train", "train_in", "inputs"), ("val", "val", "clean")])
def test_a_file_damaged_after_the_check_fails_as_one_line(tmp_path, split, folder, key):
    """A file that breaks after the start-up check (a failing disk, a writer still at work) fails where it is
    read (a training DataLoader worker; validation reads in the main process): the user gets that one line,
    the run folder this run created is removed, and the stopped workers leave no pymp-* folder in the temp
    directory. Run as a user runs it, in a process of its own, with a timeout."""
    recipe = image_recipe(tmp_path, workers=2)
    victim = tmp_path / folder / "img1.png"
    temp = Path(tempfile.mkdtemp(prefix="glmha-"))  # short: worker sockets live under it (see the next test)
    done = subprocess.run([sys.executable, "-c", DAMAGE_AFTER_CHECK, str(recipe), str(victim), str(temp)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    one_error_line(done.stderr, f"data.{split}.{key}: image {victim}: cannot be read "
                                f"(OSError: image file is truncated)")
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in temp.iterdir() if p.name.startswith("pymp-")) == []
    shutil.rmtree(temp)


def test_a_temp_directory_too_long_for_worker_sockets_is_refused(tmp_path, capsys, monkeypatch):
    """Workers hand batches back through a Unix socket under the temp directory; past the socket path limit
    the worker's queue thread drops the batch and the run used to wait forever (seen under pytest-xdist's
    long temp paths). Now one line says so before anything is written; without workers it runs."""
    recipe = image_recipe(tmp_path, workers=2)
    long_temp = tmp_path / ("t" * 60)
    long_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_temp))
    code, err = run_cli(capsys, recipe)
    assert code == 1
    one_error_line(err, "data.workers: 2 worker processes need a temp directory path of at most 75 bytes",
                   str(long_temp), "set TMPDIR to a shorter directory, or data.workers: 0")
    assert not (tmp_path / "run").exists()


class _Raises(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize("error", [
    GlmhaError("data.train.inputs: image /data/a b.png: cannot be read (empty file)"),
    RecipeError("data.val: scene: cannot be read (OSError: a: b)"),
])
def test_worker_errors_unwrap_to_the_message_the_worker_raised(error):
    loader = DataLoader(_Raises(error), num_workers=1, persistent_workers=True)
    with pytest.raises(GlmhaError) as info:
        next(iter(loader))
    workers = list(loader._iterator._workers)
    stop_workers(loader)  # what the engine does however a run ends
    assert loader._iterator is None and not any(worker.is_alive() for worker in workers)
    assert str(info.value).startswith("Caught ") and "Traceback" in str(info.value)  # PyTorch's wrapping
    plain = unwrap_worker_error(info.value)
    assert type(plain) is type(error) and str(plain) == str(error)
    assert unwrap_worker_error(error) is error  # an error from this process is left as it is


# -- damaged spectral files -----------------------------------------------------------------------------


def ntire_recipe(folder: Path) -> Path:
    """ARAD_1K layout (3 training ids, 1 validation id, 24x32 scenes) and a tiny MST++ teacher."""
    from spectral_files import write_arad_cube, write_rgb, write_split

    root = folder / "ARAD_1K"
    ids = [f"ARAD_1K_{i:04d}" for i in range(4)]
    rng = np.random.default_rng(0)
    for name in ids:
        write_arad_cube(root / "Train_Spec" / f"{name}.mat", rng.random((BANDS, 24, 32)))
        write_rgb(root / "Train_RGB" / f"{name}.jpg", rng.integers(0, 256, (24, 32, 3)))
    write_split(root, "train", ids[:3])
    write_split(root, "valid", ids[3:])
    model = randomise(MSTPlusPlus(in_channels=3, out_channels=BANDS, n_feat=BANDS, stage=1,
                                  stage_blocks=(1, 1, 1)), 0)
    torch.save({"state_dict": model.state_dict()}, folder / "mstpp.pth")
    data = {"train": {"format": "ntire2022", "root": str(root), "split": "train"},
            "val": {"format": "ntire2022", "root": str(root), "split": "valid"},
            "patch_size": 16, "val_crop": None}
    return write_yaml(folder / "recipe.yaml", recipe_dict(folder, teacher=str(folder / "mstpp.pth"), data=data,
                                                          eval={"every": 3, "metrics": []}))


def sci_recipe(folder: Path) -> Path:
    """CAVE-like training scenes and KAIST-like truth (256x256, BANDS bands), a mask, a tiny MST-L."""
    from spectral_files import write_mask, write_scenes

    rng = np.random.default_rng(0)
    cubes = {name: rng.random((BANDS, 256, 256), dtype=np.float32) for name in ("scene1", "scene2")}
    write_scenes(folder / "cave", cubes, key="img_expand")
    write_scenes(folder / "kaist", {"scene01": cubes["scene1"]}, key="img")
    mask = write_mask(folder / "mask.mat", (rng.random((256, 256)) > 0.5).astype(np.float32))
    model = randomise(MST(dim=BANDS, stage=1, num_blocks=(1, 1), bands=BANDS), 0)
    torch.save(model.state_dict(), folder / "mst.pth")
    data = {"train": {"format": "sci", "root": str(folder / "cave"), "mask": str(mask)},
            "val": {"format": "sci", "root": str(folder / "kaist"), "mask": str(mask)},
            "patch_size": 256, "batch_size": 1, "val_crop": None}
    return write_yaml(folder / "recipe.yaml", recipe_dict(folder, teacher=str(folder / "mst.pth"), data=data,
                                                          eval={"every": 3, "metrics": []}))


SPECTRAL_CASES = [
    pytest.param(ntire_recipe, "ARAD_1K/Train_Spec/ARAD_1K_0001.mat", truncate, "data.train",
                 "not a readable MATLAB v7.3 (HDF5) file (", id="ntire-train-cube-truncated"),
    pytest.param(ntire_recipe, "ARAD_1K/Train_Spec/ARAD_1K_0003.mat", random_bytes, "data.val",
                 "not a readable MATLAB v7.3 (HDF5) file (", id="ntire-val-cube-random-bytes"),
    pytest.param(ntire_recipe, "ARAD_1K/Train_RGB/ARAD_1K_0002.jpg", truncate, "data.train",
                 "not a readable image (image file is truncated", id="ntire-train-rgb-truncated"),
    pytest.param(ntire_recipe, "ARAD_1K/Train_RGB/ARAD_1K_0003.jpg", empty, "data.val",
                 "not a readable image (", id="ntire-val-rgb-zero-bytes"),
    pytest.param(sci_recipe, "cave/scene2.mat", truncate, "data.train", "not a readable MATLAB file (",
                 id="sci-train-scene-truncated"),
    pytest.param(sci_recipe, "kaist/scene01.mat", empty, "data.val", "not a readable MATLAB file (",
                 id="sci-val-scene-zero-bytes"),
]


@pytest.mark.parametrize(("make", "name", "damage", "where", "reason"), SPECTRAL_CASES)
def test_a_damaged_spectral_file_stops_the_run_before_it_starts(tmp_path, capsys, make, name, damage, where,
                                                                 reason):
    recipe = make(tmp_path)
    bad = damage(tmp_path / name)
    before = digest(tmp_path)
    code, err = run_cli(capsys, recipe)
    assert code == 1
    one_error_line(err, f"{where}: {bad}: {reason}")
    assert not (tmp_path / "run").exists()
    assert digest(tmp_path) == before


# -- damaged checkpoints and changed recipes -------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe file, run folder) of a 4-step run stopped at step 2, its only checkpoint. Tests damage
    a copy, pointed to with --set output.dir=."""
    folder = tmp_path_factory.mktemp("stopped")
    recipe = write_yaml(folder / "recipe.yaml", recipe_dict(folder, train={"steps": 4}))
    assert distill(tiny_recipe(folder, train={"steps": 4}), stop_at=2, progress=False).step == 2
    return recipe, folder / "run"


def copy_run(stopped: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """(recipe, the copied run folder, its step_2 checkpoint)."""
    recipe, run = stopped
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return recipe, copy, copy / "checkpoints" / "step_2"


def edit_state(**changes: object) -> Callable[[Path], Path]:
    def edit(path: Path) -> Path:
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return path
    return edit


def garbage_header(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 8 + data[8:])  # the header length: far past the end of the file
    return path


def drop(path: Path) -> Path:
    path.unlink()
    return path


def write_text(text: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(text)
        return path
    return write


CHECKPOINT_CASES = [
    pytest.param("model.safetensors", truncate, "truncated or corrupt (incomplete metadata", id="model-truncated"),
    pytest.param("model.safetensors", garbage_header, "truncated or corrupt (header too large)",
                 id="model-bad-header"),
    pytest.param("optimizer.bin", drop, "missing", id="optimizer-missing"),
    pytest.param("optimizer.bin", truncate, "truncated or corrupt (not a complete torch.save archive)",
                 id="optimizer-truncated"),
    pytest.param("scheduler.bin", empty, "empty file", id="scheduler-empty"),
    pytest.param("random_states_0.pkl", drop, "missing", id="random-states-missing"),
    pytest.param("trainer_state.json", write_text('{"step": 2,'), "not valid JSON (", id="state-not-json"),
    pytest.param("trainer_state.json", edit_state(history=5), "'history' should be a list, found int 5",
                 id="state-wrong-type"),
    pytest.param("trainer_state.json", edit_state(step=7), "records step 7, but the folder is step_2",
                 id="state-wrong-step"),
    pytest.param("recipe.yaml", write_text("train: [1"), "not valid YAML (", id="saved-recipe-not-yaml"),
]


@pytest.mark.parametrize(("name", "damage", "reason"), CHECKPOINT_CASES)
def test_a_damaged_checkpoint_names_the_file_and_suggests_restart(stopped_run, tmp_path, capsys, name, damage,
                                                                  reason):
    recipe, run, step_2 = copy_run(stopped_run, tmp_path)
    damage(step_2 / name)
    before = digest(run)
    code, err = run_cli(capsys, recipe, "--set", f"output.dir={run}")
    assert code == 1
    one_error_line(err, f"cannot resume from {step_2 / name}: {reason}", "rerun with --restart to start over")
    assert digest(run) == before


def test_damage_inside_an_intact_archive_is_caught_at_load_and_restart_recovers(stopped_run, tmp_path, capsys):
    """optimizer.bin stays a whole zip, but its pickle is garbage: only loading can tell, and the load
    failure is the same one-line refusal, naming the checkpoint. --restart then starts over."""
    recipe, run, step_2 = copy_run(stopped_run, tmp_path)
    archive = step_2 / "optimizer.bin"
    with zipfile.ZipFile(archive) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    with zipfile.ZipFile(archive, "w") as target:
        for member, data in members.items():
            target.writestr(member, b"not a pickle" if member.endswith("data.pkl") else data)
    before = digest(run)
    code, err = run_cli(capsys, recipe, "--set", f"output.dir={run}")
    assert code == 1
    one_error_line(err, f"cannot resume from {step_2}: cannot be loaded (", "--restart")
    assert digest(run) == before
    code, _ = run_cli(capsys, recipe, "--set", f"output.dir={run}", "--restart")
    assert code == 0 and ckpt.latest_checkpoint(run / "checkpoints")[0] == 4


def test_a_checkpoint_without_its_marker_is_passed_over(stopped_run, tmp_path):
    _, run, step_2 = copy_run(stopped_run, tmp_path)
    assert ckpt.latest_checkpoint(run / "checkpoints") == (2, step_2)
    (step_2 / ckpt.MARKER).unlink()
    assert ckpt.latest_checkpoint(run / "checkpoints") is None  # the run starts over, as before


def test_a_changed_recipe_lists_every_difference_under_one_error(stopped_run, tmp_path, capsys):
    recipe, run, _ = copy_run(stopped_run, tmp_path)
    before = digest(run)
    code, err = run_cli(capsys, recipe, "--set", f"output.dir={run}", "--set", "train.lr=0.001",
                        "--set", "loss.features=0.5", "--set", "data.batch_size=4")
    assert code == 1 and "Traceback" not in err
    first, *rest = err.splitlines()
    assert first.startswith(f"{PREFIX}run folder {run} was made by a different recipe; cannot resume from its "
                            f"step 2 checkpoint ")
    assert "restore the 3 value(s) below, or rerun with --restart" in first
    assert rest == ["  data.batch_size: 2 -> 4", "  loss.features: 0.1 -> 0.5", "  train.lr: 0.005 -> 0.001"]
    assert digest(run) == before


# -- a diverging student ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lr", "says"), [
    (1e30, "step 1: the student's output is not finite (NaN or Inf) on 2 of 2 validation images; stopped "
           "without exporting it."),
    (1e39, "the optimizer's update at step 1 overflows float32 (learning rate 1e+39); stopped."),
])
def test_a_diverging_student_is_never_exported(tmp_path, capsys, lr, says):
    """Step 1 with a huge learning rate ruins the weights. The run stops with one line and the exported
    student stays the step-0 one (the converted model, finite); the run folder existed beforehand, so
    it is kept to be inspected."""
    sections = dict(train={"steps": 3, "lr": lr, "checkpoint_every": 1}, eval={"every": 1})
    recipe = write_yaml(tmp_path / "recipe.yaml", recipe_dict(tmp_path, **sections))
    (tmp_path / "run").mkdir()
    code, err = run_cli(capsys, recipe)
    assert code == 1
    one_error_line(err, says, "Last good checkpoint: none (no checkpoint was written yet)")
    exported = glmha.load(tmp_path / "run" / "student.safetensors").state_dict()
    parsed = tiny_recipe(tmp_path, **sections)
    converted = build_student(parsed, load_teacher(parsed), lambda _: None).state_dict()
    assert exported.keys() == converted.keys()
    assert all(torch.equal(exported[k], converted[k]) for k in converted)
    assert all(bool(torch.isfinite(t).all()) for t in exported.values() if t.is_floating_point())


def test_weights_ruined_between_checkpoints_are_never_saved(tmp_path, capsys, monkeypatch):
    """An update that leaves Inf in the weights (the loss of that step was still finite) is caught
    before the checkpoint, so "Last good checkpoint" names one that really is good."""
    sections = dict(train={"steps": 4, "checkpoint_every": 1}, eval={"every": 4})
    recipe = write_yaml(tmp_path / "recipe.yaml", recipe_dict(tmp_path, **sections))
    stepped = engine._optimizer_step

    def step_then_ruin(optimizer, step, last_saved):
        stepped(optimizer, step, last_saved)
        if step == 3:
            with torch.no_grad():
                for param in optimizer.param_groups[0]["params"]:
                    param.fill_(float("inf"))

    monkeypatch.setattr(engine, "_optimizer_step", step_then_ruin)
    code, err = run_cli(capsys, recipe)
    assert code == 1
    step_2 = tmp_path / "run" / "checkpoints" / "step_2"
    one_error_line(err, "the student's weights are not finite at step 3 (", "holds NaN or Inf); stopped without "
                   f"saving. Last good checkpoint: {step_2}. Lower train.lr")
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints") == (2, step_2)  # nothing saved at step 3


# -- SIGKILL and rerun -----------------------------------------------------------------------------------------


def launch(recipe: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, "-m", "glmha.distill", str(recipe), "--no-progress"],
                                env=env, stdout=subprocess.DEVNULL, stderr=handle)


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in csv.DictReader(handle)]


def files_in(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def test_sigkill_at_a_random_moment_then_rerun_matches_an_uninterrupted_run(tmp_path):
    """Two subprocesses run the same recipe at once; one is SIGKILLed at a seeded random moment after
    a seeded choice of checkpoint appears (mid-step, mid-evaluation or mid-save), then rerun to the
    end. Its exported student, last checkpoint and log equal the uninterrupted run's, bit for bit,
    and nothing of the killed process is left in its run folder."""
    rng = random.Random(12)
    teacher = write_teacher(tmp_path / "shared")  # one teacher file: its path is recorded in the exports
    student = tmp_path / "shared" / "student.glmha.safetensors"  # converted once, here, to save time
    glmha.export(glmha.convert_to_glmha(glmha.load(teacher), ratio=0.5)[0], student)
    for index in range(4):  # small folders read faster than the sample photos
        save_rgb(tmp_path / "shared" / "clean" / f"img{index}.png", index, (32, 32))
    clean = {"clean": str(tmp_path / "shared" / "clean"), "degrade": NOISE}
    recipes = {name: write_yaml(tmp_path / name / "recipe.yaml",
                                recipe_dict(tmp_path / name, teacher=str(teacher),
                                            student={"path": str(student), "ratio": None},
                                            data={"train": clean, "val": clean}))
               for name in ("whole", "killed")}
    whole = launch(recipes["whole"], tmp_path / "whole.log")
    victim = launch(recipes["killed"], tmp_path / "killed.log")
    run = tmp_path / "killed" / "run"
    marker = run / "checkpoints" / f"step_{rng.choice([2, 4])}" / ckpt.MARKER
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL, "the run ended before it was killed"
    assert not (run / "report.json").exists()
    rerun = launch(recipes["killed"], tmp_path / "rerun.log")
    assert rerun.wait(300) == 0, (tmp_path / "rerun.log").read_text()[-2000:]
    assert whole.wait(300) == 0, (tmp_path / "whole.log").read_text()[-2000:]
    reference = tmp_path / "whole" / "run"
    assert (run / "student.safetensors").read_bytes() == (reference / "student.safetensors").read_bytes()
    expected, got = final_weights(reference), final_weights(run)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert log_rows(run) == log_rows(reference)
    assert files_in(run) == files_in(reference)
