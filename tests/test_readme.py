"""README's set-up commands are the ones CI runs: the install line and the test command agree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_installs_and_tests_exactly_as_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first, second = _bash_blocks(readme)[:2]
    install = re.search(r"pip install [^&\n]+", first).group(0).strip()
    assert install in ci
    tests = second.strip().split("&&", 1)[1].strip()  # after activating the environment
    assert tests in ci
    assert "constraints.txt" in install and (ROOT / "constraints.txt").read_text().count("torch==") == 1


def test_readme_main_job_runs_on_the_shipped_teacher(tmp_path, monkeypatch, capsys) -> None:
    """README's first command, convert then distil, on the shipped teacher with a reduced step count."""
    import json
    import shlex

    from glmha.cli.convert import main as convert_main
    from glmha.distill.cli import main as distill_main
    from glmha.distill.table import TABLE_HEADER

    first = _bash_blocks((ROOT / "README.md").read_text())[0]
    commands = [shlex.split(part) for part in first.split("&&")]
    convert = next(c for c in commands if c[0] == "glmha-convert")[1:]
    distill = next(c for c in commands if c[0] == "glmha-distill")[1:]
    export = tmp_path / "student.glmha.safetensors"
    convert[convert.index("-o") + 1] = str(export)
    convert[convert.index("--plot") + 1] = str(tmp_path / "plots")
    convert += ["--calib-size", "32", "--calib-limit", "2"]  # measure sensitivity on small inputs: a fast test
    monkeypatch.chdir(ROOT)  # the recipe names the teacher relative to the repository root
    assert convert_main(convert) == 0
    assert list((tmp_path / "plots").glob("*.png"))
    overrides = [f"student.path={export}", f"output.dir={tmp_path / 'run'}", "train.steps=3", "eval.every=3",
                 "train.checkpoint_every=3", "data.val_crop=64"]
    assert distill_main([*distill, *[a for o in overrides for a in ("--set", o)], "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    teacher, converted, distilled = report["rows"]
    assert [teacher["name"], converted["name"], distilled["name"]] == [
        "teacher", "converted (before distillation)", f"distilled (step {report['best_step']})"]
    assert converted["params"] == distilled["params"] < teacher["params"]
    assert converted["macs_linear"] < teacher["macs_linear"] and converted["macs_total"] < teacher["macs_total"]
    assert teacher["file_bytes"] == (ROOT / "checkpoints" / "restormer_denoise_s25.pth").stat().st_size
    assert distilled["file_bytes"] == (tmp_path / "run" / "student.safetensors").stat().st_size
    assert distilled["psnr_teacher"] >= converted["psnr_teacher"] and teacher["psnr_gt"] > 25
    assert TABLE_HEADER in out and TABLE_HEADER in (ROOT / "README.md").read_text()  # README shows the real table

    # rerunning the job: the same export bytes, so distillation recognises its student and reprints the table
    first_export = export.read_bytes()
    assert convert_main(convert) == 0
    assert export.read_bytes() == first_export
    assert distill_main([*distill, *[a for o in overrides for a in ("--set", o)], "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert TABLE_HEADER in again and "| distilled (step" in again
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report


def _table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the first Markdown table whose header starts with `header_start`, as cells."""
    lines = markdown.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _same_cell(shown: str, measured: str) -> bool:
    """Equal text, or numbers that differ by at most one unit of the last digit README prints."""
    if shown == measured:
        return True
    number = re.compile(r"-?[\d,]+\.?(\d*)")
    a, b = number.match(shown), number.match(measured)
    if not (a and b and a.end() == len(shown.split(" ")[0])):
        return False
    unit = 10.0 ** -len(a.group(1))
    return abs(float(a.group(0).replace(",", "")) - float(b.group(0).replace(",", ""))) <= unit * 1.001


def test_readme_spectral_table_is_what_the_tiny_recipe_prints(tmp_path, monkeypatch) -> None:
    """The spectral section's table is the engine's output for recipes/tiny_cpu_spectral.yaml as shipped."""
    from glmha.distill.cli import main as distill_main

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Spectral models: MST++ and MST-L", 1)[1].split("\n### ", 1)[0]
    assert "glmha-distill recipes/tiny_cpu_spectral.yaml" in section
    monkeypatch.chdir(ROOT)
    assert distill_main(["recipes/tiny_cpu_spectral.yaml", "--set", f"output.dir={tmp_path / 'run'}",
                         "--no-progress"]) == 0
    measured = _table_rows((tmp_path / "run" / "report.md").read_text(), "| model |")
    shown = _table_rows(section, "| model |")
    assert len(shown) == len(measured) == 3
    for shown_row, measured_row in zip(shown, measured, strict=True):
        assert len(shown_row) == len(measured_row)
        for a, b in zip(shown_row, measured_row, strict=True):
            assert _same_cell(a, b), (shown_row[0], a, b)


def test_readme_restore_and_export_block_runs_and_reruns(tmp_path, monkeypatch, capsys) -> None:
    """The restore/export block of README on the shipped teacher and a converted student, on small crops."""
    import shlex

    import glmha
    from glmha.restore.cli import main as restore_main

    from conftest import load_example

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Restoring files and exporting", 1)[1].split("\n## ", 1)[0]
    commands = [shlex.split(part) for part in _bash_blocks(section)[0].split("&&")]
    assert [c[0] for c in commands] == ["python", "glmha-restore", "glmha-restore", "glmha-export"]
    student = tmp_path / "student.safetensors"  # stands in for the README job's distilled student
    teacher = glmha.load(ROOT / "checkpoints" / "restormer_denoise_s25.pth")
    glmha.export(glmha.convert_to_glmha(teacher, ratio=0.5, progress=False)[0], student)
    places = {"runs/restormer_denoise_s25/student.safetensors": str(student)}

    def local(argument: str) -> str:
        if argument in places:
            return places[argument]
        return str(tmp_path / argument) if argument.startswith("runs/") else argument

    monkeypatch.chdir(ROOT)
    for _ in range(2):  # rerunning keeps the outputs and prints the same scores
        write = [local(a) for a in commands[0][2:]] + ["--size", "64"]  # 64x64 crops: a fast test
        assert load_example("write_noisy_photos").main(write) == 0
        for command in commands[1:3]:
            small_tiles = ["--no-progress", "--tile", "32", "--overlap", "8"]
            assert restore_main([local(a) for a in command[1:]] + small_tiles) == 0
        printed = capsys.readouterr().out
        assert printed.count("mean  PSNR") == 2
    assert "kept (exists)" in printed
    for folder in ("teacher", "student"):
        rows = (tmp_path / "runs" / "restored" / folder / "metrics.csv").read_text().splitlines()
        assert rows[0] == "file,output,truth,psnr,ssim" and len(rows) == 5
        assert float(rows[-1].split(",")[3]) > 25  # denoised 64x64 crops at sigma 25
    # the export's arguments parse as written; exporting is tested in tests/test_deploy_export.py (slow here)
    from glmha.deploy.cli import build_parser

    export = build_parser().parse_args([local(a) for a in commands[3][1:]])
    assert (export.format, export.model) == ("onnx", str(student))
