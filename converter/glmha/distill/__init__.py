"""Distillation of a converted student against its teacher, driven by YAML recipes.

    recipe = glmha.distill.load_recipe("recipes/tiny_cpu.yaml", ["train.steps=50"])
    result = glmha.distill.distill(recipe)            # resumes from the last checkpoint if any
    student = glmha.load(result.run_dir / "student.safetensors")
"""

from collections.abc import Callable

from glmha.distill.engine import Distillation, RunResult, TrainingDiverged
from glmha.distill.recipe import Recipe, RecipeError, load_recipe, parse_recipe


def distill(recipe: Recipe, *, restart: bool = False, stop_at: int | None = None, dry_run: bool = False,
            progress: bool = True, say: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) a recipe; `say` receives the log lines (default: print). See
    glmha.distill.engine.Distillation."""
    return Distillation(recipe, restart=restart, stop_at=stop_at, dry_run=dry_run, progress=progress,
                        say=say).run()


__all__ = ["Distillation", "Recipe", "RecipeError", "RunResult", "TrainingDiverged", "distill", "load_recipe",
           "parse_recipe"]
