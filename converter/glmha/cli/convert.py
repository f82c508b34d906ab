"""`glmha-convert`: analyse, plan, convert and export an official CSA checkpoint as slim GLMHA.

    glmha-convert restormer.pth --energy 0.95            # plan, convert, write restormer.glmha.safetensors
    glmha-convert restormer.pth --ratio 0.5 --dry-run    # print the plan and stop
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from glmha.archs import FAMILIES, RestorationModel
from glmha.checkpoint import check_readable
from glmha.cli import run_command
from glmha.convert.api import analyse
from glmha.convert.calibration import default_calibration
from glmha.convert.initialise import CALIBRATED_INITS, INIT_METHODS
from glmha.convert.mutate import apply_plan
from glmha.convert.plan import DEFAULT_ENERGY, ConversionPlan, PlanSettings, make_plan
from glmha.convert.spectrum import SPECTRUM_MODES, check_spectrum_mode
from glmha.errors import GlmhaError
from glmha.exports import export_model
from glmha.io_utils import PendingFile, create_folder, path_status, remove_empty_folders
from glmha.layers import CALIBRATION_FORMS, GLMHASettings
from glmha.loader import load
from glmha.report import describe, format_report, giga

PROG = "glmha-convert"
EXPORT_SUFFIX = ".glmha.safetensors"
CALIB_NOISE_SEED = 4242  # --calib-noise: input i gets seed 4242 + i


def parse_input_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got '{text}'")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return height, width


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse would print the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _choices(values: Sequence[str]) -> str:
    """`{a,b,c}`: how --help shows an option whose values the settings classes check (not argparse)."""
    return "{" + ",".join(values) + "}"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Convert the channel-wise self-attention (CSA) layers of a "
        f"{' / '.join(cls.title for cls in FAMILIES.values())} checkpoint to GLMHA: per-layer spectrum "
        "analysis, a plan of reduced key/value widths C', "
        "initialisation of the reduced generators, and a slim safetensors export.",
    )
    parser.add_argument("checkpoint", help=".pth/.pt (read with weights_only=True) or .safetensors")
    parser.add_argument("-o", "--output", help=f"output file (default: next to the input, *{EXPORT_SUFFIX})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--dry-run", action="store_true", help="print the report and the plan, then stop")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="skip detection, force a family")
    rank = parser.add_argument_group("choosing C' (one rule: --energy, --ratio, or a budget)")
    rank.add_argument("--energy", type=float, help=f"spectrum energy each head keeps (default {DEFAULT_ENERGY})")
    rank.add_argument("--ratio", type=float, help="uniform key/value size reduction, e.g. 0.5 (paper Table 7)")
    rank.add_argument("--target-macs", type=float, metavar="F",
                      help="budget: converted MACs (b) at most F times the original's, e.g. 0.88; C' allocated "
                      "across layers by measured sensitivity on calibration inputs")
    rank.add_argument("--target-params", type=float, metavar="F",
                      help="budget: converted parameters at most F times the original's")
    rank.add_argument("--min-fidelity", type=float, metavar="DB",
                      help="budget: save as many MACs as possible while the converted model stays at least DB "
                      "dB PSNR from the teacher's output on the calibration inputs")
    rank.add_argument("--allow-bigger", action="store_true",
                      help="also convert layers where GLMHA costs more parameters or MACs than CSA")
    rank.add_argument("--levels", help="convert only these depth levels, e.g. 1,2 or 3,bottleneck")
    rank.add_argument("--rank-pattern", action="append", default=[], metavar="REGEX=C",
                      help="force C' for layers whose name matches REGEX (repeatable; last match wins)")
    layer = parser.add_argument_group("GLMHA layers")
    layer.add_argument("--init", metavar=_choices(INIT_METHODS), default="select",
                       help="initialisation of the reduced K/V generators (default select)")
    layer.add_argument("--alpha", type=float, default=0.6, help="calibration strength alpha (default 0.6)")
    layer.add_argument("--calibration", metavar=_choices(CALIBRATION_FORMS), default=GLMHASettings.calibration,
                       help="last layer of the calibration net: a scale per channel (channel, default), a "
                       "low-rank C -> r -> C map (lowrank) or the paper's per-head d x d map (full)")
    layer.add_argument("--seed", type=int, default=0, help="seed of the new weights (default 0)")
    analysis = parser.add_argument_group("analysis and reports")
    analysis.add_argument("--spectrum", metavar=_choices(SPECTRUM_MODES), default="operator",
                          help="data-free spectrum of each channel's full K/V operator (1x1 row and its "
                          "depthwise filter; default) or of the 1x1 rows [W_K | W_V] alone")
    analysis.add_argument("--calib", metavar="DIR", help="spectra from activations on this folder's images "
                          "(CASSI models: scene .mat files, with --calib-mask)")
    analysis.add_argument("--calib-mask", metavar="FILE",
                          help="CASSI models only: the 256x256 mask.mat the calibration scenes are measured with")
    analysis.add_argument("--calib-limit", type=int, metavar="N",
                          help="use at most N calibration inputs (default: 16 of --calib; for budgets without "
                          "--calib, 4 or 2 offline samples depending on the model's size)")
    analysis.add_argument("--calib-size", type=int, metavar="N",
                          help="centre crops of at most N x N (default: 256 for --calib; for budgets without "
                          "--calib, the largest of 128/96/64/... that keeps measuring fast)")
    analysis.add_argument("--calib-noise", type=float, metavar="SIGMA",
                          help="add Gaussian noise of SIGMA (0-255 scale, seeded) to the calibration inputs, so a "
                          "denoiser is measured on what it sees, e.g. 25")
    analysis.add_argument("--plot", metavar="DIR", help="write cumulative-energy PNGs per level to DIR")
    analysis.add_argument("--input-size", type=parse_input_size, default=(256, 256), metavar="N|HxW",
                          help="input size for the MAC counts (default 256; a mask input gets its matching shape)")
    analysis.add_argument("--json", metavar="FILE", help="also write the report and plan as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args))  # interrupted: every temporary file and new empty folder is gone


@dataclass
class Outputs:
    """Where this run writes, all proven writable before any work: the export's and the JSON's
    temporary files exist (renamed into place at the end, removed on any failure) and the plot
    folder exists (removed again if the run ends before anything is written into it)."""

    export: PendingFile | None
    json: PendingFile | None
    plot: Path | None


def _run(args: argparse.Namespace) -> int:
    settings, glmha_settings = _settings(args)
    _check_analysis_options(args)
    check_readable(args.checkpoint)  # the input's own problems first, before any output is reserved
    with contextlib.ExitStack() as cleanup:
        outputs = _reserve_outputs(args, cleanup)
        return _convert(args, settings, glmha_settings, outputs)


def _settings(args: argparse.Namespace) -> tuple[PlanSettings, GLMHASettings]:
    """The options as the settings classes that validate them (for recipes too: one rule each)."""
    budget = any(v is not None for v in (args.target_macs, args.target_params, args.min_fidelity))
    settings = PlanSettings(
        energy=args.energy if args.energy is not None or args.ratio is not None or budget else DEFAULT_ENERGY,
        ratio=args.ratio,
        target_macs=args.target_macs,
        target_params=args.target_params,
        min_fidelity=args.min_fidelity,
        levels=() if args.levels is None else tuple(level.strip() for level in args.levels.split(",")),
        rank_patterns=tuple(args.rank_pattern),
        init=args.init,
        seed=args.seed,
        allow_bigger=args.allow_bigger,
    )
    glmha_settings = GLMHASettings(alpha=args.alpha, calibration=args.calibration)
    check_spectrum_mode(args.spectrum)
    return settings, glmha_settings


def _check_analysis_options(args: argparse.Namespace) -> None:
    """The calibration options, which have no recipe twin."""
    if args.calib_mask and not args.calib:
        raise GlmhaError("--calib-mask: give the calibration scenes with --calib DIR too")
    for flag, value in (("--calib-limit", args.calib_limit), ("--calib-size", args.calib_size)):
        if value is not None and value < 1:
            raise GlmhaError(f"{flag} must be at least 1, got {value}")
    if args.calib_noise is not None and not (math.isfinite(args.calib_noise) and args.calib_noise >= 0):
        raise GlmhaError(f"--calib-noise must be a noise level >= 0 on the 0-255 scale, got {args.calib_noise}")


def _reserve_outputs(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> Outputs:
    """Create the temporary files and the plot folder now, so an unwritable location costs seconds."""
    export = None if args.dry_run else cleanup.enter_context(PendingFile(_output_path(args), what="--output"))
    report = None
    if args.json:
        _check_json_path(args, None if export is None else export.path)
        report = cleanup.enter_context(PendingFile(args.json, what="--json"))
    plot = None
    if args.plot:
        plot = Path(args.plot)
        cleanup.callback(remove_empty_folders, create_folder(plot, what="--plot"))
    return Outputs(export=export, json=report, plot=plot)


def _check_json_path(args: argparse.Namespace, output: Path | None) -> None:
    """--json names neither the input checkpoint nor the export."""
    status = path_status(args.json, what="--json")
    if status is not None and _same_file(status, Path(args.checkpoint)):
        raise GlmhaError(f"--json {args.json}: is the input checkpoint; glmha never overwrites its input")
    if output is not None and os.path.abspath(args.json) == os.path.abspath(output):
        raise GlmhaError(f"--json {args.json}: is also the --output file; give them different names")


def _convert(args: argparse.Namespace, settings: PlanSettings, glmha_settings: GLMHASettings,
             outputs: Outputs) -> int:
    model = load(args.checkpoint, family=args.family)
    if model.record.converted:
        raise GlmhaError(f"{args.checkpoint}: already converted by glmha; convert the original teacher")
    height, width = args.input_size
    report = describe(model, height, width)
    print(f"checkpoint       {args.checkpoint}")
    print(format_report(report))
    print(flush=True)
    calibration = _calibration(model, args, settings)
    if calibration is not None and not outputs_are_finite(model, calibration[:1]):
        raise GlmhaError(f"{args.checkpoint}: the model produces non-finite outputs on the calibration inputs, "
                         f"so its conversion cannot be measured; nothing written")
    spectra = analyse(model, calibration if args.calib else None, mode=args.spectrum)
    plan = make_plan(model, spectra, settings, glmha_settings, height, width, cost=report.cost,
                     calibration=calibration)
    print(format_plan(plan))
    curves = _fidelity_curves(plan, model, spectra, calibration) if outputs.plot else None
    output = outputs.export
    if not plan.converted:
        print(f"\nno layer converted: under {plan.settings.rule()} every CSA layer stays as it is (see the notes "
              f"above), so the model would be unchanged" + ("" if output is None else "; nothing written"))
    elif output is not None:
        _export(args, model, plan, spectra, calibration, output)
    if outputs.plot is not None:
        _write_plots(spectra, plan, curves, outputs.plot)
    if outputs.json is not None:
        data = {"checkpoint": str(args.checkpoint), **merge_plan(report.to_json(), plan)}
        if output is not None and plan.converted:
            data["output"] = str(output.path)
        if curves is not None:
            data["fidelity_curves"] = curves
        text = json.dumps(data, indent=2) + "\n"
        outputs.json.commit(lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 0


def _calibration(model: RestorationModel, args: argparse.Namespace, settings: PlanSettings) -> list | None:
    """--calib inputs, or the family's offline samples where a budget, an init or the plots need them."""
    if args.calib:
        return _noisy(_calibration_inputs(model, args), args.calib_noise)
    if settings.has_budget or settings.init in CALIBRATED_INITS or args.plot:
        calibration, described = default_calibration(model, count=args.calib_limit, side=args.calib_size)
        if args.calib_noise:
            described += f" with sigma {args.calib_noise:g} noise"
        print(f"calibration inputs: {described} (the default; --calib DIR uses your own)")
        return _noisy(calibration, args.calib_noise)
    return None


def _fidelity_curves(plan: ConversionPlan, model: RestorationModel, spectra: list, calibration: list) -> dict:
    """Fidelity against MACs saved, measured now: the conversion replaces the teacher's layers."""
    from glmha.convert.budget import attach_planner, fidelity_curves

    attach_planner(plan, model, spectra, calibration)
    return fidelity_curves(plan)


def _export(args: argparse.Namespace, model: RestorationModel, plan: ConversionPlan, spectra: list,
            calibration: list | None, output: PendingFile) -> None:
    """Convert, refuse a model with non-finite outputs, then write the export in place of the reservation."""
    probe, described = (calibration, "the calibration inputs") if calibration is not None \
        else _probe_inputs(model, *args.input_size)
    student = apply_plan(model, plan, spectra, inplace=True, calibration=calibration)  # SHA-256 from load()
    if not outputs_are_finite(student, probe[:1]):
        raise GlmhaError(f"{args.checkpoint}: the converted model produces non-finite outputs on {described}; "
                         f"nothing written")
    output.discard()  # the export writes its own locked temporary file next to the output, then renames it
    export_model(student, output.path)
    source_size, output_size = Path(args.checkpoint).stat().st_size, output.path.stat().st_size
    print(f"\nwrote {output.path}: {output_size:,} bytes ({100 * output_size / source_size:.1f} % of the "
          f"{source_size:,} bytes of {Path(args.checkpoint).name})")


def _probe_inputs(model: RestorationModel, height: int, width: int) -> tuple[list, str]:
    """What to run the converted model on when no calibration inputs were needed: one of the family's
    offline samples, or seeded random inputs at the report's size where the family has none."""
    try:
        return default_calibration(model, count=1)
    except GlmhaError:  # e.g. an MST whose band count has no offline scenes
        generator = torch.Generator().manual_seed(0)
        inputs = tuple(torch.rand(t.shape, generator=generator) for t in model.example_inputs(height, width))
        return [inputs], f"random example inputs at {height}x{width}"


def outputs_are_finite(model: RestorationModel, inputs: Sequence[tuple[torch.Tensor, ...]]) -> bool:
    """Whether every output value of `model` on `inputs` is finite (no NaN, no Inf)."""
    with torch.no_grad():
        for batch in inputs:
            result = model(*batch)
            tensors = result if isinstance(result, (tuple, list)) else (result,)
            if not all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor)):
                return False
    return True


def _write_plots(spectra: list, plan: ConversionPlan, curves: dict | None, folder: Path) -> None:
    """The energy plots and the fidelity plot, written last: never when the export could not be."""
    from glmha.convert.plot import plot_fidelity, plot_spectra

    for path in plot_spectra(spectra, plan, folder):
        print(f"wrote {path}")
    if curves is not None:
        print(f"wrote {plot_fidelity(curves, folder)}")


def _output_path(args: argparse.Namespace) -> Path:
    source = Path(args.checkpoint)
    default = source.with_name(source.with_suffix("").name + EXPORT_SUFFIX)
    output = Path(args.output) if args.output else default
    if output.suffix != ".safetensors":
        raise GlmhaError(f"--output {output}: the export is safetensors; name it *.safetensors")
    status = path_status(output, what="--output")
    if status is not None and _same_file(status, source):
        raise GlmhaError(f"--output {output}: is the input checkpoint; glmha never overwrites its input")
    if status is not None and not args.force:
        raise GlmhaError(f"--output {output}: exists; pass --force to overwrite it")
    return output


def _same_file(status: os.stat_result, other: Path) -> bool:
    """Whether `other` is the file `status` describes (also through links); False if it cannot be read."""
    try:
        return os.path.samestat(status, os.stat(other))
    except OSError:
        return False


def _noisy(calibration: list, sigma: float | None) -> list:
    """Calibration inputs with seeded Gaussian noise on their first argument (the image)."""
    if not sigma:
        return calibration
    from glmha.data import add_gaussian_noise, seeded_generator

    return [(add_gaussian_noise(args[0], sigma, seeded_generator(CALIB_NOISE_SEED + index)), *args[1:])
            for index, args in enumerate(calibration)]


def _calibration_inputs(model: RestorationModel, args: argparse.Namespace):
    from glmha.convert.calibration import calibration_inputs

    try:
        return calibration_inputs(model, args.calib, mask=args.calib_mask,
                                  limit=16 if args.calib_limit is None else args.calib_limit,
                                  side=args.calib_size)
    except GlmhaError as error:
        raise GlmhaError(f"--calib: {error}") from None


def merge_plan(report: dict, plan: ConversionPlan) -> dict:
    """The model report (its keys describe the input model) plus the plan: `plan` (settings),
    `before` / `after` totals, and per layer `reduced_channels`, `energy` and the costs after."""
    by_name = {layer.name: layer for layer in plan.layers}
    for entry in report["layers"]:
        layer = by_name[entry["name"]]
        entry.update(reduced_channels=layer.reduced_channels, energy=layer.energy, level=layer.level,
                     convert=layer.convert, reason=layer.reason, params_after=layer.params_after,
                     macs_linear_after=layer.macs_linear_after, macs_total_after=layer.macs_total_after)
    data = plan.to_json()
    report["plan"] = {k: v for k, v in data.items() if k not in ("before", "after", "layers")}
    report["before"], report["after"] = plan.before, plan.after
    return report


def format_plan(plan: ConversionPlan) -> str:
    settings = plan.settings
    converted = sum(layer.convert for layer in plan.layers)
    lines = [f"plan: {settings.rule()}, init {settings.init}, calibration net {plan.glmha.calibration}, alpha "
             f"{plan.glmha.alpha:g}, spectra from {plan.source}; {converted} of {len(plan.layers)} CSA layers "
             f"converted"]
    header = ("layer", "level", "C", "C'", "energy", "params", "MACs (a)", "MACs (b)", "note")
    rows = [header]
    for layer in plan.layers:
        note = "" if layer.convert and not layer.reason.startswith("--rank") else layer.reason
        rows.append((layer.name, layer.level, str(layer.channels),
                     str(layer.reduced_channels) if layer.convert else "CSA", f"{100 * layer.energy:.2f}%",
                     _change(layer.params_before, layer.params_after, plain=True),
                     _change(layer.macs_linear_before, layer.macs_linear_after),
                     _change(layer.macs_total_before, layer.macs_total_after), note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:], strict=True)]
        lines.append(("  " + "  ".join(cells) + ("  " + row[-1] if row[-1] else "")).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    before, after = plan.before, plan.after
    lines.append("")
    lines.append(f"total params    {before['params']:,} -> {after['params']:,} "
                 f"({_percent(before['params'], after['params'])})")
    lines.append(f"total MACs (a)  {giga(before['macs_linear'])} -> {giga(after['macs_linear'])} "
                 f"({_percent(before['macs_linear'], after['macs_linear'])}; convolutions and linear layers)")
    lines.append(f"total MACs (b)  {giga(before['macs_total'])} -> {giga(after['macs_total'])} "
                 f"({_percent(before['macs_total'], after['macs_total'])}; with attention products)")
    if plan.budget:
        lines.append(format_budget(plan.budget))
    return "\n".join(lines)


def format_budget(budget: dict) -> str:
    """Requested against achieved, e.g. 'budget: MACs (b) <= 0.8800 of the original: 0.8797 reached; ...'."""
    requested, achieved = budget["requested"], budget["achieved"]
    parts = []
    for key, label in (("target_macs", "MACs (b)"), ("target_params", "parameters")):
        if key in requested:
            parts.append(f"{label} requested <= {requested[key]:.4f} of the original, reached {achieved[key]:.4f}")
        else:
            parts.append(f"{label} {achieved[key]:.4f} of the original")
    measured = achieved["min_fidelity"]
    fidelity = f"fidelity {measured:.2f} dB" if measured != float("inf") else "fidelity exact (nothing converted)"
    if "min_fidelity" in requested:
        fidelity += f" (requested >= {requested['min_fidelity']:g} dB)"
    calibration = budget["calibration"]
    parts.append(f"{fidelity} against the teacher on {calibration['inputs']} calibration inputs "
                 f"({', '.join(calibration['sizes'])})")
    return "budget: " + "; ".join(parts)


def _change(before: int, after: int, plain: bool = False) -> str:
    show = (lambda v: f"{v:,}") if plain else (lambda v: f"{v / 1e9:.3f}")
    return show(before) if before == after else f"{show(before)}->{show(after)}"


def _percent(before: int, after: int) -> str:
    return f"{100 * (after - before) / max(before, 1):+.2f} %"


if __name__ == "__main__":
    sys.exit(main())
