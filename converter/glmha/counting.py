"""Parameter and MAC counting (SPEC section 5).

One dispatcher-level count, reported two ways: (a) convolutions and linear layers only, the
convention behind the published Restormer figure; (b) every counted product, including the
attention matrix products. MACs are FLOPs / 2 of torch's flop formulas. The count runs on meta
tensors, so it costs no compute and no memory even for full-size models at large inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

LINEAR_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)
CONV_OPS = {torch.ops.aten.convolution, torch.ops.aten._convolution}


@dataclass
class MacCount:
    linear: int = 0  # convolutions and linear layers
    total: int = 0  # everything, attention matrix products included


@dataclass
class CostReport:
    macs: MacCount
    modules: dict[str, MacCount] = field(default_factory=dict)  # per requested module
    input_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)  # tensor args per module


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(
    model: nn.Module, inputs: Sequence[torch.Tensor], *, modules: Iterable[str] = ()
) -> CostReport:
    """MACs of one forward pass with `inputs`, in total and for the named submodules."""
    wanted = {id(model.get_submodule(name)): name for name in modules}
    report = CostReport(MacCount(), {name: MacCount() for name in wanted.values()})
    meta_state = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    meta_inputs = [torch.empty_like(t, device="meta") for t in inputs]
    stack: list[nn.Module] = []

    def push(module: nn.Module, args: tuple) -> None:
        stack.append(module)
        name = wanted.get(id(module))
        if name is not None and name not in report.input_shapes:
            report.input_shapes[name] = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]

    def pop(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(push)
    post = nn.modules.module.register_module_forward_hook(pop)
    try:
        with torch.no_grad(), _MacRecorder(stack, wanted, report):
            torch.func.functional_call(model, meta_state, tuple(meta_inputs))
    finally:
        pre.remove()
        post.remove()
    return report


class _MacRecorder(TorchDispatchMode):
    def __init__(self, stack: list[nn.Module], wanted: dict[int, str], report: CostReport) -> None:
        super().__init__()
        self.stack = stack
        self.wanted = wanted
        self.report = report

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            return out
        macs = formula(*args, **kwargs, out_val=out) // 2
        is_linear = func._overloadpacket in CONV_OPS or (
            bool(self.stack) and isinstance(self.stack[-1], LINEAR_MODULES)
        )
        targets = [self.report.macs] + [
            self.report.modules[self.wanted[id(m)]] for m in self.stack if id(m) in self.wanted
        ]
        for count in targets:
            count.total += macs
            if is_linear:
                count.linear += macs
        return out
