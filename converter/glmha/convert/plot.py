"""Energy plots of the key/value spectra, one PNG per depth level (like Fig. 1 of the GLMHA paper).

Why: the plan picks each layer's per-head width d' from where its cumulative spectrum energy reaches
the threshold; seeing the curves shows how much head room a threshold leaves and which layers are
compressible at all. Each curve is the *weakest* head of a layer (the minimum over heads, which is
what decides d'), with a light band up to the strongest head (left out in crowded levels).
Converted layers carry a marker at the chosen d'; layers that stay CSA are dashed.

Uses the object-oriented `matplotlib.figure.Figure` API, so no GUI backend is ever selected and no
global pyplot state is touched (safe inside servers and tests).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from glmha.convert.plan import ConversionPlan, LayerPlan
from glmha.convert.spectrum import LayerSpectrum
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write, create_folder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MANY_COLOURS = 10  # above this many layers in a level, sample a continuous colour map instead of tab10


def level_sort_key(level: str) -> tuple[int, float, str]:
    """Numeric levels first in numeric order, then named ones ("bottleneck") alphabetically."""
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def plot_file_name(level: str) -> str:
    """`energy_level_<level>.png`, with anything unsafe in a file name replaced by '_'."""
    return f"energy_level_{re.sub(r'[^A-Za-z0-9_.-]', '_', level)}.png"


def plot_spectra(spectra: list[LayerSpectrum], plan: ConversionPlan, out_dir: Path) -> list[Path]:
    """Write `energy_level_<level>.png` for every level in `plan` into `out_dir`; return the paths by level."""
    out_dir = _prepare_folder(Path(out_dir))
    by_name = {spectrum.name: spectrum for spectrum in spectra}
    levels: dict[str, list[LayerPlan]] = {}
    for layer in plan.layers:
        if layer.name not in by_name:
            raise GlmhaError(f"cannot plot {layer.name}: the plan has it but the spectra do not")
        levels.setdefault(layer.level, []).append(layer)
    written = []
    for level in sorted(levels, key=level_sort_key):
        figure = _level_figure(level, levels[level], by_name, plan)
        path = out_dir / plot_file_name(level)
        try:  # atomic_write reports a failed write as a GlmhaError naming the file
            atomic_write(path, lambda tmp, fig=figure: fig.savefig(tmp, format="png", dpi=110,
                                                                   bbox_inches="tight"))
        finally:
            figure.clear()  # drops the artists now rather than at garbage collection
        written.append(path)
    return written


def _prepare_folder(out_dir: Path) -> Path:
    """The plot folder, created if needed, with files proven writable in it."""
    create_folder(out_dir, what="plot folder")
    return out_dir


def _head_curves(spectrum: LayerSpectrum) -> tuple[np.ndarray, np.ndarray]:
    """Per-width minimum and maximum over heads of the cumulative energy, in percent."""
    energies = torch.stack([head.cumulative_energy for head in spectrum.heads])  # (heads, d)
    return energies.min(0).values.numpy() * 100.0, energies.max(0).values.numpy() * 100.0


def _colours(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if count <= _MANY_COLOURS:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, count)]


def _threshold_text(plan: ConversionPlan) -> str:
    if plan.settings.energy is not None:
        return f"threshold {plan.settings.energy * 100:g}%"
    if plan.settings.ratio is not None:
        return f"no energy threshold (--ratio {plan.settings.ratio:g})"
    return "no energy threshold"


def _level_figure(level: str, layers: list[LayerPlan], by_name: dict[str, LayerSpectrum],
                  plan: ConversionPlan) -> Figure:
    """One figure: a curve per layer of the level, markers at d', dashed for layers that stay CSA."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.0, 5.0))
    axes = figure.add_subplot()
    colours = _colours(len(layers))
    lowest = 100.0
    widest = 1
    source = by_name[layers[0].name].source
    bands = len(layers) <= _MANY_COLOURS and any(by_name[lp.name].num_heads > 1 for lp in layers)
    for layer, colour in zip(layers, colours, strict=True):
        spectrum = by_name[layer.name]
        weakest, strongest = _head_curves(spectrum)
        widths = np.arange(1, len(weakest) + 1)
        lowest = min(lowest, float(weakest.min()))
        widest = max(widest, len(weakest))
        if layer.convert:
            kept = layer.reduced_channels // layer.heads
            label = f"{layer.name}  C'={layer.reduced_channels}/{layer.channels} (d'={kept}/{len(weakest)})"
        else:
            label = f"{layer.name}  stays CSA (C={layer.channels})"
        if bands and spectrum.num_heads > 1:
            axes.fill_between(widths, weakest, strongest, color=colour, alpha=0.12, linewidth=0)
        axes.plot(widths, weakest, color=colour, linewidth=1.8, linestyle="-" if layer.convert else "--",
                  label=label)
        if layer.convert:
            axes.plot([kept], [weakest[kept - 1]], marker="o", markersize=7, color=colour,
                      markeredgecolor="black", markeredgewidth=0.8, linestyle="none", zorder=5)
    handles, labels = axes.get_legend_handles_labels()
    if plan.settings.energy is not None:
        axes.axhline(plan.settings.energy * 100.0, color="black", linewidth=1.0, linestyle=":")
        handles.append(Line2D([], [], color="black", linewidth=1.0, linestyle=":"))
        labels.append(f"energy threshold {plan.settings.energy * 100:g}%")
        lowest = min(lowest, plan.settings.energy * 100.0)
    if any(layer.convert for layer in layers):
        handles.append(Line2D([], [], marker="o", color="grey", markeredgecolor="black", linestyle="none"))
        labels.append("chosen per-head width d'")
    if bands:
        handles.append(Line2D([], [], color="grey", alpha=0.3, linewidth=6))
        labels.append("band: weakest to strongest head")
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5,
                frameon=False, borderaxespad=0.0)
    axes.set_xlim(0.5, widest + 0.5)
    axes.set_ylim(max(0.0, lowest - 5.0), 101.0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    axes.set_xlabel("per-head key/value channels kept, r")
    axes.set_ylabel("cumulative spectrum energy of the weakest head (%)")
    axes.set_title(f"Level {level}: key/value spectrum energy (from {source}), {_threshold_text(plan)}")
    return figure


FIDELITY_PLOT = "fidelity.png"
_CURVE_STYLES = {  # kind -> (label, colour, marker)
    "budget": ("budget plans (measured sensitivity)", "tab:green", "o"),
    "energy": ("--energy plans", "tab:blue", "s"),
    "ratio": ("--ratio plans (uniform)", "tab:orange", "^"),
}


def plot_fidelity(curves: dict, out_dir: Path) -> Path:
    """`fidelity.png`: PSNR against the teacher's output on the calibration inputs (right after
    conversion) against MACs (b) saved, for budget, energy and ratio plans; the chosen plan starred.
    Points where nothing is converted (infinite fidelity) are left out."""
    from matplotlib.figure import Figure

    out_dir = _prepare_folder(Path(out_dir))
    figure = Figure(figsize=(8.0, 5.0))
    axes = figure.add_subplot()
    for kind, (label, colour, marker) in _CURVE_STYLES.items():
        points = sorted((p["macs_saved"] * 100, p["fidelity_db"]) for p in curves.get(kind, [])
                        if np.isfinite(p["fidelity_db"]) and p["macs_saved"] > 0)
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, color=colour, marker=marker, markersize=5, linewidth=1.5, label=label)
    for point in curves.get("chosen", []):
        if np.isfinite(point["fidelity_db"]):
            axes.plot([point["macs_saved"] * 100], [point["fidelity_db"]], marker="*", markersize=16,
                      color="gold", markeredgecolor="black", linestyle="none",
                      label=f"chosen plan ({curves.get('rule', '')})")
    axes.grid(True, alpha=0.3)
    axes.set_xlabel("MACs (b) saved (%)")
    axes.set_ylabel("PSNR vs teacher output (dB), calibration inputs")
    axes.set_title("Fidelity right after conversion against MACs saved")
    axes.legend(fontsize=8, frameon=False)
    path = out_dir / FIDELITY_PLOT
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        figure.clear()
    return path
