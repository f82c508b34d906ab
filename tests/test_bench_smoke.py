"""The benchmarks run (smoke mode, tiny models): the scripts a reader reruns must not rot. No timing is
asserted; the numbers they record come from runs by hand (bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(stem: str):
    name = f"glmha_bench_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_latency_bench_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "latency.json"
    latency = _bench("latency")
    assert latency.main(["--smoke", "--models", "restormer", "mst_l", "--plans", "ratio:0.5", "target-macs:0.95",
                         "--layers", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["plan"]) for r in rows] == [
        ("restormer", "ratio:0.5"), ("restormer", "target-macs:0.95"), ("mst_l", "ratio:0.5"),
        ("mst_l", "target-macs:0.95")]
    for row in rows:
        assert row["teacher_min"] > 0 and row["student_min"] > 0 and row["macs_total_saved"] > 0
        assert row["params_after"] < row["params_before"]
        assert row["layers"] and all(layer["teacher_min"] > 0 for layer in row["layers"])
        assert all(layer["macs_ratio"] < 1 if layer["converted"] else layer["macs_ratio"] == 1
                   for layer in row["layers"])
        # both are sums of timings from different passes: only their signs are not timing-dependent
        assert row["csa_time_share"] > 0 and row["proportional_time_saved"] > 0
    assert rows[1]["macs_total_saved"] >= 0.05 - 1e-9  # the budget plan meets its target
    assert "| restormer | 32x32 | ratio:0.5 |" in capsys.readouterr().out


def test_allocator_bench_smoke(capsys) -> None:
    allocator = _bench("allocator")
    assert allocator.main(["--smoke", "--malloc", "default"]) == 0
    out = capsys.readouterr().out
    assert "restormer 32x32 ratio:0.5, malloc default, 1 interleaved pairs" in out
    for part in ("attention (CSA or GLMHA)", "GatedDconvFeedForward", "LayerNorm"):
        assert f"| {part} |" in out


def test_layer_parts_bench_smoke(capsys) -> None:
    assert _bench("layer_parts").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "| part (ms per call) | C=16, 2 heads, 16x16 |" in out
    for row in ("| calibration net |", "| GLMHA, alpha 0 |", "| GLMHA / CSA MACs (b) |"):
        assert row in out


def test_restore_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "restore.json"
    restore = _bench("restore")
    assert restore.main(["--smoke", "--models", "retinexformer_lowlight", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["size"], r["mode"]) for r in rows] == [
        ("retinexformer_lowlight", 48, "whole"), ("retinexformer_lowlight", 48, "tiled")]
    for row in rows:
        assert row["original_images_per_s"] > 0 and row["converted_images_per_s"] > 0
        assert row["original_peak_mib"] > 0 and row["converted_peak_mib"] > 0
    assert rows[1]["original_peak_mib"] < rows[0]["original_peak_mib"]  # 32-pixel tiles of a 48x48 image
