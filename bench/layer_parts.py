"""Where a Restormer GLMHA layer's time goes, against its CSA layer, on one feature map.

Each callable runs in blocks of calls (the block mean, minimum over rounds): the whole CSA layer, the
whole GLMHA layer, the GLMHA layer with alpha 0 (no calibration net, no scale), the calibration net
alone (Q -> 1 + alpha A) and its max pool and depthwise conv, and the 1x1 / depthwise convolutions
of both layers. Published Restormer widths at 128x128 input by default: (48, 1 head, 128x128),
(96, 2, 64x64), (192, 4, 32x32), (384, 8, 16x16), with C' = C / 2.

    OMP_WAIT_POLICY=PASSIVE python bench/layer_parts.py
    python bench/layer_parts.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from glmha.archs.mdta import GLMHARestormerAttention, RestormerAttention
from glmha.counting import count_macs
from glmha.layers import GLMHASettings, max_pool_to_grid

CASES = ((48, 1, 128), (96, 2, 64), (192, 4, 32), (384, 8, 16))


def block_time(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def measure(channels: int, heads: int, side: int, reduced: int, rounds: int,
            budget_macs: float) -> dict[str, float]:
    """Minimum block-mean time (s) of each part; blocks hold about `budget_macs` MACs of the CSA layer."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, side, side, generator=generator)
    csa = RestormerAttention(channels, heads, False).eval()
    glmha = GLMHARestormerAttention(channels, heads, reduced, False, GLMHASettings()).eval()
    plain = GLMHARestormerAttention(channels, heads, reduced, False, GLMHASettings(alpha=0.0)).eval()
    with torch.no_grad():
        glmha.calibrate.weight.normal_(generator=generator)  # a live calibration net, as after training
        glmha.calibrate.bias.normal_(generator=generator)
        query = glmha.q_dwconv(glmha.q(x))
        pooled = max_pool_to_grid(query, glmha.calibrate.grid)
        csa_qkv = csa.qkv(x)
        kv = glmha.kv(x)
        parts = {
            "CSA layer": lambda: csa(x), "GLMHA layer": lambda: glmha(x), "GLMHA, alpha 0": lambda: plain(x),
            "calibration net": lambda: glmha.input_scale(query), "  max pool": lambda: max_pool_to_grid(query, 8),
            "  depthwise 3x3 on the grid": lambda: glmha.calibrate.dwconv(pooled),
            "CSA qkv 1x1": lambda: csa.qkv(x), "CSA qkv depthwise": lambda: csa.qkv_dwconv(csa_qkv),
            "GLMHA q 1x1 + kv 1x1": lambda: (glmha.q(x), glmha.kv(x)),
            "GLMHA q + kv depthwise": lambda: (glmha.q_dwconv(query), glmha.kv_dwconv(kv)),
        }
        calls = max(1, int(budget_macs / count_macs(csa, [x]).macs.total))
        best = dict.fromkeys(parts, float("inf"))
        for call in parts.values():  # warm-up
            block_time(call, 1)
        for _ in range(rounds):
            for name, call in parts.items():
                best[name] = min(best[name], block_time(call, calls))
        best["MACs ratio"] = count_macs(glmha, [x]).macs.total / count_macs(csa, [x]).macs.total
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one small case, one round")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = ((16, 2, 16),) if args.smoke else CASES
    rounds, budget = (1, 1e6) if args.smoke else (args.rounds, 1e8)
    results = {case: measure(*case, case[0] // 2, rounds, budget) for case in cases}
    names = [n for n in next(iter(results.values())) if n != "MACs ratio"]
    print("| part (ms per call) | " + " | ".join(f"C={c}, {h} heads, {s}x{s}" for c, h, s in cases) + " |")
    print("|---|" + "---|" * len(cases))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{results[case][name] * 1000:.3f}" for case in cases) + " |")
    print("| GLMHA / CSA time | " + " | ".join(
        f"{results[c]['GLMHA layer'] / results[c]['CSA layer']:.3f}" for c in cases) + " |")
    print("| GLMHA alpha 0 / CSA time | " + " | ".join(
        f"{results[c]['GLMHA, alpha 0'] / results[c]['CSA layer']:.3f}" for c in cases) + " |")
    print("| GLMHA / CSA MACs (b) | " + " | ".join(f"{results[c]['MACs ratio']:.3f}" for c in cases) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
