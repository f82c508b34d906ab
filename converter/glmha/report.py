"""The model report: family, hyperparameters, CSA layer table, parameters and MACs at an input size."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from glmha.archs import RestorationModel
from glmha.counting import CostReport, count_macs, count_parameters
from glmha.runtime import single_thread


@dataclass
class LayerReport:
    name: str
    kind: str
    channels: int
    heads: int
    head_dim: int
    resolution: list[int]  # [h, w] of the tokens' spatial grid at the report's input size
    scale: str  # resolution relative to the input, e.g. "1/4"
    params: int
    macs_linear: int
    macs_total: int


@dataclass
class ModelReport:
    family: str
    title: str
    hyperparameters: dict[str, Any]
    input_shape: list[int]
    input_shapes: list[list[int]]  # every forward argument (MST: x and mask)
    params: int
    macs_linear: int
    macs_total: int
    layers: list[LayerReport] = field(default_factory=list)
    cost: CostReport | None = field(default=None, repr=False, compare=False)  # reused by the planner

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cost"}
        data["layers"] = [asdict(layer) for layer in self.layers]
        data["csa"] = {
            "count": len(self.layers),
            "params": sum(layer.params for layer in self.layers),
            "macs_linear": sum(layer.macs_linear for layer in self.layers),
            "macs_total": sum(layer.macs_total for layer in self.layers),
        }
        return data


@single_thread()
def describe(model: RestorationModel, height: int, width: int) -> ModelReport:
    """Count the model at one input size (batch 1); raises InputShapeError for sizes it cannot take."""
    inputs = model.example_inputs(height, width, device="meta")
    layers = model.csa_layers()
    cost = count_macs(model, inputs, modules=[name for name, _ in layers])
    rows = []
    for name, layer in layers:
        grid = layer.token_grid(cost.input_shapes[name][0])
        rows.append(LayerReport(
            name=name,
            kind=type(layer).__name__,
            channels=layer.channels,
            heads=layer.num_heads,
            head_dim=layer.head_dim,
            resolution=list(grid),
            scale=_scale(grid[0], height),
            params=count_parameters(layer),
            macs_linear=cost.modules[name].linear,
            macs_total=cost.modules[name].total,
        ))
    return ModelReport(
        family=model.family,
        title=model.title,
        hyperparameters=model.config.to_dict(),
        input_shape=list(inputs[0].shape),
        input_shapes=[list(t.shape) for t in inputs],
        params=count_parameters(model),
        macs_linear=cost.macs.linear,
        macs_total=cost.macs.total,
        layers=rows,
        cost=cost,
    )


def _scale(layer_height: int, input_height: int) -> str:
    if layer_height >= input_height:
        return "1"
    return f"1/{2 ** round(math.log2(input_height / layer_height))}"


def giga(macs: int) -> str:
    return f"{macs / 1e9:.3f} G"


def format_report(report: ModelReport) -> str:
    hyper = ", ".join(f"{k}={_fmt(v)}" for k, v in report.hyperparameters.items())
    shapes = " + ".join("x".join(map(str, s)) for s in report.input_shapes)
    lines = [
        f"family           {report.family} ({report.title})",
        f"hyperparameters  {hyper}",
        f"input            {shapes}",
        f"parameters       {report.params:,}",
        f"MACs (a)         {giga(report.macs_linear)}  ({report.macs_linear:,}; convolutions and "
        "linear layers only)",
        f"MACs (b)         {giga(report.macs_total)}  ({report.macs_total:,}; including attention "
        "matrix products)",
        "",
        f"CSA layers: {len(report.layers)}",
    ]
    header = ("layer", "C", "heads", "d", "scale", "tokens", "params", "MACs (a)", "MACs (b)")
    table = [header] + [
        (row.name, str(row.channels), str(row.heads), str(row.head_dim), row.scale,
         "x".join(map(str, row.resolution)), f"{row.params:,}", giga(row.macs_linear),
         giga(row.macs_total))
        for row in report.layers
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for index, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells))
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    csa = report.to_json()["csa"]
    lines.append(
        f"  CSA share: {csa['params']:,} params ({100 * csa['params'] / max(report.params, 1):.1f} %), "
        f"{giga(csa['macs_total'])} of {giga(report.macs_total)} MACs (b)"
    )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
