"""What a model carries about itself: the file it was read from and, once converted, how.

One declared dataclass on every model (`model.record`), instead of loose attributes: distillation
compares the teacher file's SHA-256 with the one a student was converted from, and exports write the
conversion into their metadata so the model can be rebuilt from the file alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECORD_VERSION = 1  # raise when a field changes meaning; exports keep their own format version


@dataclass(frozen=True)
class Conversion:
    """How glmha converted a model: GLMHA settings (a glmha.layers.GLMHASettings), C' per converted layer,
    the initialisation and the plan (ConversionPlan.to_json(), when known)."""

    settings: Any
    reduced: dict[str, int]
    init: str = "select"
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRecord:
    """Where a model came from (`source_*`: the checkpoint glmha.load read, or the one a converted model was
    converted from) and its conversion (None for an original model)."""

    source_sha256: str = ""
    source_file: str = ""
    conversion: Conversion | None = None
    version: int = RECORD_VERSION

    @property
    def converted(self) -> bool:
        return self.conversion is not None


ORIGINAL = ModelRecord()  # what a model built in memory carries until a file or a conversion says more
