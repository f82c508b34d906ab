"""Strict dataclass configurations.

Hyperparameters travel through JSON (reports, safetensors metadata, recipes), so rebuilding a config
from a dict must reject unknown keys and wrong types instead of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from glmha.errors import GlmhaError

ConfigT = TypeVar("ConfigT", bound="StrictConfig")


class StrictConfig:
    """Mixin for frozen dataclasses: `from_dict` rejects unknown keys, `to_dict` is JSON-ready."""

    def __post_init__(self) -> None:
        """Sequences given as lists (from JSON, or by hand) are stored as tuples: hashable, comparable."""
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], *, where: str | None = None) -> ConfigT:
        """Build from a JSON/YAML mapping. `where` (e.g. "train") prefixes every error with the
        value's path in the user's file; without it the class name is used."""
        prefix = cls.__name__ if where is None else where
        label = prefix or "top level"
        if not isinstance(data, dict):
            raise GlmhaError(f"{label}: expected a mapping, got {_describe(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise GlmhaError(f"{label}: unknown key(s) {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(fields)})")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            values[name] = _coerce(f"{prefix}.{name}" if prefix else name, hints[name], value)
        try:
            return cls(**values)
        except GlmhaError as error:
            if not where:
                raise
            raise type(error)(f"{where}.{error}") from None
        except TypeError as error:  # a required field is missing
            missing = [n for n, f in fields.items() if n not in values
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if not missing:
                raise
            raise GlmhaError(f"{label}: missing required key(s) {', '.join(missing)}") from error

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = _plain(getattr(self, field.name))
        return out


def _plain(value: Any) -> Any:
    """JSON-ready form: nested configs become dicts, tuples lists."""
    if isinstance(value, StrictConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _describe(value: Any) -> str:
    """How a wrong value is shown: strings quoted, mappings and lists by kind."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)!r}"
    return repr(value)


def _coerce(path: str, hint: Any, value: Any) -> Any:
    """Check a JSON value against a simple type hint; lists become tuples for tuple fields."""
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, StrictConfig):
        return hint.from_dict(value, where=path)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise GlmhaError(f"{path}: expected one of {', '.join(map(str, choices))}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise GlmhaError(f"{path}: expected a list, got {_describe(value)}")
        (item_type, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(f"{path}[{i}]", item_type, item) for i, item in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            try:
                return _coerce(path, option, value)
            except GlmhaError:
                continue
        if len(options) == 2 and type(None) in options:  # Optional[X]: report X's own message
            (inner,) = (o for o in options if o is not type(None))
            try:
                _coerce(path, inner, value)
            except GlmhaError as error:
                raise GlmhaError(f"{error} (or null)") from None
        raise GlmhaError(f"{path}: unexpected value {_describe(value)}")
    if hint is type(None):
        if value is not None:
            raise GlmhaError(f"{path}: expected null, got {_describe(value)}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise GlmhaError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GlmhaError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GlmhaError(f"{path}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise GlmhaError(f"{path}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {path}")
