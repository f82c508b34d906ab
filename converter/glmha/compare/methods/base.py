"""What every compared method shares: the interface, what a build returns and the context it builds in.

A method turns the recipe's teacher into a student at the comparison's MACs (b) budget. The baselines
change the same layers GLMHA's plan at that budget converts (`BuildContext.glmha_plan`, computed once per
process and shared), so every row differs from GLMHA in the method alone.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from glmha.archs import RestorationModel
from glmha.compare.section import CompareSection
from glmha.distill.recipe import Recipe, recipe_to_yaml
from glmha.exports import export_model
from glmha.record import ModelRecord

BUDGET_TOLERANCE = 0.01  # a student meets the budget when its MACs (b) are within 1 % of it


@dataclass
class Built:
    """A method's student and how it was set: `setting` in words (the knob's value), `note` what a reader
    must know (why the budget is not met, what is trained)."""

    student: RestorationModel
    setting: str
    note: str = ""


@dataclass
class BuildContext:
    """The comparison's shared state: its section, where to speak, and the GLMHA plans already made."""

    section: CompareSection
    say: Callable[[str], None] = print
    # (recipe, teacher, say) -> (plan, spectra, calibration); default: glmha.distill.engine.plan_student
    planner: Callable[..., tuple[Any, Any, Any]] | None = None
    _plans: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    def glmha_plan(self, recipe: Recipe, teacher: RestorationModel) -> tuple[Any, Any, Any]:
        """(plan, spectra, calibration) of the recipe's student settings, made once per settings (a budget plan
        measures sensitivity, which takes a while) and reused by every row built from the same settings (the
        output folder, the one thing rows of one plan differ in, is left out of the key)."""
        from glmha.distill.engine import plan_student

        key = recipe_to_yaml(dataclasses.replace(recipe, output=dataclasses.replace(recipe.output, dir="-")))
        if key not in self._plans:
            self._plans[key] = (self.planner or plan_student)(recipe, teacher, self.say)
        return self._plans[key]


class Method:
    """One way to make the teacher cheaper; subclasses set `name` and `title` and build."""

    name: ClassVar[str]
    title: ClassVar[str]  # as shown in the tables

    def not_applicable(self, teacher: RestorationModel) -> str | None:
        """Why this method cannot be built from this teacher (None: it can)."""
        return None

    def identity(self, section: CompareSection) -> dict[str, Any]:
        """The settings that make this method's student, besides the recipe (a changed one is a different run)."""
        return {"method": self.name}

    def build(self, recipe: Recipe, teacher: RestorationModel, context: BuildContext) -> Built:
        raise NotImplementedError

    def export(self, student: RestorationModel, path: Path) -> None:
        """Write the best student: a glmha export (methods whose students glmha.load rebuilds)."""
        export_model(student, path)


def copy_of_teacher(teacher: RestorationModel) -> RestorationModel:
    """A deep copy that remembers the teacher's file, as every student does."""
    student = copy.deepcopy(teacher)
    student.record = ModelRecord(source_sha256=teacher.record.source_sha256,
                                 source_file=teacher.record.source_file)
    return student
