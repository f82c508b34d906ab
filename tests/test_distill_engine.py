"""The distillation engine end to end on a tiny teacher: it learns, resumes exactly, survives
interruptions and crashes while checkpointing, stops on NaN, and exports a loadable best student."""

from __future__ import annotations

import csv
import json
import os
import re
import signal

import pytest
import torch

import glmha
from glmha.distill import RecipeError, TrainingDiverged, distill
from glmha.distill import checkpointing as ckpt
from glmha.distill.engine import Distillation, build_student, load_teacher
from glmha.layers import GLMHALayer

from distill_helpers import final_weights, tiny_recipe


def run(recipe, **kwargs):
    return distill(recipe, progress=False, **kwargs)


def log_rows(run_dir):
    with (run_dir / "log.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run that the interruption tests compare with."""
    folder = tmp_path_factory.mktemp("reference")
    result = run(tiny_recipe(folder))
    return folder, result


def test_distillation_lowers_the_error_against_the_teacher(reference):
    folder, result = reference
    report = json.loads((folder / "run" / "report.json").read_text())
    teacher, converted, distilled = report["rows"]
    assert [teacher["name"], converted["name"]] == ["teacher", "converted (before distillation)"]
    assert distilled["psnr_teacher"] > converted["psnr_teacher"] + 0.5
    assert result.finished and result.step == 6 and result.best_step == 6
    # params and MACs of the student are the converted model's, and lower than the teacher's
    assert distilled["params"] == converted["params"] < teacher["params"]
    assert distilled["macs_total"] == converted["macs_total"] < teacher["macs_total"]
    md = (folder / "run" / "report.md").read_text()
    assert "| teacher |" in md and "| distilled (step 6) |" in md


def test_best_student_is_exported_and_loads_back(reference):
    folder, _ = reference
    student = glmha.load(folder / "run" / "student.safetensors")
    assert any(isinstance(m, GLMHALayer) for m in student.modules())
    weights = final_weights(folder / "run")  # best step == last step here
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_run_directory_layout_and_log(reference):
    folder, _ = reference
    run_dir = folder / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "log.csv", "recipe.yaml", "report.json", "report.md", "student.safetensors"]
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step_4", "step_6"]  # keep 2
    for step_dir in (run_dir / "checkpoints").iterdir():
        assert (step_dir / ckpt.MARKER).is_file()
    rows = log_rows(run_dir)
    train_steps = [int(r["step"]) for r in rows if r["loss"]]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    eval_steps = [int(r["step"]) for r in rows if r["val_psnr_teacher"]]
    assert eval_steps == [0, 3, 6]


def test_stop_and_rerun_is_bit_identical(reference, tmp_path):
    ref_folder, _ = reference
    recipe = tiny_recipe(tmp_path)
    first = run(recipe, stop_at=3)
    assert first.stopped_by == "stop_at" and first.step == 3 and not first.finished
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")[0] == 3
    second = run(recipe)
    assert second.finished and second.step == 6
    expected, got = final_weights(ref_folder / "run"), final_weights(tmp_path / "run")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert log_rows(tmp_path / "run") == log_rows(ref_folder / "run")


def test_interrupt_saves_and_resumes_identically(reference, tmp_path):
    """Ctrl-C (SIGINT) during step 2 stops after that step with a checkpoint; rerunning finishes the
    same weights as an uninterrupted run."""
    ref_folder, _ = reference
    recipe = tiny_recipe(tmp_path)
    engine = Distillation(recipe, progress=False)
    original = Distillation._losses
    calls = {"n": 0}

    def losses_with_ctrl_c(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    Distillation._losses = losses_with_ctrl_c
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background shell
    try:
        result = engine.run()
    finally:
        Distillation._losses = original
    assert result.stopped_by == "signal" and result.step == 2
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")[0] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler restored
    run(recipe)
    expected, got = final_weights(ref_folder / "run"), final_weights(tmp_path / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(reference, tmp_path, monkeypatch):
    ref_folder, _ = reference
    recipe = tiny_recipe(tmp_path)
    original = ckpt._write_synced

    def crash_on_marker_of_step_4(path, text):
        if path.name == ckpt.MARKER and ".partial-step_4" in str(path):
            raise OSError("disk full (simulated)")
        original(path, text)

    monkeypatch.setattr(ckpt, "_write_synced", crash_on_marker_of_step_4)
    with pytest.raises(OSError, match="simulated"):
        run(recipe)
    root = tmp_path / "run" / "checkpoints"
    assert (root / ".partial-step_4").is_dir()  # the half-written one
    assert ckpt.latest_checkpoint(root)[0] == 2  # ... is not considered
    monkeypatch.setattr(ckpt, "_write_synced", original)
    result = run(recipe)
    assert result.finished
    assert not (root / ".partial-step_4").exists()
    expected, got = final_weights(ref_folder / "run"), final_weights(tmp_path / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_changed_recipe_is_refused_with_the_difference_and_restart_starts_over(tmp_path):
    run(tiny_recipe(tmp_path, train={"steps": 4}), stop_at=2)
    changed = tiny_recipe(tmp_path, train={"steps": 4, "lr": 1e-3}, loss={"features": 0.5})
    with pytest.raises(RecipeError) as error:
        run(changed)
    message = str(error.value)
    assert "step 2" in message and "train.lr: 0.005 -> 0.001" in message
    assert "loss.features: 0.1 -> 0.5" in message and "--restart" in message
    # changes that cannot alter the weights are accepted
    run(tiny_recipe(tmp_path, train={"steps": 4, "keep_checkpoints": 1, "checkpoint_every": 1}), stop_at=3)
    result = run(changed, restart=True)
    assert result.finished
    state = ckpt.read_state(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")[1])
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [0, 3, 4]


def test_nan_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path)
    original = Distillation._losses
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss, terms = original(self, batch)
        return (loss * float("nan"), terms) if calls["n"] == 3 else (loss, terms)

    Distillation._losses = poisoned
    try:
        with pytest.raises(TrainingDiverged) as error:
            run(recipe)
    finally:
        Distillation._losses = original
    assert "at step 3" in str(error.value)
    assert str(tmp_path / "run" / "checkpoints" / "step_2") in str(error.value)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """batch 1 x 2 accumulated micro-batches sees the same samples as batch 2: same weights."""
    big = run(tiny_recipe(tmp_path / "a", train={"steps": 3}))
    small = run(tiny_recipe(tmp_path / "b", data={"batch_size": 1}, train={"steps": 3, "grad_accum": 2}))
    assert big.finished and small.finished
    a, b = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    # equal up to float rounding (summation order); a wrong loss scaling would differ by ~lr = 5e-3
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_trainable_glmha_freezes_everything_else(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"steps": 2})
    initial = build_student(recipe, load_teacher(recipe), print).state_dict()  # conversion is deterministic
    run(recipe)
    trained = final_weights(tmp_path / "run")
    student = glmha.load(tmp_path / "run" / "student.safetensors")
    new = {f"{name}.{sub}" for name, m in student.named_modules() if isinstance(m, GLMHALayer)
           for sub in m.NEW_SUBMODULES}
    changed = {k for k in trained if not torch.equal(trained[k], initial[k])}
    assert changed and all(k in new or k.startswith(tuple(f"{n}." for n in new)) for k in changed)
    assert any(".calibrate." in k for k in changed) and any(".kv." in k for k in changed)


def test_bf16_mixed_precision_runs_on_cpu(tmp_path):
    result = run(tiny_recipe(tmp_path, train={"steps": 2, "mixed_precision": "bf16"}))
    assert result.finished


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=re.escape("train.mixed_precision: fp16 needs a CUDA device")):
        run(tiny_recipe(tmp_path, train={"mixed_precision": "fp16", "device": "cpu"}))


def test_dry_run_writes_nothing(tmp_path, capsys):
    result = run(tiny_recipe(tmp_path), dry_run=True)
    out = capsys.readouterr().out
    assert "version: 1" in out and "dry run:" in out and "Nothing written" in out
    assert result.dry_run_loss is not None and result.dry_run_loss > 0
    assert not (tmp_path / "run").exists()


def test_trainable_all_updates_copied_weights(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"steps": 2, "trainable": "all"})
    teacher_sd = glmha.load(recipe.teacher).state_dict()
    run(recipe)
    weights = final_weights(tmp_path / "run")
    assert not torch.equal(weights["patch_embed.proj.weight"], teacher_sd["patch_embed.proj.weight"])


def test_feature_points_are_the_block_outputs(family):
    """The tapped value of each block equals what the next block of the same stage receives."""
    from glmha.archs import MST, AdaIR, DRSformer, MSTPlusPlus, PromptIR, Restormer, Retinexformer, XRestormer
    from glmha.distill.losses import FeatureTap

    from conftest import example_batch, randomise, side_for

    model = randomise({  # two blocks per level, so that consecutive blocks exist
        "restormer": lambda: Restormer(dim=8, num_blocks=(2, 2, 2, 2), num_refinement_blocks=2, heads=(1, 2, 2, 4),
                                       ffn_expansion_factor=2.0),
        "mst_plus_plus": lambda: MSTPlusPlus(in_channels=3, out_channels=8, n_feat=8, stage=1,
                                             stage_blocks=(2, 2, 2)),
        "mst": lambda: MST(dim=8, stage=1, num_blocks=(2, 2), bands=8),
        "promptir": lambda: PromptIR(num_blocks=(2, 2, 2, 2), num_refinement_blocks=2, ffn_expansion_factor=0.25,
                                     prompt_len=2, prompt_sizes=(3, 2, 2)),
        "drsformer": lambda: DRSformer(dim=8, num_blocks=(2, 2, 2, 2), heads=(1, 2, 2, 4), mefc=True),
        "retinexformer": lambda: Retinexformer(n_feat=8, stage=1, num_blocks=(2, 2, 2)),
        "adair": lambda: AdaIR(dim=8, num_blocks=(2, 2, 2, 2), num_refinement_blocks=2, heads=(1, 2, 2, 4)),
        "xrestormer": lambda: XRestormer(dim=8, num_blocks=(2, 2, 2, 2), num_refinement_blocks=2,
                                         channel_heads=(1, 2, 2, 4), spatial_heads=(1, 1, 2, 2),
                                         spatial_dim_head=4),
    }[family](), 3)
    names = [name for name, _ in model.csa_layers()]
    points = [model.block_output(name) for name in names]
    # where a block starts: a pre-normed transformer block (parent of attn), or an MS-MSA attention itself
    pre_normed = family in ("restormer", "promptir", "drsformer", "adair", "xrestormer")
    entries = [name.rpartition(".")[0] if pre_normed else name for name in names]
    modules = dict(model.named_modules())
    received = {}

    def keep_input(name):
        def hook(_module, args):
            received[name] = args[0]
        return hook

    handles = [modules[entry].register_forward_pre_hook(keep_input(entry)) for entry in entries]
    tap = FeatureTap(model, points)
    with torch.no_grad():
        model(*example_batch(model, size=side_for(family)))
    for handle in handles:
        handle.remove()
    tap.remove()
    assert set(tap.values) == {point for point, _ in points}
    checked = 0
    for index in range(len(names) - 1):
        this_block, next_block = entries[index], entries[index + 1]
        stage = this_block.rpartition(".")[0]
        if not pre_normed:
            stage = stage.rpartition(".")[0]  # ...blocks.<i>.0 -> ...blocks
        if next_block.startswith(stage + ".") and next_block.count(".") == this_block.count("."):
            assert torch.equal(tap.values[points[index][0]], received[next_block]), (this_block, next_block)
            checked += 1
    assert checked > 0


def test_pure_teacher_distillation_of_an_rgb_to_spectrum_model(tmp_path):
    """MST++ maps RGB to 31 bands: with {inputs: DIR} (no ground truth) it distils like any model."""
    from PIL import Image

    from glmha.archs import MSTPlusPlus

    from conftest import randomise

    folder = tmp_path / "rgb"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = (torch.rand(40, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    teacher = randomise(MSTPlusPlus(in_channels=3, out_channels=8, n_feat=8, stage=1, stage_blocks=(1, 1, 1)), 0)
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "mstpp.pth")
    recipe = tiny_recipe(tmp_path, teacher=str(tmp_path / "mstpp.pth"), student={"ratio": 0.5},
                         data={"train": {"inputs": str(folder)}, "val": {"inputs": str(folder)},
                               "val_crop": None}, train={"steps": 4})
    result = run(recipe)
    history = json.loads((tmp_path / "run" / "report.json").read_text())["history"]
    assert result.finished and history[0]["psnr_gt"] is None
    assert history[-1]["psnr_teacher"] > history[0]["psnr_teacher"]


def test_tensorboard_true_without_tensorboard_is_refused(tmp_path, monkeypatch):
    import glmha.distill.engine as engine

    monkeypatch.setattr(engine, "tensorboard_available", lambda: False)
    with pytest.raises(RecipeError, match=r"output\.tensorboard: true, but TensorBoard is not installed"):
        run(tiny_recipe(tmp_path, output={"tensorboard": True}))
    assert not (tmp_path / "run").exists()


def test_tensorboard_logs_training_and_evaluation_when_installed(tmp_path):
    pytest.importorskip("tensorboard")  # part of the test extra; optional for users
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_recipe(tmp_path, train={"steps": 2}, eval={"every": 1}, output={"tensorboard": "auto"}))
    events = sorted((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    assert {"loss", "lr", "val_psnr_teacher", "val_psnr_gt"} <= set(accumulator.Tags()["scalars"])
    assert [e.step for e in accumulator.Scalars("loss")] == [1, 2]
    assert [e.step for e in accumulator.Scalars("val_psnr_teacher")] == [0, 1, 2]


def test_student_from_an_export_and_a_changed_export_refuses_to_resume(tmp_path):
    recipe = tiny_recipe(tmp_path)
    teacher = glmha.load(recipe.teacher)
    export = tmp_path / "student.glmha.safetensors"
    glmha.export(glmha.convert_to_glmha(teacher, ratio=0.5)[0], export)
    from_file = tiny_recipe(tmp_path, student={"path": str(export), "ratio": None},
                            train={"steps": 4})
    first = run(from_file, stop_at=2)
    assert first.step == 2
    glmha.export(glmha.convert_to_glmha(teacher, ratio=0.25)[0], export)  # another conversion, same name
    with pytest.raises(RecipeError, match=r"student\.path: file content changed"):
        run(from_file)
    assert run(from_file, restart=True).finished
