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
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        if not isinstance(data, dict):
            raise GlmhaError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise GlmhaError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            values[name] = _coerce(cls.__name__, name, hints[name], value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


def _coerce(owner: str, name: str, hint: Any, value: Any) -> Any:
    """Check a JSON value against a simple type hint; lists become tuples for tuple fields."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise GlmhaError(f"{owner}.{name}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(owner, name, item_type, item) for item in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(owner, name, option, value)
            except GlmhaError:
                continue
        raise GlmhaError(f"{owner}.{name}: unexpected value {value!r}")
    if hint is type(None):
        if value is not None:
            raise GlmhaError(f"{owner}.{name}: expected null, got {value!r}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise GlmhaError(f"{owner}.{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise GlmhaError(f"{owner}.{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GlmhaError(f"{owner}.{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise GlmhaError(f"{owner}.{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {owner}.{name}")
