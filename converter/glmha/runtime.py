"""Thread and determinism settings: small-tensor work on one thread; reproducible training runs.

Conversion is thousands of tiny operations (d x d Gram matrices, per-head SVDs, meta-device MAC
counts). OpenMP threads do not speed these up, and on a loaded machine their spin-waits make each
op hundreds of times slower (measured: a 48x384 float64 matmul took 16 ms with 2 threads against
0.06 ms with 1 while another process used both cores).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from glmha.errors import GlmhaError


class single_thread(contextlib.ContextDecorator):
    def __enter__(self) -> single_thread:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._previous)


def make_deterministic(threads: int) -> bool:
    """Fix the intra-op thread count and ask for deterministic kernels, as the shipped teachers'
    training does; returns whether deterministic algorithms are in force (recorded on the card)."""
    torch.set_num_threads(threads)
    try:
        torch.use_deterministic_algorithms(True)
    except RuntimeError:  # pragma: no cover - only on builds without deterministic kernels
        return False
    return True


def environment() -> dict[str, str | None]:
    """What a training card records about the machine's software."""
    return {"torch": torch.__version__, "python": sys.version.split()[0], "device": "cpu",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def tune_allocator() -> bool:
    """Fix glibc malloc's thresholds for this process (mmap 32 MiB, trim 2 GiB, top pad 256 MiB), as PyTorch's
    CPU performance guide suggests; False where the C library is not glibc.

    Why: glibc adapts its mmap threshold to the sizes it has seen, so feature maps freed after each layer are
    unmapped and faulted in again; measured (bench/allocator.py) up to 40 % slower layers on CPU.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # mallopt parameter numbers (malloc.h)
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (mmap_threshold, 32 << 20), (trim_threshold, (1 << 31) - 1), (top_pad, 256 << 20)))


def choose_device(name: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`; anything unavailable is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GlmhaError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise GlmhaError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if not torch.cuda.is_available():
        raise GlmhaError(f"--device {name}: this machine (or this PyTorch build) has no CUDA device")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise GlmhaError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
