"""`reformer`: listed, never built. Reformer's LSH attention ties queries and keys to one projection, which a
pretrained CSA layer does not have (separate query and key generators), so it cannot be converted without
training from scratch."""

from __future__ import annotations

from glmha.archs import RestorationModel
from glmha.compare.methods.base import Method


class ReformerMethod(Method):
    name = "reformer"
    title = "Reformer"

    def not_applicable(self, teacher: RestorationModel) -> str | None:
        return ("Reformer's LSH attention needs queries and keys from one shared projection; pretrained CSA has "
                "separate query and key generators, so it cannot be converted without training from scratch")
