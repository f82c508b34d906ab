"""The final table of a distillation run: teacher / converted / distilled, as Markdown and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmha.distill.evaluate import Scores, json_number
from glmha.io_utils import atomic_write_text
from glmha.report import giga

LABELS = {"psnr": "PSNR", "ssim": "SSIM", "mrae": "MRAE", "rmse": "RMSE", "sam": "SAM"}


def table_header(metrics: tuple[str, ...]) -> str:
    cells = ["model", "params", "MACs (a)", "MACs (b)", "file"]
    cells += [f"{LABELS[m]} vs GT" for m in metrics] + [f"{LABELS[m]} vs teacher" for m in metrics]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = table_header(("psnr", "ssim"))  # image models


@dataclass(frozen=True)
class TableRow:
    name: str
    params: int
    macs_linear: int
    macs_total: int
    file_bytes: int | None
    scores: Scores
    is_teacher: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "macs_linear": self.macs_linear,
                "macs_total": self.macs_total, "file_bytes": self.file_bytes, **self.scores.to_json()}


def metric_text(metric: str, value: float | None) -> str:
    """A table cell: PSNR and SAM to 0.01, the others to 1e-4; "-" when missing."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric in ("psnr", "sam") else f"{value:.4f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.2f} MiB"


def format_table(rows: list[TableRow], *, metrics: tuple[str, ...], input_size: tuple[int, int],
                 notes: list[str]) -> str:
    """Markdown: one row per model; the teacher has nothing to be compared with in the teacher columns."""
    base = rows[0]
    header = table_header(metrics)
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        change = "" if row is base else f" ({(row.params - base.params) / base.params:+.1%})"
        macs_change = "" if row is base else f" ({(row.macs_total - base.macs_total) / base.macs_total:+.1%})"
        cells = [row.name, f"{row.params:,}{change}", giga(row.macs_linear),
                 f"{giga(row.macs_total)}{macs_change}", _mib(row.file_bytes)]
        values = row.scores.values
        cells += [metric_text(m, values.get(f"{m}_gt")) for m in metrics]
        cells += ["-" if row.is_teacher else metric_text(m, values.get(f"{m}_teacher")) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    height, width = input_size
    units = "PSNR in dB, SAM in degrees" if "sam" in metrics else "PSNR in dB on outputs clamped to [0, 1]"
    footer = [f"MACs at {height}x{width} input: (a) convolutions and linear layers only, (b) also the "
              f"attention matrix products; G = 1e9. {units}."]
    return "\n".join([*lines, "", *footer, *notes]) + "\n"


def write_table(run_dir: Path, rows: list[TableRow], *, metrics: tuple[str, ...], input_size: tuple[int, int],
                notes: list[str], extra: dict[str, Any]) -> str:
    """report.md and report.json in the run directory (atomically); returns the Markdown."""
    markdown = format_table(rows, metrics=metrics, input_size=input_size, notes=notes)
    atomic_write_text(run_dir / "report.md", "# Distillation report\n\n" + markdown)
    payload = {"input_size": list(input_size), "metrics": list(metrics), "rows": [r.to_json() for r in rows],
               **extra}
    atomic_write_text(run_dir / "report.json", json.dumps(payload, indent=2, default=json_number) + "\n")
    return markdown
