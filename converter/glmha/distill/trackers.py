"""Experiment trackers: a CSV log always (an Accelerate tracker), TensorBoard when installed.

The CSV has a fixed header so training and evaluation rows line up in one file; a resumed run first
drops the rows logged after the checkpoint it resumes from, so the log reads like one run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write

TRAIN_COLUMNS = ("loss", "loss_output", "loss_features", "loss_gt", "lr", "samples_per_s")


def csv_columns(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """step, the training columns, then val_<metric>_gt and val_<metric>_teacher per metric."""
    evaluation = [f"val_{m}_gt" for m in metrics] + [f"val_{m}_teacher" for m in metrics]
    return ("step", *TRAIN_COLUMNS, *evaluation)


CSV_COLUMNS = csv_columns(("psnr", "ssim"))


class CSVTracker(GeneralTracker):
    """Appends one row per `log` call to `path`; values not in the header are refused."""

    name = "csv"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path, *, resume_step: int | None, columns: Sequence[str] = CSV_COLUMNS) -> None:
        super().__init__()
        self.path = Path(path)
        self.columns = tuple(columns)
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as handle:
                kept = [row for row in csv.DictReader(handle) if _step_of(row) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the kept rows are rewritten to a temporary file and renamed: a kill during the rewrite loses nothing
        start = io.StringIO(newline="")
        writer = csv.DictWriter(start, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, lambda tmp: tmp.write_bytes(start.getvalue().encode("utf-8")))
        self._handle = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns, extrasaction="ignore")

    @property
    def tracker(self) -> CSVTracker:
        return self

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """The resolved recipe is stored as recipe.yaml by the engine; nothing to add here."""

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        unknown = sorted(set(values) - set(self.columns))
        if unknown:
            raise GlmhaError(f"log.csv has no column for {', '.join(unknown)}")
        row = {"step": step, **{k: _format(v) for k, v in values.items()}}
        self._writer.writerow(row)
        self._handle.flush()

    def finish(self) -> None:
        if not self._handle.closed:
            self._handle.close()


def _step_of(row: dict[str, str]) -> int:
    try:
        return int(row.get("step") or -1)
    except ValueError:
        return -1


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def tensorboard_available() -> bool:
    from accelerate.utils import is_tensorboard_available

    return bool(is_tensorboard_available())


def read_log(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
