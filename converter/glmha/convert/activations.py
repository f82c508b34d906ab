"""What the CSA layers see on calibration inputs: their inputs and outputs, captured by forward hooks,
and the model's output with some layers swapped for candidates (without touching the model)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Inputs = tuple[torch.Tensor, ...]


def batched(inputs: Iterable[Inputs]) -> list[Inputs]:
    """Consecutive input tuples of equal shapes concatenated along the batch: fewer, larger forwards."""
    groups: list[list[Inputs]] = []
    for item in inputs:
        if groups and [t.shape[1:] for t in groups[-1][0]] == [t.shape[1:] for t in item]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [tuple(torch.cat(parts) for parts in zip(*group, strict=True)) for group in groups]


@dataclass
class LayerRecord:
    inputs: list[Inputs] = field(default_factory=list)  # one tuple per forward
    outputs: list[torch.Tensor] = field(default_factory=list)


def capture(model: nn.Module, inputs: Sequence[Inputs], names: Sequence[str],
            keep_outputs: bool = True) -> tuple[list[torch.Tensor], dict[str, LayerRecord]]:
    """Run the model on every input tuple; return its outputs and, per named layer, what it received
    (and returned)."""
    run = TeacherRun(model, inputs, names, keep_outputs=keep_outputs, replay=False)
    return run.outputs, run.layers


class TeacherRun:
    """The model's forward passes over calibration inputs, recorded: its outputs, what each named layer
    received and returned, and (with `replay`) the outputs of the modules around them, so that a pass
    with some layers replaced can skip every module that finished before the first of them started
    (`run`): its output cannot depend on them. Roughly halves the cost of per-layer measurements."""

    def __init__(self, model: nn.Module, inputs: Sequence[Inputs], names: Sequence[str], *,
                 keep_outputs: bool = True, replay: bool = True) -> None:
        self.model, self.inputs = model, list(inputs)
        self.layers = {name: LayerRecord() for name in names}
        self.cached: dict[str, list[object]] = {}  # module -> its output per input tuple
        self.span: dict[str, tuple[int, int]] = {}  # module -> (start tick, end tick) in one pass
        self.calls: dict[str, int] = {}
        watched = _around(model, names) if replay else set()
        tick = [0]
        handles = []

        def before(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                tick[0] += 1
                self.calls[name] = self.calls.get(name, 0) + 1
                self.span[name] = (tick[0], self.span.get(name, (0, 0))[1])
            return hook

        def after(name: str):
            def hook(module: nn.Module, args: tuple, output: object) -> None:
                tick[0] += 1
                self.span[name] = (self.span[name][0], tick[0])
                if name in self.layers:
                    self.layers[name].inputs.append(tuple(a.detach() for a in args))
                    if keep_outputs:
                        self.layers[name].outputs.append(output.detach())
                if name in watched:
                    self.cached.setdefault(name, []).append(output)
            return hook

        for name in {*names, *watched}:
            module = model.get_submodule(name)
            handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        try:
            with torch.no_grad():
                self.outputs = []
                for args in self.inputs:
                    tick[0] = 0
                    self.calls.clear()
                    self.outputs.append(model(*args).detach())
        finally:
            for handle in handles:
                handle.remove()
        self.single = {name for name, count in self.calls.items() if count == 1}

    def run(self, replacements: Mapping[str, nn.Module]) -> list[torch.Tensor]:
        """The model's outputs with the named layers replaced, skipping what cannot have changed."""
        first = min(self.span[name][0] for name in replacements)
        ancestors = {prefix for name in replacements for prefix in _prefixes(name)}
        skip = [name for name in self.cached if name in self.single and self.span[name][1] < first
                and name not in ancestors]
        outputs = []
        with swapped(self.model, replacements), torch.no_grad():
            for index, args in enumerate(self.inputs):
                patched = [self.model.get_submodule(name) for name in skip]
                for name, module in zip(skip, patched, strict=True):
                    module.forward = (lambda *a, _out=self.cached[name][index], **k: _out)  # type: ignore[method-assign]
                try:
                    outputs.append(self.model(*args))
                finally:
                    for module in patched:
                        del module.forward
        return outputs


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _around(model: nn.Module, names: Sequence[str]) -> set[str]:
    """The children of every ancestor of the named layers (the model itself included): the modules
    whose outputs a replay may reuse."""
    found = set()
    for name in names:
        for parent in ["", *_prefixes(name)]:
            for child, _ in model.get_submodule(parent).named_children():
                found.add(f"{parent}.{child}" if parent else child)
    return found - set(names)


@contextlib.contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """The model with the named submodules replaced, put back on exit (also after an error)."""
    originals = {name: model.get_submodule(name) for name in replacements}
    try:
        for name, new in replacements.items():
            _set(model, name, new)
        yield model
    finally:
        for name, old in originals.items():
            _set(model, name, old)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def run_with(model: nn.Module, inputs: Sequence[Inputs],
             replacements: Mapping[str, nn.Module]) -> list[torch.Tensor]:
    """The model's outputs with the named layers replaced (the model is unchanged afterwards)."""
    with swapped(model, replacements), torch.no_grad():
        return [model(*args) for args in inputs]


def mean_squared_error(outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> float:
    """One MSE over every element of every output (float64 accumulation)."""
    total, count = 0.0, 0
    for out, ref in zip(outputs, references, strict=True):
        total += float((out.double() - ref.double()).pow(2).sum())
        count += ref.numel()
    return total / max(count, 1)
