"""`glmha-distill` from the shell: exit codes, one-line errors, and a 2-process run with
`accelerate launch` on the CPU that resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import yaml

from glmha.distill import checkpointing as ckpt
from glmha.distill.cli import main

from distill_helpers import final_weights, recipe_dict


def write_recipe(tmp_path, **sections):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, **sections)))
    return path


def test_cli_runs_a_recipe_with_overrides(tmp_path, capsys):
    path = write_recipe(tmp_path)
    assert main([str(path), "--set", "train.steps=2", "--set", "eval.every=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| distilled (step" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 2 and [h["step"] for h in report["history"]] == [0, 1, 2]


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    path = write_recipe(tmp_path)
    assert main([str(path), "--set", "train.lr=fast"]) == 1
    err = capsys.readouterr().err
    assert err == "glmha-distill: error: train.lr: expected a number, got 'fast'\n"
    assert main([str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_data_errors_name_the_recipe_key(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = write_recipe(tmp_path, data={"train": {"inputs": str(empty)}})
    assert main([str(path), "--set", "loss.gt=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("glmha-distill: error: data.train.inputs: folder") and "no images" in err
    assert err.count("\n") == 1


def launch(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "glmha.distill", *args, "--no-progress"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_with_accelerate_launch_resume_exactly(tmp_path):
    """Two CPU processes (gloo): the run finishes, records its process count, and a run stopped at
    step 2 and relaunched ends with the same weights as an uninterrupted one."""
    whole = write_recipe(tmp_path / "whole", train={"steps": 4})
    done = launch([str(whole)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = ckpt.read_state(ckpt.latest_checkpoint(tmp_path / "whole" / "run" / "checkpoints")[1])
    assert state["num_processes"] == 2 and state["step"] == 4
    assert (tmp_path / "whole" / "run" / "student.safetensors").is_file()

    split = write_recipe(tmp_path / "split", train={"steps": 4})
    first = launch([str(split), "--stop-at", "2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ckpt.latest_checkpoint(tmp_path / "split" / "run" / "checkpoints")[0] == 2
    second = launch([str(split)], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    expected, got = final_weights(tmp_path / "whole" / "run"), final_weights(tmp_path / "split" / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "glmha.distill", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--restart" in done.stdout and "--set" in done.stdout
