"""Report the published configurations, then inspect a full-size checkpoint file end to end.

Part 1 counts every published configuration of every supported family on the meta device (no memory,
no compute) and prints parameters and MACs under both conventions at the paper's input sizes.
Part 2 plans `--ratio 0.5` (half of every layer's key/value channels) for each family's default
configuration: what that conversion costs, the same for any weights since the rule ignores them.
Part 3 saves the default Restormer with random weights in the official container ({'params': ...})
and runs `glmha-convert CKPT --dry-run` on it, exactly as a user would on a downloaded checkpoint.

    python examples/inspect_published.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from glmha.archs import MST, AdaIR, DRSformer, MSTPlusPlus, PromptIR, Restormer, Retinexformer, XRestormer
from glmha.cli.convert import main as convert_main
from glmha.convert.api import analyse, plan
from glmha.report import describe, giga

PUBLISHED = [
    ("Restormer deraining / motion / defocus", Restormer, {}),
    ("Restormer dual-pixel defocus", Restormer, {"inp_channels": 6, "dual_pixel_task": True}),
    ("Restormer colour + real denoising", Restormer, {"layernorm_type": "BiasFree"}),
    ("Restormer grey denoising", Restormer, {"layernorm_type": "BiasFree", "inp_channels": 1,
                                             "out_channels": 1}),
    ("MST++ (NTIRE 2022)", MSTPlusPlus, {}),
    ("MST-S", MST, {"num_blocks": (2, 2, 2)}),
    ("MST-M", MST, {"num_blocks": (2, 4, 4)}),
    ("MST-L", MST, {}),
    ("PromptIR (all-in-one)", PromptIR, {}),
    ("AdaIR (all-in-one)", AdaIR, {}),
    ("X-Restormer (all five tasks)", XRestormer, {}),
    ("DRSformer (Rain200H, DID, DDN)", DRSformer, {}),
    ("DRSformer (Rain200L, SPA-Data)", DRSformer, {"mefc": False}),
    ("Retinexformer (all published)", Retinexformer, {}),
]


def published_table() -> str:
    rows = [("configuration", "params", "CSA layers", "MACs (a) conv/linear", "MACs (b) total")]
    for title, cls, kwargs in PUBLISHED:
        with torch.device("meta"):
            model = cls(**kwargs)
        report = describe(model, 256, 256)
        rows.append((title, f"{report.params:,}", str(len(report.layers)), giga(report.macs_linear),
                     giga(report.macs_total)))
    return _aligned(rows)


def ratio_table(ratio: float = 0.5) -> str:
    """Every family's default configuration (random weights) under `--ratio`: the rule ignores the weights."""
    rows = [("default configuration", "params", "after", "MACs (b)", "after")]
    seen = set()
    for title, cls, kwargs in PUBLISHED:
        if cls in seen or kwargs:
            continue
        seen.add(cls)
        torch.manual_seed(0)
        model = cls().eval()
        conversion = plan(model, analyse(model), ratio=ratio, input_size=(256, 256))
        before, after = conversion.to_json()["before"], conversion.to_json()["after"]

        def change(key: str) -> str:
            return f"{100 * (after[key] / before[key] - 1):+.1f} %"  # noqa: B023 - used at once

        rows.append((title, f"{before['params']:,}", change("params"), giga(before["macs_total"]),
                     change("macs_total")))
    return _aligned(rows)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    print("Published configurations at 256x256 (MST: 28x256x256 plus its 28x256x310 mask)\n")
    print(published_table())
    print("\n--ratio 0.5 on each family's default configuration at 256x256 (MST: MST-L)\n")
    print(ratio_table(0.5))
    print("\nglmha-convert on a full-size default Restormer checkpoint (random weights)\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "restormer_default.pth"
        torch.manual_seed(0)
        torch.save({"params": Restormer().state_dict()}, path)
        return convert_main([str(path), "--dry-run", "--json", str(Path(folder) / "report.json")])


if __name__ == "__main__":
    sys.exit(main())
