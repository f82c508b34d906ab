"""`linformer`: full K/V generation, then a learned per-head projection of the d key and value tokens to d'
(the GLMHA paper's reading of Linformer for channel attention), started as the selection of the d' channels
GLMHA's `select` would keep, so that it starts as GLMHA without calibration."""

from __future__ import annotations

import torch
from torch import nn

from glmha.archs import adapter_for
from glmha.compare.methods.core_methods import CoreMethod
from glmha.layers import CSALayer


class LinformerMethod(CoreMethod):
    name = "linformer"
    title = "Linformer"
    knob = "linformer_keys"
    width_name = "projected keys"

    def core(self, layer: CSALayer, width: int, seed: int) -> nn.Module:
        from glmha.compare.cores import LinformerCore

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LinformerCore(layer.num_heads, layer.head_dim, width)

    def smallest(self, layer: CSALayer) -> int:
        return adapter_for(layer).min_head_width  # e.g. top-k attention needs two keys

    def prepare(self, core: nn.Module, layer: CSALayer, order: list[list[int]]) -> None:
        core.select([sorted(head[:core.reduced]) for head in order])
