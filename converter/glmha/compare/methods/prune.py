"""`prune`: structured K/V channel pruning of the same layers to the same C' as GLMHA, without the calibration net.

The control that isolates what GLMHA's instance guidance is worth: per head the d' most important (K_j, V_j)
channel pairs are kept (keys and values together, one shared channel set), scored by a Torch-Pruning
importance criterion over the layer's key/value generator rows (glmha.compare.importance). The student is a
GLMHA layer with `calibration: none` and no token bias, so it is exported and reloaded like any glmha export.
"""

from __future__ import annotations

import dataclasses

import torch

from glmha.archs import RestorationModel, adapter_for
from glmha.compare.methods.base import BuildContext, Built, Method, copy_of_teacher
from glmha.compare.section import CompareError, CompareSection
from glmha.distill.recipe import Recipe
from glmha.layers import GLMHASettings
from glmha.record import Conversion


class PruneMethod(Method):
    name = "prune"
    title = "K/V pruning"
    knobs = ("compare.importance (magnitude | taylor | hessian, Torch-Pruning's criteria), "
             "compare.importance_batches (taylor / hessian: training batches scored); C' per layer as GLMHA's "
             "plan")

    def identity(self, section: CompareSection) -> dict:
        identity = {"method": self.name, "importance": section.importance}
        if section.importance != "magnitude":
            identity["importance_batches"] = section.importance_batches
        return identity

    def build(self, recipe: Recipe, teacher: RestorationModel, context: BuildContext) -> Built:
        from glmha.compare.importance import channel_importance, keep_channels

        plan, _, _ = context.glmha_plan(recipe, teacher)
        widths = plan.converted  # name -> C'
        criterion = context.section.importance
        layers = dict(teacher.csa_layers())
        statistics = self._gradients(recipe, teacher, list(widths), context) if criterion != "magnitude" else None
        settings = dataclasses.replace(plan.glmha, calibration="none", token_bias=False, values="gather")
        replacements = {}
        for index, (name, reduced) in enumerate(widths.items()):
            layer = layers[name]
            scores = _scores(layer, criterion, statistics, channel_importance)
            tokens = keep_channels(scores, layer.num_heads, reduced // layer.num_heads)
            replacements[name] = _pruned_layer(layer, reduced, tokens, settings, seed=plan.settings.seed + index)
        student = copy_of_teacher(teacher)
        student.replace_layers(replacements)
        record = student.record
        student.record = dataclasses.replace(record, conversion=Conversion(
            settings=settings, reduced=dict(widths), init="select",
            plan={**plan.to_json(), "compare_method": {"method": self.name, "importance": criterion}}))
        return Built(student, setting=f"{criterion} importance, C' as GLMHA's plan ({len(widths)} layers)")

    def _gradients(self, recipe: Recipe, teacher: RestorationModel, names: list[str], context: BuildContext):
        from glmha.compare.importance import gradient_statistics
        from glmha.distill.losses import distance_fn

        batches = training_batches(recipe, teacher, context.section.importance_batches)
        context.say(f"prune: scoring channels by {context.section.importance} on {len(batches)} training batches")
        return gradient_statistics(teacher, names, batches, distance_fn(recipe.loss.distance))


def _scores(layer, criterion: str, statistics, channel_importance) -> torch.Tensor:
    """(C,) importance of each channel pair: taylor from the summed gradients, hessian from the per-sample mean
    of the squared gradients (glmha.compare.importance.gradient_statistics)."""
    if criterion == "magnitude":
        return channel_importance(layer, criterion)
    sums, squares = statistics
    if criterion == "hessian":
        return channel_importance(layer, criterion, squared_gradients=squares)
    return channel_importance(layer, criterion, gradients=sums)


def _pruned_layer(layer, reduced: int, tokens, settings: GLMHASettings, seed: int):
    """The GLMHA layer without calibration net that keeps `tokens` (per head, single channels) of `layer`."""
    adapter = adapter_for(layer)
    reference = next(layer.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = adapter.empty_glmha(layer, reduced, settings)
    new = new.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        adapter.initialise(layer, new, tokens, [], "select")
    return new.train(layer.training)


def training_batches(recipe: Recipe, teacher: RestorationModel, count: int) -> list:
    """The first `count` training batches as the run draws them (inputs tuple, target): what gradient-based
    importance is measured on. Refused when the training data has no ground truth."""
    from torch.utils.data import DataLoader

    from glmha.distill.data import TrainPatches
    from glmha.distill.engine import _open_data
    from glmha.distill.spectral_data import SpectralPatches

    if not recipe.data.train.has_target:
        raise CompareError("compare.importance: taylor and hessian score channels by the gradient of the loss "
                           "against ground truth, but data.train has none (inputs only); use magnitude")
    source = _open_data(recipe, teacher, "train")
    patches = SpectralPatches if recipe.data.train.spectral else TrainPatches
    samples = patches(source, patch_size=recipe.data.patch_size, length=count * recipe.data.batch_size,
                      seed=recipe.train.seed, flips=recipe.data.flips)
    batches = []
    for batch in DataLoader(samples, batch_size=recipe.data.batch_size, shuffle=False):
        inputs = (batch["input"], batch["mask"]) if "mask" in batch else (batch["input"],)
        batches.append((inputs, batch["target"]))
    return batches
