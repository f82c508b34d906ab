"""glmha: convert channel-wise self-attention (CSA) in restoration transformers to GLMHA."""

from glmha.archs import FAMILIES, CSALayer, RestorationModel
from glmha.checkpoint import read_checkpoint
from glmha.counting import count_macs, count_parameters
from glmha.errors import GlmhaError
from glmha.loader import build_model, load
from glmha.report import describe

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "CSALayer", "GlmhaError", "RestorationModel", "__version__", "build_model",
    "count_macs", "count_parameters", "describe", "load", "read_checkpoint",
]
