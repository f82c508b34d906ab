"""Architectures glmha recognises but does not convert, each refused with one line that says why.

Without this, a GRL or RAMiT checkpoint would end in "unknown architecture", which reads like a broken
file. Detection works on key names only, and tolerates a wrapper prefix ("model." from Lightning,
"model_g." from GRL's GAN checkpoints, "module." ...), since these repositories save in several ways.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownArchitecture:
    """An architecture whose checkpoints glmha names instead of calling them unknown."""

    name: str
    detect: Callable[[set[str]], bool]
    reason: str

    @property
    def message(self) -> str:
        return f"{self.name} checkpoint recognised, not converted: {self.reason}"


def prefixes_of(keys: set[str], anchor: str) -> set[str]:
    """Wrapper prefixes ("", "model.", ...) under which the key `anchor` occurs."""
    found = set()
    for key in keys:
        if key.endswith(anchor):
            prefix = key[: len(key) - len(anchor)]
            if prefix == "" or prefix.endswith("."):
                found.add(prefix)
    return found


# GRL (ofsoundof/GRL-Image-Restoration, models/networks/grl.py): every transformer block splits one qkv
# projection between window attention and anchored-stripe attention, each with an affine logit transform
GRL_STEM = ("conv_first.weight", "norm_start.weight", "norm_end.weight")
GRL_ATTENTION = re.compile(
    r"layers\.\d+\.blocks\.\d+\.attn\.(window_attn\.attn_transform|stripe_attn\.attn_transform[12])\.logit_scale"
)


def is_grl(keys: set[str]) -> bool:
    """Stem convolution and both LayerNorms around the body, plus a window or stripe attention transform."""
    for prefix in prefixes_of(keys, GRL_STEM[0]):
        if all(prefix + key in keys for key in GRL_STEM) and any(
            key.startswith(prefix) and GRL_ATTENTION.fullmatch(key, len(prefix)) for key in keys
        ):
            return True
    return False


# RAMiT (rami0205/RAMiT, my_model/ramit*.py): four encoder stages of D-RAMiT blocks named block0, block1, ...,
# each with one qkv conv shared by spatial (sp_attn) and channel (ch_attn) heads
RAMIT_STEM = ("shallow.conv.weight", "stage1.blocks.block0.qkv_proj.qkv.weight", "to_target.final_conv.weight")
RAMIT_ATTENTION = re.compile(r"stage\d\.blocks\.block\d+\.(sp_attn|ch_attn)\.")


def is_ramit(keys: set[str]) -> bool:
    """Shallow conv, the first block's shared qkv conv and the reconstruction conv, plus an attention head."""
    for prefix in prefixes_of(keys, RAMIT_STEM[0]):
        if all(prefix + key in keys for key in RAMIT_STEM) and any(
            key.startswith(prefix) and RAMIT_ATTENTION.match(key, len(prefix)) for key in keys
        ):
            return True
    return False


GRL = KnownArchitecture(
    name="GRL",
    detect=is_grl,
    reason=(
        "its attention is spatial (window + anchored-stripe) and glmha converts channel-wise self-attention "
        "only; GRL has none (grl_base's CAB channel attention is squeeze-and-excitation, no C x C map)"
    ),
)

# shares measured by running the official code on 256x256 inputs for all 13 published spec / task pairs (10
# RAMiT and RAMiT-1, 2 slimSR, 1 slimLLE); MACs are FlopCounterMode / 2 with the attention matmuls. A CSA head
# counts its slice of the shared qkv conv, its d x d attention, its 1x1 proj and logit_scale: what GLMHA
# could remove at the very most. RAMiT-1 (dim 64, 20 blocks): 67,860 of 817,971 parameters, 3.33 of 39.29 G.
RAMIT = KnownArchitecture(
    name="RAMiT",
    detect=is_ramit,
    reason=(
        "each block mixes 3 spatial window heads with one channel self-attention head (16 channels, 12 in the "
        "slim specs) that shares their interleaved q|k|v conv; those heads are 6.4-8.3% of the parameters and "
        "6.7-8.5% of the MACs at 256x256 (attention matmuls included), the most GLMHA could save"
    ),
)

KNOWN_UNSUPPORTED: tuple[KnownArchitecture, ...] = (GRL, RAMIT)


def recognise_unsupported(keys: Iterable[str]) -> str | None:
    """One line naming a known but unconvertible architecture and why, or None when none matches."""
    key_set = set(keys)
    for known in KNOWN_UNSUPPORTED:
        if known.detect(key_set):
            return known.message
    return None
