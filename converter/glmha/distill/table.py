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

TABLE_HEADER = ("| model | params | MACs (a) | MACs (b) | file | PSNR vs GT | SSIM vs GT | PSNR vs teacher "
                "| SSIM vs teacher |")


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


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _ssim(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.2f} MiB"


def format_table(rows: list[TableRow], *, input_size: tuple[int, int], notes: list[str]) -> str:
    """Markdown: one row per model; the teacher has nothing to be compared with in the teacher columns."""
    base = rows[0]
    lines = [TABLE_HEADER, "|" + "---|" * 9]
    for row in rows:
        change = "" if row is base else f" ({(row.params - base.params) / base.params:+.1%})"
        macs_change = "" if row is base else f" ({(row.macs_total - base.macs_total) / base.macs_total:+.1%})"
        lines.append(
            f"| {row.name} | {row.params:,}{change} | {giga(row.macs_linear)} | {giga(row.macs_total)}"
            f"{macs_change} | {_mib(row.file_bytes)} | {_db(row.scores.psnr_gt)} | {_ssim(row.scores.ssim_gt)} "
            f"| {'-' if row.is_teacher else _db(row.scores.psnr_teacher)} "
            f"| {'-' if row.is_teacher else _ssim(row.scores.ssim_teacher)} |")
    height, width = input_size
    footer = [f"MACs at 1x{height}x{width} input: (a) convolutions and linear layers only, (b) also the "
              f"attention matrix products; G = 1e9. PSNR in dB on outputs clamped to [0, 1]."]
    return "\n".join([*lines, "", *footer, *notes]) + "\n"


def write_table(run_dir: Path, rows: list[TableRow], *, input_size: tuple[int, int], notes: list[str],
                extra: dict[str, Any]) -> str:
    """report.md and report.json in the run directory (atomically); returns the Markdown."""
    markdown = format_table(rows, input_size=input_size, notes=notes)
    atomic_write_text(run_dir / "report.md", "# Distillation report\n\n" + markdown)
    payload = {"input_size": list(input_size), "rows": [r.to_json() for r in rows], **extra}
    atomic_write_text(run_dir / "report.json", json.dumps(payload, indent=2, default=json_number) + "\n")
    return markdown
