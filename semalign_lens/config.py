"""Config dataclasses from JSON/TOML files or dicts, with strict keys.

A misspelt key is the most common silent bug in a training config, so unknown keys are an error that names
the key and lists the valid ones. Nested dataclass fields are built recursively.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import SemalignError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    if not isinstance(data, dict):
        raise SemalignError(f"{where} must be a table/object of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SemalignError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{name}")
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"config file {path} does not exist")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise SemalignError("TOML configs need Python 3.11+ (tomllib); use a .json config instead")
        import tomllib

        return tomllib.loads(path.read_text())
    raise SemalignError(f"config file {path} must end in .json or .toml")


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    data = read_config_file(path)
    data.update(overrides or {})
    return from_dict(cls, data, where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def require_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, (int, float)) and value > 0):
            raise SemalignError(f"{type(obj).__name__}.{name} must be a positive number, got {value!r}")
