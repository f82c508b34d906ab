"""The recipe's `compare:` section: which methods to build at which MACs budget, and the ablation sweeps.

One validation for every value: the budget and ratios go through glmha.convert.plan.PlanSettings and alpha
through glmha.layers.GLMHASettings, as `glmha-convert --target-macs / --ratio / --alpha` do, and their
messages are put in recipe terms (`compare.target_macs: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glmha.config import StrictConfig, _describe
from glmha.errors import GlmhaError

METHODS = ("glmha", "prune", "linformer", "performer", "reformer")
CRITERIA = ("magnitude", "taylor", "hessian")
SWEEPS = ("ratio", "alpha", "levels")


class CompareError(GlmhaError):
    """A `compare:` section that cannot be run as written; the message starts with the key's path."""


def _checked(where: str, check) -> None:
    """Run a shared settings check and say its error at `where` (the checks speak in CLI flags)."""
    try:
        check()
    except GlmhaError as error:
        message = str(error)
        for flag in ("--target-macs", "--ratio", "--alpha"):
            message = message.replace(f"{flag} ", "").replace(flag, "")
        raise CompareError(f"{where}: {message.strip()}") from None


@dataclass(frozen=True)
class SweepSection(StrictConfig):
    """Ablations of the GLMHA conversion (the paper's Tables 7-9), each row distilled like the methods."""

    ratio: tuple[float, ...] = ()  # K/V reduction ratios (student.ratio), e.g. [0.25, 0.5, 0.75, 0.9]
    alpha: tuple[float, ...] = ()  # calibration strengths, converted at `at_ratio`
    levels: tuple[tuple[str, ...], ...] = ()  # sets of levels converted (student.levels), at `at_ratio`
    at_ratio: float = 0.5  # the K/V reduction of the alpha and levels rows (the paper: 50 %)

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> SweepSection:
        if isinstance(data, dict) and isinstance(data.get("levels"), list):
            data = dict(data)
            data["levels"] = [[str(level) if isinstance(level, int) and not isinstance(level, bool) else level
                               for level in entry] if isinstance(entry, list) else entry
                              for entry in data["levels"]]
        return super().from_dict(data, where=where)

    def __post_init__(self) -> None:
        super().__post_init__()
        from glmha.convert.plan import PlanSettings
        from glmha.layers import GLMHASettings

        for where, ratio in [*((f"ratio[{i}]", r) for i, r in enumerate(self.ratio)), ("at_ratio", self.at_ratio)]:
            _checked(where, lambda r=ratio: PlanSettings(energy=None, ratio=r))
            if ratio <= 0:
                raise CompareError(f"{where}: must be in (0, 1): a ratio of 0 converts nothing, got {ratio}")
        for index, alpha in enumerate(self.alpha):
            _checked(f"alpha[{index}]", lambda a=alpha: GLMHASettings(alpha=a))
        for index, levels in enumerate(self.levels):
            if not levels:
                raise CompareError(f"levels[{index}]: expected a non-empty list of levels")
        for name in SWEEPS:
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise CompareError(f"{name}: lists a value twice ({list(values)})")

    @property
    def rows(self) -> int:
        return len(self.ratio) + len(self.alpha) + len(self.levels)


@dataclass(frozen=True)
class CompareSection(StrictConfig):
    """`compare:` of a recipe. Every method's student is built from the recipe's teacher at `target_macs`
    (a fraction of the teacher's MACs (b) at eval.input_size, as glmha-convert --target-macs), distilled with
    the recipe's data, training and loss settings, and evaluated on its validation set."""

    methods: tuple[str, ...] = METHODS
    target_macs: float | None = None
    importance: str = "magnitude"  # prune: Torch-Pruning's criterion (magnitude | taylor | hessian)
    importance_batches: int = 4  # taylor / hessian: training batches whose gradients score the channels
    linformer_keys: int | None = None  # per head; null: as many as the budget allows
    performer_features: int | None = None  # per head; null: as many as the budget allows
    sweep: SweepSection = field(default_factory=SweepSection)

    def __post_init__(self) -> None:
        super().__post_init__()
        from glmha.convert.plan import PlanSettings

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise CompareError(f"methods: unknown method(s) {', '.join(map(str, unknown))} "
                               f"(known: {', '.join(METHODS)})")
        if len(set(self.methods)) != len(self.methods):
            raise CompareError(f"methods: lists a method twice ({', '.join(self.methods)})")
        if not self.methods and not self.sweep.rows:
            raise CompareError("methods: nothing to compare: give methods or sweep rows")
        budgeted = [m for m in self.methods if m != "reformer"]
        if budgeted and self.target_macs is None:
            raise CompareError(f"target_macs: required by {', '.join(budgeted)} (the MACs (b) budget "
                               f"every method is built at, a fraction of the teacher's, e.g. 0.88)")
        if self.target_macs is not None:
            _checked("target_macs", lambda: PlanSettings(energy=None, target_macs=self.target_macs))
        if self.importance not in CRITERIA:
            raise CompareError(f"importance: expected one of {', '.join(CRITERIA)}, "
                               f"got {_describe(self.importance)}")
        for name in ("importance_batches", "linformer_keys", "performer_features"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CompareError(f"{name}: must be >= 1, got {value}")


def parse_compare(data: Any) -> CompareSection:
    """The section as read from YAML (None: absent, refused: glmha-compare needs one)."""
    if data is None:
        raise CompareError("compare: the recipe has no compare section (add e.g. `compare: {methods: [glmha, "
                           "prune, linformer, performer, reformer], target_macs: 0.88}`)")
    if not isinstance(data, dict):
        raise CompareError(f"compare: expected a mapping, got {_describe(data)}")
    try:
        return CompareSection.from_dict(data, where="compare")
    except CompareError:
        raise
    except GlmhaError as error:
        raise CompareError(str(error)) from None
