"""Which files to restore, where each output goes, and the loop that restores them.

Everything that can be checked without running the model is checked first (every input exists and has a
known suffix, no two inputs would write the same output, no output would replace an input, every input has its
ground truth), so a mistake in the last of a thousand files fails in a second, not after an hour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glmha.errors import GlmhaError, InputShapeError
from glmha.io_utils import path_status
from glmha.restore.kinds import FileKind
from glmha.restore.runner import Restorer


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    truth: Path | None
    skip: bool  # the output exists and --skip-existing keeps it


@dataclass
class Result:
    job: Job
    seconds: float | None  # None: skipped (output kept from an earlier run)
    scores: dict[str, float] = field(default_factory=dict)


def collect_inputs(items: Sequence[str | Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files given by name, and the files with one of `suffixes` directly inside folders (sorted by name)."""
    found: list[Path] = []
    for item in map(Path, items):
        status = path_status(item, what="input")
        if status is None:
            raise GlmhaError(f"input {item}: does not exist")
        if item.is_dir():
            files = sorted((p for p in item.iterdir() if p.suffix.lower() in suffixes and p.is_file()),
                           key=lambda p: p.name)
            if not files:
                raise GlmhaError(f"input folder {item}: no files ending in {', '.join(suffixes)} (any case)")
            found.extend(files)
        elif item.suffix.lower() in suffixes:
            found.append(item)
        else:
            raise GlmhaError(f"input {item}: this model reads {', '.join(suffixes)} files")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if len(unique) != len(found):
        raise GlmhaError("an input file is given twice (directly or through its folder)")
    return found


def find_truth(folder: Path, source: Path, suffixes: tuple[str, ...]) -> Path:
    """The ground truth of `source` in `folder`: the file with the same stem and one of `suffixes`."""
    matches = [folder / (source.stem + s) for s in (*suffixes, *(s.upper() for s in suffixes))]
    existing = sorted({p for p in matches if p.is_file()})
    if not existing:
        raise GlmhaError(f"--gt {folder}: no ground truth for {source.name} (looked for {source.stem} with "
                         f"{', '.join(suffixes)})")
    if len(existing) > 1:
        raise GlmhaError(f"--gt {folder}: several ground truths for {source.name}: "
                         f"{', '.join(p.name for p in existing)}")
    return existing[0]


def plan_jobs(items: Sequence[str | Path], outdir: Path, kind: FileKind, *, truth: Path | None,
              existing: str) -> list[Job]:
    """`existing`: "error" (refuse to replace an output), "overwrite" or "skip"."""
    sources = collect_inputs(items, kind.input_suffixes)
    if truth is not None and not truth.is_dir():
        raise GlmhaError(f"--gt {truth}: is not a folder")
    inputs = {p.resolve() for p in sources}
    outputs: dict[Path, Path] = {}
    jobs = []
    for source in sources:
        output = kind.output_path(outdir, source)
        if output.resolve() in inputs:
            raise GlmhaError(f"{output} is an input; choose another -o folder (inputs are never overwritten)")
        if output.resolve() in outputs:
            raise GlmhaError(f"{source} and {outputs[output.resolve()]} would both be written to {output}")
        outputs[output.resolve()] = source
        status = path_status(output, what="output")
        if status is not None and existing == "error":
            raise GlmhaError(f"{output} exists; pass --overwrite to replace outputs or --skip-existing to keep "
                             f"them")
        gt = find_truth(truth, source, kind.truth_suffixes) if truth is not None else None
        jobs.append(Job(source, output, gt, skip=status is not None and existing == "skip"))
    return jobs


def run_jobs(jobs: list[Job], kind: FileKind, restorer: Restorer, *, on_result: Callable[[Result], None],
             on_tile: Callable[[int, int], None] | None = None) -> list[Result]:
    """Restore every job in order; `on_result` sees each finished file (for printing)."""
    results = []
    for job in jobs:
        if job.skip:
            saved = kind.read_saved(job.output) if job.truth is not None else None
            result = Result(job, None)
        else:
            sample = kind.read(job.source)
            started = time.perf_counter()
            try:
                output = restorer(sample.inputs, on_tile=on_tile)
            except InputShapeError as error:
                raise GlmhaError(f"{job.source}: {error}") from None
            seconds = time.perf_counter() - started
            if not bool(output.isfinite().all()):
                raise GlmhaError(f"{job.source}: the model's output holds NaN or Inf (at --precision "
                                 f"{restorer.precision}; try fp32)")
            saved = kind.write(job.output, output, sample)
            result = Result(job, seconds)
        if job.truth is not None:
            result.scores = kind.score(saved, kind.read_truth(job.truth), job.source)
        results.append(result)
        on_result(result)
    return results


def mean_scores(results: list[Result]) -> dict[str, float]:
    """Per-metric mean over the files (infinite PSNR of identical files kept as inf)."""
    names = list(results[0].scores) if results else []
    return {name: math.fsum(r.scores[name] for r in results) / len(results) for name in names}
