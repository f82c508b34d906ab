"""What Linformer and Performer share: a replacement attention core in each layer GLMHA's plan converts, its
per-head width (the method's knob) fitted to the MACs (b) budget.

Both keep the full query/key/value generation and only change the attention products, so on short channel
sequences they can save at most those products' share of the MACs: when even their smallest width exceeds the
budget they are built at GLMHA's own per-head widths and reported at their real cost (the GLMHA paper's
reading), with the cheapest cost they could reach in the note.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from glmha.archs import RestorationModel
from glmha.compare.methods.base import BuildContext, Built, Method, copy_of_teacher
from glmha.compare.section import CompareSection
from glmha.compare.widths import choose_widths, cost_lines
from glmha.distill.recipe import Recipe
from glmha.exports import export_baseline
from glmha.layers import CSALayer


class CoreMethod(Method):
    """A method that installs `attention_core` modules; subclasses make the core and say its width range."""

    knob: ClassVar[str]  # the compare key that fixes the width (null: fitted to the budget)
    width_name: ClassVar[str]  # what the width counts, in words

    def core(self, layer: CSALayer, width: int, seed: int) -> nn.Module:
        raise NotImplementedError

    def smallest(self, layer: CSALayer) -> int:
        return 1

    def largest(self, layer: CSALayer) -> int:
        return layer.head_dim

    def prepare(self, core: nn.Module, layer: CSALayer, order: list[list[int]]) -> None:
        """Initialise a fresh core; `order` lists, per head, the head's channels by the spectrum's preference."""

    def identity(self, section: CompareSection) -> dict:
        return {"method": self.name, self.knob: getattr(section, self.knob)}

    def build(self, recipe: Recipe, teacher: RestorationModel, context: BuildContext) -> Built:
        from glmha.convert.api import analyse

        layers = dict(teacher.csa_layers())
        levels = recipe.student.levels
        eligible = [n for n in layers if not levels or teacher.csa_level(n) in levels]  # the recipe's levels
        smallest = {n: self.smallest(layers[n]) for n in eligible}
        largest = {n: self.largest(layers[n]) for n in eligible}
        fixed = getattr(context.section, self.knob)
        note = ""
        if fixed is not None:  # the user's width, in the layers GLMHA converts
            plan, _, _ = context.glmha_plan(recipe, teacher)
            widths = {n: max(smallest[n], min(fixed, largest[n])) for n in plan.converted}
            setting = f"{self.knob} {fixed}"
        else:  # the widest settings that meet the budget, over every eligible layer
            height, width = recipe.eval.input_size
            total, lines = cost_lines(teacher, eligible, lambda layer, w: self.core(layer, w, 0), smallest,
                                      largest, height, width, kind=self.name)
            budget = round(total * context.section.target_macs)
            choice = choose_widths(total, lines, smallest, largest, budget)
            if choice.reachable:
                widths, setting = choice.widths, f"{self.width_name} fitted to the budget"
            else:  # the paper's reading: GLMHA's layers and widths, at the method's real cost
                plan, _, _ = context.glmha_plan(recipe, teacher)
                widths = {n: max(smallest[n], plan.converted[n] // layers[n].num_heads) for n in plan.converted}
                setting = f"{self.width_name} = GLMHA's d' per layer"
                note = (f"cannot meet the budget: even {min(smallest.values())} {self.width_name} per head in "
                        f"every layer costs {choice.floor / total - 1:+.2%} MACs (b) against the teacher (budget "
                        f"{budget / total - 1:+.2%}); built at GLMHA's widths, reported at its real cost")
        names = list(widths)
        spectra = analyse(teacher, mode=recipe.student.spectrum)  # which channels a selection keeps first
        order = {s.name: [list(head.order) for head in s.heads] for s in spectra}
        student = copy_of_teacher(teacher)
        for index, name in enumerate(names):
            layer = student.get_submodule(name)
            core = self.core(layer, widths[name], seed=recipe.student.seed + index)
            reference = next(layer.parameters())
            core = core.to(device=reference.device, dtype=reference.dtype)
            self.prepare(core, layer, order[name])
            layer.attention_core = core
        values = sorted(widths.values())
        span = f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"
        return Built(student, setting=f"{setting}: {span} per head in {len(names)} layers", note=note)

    def export(self, student: RestorationModel, path: Path) -> None:
        export_baseline(student, path, self.name)
