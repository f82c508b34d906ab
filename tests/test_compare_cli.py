"""glmha-compare end to end on a tiny teacher: every output written, reruns read finished rows, bad compare
sections are one-line errors that write nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from glmha.compare.cli import main
from glmha.compare.runner import load_compare_recipe, plan_rows
from glmha.errors import ArchitectureError
from glmha.loader import load

from distill_helpers import recipe_dict


def _write(folder: Path, compare: dict, **sections) -> Path:
    raw = recipe_dict(folder, **sections)
    raw["train"] = {**raw["train"], "steps": 2, "checkpoint_every": 2}
    raw["eval"] = {**raw["eval"], "every": 2, "input_size": [32, 32]}
    raw["data"] = {**raw["data"], "val_limit": 1, "val_crop": 32}
    raw["compare"] = compare
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_tiny_compare_writes_every_output_and_resumes(tmp_path, capsys):
    compare = {"methods": ["glmha", "prune", "linformer", "performer", "reformer"], "target_macs": 0.97,
               "sweep": {"ratio": [0.5], "alpha": [0.0]}}
    path = _write(tmp_path, compare)
    assert main([str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    for name in ("compare.md", "compare.json", "compare.csv", "compare.png"):
        assert (run / name).stat().st_size > 0, name
    payload = json.loads((run / "compare.json").read_text())
    methods = {o["method"]: o for o in payload["methods"]}
    assert list(methods) == ["glmha", "prune", "linformer", "performer", "reformer"]
    assert not methods["reformer"]["applicable"] and "shared projection" in methods["reformer"]["reason"]
    teacher = payload["teacher"]
    target = payload["target_macs_total"]
    assert target == round(teacher["macs_total"] * 0.97)
    for name in ("glmha", "prune", "linformer", "performer"):
        row = methods[name]
        for key in ("params", "macs_linear", "macs_total", "psnr_gt", "psnr_teacher", "ssim_gt", "steps"):
            assert row[key] is not None, (name, key)
        assert row["macs_total_change"] == pytest.approx(row["macs_total"] / teacher["macs_total"] - 1, abs=1e-6)
        assert row["meets_budget"] == (abs(row["macs_total"] - target) <= 0.01 * target)
        assert row["steps"] == 2
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())  # an ordinary run folder
        assert report["rows"][2]["macs_total"] == row["macs_total"]
    assert methods["glmha"]["meets_budget"] and methods["prune"]["meets_budget"]
    assert [o["label"] for o in payload["sweeps"]["ratio"]] == ["ratio 0.5"]
    assert [o["label"] for o in payload["sweeps"]["alpha"]] == ["alpha 0"]
    with (run / "compare.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [line["label"] for line in lines][-2:] == ["ratio 0.5", "alpha 0"]
    assert [line["method"] for line in lines] == ["glmha", "prune", "linformer", "performer", "reformer", "glmha",
                                                  "glmha"]
    assert load(Path(methods["prune"]["run_dir"]) / "student.safetensors").record.conversion.settings.calibration \
        == "none"  # the pruned student is a glmha export
    with pytest.raises(ArchitectureError, match=r"a glmha-compare baseline student \(linformer\), kept for "):
        load(Path(methods["linformer"]["run_dir"]) / "student.safetensors")
    markdown = (run / "compare.md").read_text()
    assert "| CSA (teacher) |" in markdown and "| K/V pruning |" in markdown and "not applicable" in markdown
    alpha_table = markdown.split("## Calibration strength alpha", 1)[1]
    assert alpha_table.index("| ratio 0.5 (reference) |") < alpha_table.index("| alpha 0 |")
    first = {name: (run / name).read_bytes() for name in ("compare.md", "compare.json", "compare.csv")}
    capsys.readouterr()

    assert main([str(path), "--no-progress"]) == 0  # rerun: every row read, the same outputs
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 6 and "resuming" not in out and "step 2:" not in out
    assert {name: (run / name).read_bytes() for name in first} == first

    (Path(methods["prune"]["run_dir"]) / "report.json").unlink()  # as if stopped after its last checkpoint
    assert main([str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 5 and out.count("resuming from") == 1
    assert {name: (run / name).read_bytes() for name in first} == first


def test_glmha_distill_runs_the_recipe_student_and_checks_the_compare_section(tmp_path, capsys):
    from glmha.distill.cli import main as distill

    path = _write(tmp_path, {"methods": ["glmha"], "target_macs": 0.9})
    assert distill([str(path), "--dry-run", "--no-progress"]) == 0
    assert "dry run:" in capsys.readouterr().out
    path = _write(tmp_path, {"methods": ["bogus"], "target_macs": 0.9})
    assert distill([str(path), "--dry-run"]) == 1
    assert capsys.readouterr().err.startswith("glmha-distill: error: compare.methods: unknown method(s) bogus")


@pytest.mark.parametrize(("compare", "message"), [
    ({"methods": ["glmha", "lora"], "target_macs": 0.9}, "compare.methods: unknown method(s) lora"),
    ({"methods": ["glmha"]}, "compare.target_macs: required by glmha"),
    ({"methods": ["glmha"], "target_macs": 1.5}, "compare.target_macs: must be a fraction in (0, 1]"),
    ({"methods": ["glmha", "glmha"], "target_macs": 0.9}, "compare.methods: lists a method twice"),
    ({"methods": ["prune"], "target_macs": 0.9, "importance": "l1"}, "compare.importance: expected one of"),
    ({"methods": ["linformer"], "target_macs": 0.9, "linformer_keys": 0}, "compare.linformer_keys: must be >= 1"),
    ({"methods": [], "sweep": {"ratio": [0.0]}}, "compare.sweep.ratio[0]: must be in (0, 1)"),
    ({"methods": [], "sweep": {"alpha": [-1]}}, "compare.sweep.alpha[0]: must be a finite number >= 0"),
    ({"methods": [], "sweep": {"levels": [[]]}}, "compare.sweep.levels[0]: expected a non-empty list"),
    ({"methods": [], "sweep": {"ratio": [0.5, 0.5]}}, "compare.sweep.ratio: lists a value twice"),
    ({"methods": []}, "compare.methods: nothing to compare"),
    ({"methods": ["glmha"], "target_macs": 0.9, "typo": 1}, "compare: unknown key(s) typo"),
    ("glmha", "compare: expected a mapping"),
    (None, "compare: the recipe has no compare section"),
])
def test_bad_compare_sections_are_one_line_errors(tmp_path, capsys, compare, message):
    path = _write(tmp_path, compare)
    assert main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"glmha-compare: error: {message}"), err
    assert "\n" not in err
    assert not (tmp_path / "run").exists()


def test_gradient_importance_needs_ground_truth_and_student_path_is_refused(tmp_path, capsys):
    compare = {"methods": ["prune"], "target_macs": 0.9, "importance": "taylor"}
    path = _write(tmp_path, compare, data={"train": {"inputs": str(tmp_path)}})
    assert main([str(path)]) == 1
    assert "compare.importance: taylor scores channels by the gradient" in capsys.readouterr().err
    path = _write(tmp_path, {"methods": ["glmha"], "target_macs": 0.9}, student={"path": str(path), "ratio": None})
    assert main([str(path)]) == 1
    assert "student.path: glmha-compare builds every student from the teacher" in capsys.readouterr().err


def test_rows_and_their_recipes(tmp_path):
    compare = {"methods": ["glmha", "prune"], "target_macs": 0.9,
               "sweep": {"ratio": [0.25, 0.75], "alpha": [0.3], "levels": [[1], [1, 2]], "at_ratio": 0.4}}
    recipe, section = load_compare_recipe(_write(tmp_path, compare))
    rows = plan_rows(recipe, section)
    assert [(r.table, r.label) for r in rows] == [
        ("methods", "GLMHA"), ("methods", "K/V pruning"), ("ratio", "ratio 0.25"), ("ratio", "ratio 0.75"),
        ("alpha", "alpha 0.3"), ("levels", "levels 1"), ("levels", "levels 1, 2")]
    students = [r.recipe.student for r in rows]
    assert students[0].target_macs == students[1].target_macs == 0.9 and students[0].energy is None
    assert (students[2].ratio, students[2].target_macs) == (0.25, None)
    assert (students[4].ratio, students[4].alpha) == (0.4, 0.3)
    assert (students[6].ratio, students[6].levels) == (0.4, ("1", "2"))
    assert rows[1].identity == {"method": "prune", "importance": "magnitude"}
    assert len({r.folder for r in rows}) == len(rows)
    assert all(r.recipe.run_dir.parent.parent == recipe.run_dir for r in rows)
