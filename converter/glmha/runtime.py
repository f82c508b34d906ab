"""Run small-tensor work on one intra-op thread.

Conversion is thousands of tiny operations (d x d Gram matrices, per-head SVDs, meta-device MAC
counts). OpenMP threads do not speed these up, and on a loaded machine their spin-waits make each
op hundreds of times slower (measured: a 48x384 float64 matmul took 16 ms with 2 threads against
0.06 ms with 1 while another process used both cores).
"""

from __future__ import annotations

import contextlib

import torch


class single_thread(contextlib.ContextDecorator):
    def __enter__(self) -> single_thread:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._previous)
