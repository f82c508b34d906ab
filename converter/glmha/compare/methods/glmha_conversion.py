"""`glmha`: this project's conversion at the budget, as glmha-distill would build it from the row's recipe."""

from __future__ import annotations

from glmha.archs import RestorationModel
from glmha.compare.methods.base import BuildContext, Built, Method
from glmha.distill.recipe import Recipe


class GLMHAMethod(Method):
    name = "glmha"
    title = "GLMHA"

    def build(self, recipe: Recipe, teacher: RestorationModel, context: BuildContext) -> Built:
        from glmha.convert.api import convert

        plan, spectra, calibration = context.glmha_plan(recipe, teacher)
        student = convert(teacher, plan, spectra, inputs=calibration)
        glmha = plan.glmha
        return Built(student, setting=f"{plan.settings.rule()}, alpha {glmha.alpha:g}, {len(plan.converted)} "
                     f"layers converted", note="")
