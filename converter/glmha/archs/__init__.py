"""The registry of supported families (tried in this order when detecting a checkpoint) and of the
attention kinds they use. Adding a family: its module, and one line in FAMILY_CLASSES."""

from __future__ import annotations

from glmha.archs.adair import AdaIR
from glmha.archs.adapter import AttentionAdapter
from glmha.archs.base import RestorationModel, Task
from glmha.archs.drsformer import DRSformer
from glmha.archs.mst import MST, MSTConfig
from glmha.archs.mst_plus_plus import MSTPlusPlus, MSTPlusPlusConfig
from glmha.archs.promptir import PromptIR
from glmha.archs.restormer import Restormer, RestormerConfig
from glmha.archs.retinexformer import Retinexformer
from glmha.archs.xrestormer import XRestormer
from glmha.errors import GlmhaError
from glmha.layers import CSALayer

FAMILY_CLASSES: tuple[type[RestorationModel], ...] = (
    Restormer,
    MSTPlusPlus,
    MST,
    PromptIR,
    DRSformer,
    Retinexformer,
    AdaIR,
    XRestormer,
)

FAMILIES: dict[str, type[RestorationModel]] = {cls.family: cls for cls in FAMILY_CLASSES}


def _adapters() -> dict[type[CSALayer], AttentionAdapter]:
    found: dict[type[CSALayer], AttentionAdapter] = {}
    for cls in FAMILY_CLASSES:
        for adapter in cls.attention_adapters:
            known = found.setdefault(adapter.csa_class, adapter)
            if known is not adapter:  # pragma: no cover - a registry mistake, caught by the tests' import
                raise RuntimeError(f"two adapters claim {adapter.csa_class.__name__}")
    return found


ADAPTERS = _adapters()


def adapter_for(layer: CSALayer) -> AttentionAdapter:
    """The adapter of exactly this layer's class: a subclass is a different kind until it registers its own."""
    adapter = ADAPTERS.get(type(layer))
    if adapter is None:
        raise GlmhaError(f"no GLMHA conversion is registered for {type(layer).__module__}."
                         f"{type(layer).__qualname__}")
    return adapter


__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "FAMILY_CLASSES",
    "MST",
    "AdaIR",
    "AttentionAdapter",
    "CSALayer",
    "DRSformer",
    "MSTConfig",
    "MSTPlusPlus",
    "MSTPlusPlusConfig",
    "PromptIR",
    "RestorationModel",
    "Restormer",
    "RestormerConfig",
    "Retinexformer",
    "Task",
    "XRestormer",
    "adapter_for",
]
