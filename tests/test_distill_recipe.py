"""Recipe validation: every bad value is reported with its path in the file; --set overrides;
the resolved recipe round-trips; resumption differences."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from glmha.distill import RecipeError, load_recipe, parse_recipe
from glmha.distill.recipe import apply_overrides, recipe_to_yaml, resume_differences

from distill_helpers import recipe_dict


def write(tmp_path, raw, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def with_change(raw, dotted, value):
    raw = copy.deepcopy(raw)
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


class _Delete:
    """Marks a key to remove; a stable repr keeps test ids equal across processes (pytest-xdist)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()

BAD_VALUES = [
    ("train.lr", "fast", "train.lr: expected a number, got 'fast'"),
    ("train.steps", 2.5, "train.steps: expected an integer, got 2.5"),
    ("train.steps", 0, "train.steps: must be > 0, got 0"),
    ("train.optimizer", "adagrad", "train.optimizer: expected one of adamw, adam, sgd, got 'adagrad'"),
    ("train.mixed_precision", "fp8", "train.mixed_precision: expected one of no, bf16, fp16, got 'fp8'"),
    ("train.trainable", "some", "train.trainable: expected one of glmha, all, got 'some'"),
    ("train.betas", [0.9], "train.betas: expected two numbers in [0, 1), got [0.9]"),
    ("train.warmup_steps", 10, "train.warmup_steps: must be smaller than steps (6), got 10"),
    ("train.lrr", 1, "train: unknown key(s) lrr"),
    ("loss.distance", "huber", "loss.distance: expected one of l1, charbonnier, mse, rmse, mrae, got 'huber'"),
    ("loss.gt", -1.0, "loss.gt: must be >= 0, got -1.0"),
    ("eval.metrics", ["psnr", "lpips"], "eval.metrics: expected a list of psnr, ssim, mrae, rmse, sam"),
    ("eval.every", "often", "eval.every: expected an integer, got 'often'"),
    ("eval.select", "lpips", "eval.select: expected one of psnr, ssim, mrae, rmse, sam (empty: the default), "
                            "got 'lpips'"),
    ("data.patch_size", -8, "data.patch_size: must be > 0, got -8"),
    ("data.batch_size", "4", "data.batch_size: expected an integer, got '4'"),
    ("data.train.degrade.sigma", -3, "data.train.degrade.sigma: must be >= 0"),
    ("data.train.degrade.type", "snow",
     "data.train.degrade.type: expected one of gaussian_noise, gaussian_blur, rain"),
    ("data.val", {"inputs": "a", "clean": "b"}, "data.val: give exactly one of"),
    ("data.val", "folder", "data.val: expected a mapping"),
    ("data.train", DELETE, "data: missing required key(s) train"),
    ("data.val.samples", "holdout", "data.val.samples: expected one of train, test, got 'holdout'"),
    ("student.init", "orthogonal",
     "student.init: expected one of select, merge, refit, svd, random, got 'orthogonal'"),
    ("student", {"energy": 1.5}, "student.energy must be in (0, 1], got 1.5"),
    ("student.path", "x.safetensors", "student: give either path (a glmha export) or conversion settings"),
    ("output.tensorboard", "maybe", "output.tensorboard: unexpected value 'maybe'"),
    ("version", 2, "version: this glmha reads recipe version 1, got 2"),
    ("version", DELETE, "version: missing"),
    ("teacher", DELETE, "top level: missing required key(s) teacher"),
    ("trainer", {}, "top level: unknown key(s) trainer"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_values_are_reported_with_their_path(tmp_path, key, value, message):
    raw = with_change(recipe_dict(tmp_path), key, value)
    with pytest.raises(RecipeError) as error:
        load_recipe(write(tmp_path, raw))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_gt_loss_needs_ground_truth(tmp_path):
    (tmp_path / "noisy").mkdir()
    raw = recipe_dict(tmp_path, loss={"gt": 1.0})
    raw["data"]["train"] = {"inputs": str(tmp_path / "noisy")}
    with pytest.raises(RecipeError, match=re.escape("loss.gt: is 1.0 but data.train has no ground truth")):
        parse_recipe(raw)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("teacher", "missing.pth", "teacher: file missing.pth does not exist"),
    ("data.train", {"clean": "no/such/dir", "degrade": {"type": "rain"}},
     "data.train.clean: folder no/such/dir does not exist"),
    ("student", {"path": "none.safetensors"}, "student.path: file none.safetensors does not exist"),
])
def test_missing_files_are_named_with_their_key(tmp_path, key, value, message):
    raw = with_change(recipe_dict(tmp_path), key, value)
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        load_recipe(write(tmp_path, raw))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ntrain:\n  lr: [1,\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_recipe(path)


def test_overrides_set_any_key_as_yaml(tmp_path):
    recipe = load_recipe(write(tmp_path, recipe_dict(tmp_path)),
                         ["train.lr=1e-4", "train.max_grad_norm=0.01", "eval.metrics=[psnr]",
                          "data.train.degrade.sigma=[0, 50]", "train.mixed_precision=bf16"])
    assert recipe.train.lr == 1e-4 and recipe.train.max_grad_norm == 0.01
    assert recipe.eval.metrics == ("psnr",) and recipe.data.train.degrade.sigma == (0.0, 50.0)
    assert recipe.train.mixed_precision == "bf16"
    with pytest.raises(RecipeError, match=re.escape("train.lr: expected a number, got 'fast'")):
        load_recipe(write(tmp_path, recipe_dict(tmp_path)), ["train.lr=fast"])
    with pytest.raises(RecipeError, match=re.escape("--set teacher.path=x: teacher is a value, not a section")):
        apply_overrides(recipe_dict(tmp_path), ["teacher.path=x"])
    with pytest.raises(RecipeError, match=re.escape("expected KEY.PATH=VALUE")):
        apply_overrides({}, ["train.lr"])


def test_resolved_recipe_round_trips_and_fills_defaults(tmp_path):
    raw = recipe_dict(tmp_path)
    del raw["output"]
    path = write(tmp_path, raw, "my_run.yaml")
    recipe = load_recipe(path)
    assert recipe.output.dir == "runs/my_run"
    assert recipe.train.optimizer == "adamw" and recipe.loss.distance == "l1"
    again = parse_recipe(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again == recipe


def test_student_from_a_path_round_trips(tmp_path):
    recipe = parse_recipe(recipe_dict(tmp_path, student={"path": "x.safetensors", "ratio": None}))
    assert recipe.student.to_dict() == {"path": "x.safetensors"}
    assert parse_recipe(yaml.safe_load(recipe_to_yaml(recipe))) == recipe


def test_ratio_alone_replaces_the_default_energy(tmp_path):
    recipe = parse_recipe(recipe_dict(tmp_path, student={"ratio": 0.25}))
    assert recipe.student.plan_settings().ratio == 0.25 and recipe.student.plan_settings().energy is None


def test_resume_differences_allow_only_harmless_changes(tmp_path):
    saved = parse_recipe(recipe_dict(tmp_path)).to_dict()
    harmless = parse_recipe(recipe_dict(tmp_path, train={"keep_checkpoints": 5, "checkpoint_every": 1},
                                        output={"tensorboard": "auto", "dir": "elsewhere"})).to_dict()
    assert resume_differences(saved, harmless) == []
    longer = parse_recipe(recipe_dict(tmp_path, train={"steps": 12})).to_dict()
    assert resume_differences(saved, longer) == ["train.steps: 6 -> 12"]  # the cosine schedule depends on it
    constant = parse_recipe(recipe_dict(tmp_path, train={"scheduler": "constant"})).to_dict()
    constant_longer = parse_recipe(recipe_dict(tmp_path, train={"scheduler": "constant", "steps": 12})).to_dict()
    assert resume_differences(constant, constant_longer) == []
