"""Distillation recipes: a versioned YAML schema, validated on load with the path of every bad value.

Why strict: a recipe is shared and rerun, and a misspelt key silently falling back to a default
would make a run differ from what its file says. Every section is a frozen dataclass, so the
resolved recipe (defaults filled in) can be printed, stored next to each checkpoint and compared
when a run resumes.

Relative paths are resolved against the current directory. `output.dir` defaults to
`runs/<recipe file stem>`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from glmha.config import StrictConfig, _describe
from glmha.convert.plan import BUDGET_KEYS, DEFAULT_ENERGY, PlanSettings, in_recipe_terms
from glmha.convert.spectrum import check_spectrum_mode
from glmha.data.degrade import DEGRADATIONS
from glmha.errors import GlmhaError
from glmha.layers import GLMHASettings

RECIPE_VERSION = 1
SAMPLE_SPLITS = ("train", "test")
METRICS = ("psnr", "ssim", "mrae", "rmse", "sam")


class RecipeError(GlmhaError):
    """A recipe that cannot be run as written; the message starts with the offending key's path."""


def _positive(where: str, value: float | int, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero) or (isinstance(value, float) and not math.isfinite(value)):
        raise RecipeError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _level_name(level: Any) -> Any:
    """`levels: [1, 2]` names levels as `--levels 1,2` does (YAML reads the bare names as integers)."""
    return str(level) if isinstance(level, int) and not isinstance(level, bool) else level


@dataclass(frozen=True)
class StudentSection(StrictConfig):
    """A glmha export (`path`), or how to convert the teacher (as `glmha-convert` options)."""

    path: str | None = None
    energy: float | None = DEFAULT_ENERGY
    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    min_fidelity: float | None = None
    levels: tuple[str, ...] = ()
    rank_patterns: tuple[str, ...] = ()
    init: str = "select"
    alpha: float = GLMHASettings.alpha
    calibration: str = GLMHASettings.calibration
    allow_bigger: bool = False
    spectrum: str = "operator"
    seed: int = 0

    def __post_init__(self) -> None:
        """No check of its own: the settings classes glmha-convert builds from its options judge every
        value, so a recipe key and its command-line flag refuse the same values with the same rule."""
        super().__post_init__()
        try:
            check_spectrum_mode(self.spectrum)
            self.plan_settings()
            self.glmha_settings()
        except GlmhaError as error:  # the planner speaks in CLI flags; say it in recipe keys
            raise RecipeError(in_recipe_terms(str(error), section=None)) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str | None = None) -> StudentSection:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("path") is not None:
                given = sorted(k for k, v in data.items() if k != "path" and v is not None)
                if given:
                    raise RecipeError(f"{where or 'student'}: give either path (a glmha export) or conversion "
                                      f"settings, not both (also given: {', '.join(given)})")
                known = {f.name for f in dataclasses.fields(cls)}
                data = {k: v for k, v in data.items() if k == "path" or k not in known}  # unknown keys still fail
            elif "energy" not in data and any(data.get(k) is not None for k in ("ratio", *BUDGET_KEYS)):
                data["energy"] = None  # a ratio or a budget given alone replaces the default energy
            if isinstance(data.get("levels"), list):
                data["levels"] = [_level_name(level) for level in data["levels"]]
        return super().from_dict(data, where=where)

    def to_dict(self) -> dict[str, Any]:
        """With a path, the conversion settings do not apply and are left out (so the resolved recipe
        reads back)."""
        return {"path": self.path} if self.path is not None else super().to_dict()

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(energy=self.energy, ratio=self.ratio, target_macs=self.target_macs,
                            target_params=self.target_params, min_fidelity=self.min_fidelity, levels=self.levels,
                            rank_patterns=self.rank_patterns, init=self.init, seed=self.seed,
                            allow_bigger=self.allow_bigger)

    def glmha_settings(self) -> GLMHASettings:
        return GLMHASettings(alpha=self.alpha, calibration=self.calibration)


SPECTRAL_FORMATS = ("ntire2022", "sci", "synthetic")
NTIRE_SPLITS = ("train", "valid")
SYNTHETIC_KINDS = ("rgb", "sci")


@dataclass(frozen=True)
class SourceSection(StrictConfig):
    """Where samples come from: one of the image forms (`FORMS`) or a spectral `format:`."""

    inputs: str | None = None
    targets: str | None = None
    clean: str | None = None
    samples: str | None = None
    degrade: Any = None  # one of glmha.data.degrade's specs
    format: str | None = None  # spectral: ntire2022 | sci | synthetic
    root: str | None = None
    split: str | None = None
    mask: str | None = None
    kind: str | None = None  # synthetic: rgb (MST++) | sci (MST-L)
    scenes: int | None = None
    size: int | None = None
    seed: int | None = None

    FORMS: ClassVar[tuple[str, ...]] = (
        "{inputs: DIR, targets: DIR}", "{inputs: DIR}", "{clean: DIR, degrade: {...}}",
        "{samples: train|test, degrade: {...}}", "{format: ntire2022, root: DIR, split: train|valid}",
        "{format: sci, root: DIR, mask: FILE}", "{format: synthetic, kind: rgb|sci, scenes: N, size: S, seed: K}")
    _SPECTRAL_KEYS: ClassVar[dict[str, frozenset[str]]] = {
        "ntire2022": frozenset({"format", "root", "split"}), "sci": frozenset({"format", "root", "mask"}),
        "synthetic": frozenset({"format", "kind", "scenes", "size", "seed"})}

    @property
    def has_target(self) -> bool:
        return self.format is not None or self.inputs is None or self.targets is not None

    @property
    def spectral(self) -> bool:
        return self.format is not None

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> SourceSection:
        where = where or "source"
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: expected a mapping (one of {'; '.join(cls.FORMS)}), "
                              f"got {_describe(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                              f"(known: {', '.join(sorted(known))})")
        if data.get("format") is not None:
            return cls._spectral(data, where)
        for key in ("inputs", "targets", "clean", "samples"):
            if key in data and not isinstance(data[key], str):
                raise RecipeError(f"{where}.{key}: expected a string, got {_describe(data[key])}")
        keys = frozenset(k for k in data if data[k] is not None)
        if keys not in ({"inputs", "targets"}, {"inputs"}, {"clean", "degrade"}, {"samples", "degrade"}):
            raise RecipeError(f"{where}: give exactly one of {'; '.join(cls.FORMS)} "
                              f"(got keys: {', '.join(sorted(keys)) or 'none'})")
        if "samples" in keys and data["samples"] not in SAMPLE_SPLITS:
            raise RecipeError(f"{where}.samples: expected one of {', '.join(SAMPLE_SPLITS)}, "
                              f"got {data['samples']!r}")
        degrade = None
        if "degrade" in keys:
            degrade = parse_degrade(data["degrade"], where=f"{where}.degrade")
        return cls(inputs=data.get("inputs"), targets=data.get("targets"), clean=data.get("clean"),
                   samples=data.get("samples"), degrade=degrade)

    @classmethod
    def _spectral(cls, data: dict[str, Any], where: str) -> SourceSection:
        form = data["format"]
        if form not in SPECTRAL_FORMATS:
            raise RecipeError(f"{where}.format: expected one of {', '.join(SPECTRAL_FORMATS)}, "
                              f"got {_describe(form)}")
        wanted = cls._SPECTRAL_KEYS[form]
        keys = frozenset(k for k in data if data[k] is not None)
        if keys != wanted:
            raise RecipeError(f"{where}: format {form} takes exactly {', '.join(sorted(wanted))} "
                              f"(got: {', '.join(sorted(keys))})")
        for key in ("root", "split", "mask", "kind"):
            if key in keys and not isinstance(data[key], str):
                raise RecipeError(f"{where}.{key}: expected a string, got {_describe(data[key])}")
        for key in ("scenes", "size", "seed"):
            if key in keys and (isinstance(data[key], bool) or not isinstance(data[key], int)
                                or data[key] < (0 if key == "seed" else 1)):
                raise RecipeError(f"{where}.{key}: expected a {'non-negative' if key == 'seed' else 'positive'} "
                                  f"integer, got {_describe(data[key])}")
        if form == "ntire2022" and data["split"] not in NTIRE_SPLITS:
            raise RecipeError(f"{where}.split: expected one of {', '.join(NTIRE_SPLITS)}, got {data['split']!r}")
        if form == "synthetic" and data["kind"] not in SYNTHETIC_KINDS:
            raise RecipeError(f"{where}.kind: expected one of {', '.join(SYNTHETIC_KINDS)}, got {data['kind']!r}")
        return cls(**{k: data[k] for k in keys})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                               if f.name != "degrade" and getattr(self, f.name) is not None}
        if self.degrade is not None:
            out["degrade"] = self.degrade.to_dict()
        return out

    def folders(self) -> dict[str, str]:
        keys = ("inputs", "targets", "clean", "root")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def files(self) -> dict[str, str]:
        return {"mask": self.mask} if self.mask is not None else {}


def parse_degrade(data: Any, *, where: str) -> StrictConfig:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping with a type ({', '.join(DEGRADATIONS)}), "
                          f"got {_describe(data)}")
    kind = data.get("type")
    if kind not in DEGRADATIONS:
        raise RecipeError(f"{where}.type: expected one of {', '.join(DEGRADATIONS)}, got {_describe(kind)}")
    return DEGRADATIONS[kind].from_dict(data, where=where)


@dataclass(frozen=True)
class DataSection(StrictConfig):
    train: SourceSection
    val: SourceSection
    patch_size: int = 128
    batch_size: int = 8
    workers: int = 0
    val_limit: int | None = None
    val_crop: int | None = None  # centre-crop validation images to at most N x N (quick checks)
    flips: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("patch_size", self.patch_size)
        _positive("batch_size", self.batch_size)
        _positive("workers", self.workers, allow_zero=True)
        if self.val_limit is not None:
            _positive("val_limit", self.val_limit)
        if self.val_crop is not None:
            _positive("val_crop", self.val_crop)


@dataclass(frozen=True)
class TrainSection(StrictConfig):
    steps: int = 1000
    lr: float = 2e-4
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    min_lr: float = 1e-6
    grad_accum: int = 1
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    trainable: Literal["glmha", "all"] = "glmha"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "lr", "grad_accum", "checkpoint_every", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "momentum", "warmup_steps", "min_lr"):
            _positive(name, getattr(self, name), allow_zero=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise RecipeError(f"betas: expected two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps >= self.steps:
            raise RecipeError(f"warmup_steps: must be smaller than steps ({self.steps}), got {self.warmup_steps}")
        if self.scheduler != "constant" and self.min_lr > self.lr:
            raise RecipeError(f"min_lr: must not exceed lr ({self.lr}), got {self.min_lr}")
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)


@dataclass(frozen=True)
class LossSection(StrictConfig):
    output: float = 1.0
    features: float = 0.1
    gt: float = 0.0
    distance: Literal["l1", "charbonnier", "mse", "rmse", "mrae"] = "l1"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("output", "features", "gt"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.output == self.features == self.gt == 0:
            raise RecipeError("output: at least one of output, features, gt must be > 0")


@dataclass(frozen=True)
class EvalSection(StrictConfig):
    every: int = 500
    metrics: tuple[str, ...] = ()  # empty: psnr, ssim for images; mrae, rmse, psnr, sam for spectra
    input_size: tuple[int, ...] = (256, 256)
    border: int = 0  # pixels left out on each side when scoring (NTIRE 2022: 128)
    select: str = ""  # metric that picks the exported student; empty: mrae for MST++, psnr otherwise

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("every", self.every)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise RecipeError(f"metrics: expected a list of {', '.join(METRICS)} (empty: the default), "
                              f"got {list(self.metrics)}")
        if self.select and self.select not in METRICS:
            raise RecipeError(f"select: expected one of {', '.join(METRICS)} (empty: the default), "
                              f"got {self.select!r}")
        if self.select and self.metrics and self.select not in self.metrics:
            raise RecipeError(f"select: {self.select!r} is not among the evaluated metrics "
                              f"({', '.join(self.metrics)})")
        _positive("border", self.border, allow_zero=True)
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise RecipeError(f"input_size: expected [height, width], got {list(self.input_size)}")


@dataclass(frozen=True)
class OutputSection(StrictConfig):
    dir: str | None = None
    tensorboard: bool | Literal["auto"] = "auto"


@dataclass(frozen=True)
class Recipe(StrictConfig):
    version: int
    teacher: str
    data: DataSection
    student: StudentSection = field(default_factory=StudentSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossSection = field(default_factory=LossSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.val.spectral and self.data.val_crop is not None:
            raise RecipeError("data.val_crop: spectral validation scores whole scenes; use eval.border")
        if self.loss.gt > 0 and not self.data.train.has_target:
            raise RecipeError(f"loss.gt: is {self.loss.gt} but data.train has no ground truth (inputs only); "
                              f"set loss.gt: 0 or give targets")

    @property
    def run_dir(self) -> Path:
        assert self.output.dir is not None, "load_recipe fills output.dir"
        return Path(self.output.dir)


# Keys a resumed run may change: they cannot alter the trained weights or which student is exported.
RESUMABLE_CHANGES = ("train.checkpoint_every", "train.keep_checkpoints", "train.device", "data.workers",
                     "output.tensorboard")


def _yaml_loader():
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; recipes write learning rates that
    way all the time, so floats in exponent notation without a dot are recognised too."""
    import re

    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return RecipeLoader


def load_yaml_text(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: no arbitrary objects


def read_yaml(path: Path) -> Any:
    import yaml

    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe {path}: does not exist")
    if not path.is_file():
        raise RecipeError(f"recipe {path}: is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"recipe {path}: cannot be read ({error})") from None
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"recipe {path}: not valid YAML{where} ({problem})") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`--set a.b=value`: value read as YAML (numbers, true/false, null, [lists]); sections created."""
    import yaml

    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RecipeError(f"--set {item}: expected KEY.PATH=VALUE, e.g. train.lr=1e-4")
        try:
            value = load_yaml_text(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item}: {'.'.join(parts[:depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def parse_recipe(raw: Any, *, default_name: str = "run") -> Recipe:
    """Validate a recipe given as a mapping (YAML already read) and fill defaults."""
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe: expected a mapping of sections, got {_describe(raw)}")
    version = raw.get("version")
    if version is None:
        raise RecipeError(f"version: missing; this glmha reads recipe version {RECIPE_VERSION} (add `version: 1`)")
    if version != RECIPE_VERSION:
        raise RecipeError(f"version: this glmha reads recipe version {RECIPE_VERSION}, got {_describe(version)}")
    try:
        recipe = Recipe.from_dict(raw, where="")
    except RecipeError:
        raise
    except GlmhaError as error:  # from the shared config machinery: the same message, as a recipe error
        raise RecipeError(str(error)) from None
    if recipe.output.dir is None:
        recipe = dataclasses.replace(recipe, output=dataclasses.replace(recipe.output, dir=f"runs/{default_name}"))
    return recipe


def check_files(recipe: Recipe) -> None:
    """Every path the recipe names exists, with the key that names it in the error."""
    _check_path("teacher", recipe.teacher, want_file=True)
    if recipe.student.path is not None:
        _check_path("student.path", recipe.student.path, want_file=True)
    for split in ("train", "val"):
        for key, folder in getattr(recipe.data, split).folders().items():
            _check_path(f"data.{split}.{key}", folder, want_file=False)
        for key, file in getattr(recipe.data, split).files().items():
            _check_path(f"data.{split}.{key}", file, want_file=True)
    run_dir = recipe.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"output.dir: {run_dir} exists and is not a folder")


def _check_path(where: str, value: str, *, want_file: bool) -> None:
    path = Path(value)
    if not path.exists():
        raise RecipeError(f"{where}: {'file' if want_file else 'folder'} {value} does not exist")
    if want_file and not path.is_file():
        raise RecipeError(f"{where}: {value} is not a file")
    if not want_file and not path.is_dir():
        raise RecipeError(f"{where}: {value} is not a folder")


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, check: bool = True) -> Recipe:
    """Read, override, validate and (with `check`) make sure every named file exists."""
    return load_recipe_and_compare(path, overrides, check=check)[0]


def load_recipe_and_compare(path: str | Path, overrides: Sequence[str] = (), *,
                            check: bool = True) -> tuple[Recipe, Any]:
    """The recipe and its `compare:` section (glmha.compare.section.CompareSection, None when absent): the section
    is glmha-compare's, validated here for glmha-distill too, which runs the recipe's own student."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise RecipeError(f"recipe {path}: is empty")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections, got {_describe(raw)}")
    raw = apply_overrides(raw, overrides)
    compare = None
    if "compare" in raw:
        from glmha.compare.section import parse_compare

        compare = parse_compare(raw.pop("compare"))
    recipe = parse_recipe(raw, default_name=path.stem)
    if check:
        check_files(recipe)
    return recipe, compare


def recipe_to_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def resume_differences(saved: dict[str, Any], current: dict[str, Any],
                       allowed: Iterable[str] = RESUMABLE_CHANGES) -> list[str]:
    """Changes between the recipe a checkpoint was written with and the current one that break
    resumption, as "key: old -> new" lines. `train.steps` may change only under a constant schedule
    (every other schedule is shaped by the step count)."""
    allowed = set(allowed) | {"output.dir"}
    if current.get("train", {}).get("scheduler") == "constant" == saved.get("train", {}).get("scheduler"):
        allowed.add("train.steps")
    before, after = flatten(saved), flatten(current)
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if key not in allowed and old != new:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines
