"""Slim safetensors export of a converted model, and its rebuild from the metadata alone.

`__metadata__` holds JSON strings: format version, family, hyperparameters, GLMHA settings, the
per-layer C', the plan, the source checkpoint's SHA-256 and the glmha version. Only real tensors
are stored, no pickles; the file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from glmha.archs import FAMILIES, RestorationModel, adapter_for
from glmha.config import StrictConfig
from glmha.errors import ArchitectureError, GlmhaError
from glmha.io_utils import save_safetensors
from glmha.layers import LEGACY_SETTINGS, CSALayer, GLMHALayer, GLMHASettings
from glmha.record import Conversion, ModelRecord

FORMAT = "glmha"
FORMAT_VERSION = 2  # 2: calibration forms, grid pooling, gathered MST values, token bias; 1 is still read
READABLE_VERSIONS = (1, 2)
EXPORT_FIELDS = {"glmha", "layers", "hyperparameters"}  # written by every format, used by no other tool
ConfigT = TypeVar("ConfigT", bound=StrictConfig)


def export_model(model: RestorationModel, path: str | Path) -> None:
    """Write a converted model (one whose record holds a conversion) as safetensors with rebuild metadata."""
    from glmha import __version__

    record = model.record
    conversion = record.conversion
    if conversion is None:
        raise GlmhaError("this model was not converted by glmha; nothing to export")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "family": model.family,
        "hyperparameters": json.dumps(model.config.to_dict()),
        "glmha": json.dumps(conversion.settings.to_dict()),
        "layers": json.dumps(conversion.reduced),
        "init": conversion.init,
        "plan": json.dumps(conversion.plan),
        "source_sha256": record.source_sha256,
        "source_file": record.source_file,
        "glmha_version": __version__,
    }
    save_safetensors(dict(model.state_dict()), path, metadata)  # same model and options: same bytes


BASELINE_FORMAT = "glmha-baseline"  # students of glmha-compare's baselines: weights for inspection, not rebuilt


def export_baseline(model: RestorationModel, path: str | Path, method: str) -> None:
    """Write a baseline student's weights (its replaced attention cores included) with what made it; glmha.load
    refuses these files in one line: they are controls of a comparison, not products."""
    from glmha import __version__

    metadata = {"format": BASELINE_FORMAT, "method": method, "family": model.family,
                "hyperparameters": json.dumps(model.config.to_dict()),
                "source_sha256": model.record.source_sha256, "glmha_version": __version__}
    save_safetensors(dict(model.state_dict()), path, metadata)


def is_glmha_export(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format") == FORMAT


def carries_export_fields(metadata: Mapping[str, str]) -> bool:
    """Metadata with glmha's own fields but not its format tag: an export whose tag was damaged, which
    must be reported as such rather than misread as an unknown teacher."""
    return set(metadata) >= EXPORT_FIELDS


def rebuild_model(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  source: str = "file") -> RestorationModel:
    """The converted model described by export metadata, loaded strictly.

    Every damage to the metadata or the tensors is one GlmhaError line naming `source` and the field or
    tensor: an export is read back by users and by distillation, never trusted to be intact."""
    _check_format_tag(metadata, source)
    version = _format_version(metadata, source)
    cls = _family_class(metadata, source)
    config = _strict_config(cls.config_class, _json_field(metadata, "hyperparameters", dict, source),
                            "hyperparameters", source)
    settings = _glmha_settings(metadata, version, source)
    reduced_field = _json_field(metadata, "layers", dict, source)
    plan = _json_field(metadata, "plan", dict, source, default="{}")
    with torch.device("meta"):
        model = _empty_model(cls, config, source)
        layers = dict(model.csa_layers())
        reduced = {name: _reduced_width(name, value, layers, source) for name, value in reduced_field.items()}
        replacements = {name: _empty_glmha(layers[name], channels, settings, name, source)
                        for name, channels in reduced.items()}
    model.replace_layers(replacements)
    _check_tensors(model.state_dict(), state_dict, source)
    # fresh (aligned) copies: the convolution and matrix kernels pick code paths by buffer alignment, so a
    # model on safetensors' buffers could round differently from the same model built in memory
    tensors = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    _check_value_indices(model, source)
    model.record = ModelRecord(
        source_sha256=_text_field(metadata, "source_sha256", source, default=""),
        source_file=_text_field(metadata, "source_file", source, default=""),
        conversion=Conversion(settings=settings, reduced=reduced, plan=plan,
                              init=_text_field(metadata, "init", source, default="")))
    return model.eval()


def _text_field(metadata: Mapping[str, str], field: str, source: str, default: str | None = None) -> str:
    """A metadata string; missing (without a default) or not a string is a damaged export."""
    value = metadata.get(field, default)
    if value is None:
        raise GlmhaError(f"{source}: damaged glmha metadata: field '{field}' is missing")
    if not isinstance(value, str):
        raise GlmhaError(f"{source}: damaged glmha metadata: field '{field}' must be a string, "
                         f"found {type(value).__name__}")
    return value


def _check_format_tag(metadata: Mapping[str, str], source: str) -> None:
    tag = _text_field(metadata, "format", source)
    if tag != FORMAT:
        raise GlmhaError(f"{source}: damaged glmha metadata: field 'format' is {tag!r}, expected {FORMAT!r}")


def _format_version(metadata: Mapping[str, str], source: str) -> int:
    """The export format; a newer one is refused by name, so an old glmha never misreads a new file."""
    text = _text_field(metadata, "format_version", source)
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise GlmhaError(f"{source}: damaged glmha metadata: field 'format_version' must be an integer, "
                         f"found {text!r}")
    version = int(text)
    readable = ", ".join(map(str, READABLE_VERSIONS))
    if version > max(READABLE_VERSIONS):
        from glmha import __version__

        raise GlmhaError(f"{source}: made by a newer glmha (field 'format_version' is {version}; glmha "
                         f"{__version__} reads formats {readable}); upgrade glmha to load it")
    if version not in READABLE_VERSIONS:
        raise GlmhaError(f"{source}: field 'format_version': glmha export format {version} is not supported "
                         f"(this glmha reads formats {readable})")
    return version


def _family_class(metadata: Mapping[str, str], source: str) -> type[RestorationModel]:
    family = _text_field(metadata, "family", source)
    if family not in FAMILIES:
        raise ArchitectureError(f"{source}: damaged glmha metadata: field 'family' names unknown family "
                                f"{family!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[family]


def _json_field(metadata: Mapping[str, str], field: str, kind: type, source: str,
                default: str | None = None) -> Any:
    """A metadata field holding strict JSON (no NaN, no infinities) of the given container type."""
    text = _text_field(metadata, field, source, default)
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, ValueError) as error:
        raise GlmhaError(f"{source}: damaged glmha metadata: field '{field}' is not valid JSON "
                         f"({_json_problem(error)})") from None
    if not isinstance(value, kind):
        raise GlmhaError(f"{source}: damaged glmha metadata: field '{field}' must be {_json_kind(kind())}, "
                         f"found {_json_kind(value)}")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _json_problem(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at character {error.pos}"
    return str(error)


def _json_kind(value: Any) -> str:
    """How a JSON value is named in messages: 'an object', 'a list', 'a string', ..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"


def _strict_config(config_class: type[ConfigT], data: dict[str, Any], field: str, source: str) -> ConfigT:
    """Validate a settings object through its StrictConfig, re-worded with the file and the field."""
    try:
        return config_class.from_dict(data)
    except (GlmhaError, ValueError, TypeError, ArithmeticError) as error:
        from glmha.convert.plan import in_recipe_terms  # settings speak in CLI flags; here they are keys

        raise GlmhaError(f"{source}: damaged glmha metadata: field '{field}' is invalid: "
                         f"{in_recipe_terms(str(error), section=None)}") from None


def _glmha_settings(metadata: Mapping[str, str], version: int, source: str) -> GLMHASettings:
    stored = _json_field(metadata, "glmha", dict, source)
    if version == 1:  # written before the settings had these fields
        stored = {**LEGACY_SETTINGS, **stored}
    return _strict_config(GLMHASettings, stored, "glmha", source)


def _empty_model(cls: type[RestorationModel], config: StrictConfig, source: str) -> RestorationModel:
    """The family's model for these hyperparameters (call on the meta device)."""
    try:
        return cls.from_config(config)
    except (GlmhaError, ValueError, TypeError, RuntimeError, ArithmeticError) as error:
        raise GlmhaError(f"{source}: damaged glmha metadata: field 'hyperparameters' describes no buildable "
                         f"{cls.title} ({_first_line(error)})") from None


def _reduced_width(name: str, value: Any, layers: Mapping[str, CSALayer], source: str) -> int:
    """C' of one layer from the `layers` field: an integer, a positive multiple of the heads, at most C."""
    where = f"{source}: damaged glmha metadata: field 'layers'"
    if name not in layers:
        raise GlmhaError(f"{where} names layer {name!r}, which this model does not have")
    if isinstance(value, bool) or not isinstance(value, int):
        raise GlmhaError(f"{where}: C' of {name!r} must be an integer, found {json.dumps(value)}")
    layer = layers[name]
    if value < layer.num_heads or value % layer.num_heads:
        raise GlmhaError(f"{where}: C'={value} of {name!r} is not a positive multiple of its "
                         f"{layer.num_heads} heads")
    if value > layer.channels:
        raise GlmhaError(f"{where}: C'={value} of {name!r} is larger than the layer's {layer.channels} channels")
    return value


def _empty_glmha(layer: CSALayer, reduced: int, settings: GLMHASettings, name: str, source: str) -> GLMHALayer:
    try:
        return adapter_for(layer).empty_glmha(layer, reduced, settings)
    except (GlmhaError, ValueError, TypeError, RuntimeError) as error:
        raise GlmhaError(f"{source}: damaged glmha metadata: layer {name!r} cannot be built with C'={reduced} "
                         f"and these settings ({_first_line(error)})") from None


def _check_tensors(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """The file's tensors are exactly the ones the metadata describes, in shape and kind of dtype."""
    if set(expected) != set(found):
        missing = sorted(set(expected) - set(found))[:3]
        unexpected = sorted(set(found) - set(expected))[:3]
        raise GlmhaError(f"{source}: tensors do not match the metadata (missing {missing}, "
                         f"unexpected {unexpected})")
    for key, want in expected.items():
        have = found[key]
        if tuple(have.shape) != tuple(want.shape):
            raise GlmhaError(f"{source}: tensor {key!r} has shape {list(have.shape)}, the metadata describes "
                             f"{list(want.shape)}")
        if have.is_floating_point() != want.is_floating_point() or (
                not want.is_floating_point() and have.dtype != want.dtype):
            raise GlmhaError(f"{source}: tensor {key!r} has dtype {_dtype_name(have.dtype)}, the model needs "
                             f"{'floating point' if want.is_floating_point() else _dtype_name(want.dtype)}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_value_indices(model: RestorationModel, source: str) -> None:
    """`values: gather` layers index V's channels with a stored buffer; an index out of range would only
    fail at the first forward pass, far from the damaged file."""
    for name, layer in model.csa_layers():
        index = getattr(layer, "v_index", None)
        if isinstance(index, torch.Tensor) and index.numel() and (
                int(index.min()) < 0 or int(index.max()) >= layer.channels):
            raise GlmhaError(f"{source}: tensor '{name}.v_index' holds channel indices outside "
                             f"0..{layer.channels - 1}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
