"""glmha: convert channel-wise self-attention (CSA) in restoration transformers to GLMHA.

    model = glmha.load("deraining.pth")                       # the official model, eval mode
    spectra = glmha.analyse(model)                            # per-layer, per-head K/V spectra
    plan = glmha.plan_conversion(model, spectra, energy=0.95)  # C' per layer, costs before/after
    student = glmha.convert_model(model, plan, spectra)       # GLMHA layers, teacher untouched
    glmha.export(student, "deraining.glmha.safetensors")      # slim file; glmha.load reads it back
"""

from importlib import import_module
from typing import Any

from glmha.archs import FAMILIES, CSALayer, RestorationModel
from glmha.checkpoint import read_checkpoint
from glmha.counting import count_macs, count_parameters
from glmha.errors import GlmhaError
from glmha.exports import export_model as export
from glmha.loader import build_model, load
from glmha.report import describe

__version__ = "0.1.0"

# the converter's entry points, imported on first use: reading, running and exporting models never loads it
_CONVERTER = {
    "analyse": ("glmha.convert.api", "analyse"),
    "convert_to_glmha": ("glmha.convert.api", "convert_to_glmha"),
    "convert_model": ("glmha.convert.api", "convert"),
    "plan_conversion": ("glmha.convert.api", "plan"),
    "calibration_inputs": ("glmha.convert.calibration", "calibration_inputs"),
}


def __getattr__(name: str) -> Any:
    if name in _CONVERTER:
        module, attribute = _CONVERTER[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'glmha' has no attribute {name!r}")

__all__ = [
    "FAMILIES", "CSALayer", "GlmhaError", "RestorationModel", "__version__", "analyse", "build_model",
    "calibration_inputs", "convert_model", "convert_to_glmha", "count_macs", "count_parameters", "describe",
    "export", "load", "plan_conversion", "read_checkpoint",
]
