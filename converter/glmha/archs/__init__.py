"""Supported architecture families, tried in this order when detecting a checkpoint."""

from __future__ import annotations

from glmha.archs.base import CSALayer, RestorationModel
from glmha.archs.mst import MST, MSTConfig
from glmha.archs.mst_plus_plus import MSTPlusPlus, MSTPlusPlusConfig
from glmha.archs.restormer import Restormer, RestormerConfig

FAMILIES: dict[str, type[RestorationModel]] = {
    Restormer.family: Restormer,
    MSTPlusPlus.family: MSTPlusPlus,
    MST.family: MST,
}

__all__ = [
    "FAMILIES",
    "MST",
    "CSALayer",
    "MSTConfig",
    "MSTPlusPlus",
    "MSTPlusPlusConfig",
    "RestorationModel",
    "Restormer",
    "RestormerConfig",
]
