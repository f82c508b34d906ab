"""`glmha-compare`: every method (and sweep row) as an ordinary distillation run folder, then the tables.

Each row is the recipe with its own `student` rule and output folder (`<output.dir>/methods/<method>`,
`<output.dir>/sweep/<table>-<value>`), distilled by glmha.distill's engine with the method's student builder
and exporter. A row whose folder holds a finished report made by the same recipe and method settings is read,
not rerun; an unfinished one resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmha.compare.methods import METHOD_CLASSES, BuildContext, Method
from glmha.compare.methods.prune import require_ground_truth
from glmha.compare.section import CompareError, CompareSection, parse_compare
from glmha.distill.recipe import (
    Recipe,
    StudentSection,
    check_files,
    load_recipe_and_compare,
    recipe_to_yaml,
)
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write_text

METHOD_FILE = "method.json"
REPORT_FILE = "report.json"
TABLE_TITLES = {"methods": "Methods at equal MACs", "ratio": "K/V reduction ratio",
                "alpha": "Calibration strength alpha", "levels": "Levels converted"}


@dataclass(frozen=True)
class Row:
    """One student to build and distil: its table, method, label in the table and its own recipe."""

    key: str  # folder name below methods/ or sweep/
    table: str  # methods | ratio | alpha | levels
    label: str
    method: Method
    recipe: Recipe
    identity: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.recipe.run_dir


@dataclass
class RowResult:
    """What the tables need from a row: its run's report (teacher / converted / distilled rows), or why it was
    not built."""

    row: Row
    report: dict[str, Any] | None = None
    setting: str = ""
    note: str = ""
    reason: str | None = None  # not applicable: why


def load_compare_recipe(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Recipe, CompareSection]:
    """The recipe and its `compare:` section, which glmha-compare needs, with the checks only it makes."""
    recipe, section = load_recipe_and_compare(path, overrides, check=False)
    if section is None:
        parse_compare(None)  # the one-line refusal of a recipe without the section
    if recipe.student.path is not None:
        raise CompareError("student.path: glmha-compare builds every student from the teacher; give conversion "
                           "settings (or none) instead of an export")
    if "prune" in section.methods and section.importance != "magnitude":
        require_ground_truth(recipe, section.importance)
    check_files(recipe)
    return recipe, section


def _student(recipe: Recipe, **rule: Any) -> StudentSection:
    """The recipe's conversion settings with one rule for C' (the others cleared)."""
    cleared = {"energy": None, "ratio": None, "target_macs": None, "target_params": None, "min_fidelity": None}
    try:
        return dataclasses.replace(recipe.student, **{**cleared, **rule})
    except GlmhaError as error:
        raise CompareError(f"compare: {error}") from None


def plan_rows(recipe: Recipe, section: CompareSection) -> list[Row]:
    """Every row of every table, in the order they run and are shown."""
    rows = []
    run_dir = recipe.run_dir

    def add(key: str, table: str, label: str, method: Method, student: StudentSection, folder: Path) -> None:
        row_recipe = dataclasses.replace(recipe, student=student,
                                         output=dataclasses.replace(recipe.output, dir=str(folder / key)))
        rows.append(Row(key, table, label, method, row_recipe, method.identity(section)))

    for name in section.methods:
        method = METHOD_CLASSES[name]()
        student = _student(recipe, target_macs=section.target_macs) if section.target_macs else recipe.student
        add(name, "methods", method.title, method, student, run_dir / "methods")
    glmha = METHOD_CLASSES["glmha"]()
    sweep = section.sweep
    for ratio in sweep.ratio:
        add(f"ratio-{ratio:g}", "ratio", f"ratio {ratio:g}", glmha, _student(recipe, ratio=ratio),
            run_dir / "sweep")
    for alpha in sweep.alpha:
        student = dataclasses.replace(_student(recipe, ratio=sweep.at_ratio), alpha=alpha)
        add(f"alpha-{alpha:g}", "alpha", f"alpha {alpha:g}", glmha, student, run_dir / "sweep")
    for levels in sweep.levels:
        student = dataclasses.replace(_student(recipe, ratio=sweep.at_ratio), levels=tuple(levels))
        add(f"levels-{'+'.join(levels)}", "levels", f"levels {', '.join(levels)}", glmha, student,
            run_dir / "sweep")
    return rows


def _finished(row: Row) -> dict[str, Any] | None:
    """The saved method record of a row whose run finished with this recipe and these settings, else None."""
    folder = row.folder
    try:
        saved = json.loads((folder / METHOD_FILE).read_text(encoding="utf-8"))
        recipe_text = (folder / "recipe.yaml").read_text(encoding="utf-8")
        finished = (folder / REPORT_FILE).is_file()
    except (OSError, ValueError):
        return None
    if not finished or saved.get("identity") != row.identity or recipe_text != recipe_to_yaml(row.recipe):
        return None
    return saved


def run_rows(rows: list[Row], section: CompareSection, *, restart: bool = False, progress: bool = True,
             say: Callable[[str], None] = print) -> tuple[list[RowResult], str] | None:
    """Run (or read) every row: the results and the metric that picked each best student (the recipe's
    eval.select, else the teacher family's); None when a run was stopped (by a signal), after saving it."""
    from glmha.distill.engine import Distillation, load_teacher

    context = BuildContext(section=section, say=say)
    teacher = load_teacher(rows[0].recipe) if rows else None
    results = []
    for number, row in enumerate(rows, 1):
        where = f"[{number}/{len(rows)}] {row.label}"
        reason = row.method.not_applicable(teacher)
        if reason is not None:
            say(f"\n== {where}: not applicable: {reason}")
            results.append(RowResult(row, reason=reason))
            continue
        saved = None if restart else _finished(row)
        if saved is None:
            say(f"\n== {where} ({row.table}): {row.folder}")
            built: dict[str, Any] = {}

            def builder(recipe: Recipe, teacher, say, row=row, built=built):
                built["built"] = row.method.build(recipe, teacher, context)
                return built["built"].student

            identity = {"compare": json.dumps(row.identity, sort_keys=True)}
            result = Distillation(row.recipe, restart=restart, progress=progress, say=say, student_builder=builder,
                                  exporter=row.method.export, identity=identity).run()
            if not result.finished:
                return None
            made = built["built"]
            saved = {"method": row.method.name, "setting": made.setting, "note": made.note,
                     "identity": row.identity}
            atomic_write_text(row.folder / METHOD_FILE, json.dumps(saved, indent=2, sort_keys=True) + "\n")
        else:
            say(f"\n== {where}: finished earlier, read from {row.folder}")
        report = json.loads((row.folder / REPORT_FILE).read_text(encoding="utf-8"))
        results.append(RowResult(row, report=report, setting=saved["setting"], note=saved["note"]))
    return results, rows[0].recipe.eval.select or teacher.selection_metric
