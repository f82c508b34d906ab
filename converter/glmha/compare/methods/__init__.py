"""The compared methods, one module each, by the name a recipe's `compare.methods` uses."""

from __future__ import annotations

from glmha.compare.methods.base import BUDGET_TOLERANCE, BuildContext, Built, Method
from glmha.compare.methods.glmha_conversion import GLMHAMethod
from glmha.compare.methods.linformer import LinformerMethod
from glmha.compare.methods.performer import PerformerMethod
from glmha.compare.methods.prune import PruneMethod
from glmha.compare.methods.reformer import ReformerMethod

METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (
    GLMHAMethod, PruneMethod, LinformerMethod, PerformerMethod, ReformerMethod)}

__all__ = ["BUDGET_TOLERANCE", "METHOD_CLASSES", "BuildContext", "Built", "Method"]
