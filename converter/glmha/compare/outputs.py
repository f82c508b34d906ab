"""compare.md, compare.json, compare.csv and compare.png from the rows' run reports.

Table shape as in the GLMHA paper: method, MACs (a) and (b) with their change against the teacher, parameters
with their change, the task metrics against ground truth and against the teacher, and the distillation steps.
Every file is written to a temporary name and renamed, with the same bytes for the same reports.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from glmha.compare.methods import BUDGET_TOLERANCE
from glmha.compare.runner import TABLE_TITLES, RowResult
from glmha.compare.section import CompareSection
from glmha.distill.evaluate import LOWER_IS_BETTER, json_number
from glmha.distill.table import LABELS, metric_text
from glmha.io_utils import atomic_write, atomic_write_text
from glmha.report import giga

OUTPUTS = ("compare.md", "compare.json", "compare.csv", "compare.png")


def _change(value: int, base: int) -> float:
    return (value - base) / base if base else 0.0


def row_object(result: RowResult, metrics: tuple[str, ...], target: int | None) -> dict[str, Any]:
    """One flat JSON object per row: costs with their change against the teacher, best scores, budget check."""
    row = result.row
    out: dict[str, Any] = {"table": row.table, "method": row.method.name, "label": row.label,
                           "setting": result.setting, "note": result.note, "applicable": result.reason is None,
                           "run_dir": str(row.folder)}
    if result.reason is not None:
        return {**out, "reason": result.reason}
    teacher, converted, distilled = result.report["rows"]
    for key in ("params", "macs_linear", "macs_total"):
        out[key] = distilled[key]
        out[f"{key}_change"] = round(_change(distilled[key], teacher[key]), 6)
    if row.table == "methods" and target is not None:
        out["target_macs_total"] = target
        out["meets_budget"] = abs(distilled["macs_total"] - target) <= BUDGET_TOLERANCE * target
    out["steps"] = result.report["steps"]
    out["best_step"] = result.report["best_step"]
    for metric in metrics:
        for reference in ("gt", "teacher"):
            out[f"{metric}_{reference}"] = _number(distilled.get(f"{metric}_{reference}"))
            out[f"converted_{metric}_{reference}"] = _number(converted.get(f"{metric}_{reference}"))
    return out


def _number(value: Any) -> float | int | None:
    """A score as report.json holds it, where an infinite PSNR is the string "inf"."""
    return float(value) if isinstance(value, str) else value


def teacher_object(results: list[RowResult], metrics: tuple[str, ...]) -> dict[str, Any] | None:
    for result in results:
        if result.report is not None:
            teacher = result.report["rows"][0]
            scores = {f"{m}_gt": _number(teacher.get(f"{m}_gt")) for m in metrics}
            return {"params": teacher["params"], "macs_linear": teacher["macs_linear"],
                    "macs_total": teacher["macs_total"], **scores}
    return None


def write_outputs(out_dir: Path, results: list[RowResult], section: CompareSection, *, teacher_file: str,
                  select: str) -> str:
    """All four outputs in `out_dir`; returns the Markdown."""
    report = next((r.report for r in results if r.report is not None), None)
    metrics = tuple(report["metrics"]) if report else ()
    input_size = tuple(report["input_size"]) if report else ()
    teacher = teacher_object(results, metrics)
    target = (round(teacher["macs_total"] * section.target_macs)
              if teacher is not None and section.target_macs is not None else None)
    objects = [row_object(r, metrics, target) for r in results]
    payload = {
        "teacher_file": teacher_file, "input_size": list(input_size), "metrics": list(metrics), "select": select,
        "target_macs": section.target_macs, "target_macs_total": target, "at_ratio": section.sweep.at_ratio,
        "teacher": teacher,
        "methods": [o for o in objects if o["table"] == "methods"],
        "sweeps": {table: [o for o in objects if o["table"] == table] for table in ("ratio", "alpha", "levels")
                   if any(o["table"] == table for o in objects)},
    }
    markdown = format_markdown(payload, teacher_file)
    atomic_write_text(out_dir / "compare.json", json.dumps(payload, indent=2, default=json_number) + "\n")
    atomic_write_text(out_dir / "compare.csv", format_csv(objects, metrics))
    atomic_write_text(out_dir / "compare.md", markdown)
    plot_pareto(out_dir / "compare.png", payload)
    return markdown


def _cost(value: int, change: float | None, *, giga_units: bool) -> str:
    text = giga(value) if giga_units else f"{value / 1e6:.3f} M"
    return text if change is None else f"{text} ({change:+.2%})"


def _table(objects: list[dict[str, Any]], payload: dict[str, Any], *, with_teacher: bool) -> list[str]:
    metrics = payload["metrics"]
    header = ["method", "setting", "MACs (a)", "MACs (b)", "params"]
    header += [f"{LABELS[m]} vs GT" for m in metrics] + [f"{LABELS[m]} vs teacher" for m in metrics]
    header += ["steps (best)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher = payload["teacher"]
    if with_teacher and teacher is not None:
        cells = ["CSA (teacher)", "-", _cost(teacher["macs_linear"], None, giga_units=True),
                 _cost(teacher["macs_total"], None, giga_units=True),
                 _cost(teacher["params"], None, giga_units=False)]
        cells += [metric_text(m, teacher.get(f"{m}_gt")) for m in metrics] + ["-"] * len(metrics) + ["-"]
        lines.append("| " + " | ".join(cells) + " |")
    for obj in objects:
        if not obj["applicable"]:
            cells = [obj["label"], "not applicable (see below)"] + ["-"] * (len(header) - 2)
        else:
            budget = "" if obj.get("meets_budget", True) else " (over budget)"
            cells = [obj["label"], obj["setting"],
                     _cost(obj["macs_linear"], obj["macs_linear_change"], giga_units=True),
                     _cost(obj["macs_total"], obj["macs_total_change"], giga_units=True) + budget,
                     _cost(obj["params"], obj["params_change"], giga_units=False)]
            cells += [metric_text(m, obj[f"{m}_gt"]) for m in metrics]
            cells += [metric_text(m, obj[f"{m}_teacher"]) for m in metrics]
            cells += [f"{obj['steps']} ({obj['best_step']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown(payload: dict[str, Any], teacher_file: str) -> str:
    height, width = payload["input_size"] or (0, 0)
    lines = ["# glmha-compare", ""]
    teacher = payload["teacher"]
    if payload["target_macs"] is not None and teacher is not None:
        lines += [f"Teacher `{teacher_file}`; budget: {payload['target_macs']:g} of its MACs (b) = "
                  f"{giga(payload['target_macs_total'])} at {height}x{width} (every method within "
                  f"{BUDGET_TOLERANCE:.0%}, or marked over budget with its real cost).", ""]
    if payload["methods"]:
        lines += [f"## {TABLE_TITLES['methods']}", "", *_table(payload["methods"], payload, with_teacher=True), ""]
        notes = [f"- {o['label']}: {o['reason'] if not o['applicable'] else o['note']}"
                 for o in payload["methods"] if not o["applicable"] or o["note"]]
        lines += [*notes, ""] if notes else []
    for table, objects in payload["sweeps"].items():
        lines += [f"## {TABLE_TITLES[table]}", "", *_table(_with_reference(table, objects, payload), payload,
                                                            with_teacher=True), ""]
    units = "PSNR in dB, SAM in degrees" if "sam" in payload["metrics"] else "PSNR in dB"
    lines += [f"MACs at {height}x{width}: (a) convolutions and linear layers, (b) also the attention products; "
              f"G = 1e9; params in millions; changes against the teacher. {units}; best student by "
              f"{payload['select'].upper()} (its step in brackets)."]
    return "\n".join(lines) + "\n"


def _with_reference(table: str, objects: list[dict[str, Any]], payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The alpha and levels rows convert at `at_ratio`: the ratio row at that value (the recipe's alpha and
    levels) is their reference, shown first when the ratio sweep has it."""
    if table not in ("alpha", "levels"):
        return objects
    label = f"ratio {payload['at_ratio']:g}"
    found = [o for o in payload["sweeps"].get("ratio", []) if o["label"] == label]
    return [{**o, "label": f"{label} (reference)"} for o in found] + objects


def format_csv(objects: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    columns = ["table", "method", "label", "setting", "applicable", "params", "params_change", "macs_linear",
               "macs_linear_change", "macs_total", "macs_total_change", "target_macs_total", "meets_budget",
               "steps", "best_step", *(f"{m}_{r}" for m in metrics for r in ("gt", "teacher")), "note", "reason"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for obj in objects:
        writer.writerow({k: json_number(v) if isinstance(v, float) else v for k, v in obj.items()})
    return buffer.getvalue()


def plot_pareto(path: Path, payload: dict[str, Any]) -> None:
    """The selection metric over MACs (b), one panel against ground truth (when there is any) and one against the
    teacher: one marker per method (hollow when over budget), each sweep as a line, the teacher as a star."""
    from matplotlib.figure import Figure

    metric = payload["select"]
    teacher = payload["teacher"]
    references = ["teacher"]
    if teacher is not None and teacher.get(f"{metric}_gt") is not None:
        references.insert(0, "gt")
    figure = Figure(figsize=(6.0 * len(references), 4.8))
    axes_list = figure.subplots(1, len(references), squeeze=False)[0]
    markers = "osD^vP<>Xh"
    better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    for axes, reference in zip(axes_list, references, strict=True):
        for index, obj in enumerate(o for o in payload["methods"] if o["applicable"]):
            value = obj.get(f"{metric}_{reference}")
            if value is None:
                continue
            filled = obj.get("meets_budget", True)
            axes.plot([obj["macs_total"] / 1e9], [float(value)], marker=markers[index % len(markers)],
                      markersize=9, linestyle="none", label=obj["label"] + ("" if filled else " (over budget)"),
                      fillstyle="full" if filled else "none")
        for table, objects in payload["sweeps"].items():
            points = sorted((o["macs_total"] / 1e9, float(o[f"{metric}_{reference}"])) for o in objects
                            if o["applicable"] and o.get(f"{metric}_{reference}") is not None)
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker=".", linewidth=1, alpha=0.7,
                          label=f"GLMHA, {TABLE_TITLES[table].lower()}")
        if reference == "gt":
            axes.plot([teacher["macs_total"] / 1e9], [float(teacher[f"{metric}_gt"])], marker="*", markersize=15,
                      color="gold", markeredgecolor="black", linestyle="none", label="CSA (teacher)")
        if payload["target_macs_total"]:
            axes.axvline(payload["target_macs_total"] / 1e9, color="grey", linestyle="--", linewidth=1,
                         label="budget")
        axes.ticklabel_format(axis="y", useOffset=False)
        axes.grid(True, alpha=0.3)
        axes.set_xlabel(f"MACs (b), G at {'x'.join(map(str, payload['input_size']))}")
        axes.set_ylabel(f"{LABELS[metric]} vs {'GT' if reference == 'gt' else 'teacher'} ({better})")
        axes.legend(fontsize=8, frameon=False)
    figure.suptitle("Quality against cost after distillation")
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight",
                                                      metadata={"Software": None}))
    finally:
        figure.clear()
