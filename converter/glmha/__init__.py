"""glmha: convert channel-wise self-attention (CSA) in restoration transformers to GLMHA.

    model = glmha.load("deraining.pth")                       # the official model, eval mode
    spectra = glmha.analyse(model)                            # per-layer, per-head K/V spectra
    plan = glmha.plan_conversion(model, spectra, energy=0.95)  # C' per layer, costs before/after
    student = glmha.convert_model(model, plan, spectra)       # GLMHA layers, teacher untouched
    glmha.export(student, "deraining.glmha.safetensors")      # slim file; glmha.load reads it back
"""

from glmha.archs import FAMILIES, CSALayer, RestorationModel
from glmha.checkpoint import read_checkpoint
from glmha.convert.api import analyse, convert_to_glmha
from glmha.convert.api import convert as convert_model
from glmha.convert.api import plan as plan_conversion
from glmha.convert.calibration import calibration_inputs
from glmha.convert.export import export_model as export
from glmha.counting import count_macs, count_parameters
from glmha.errors import GlmhaError
from glmha.loader import build_model, load
from glmha.report import describe

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "CSALayer", "GlmhaError", "RestorationModel", "__version__", "analyse", "build_model",
    "calibration_inputs", "convert_model", "convert_to_glmha", "count_macs", "count_parameters", "describe",
    "export", "load", "plan_conversion", "read_checkpoint",
]
