"""`prune`: structured K/V channel pruning of the same layers to the same C' as GLMHA, without the calibration net.

The control that isolates what GLMHA's instance guidance is worth: per head the d' most important (K_j, V_j)
channel pairs are kept (keys and values together, one shared channel set), scored by a Torch-Pruning
importance criterion over the layer's key/value generator rows (glmha.compare.importance). The student is a
GLMHA layer with `calibration: none` and no token bias, so it is exported and reloaded like any glmha export.
"""

from __future__ import annotations

import dataclasses

import torch

from glmha.archs import RestorationModel
from glmha.compare.importance import channel_importance, gradient_statistics, keep_channels
from glmha.compare.methods.base import BuildContext, Built, Method, copy_of_teacher
from glmha.compare.section import CompareError, CompareSection
from glmha.convert.initialise import build_glmha_layer
from glmha.distill.recipe import Recipe
from glmha.record import Conversion


class PruneMethod(Method):
    name = "prune"
    title = "K/V pruning"

    def identity(self, section: CompareSection) -> dict:
        identity = {"method": self.name, "importance": section.importance}
        if section.importance != "magnitude":
            identity["importance_batches"] = section.importance_batches
        return identity

    def build(self, recipe: Recipe, teacher: RestorationModel, context: BuildContext) -> Built:
        plan, _, _ = context.glmha_plan(recipe, teacher)
        widths = plan.converted  # name -> C'
        criterion = context.section.importance
        layers = dict(teacher.csa_layers())
        statistics = self._gradients(recipe, teacher, list(widths), context) if criterion != "magnitude" else None
        settings = dataclasses.replace(plan.glmha, calibration="none", token_bias=False, values="gather")
        replacements = {}
        for name, reduced in widths.items():
            layer = layers[name]
            scores = _scores(layer, criterion, statistics)
            tokens = keep_channels(scores, layer.num_heads, reduced // layer.num_heads)
            replacements[name] = build_glmha_layer(layer, reduced, settings, tokens, seed=plan.settings.seed)
        student = copy_of_teacher(teacher)
        student.replace_layers(replacements)
        record = student.record
        student.record = dataclasses.replace(record, conversion=Conversion(
            settings=settings, reduced=dict(widths), init="select",
            plan={**plan.to_json(), "compare_method": {"method": self.name, "importance": criterion}}))
        return Built(student, setting=f"{criterion} importance, C' as GLMHA's plan ({len(widths)} layers)")

    def _gradients(self, recipe: Recipe, teacher: RestorationModel, names: list[str], context: BuildContext):
        from glmha.distill.losses import distance_fn

        batches = training_batches(recipe, teacher, context.section.importance_batches)
        context.say(f"prune: scoring channels by {context.section.importance} on {len(batches)} training batches")
        return gradient_statistics(teacher, names, batches, distance_fn(recipe.loss.distance))


def _scores(layer, criterion: str, statistics) -> torch.Tensor:
    """(C,) importance of each channel pair: taylor from the summed gradients, hessian from the per-sample mean
    of the squared gradients (glmha.compare.importance.gradient_statistics)."""
    if criterion == "magnitude":
        return channel_importance(layer, criterion)
    sums, squares = statistics
    if criterion == "hessian":
        return channel_importance(layer, criterion, squared_gradients=squares)
    return channel_importance(layer, criterion, gradients=sums)


def training_batches(recipe: Recipe, teacher: RestorationModel, count: int) -> list:
    """The first `count` training batches as the run draws them (inputs tuple, target): what gradient-based
    importance is measured on. Refused when the training data has no ground truth."""
    from torch.utils.data import DataLoader

    from glmha.distill.data import TrainPatches
    from glmha.distill.engine import open_data
    from glmha.distill.spectral_data import SpectralPatches

    require_ground_truth(recipe, "taylor and hessian")
    source = open_data(recipe, teacher, "train")
    patches = SpectralPatches if recipe.data.train.spectral else TrainPatches
    samples = patches(source, patch_size=recipe.data.patch_size, length=count * recipe.data.batch_size,
                      seed=recipe.train.seed, flips=recipe.data.flips)
    batches = []
    for batch in DataLoader(samples, batch_size=recipe.data.batch_size, shuffle=False):
        inputs = (batch["input"], batch["mask"]) if "mask" in batch else (batch["input"],)
        batches.append((inputs, batch["target"]))
    return batches


def require_ground_truth(recipe: Recipe, criterion: str) -> None:
    """Gradient-based importance needs a loss against ground truth: refuse, in one line, training data without."""
    if not recipe.data.train.has_target:
        raise CompareError(f"compare.importance: {criterion} scores channels by the gradient of the loss against "
                           f"ground truth, but data.train has none (inputs only); use magnitude")
