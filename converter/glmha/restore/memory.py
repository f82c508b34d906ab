"""Peak memory of a piece of work: the largest total of live tensor bytes it created.

Why our own counter on CPU: PyTorch keeps peak statistics only for CUDA, and a process's resident set
(`ru_maxrss`) only ever grows, counts the allocator's cached pages and the imported libraries, and changes with
whatever ran before. Counting the bytes of the tensors the work itself creates, while they live, gives the
same number on every run and machine, so a test can assert that tiling keeps memory flat and the benchmark
can compare models without noise. On CUDA the device's own peak statistic is used instead.

The counter is a dispatch mode: every ATen operation's outputs are recorded with their storage size, and a
storage's bytes are released when the last tensor recorded on it is freed. Tensors that existed before (the
model's weights, the input) are not counted, nor are views of them.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """`with PeakTensorMemory(ignore=model.parameters()) as memory: ...` then `memory.peak` (bytes)."""

    def __init__(self, *, ignore: Any = ()) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors recorded on it]
        self._external = {t.untyped_storage().data_ptr() for t in ignore if isinstance(t, torch.Tensor)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._record(value)
        return out

    def _record(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address == 0 or address in self._external:
            return
        entry = self._live.get(address)
        if entry is None:
            entry = self._live[address] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self._live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[address]


def mebibytes(count: int) -> float:
    return count / 2**20
