"""Config dataclasses from JSON/TOML files or dicts, with strict keys and types.

A misspelt key or a wrong type is the most common silent bug in a training config, so both are one-line
errors that name the dotted key: unknown keys list the valid ones, a wrong type names the expected type and
the value given. Types are the dataclass hints, checked strictly by pydantic (bool is not an int, a str is
not a list; an int is a float). Nested dataclass fields are built recursively. `setting` attaches a one-line
doc to a field, from which `config_help` writes the `--help` reference of a config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from .checks import read_utf8
from .errors import SemalignError

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a one-line `doc`, shown by `config_help` (hence in `--help`)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"doc": doc})


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from `data`, refusing unknown keys and values of the wrong type; `where` names the source
    (a file path) in the messages."""
    return _build(cls, data, where, "")


def _build(cls: type[T], data: Any, where: str, section: str) -> T:
    if not isinstance(data, dict):
        if not section:
            raise SemalignError(f"{where} must be a table/object of keys, got {type(data).__name__}")
        raise SemalignError(f"{where}: {section} must be a table of keys (a [{section}] section), got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SemalignError(f"unknown key(s) {unknown} in {where}{'.' + section if section else ''}; valid keys: "
                            f"{sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint, key = hints[name], f"{section}.{name}" if section else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where, key)
            continue
        try:
            kwargs[name] = _adapter(hint).validate_python(value)
        except pydantic.ValidationError:
            raise SemalignError(f"{where}: {key} must be {type_name(hint)}, got {value!r}") from None
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


@functools.cache
def _adapter(hint: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint, config=pydantic.ConfigDict(strict=True))


def type_name(hint: Any) -> str:
    """A type hint as a config author reads it: `int`, `list of str`, `int or list of int`, `str or None`,
    `table of float` (TOML/JSON keys are strings)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any"
    return hint.__name__


def config_help(cls: type) -> str:
    """The `--help` reference of config class `cls`: one line per key, `  key (type, default value): doc`, plain
    keys first, then each section (a nested dataclass) under a `[section] doc` line with dotted keys.
    Generated from the dataclasses, so it cannot drift from them."""
    return ("config keys (a TOML/JSON file; --set KEY=VALUE takes dotted keys, e.g. --set data.seq_len=128):\n"
            + "\n".join(_key_lines(cls, "")))


def _key_lines(cls: type, section: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    plain, sections = [], []
    for f in dataclasses.fields(cls):
        key, hint, doc = f"{section}{f.name}", hints[f.name], f.metadata.get("doc")
        if dataclasses.is_dataclass(hint):
            sections += [f"[{key}]" + (f" {doc}" if doc else ""), *_key_lines(hint, f"{key}.")]
        else:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            shown = "unset" if default is None else json.dumps(default)
            plain.append(f"  {key} ({type_name(hint)}, default {shown})" + (f": {doc}" if doc else ""))
    return plain + sections


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The table of keys in a .toml or .json file; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"config file {path} does not exist")
    if path.suffix not in (".json", ".toml"):
        raise SemalignError(f"config file {path} must end in .json or .toml")
    text = read_utf8(path, "config file")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SemalignError(f"config file {path} is not valid JSON: {err.msg} at line {err.lineno}, column "
                                f"{err.colno}; fix it there (keys and strings in double quotes, no trailing "
                                "commas)") from None
        if not isinstance(data, dict):
            raise SemalignError(f"config file {path} holds a JSON {type(data).__name__} at the top level; a config "
                                'is an object of keys, e.g. {"seed": 0, "data": {"seq_len": 256}}')
        return data
    if sys.version_info < (3, 11):
        raise SemalignError("TOML configs need Python 3.11+ (tomllib); use a .json config instead")
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SemalignError(f"config file {path} is not valid TOML: {err}; fix it there (strings in quotes, "
                            'e.g. key = "value"; sections as [name])') from None


def _parse_value(text: str) -> Any:
    """A command-line override value: JSON/TOML literal when it parses, else the string itself."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Merge overrides into a config dict. Keys may be dotted (`schedule.lr`); a list holds `key=value` strings
    (`--set`), whose values parse as TOML/JSON literals."""
    if not overrides:
        return data
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise SemalignError(f"override {item!r} is not of the form key=value (e.g. schedule.lr=1e-3)")
            key, value = item.split("=", 1)
            pairs[key.strip()] = _parse_value(value.strip())
        overrides = pairs
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SemalignError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> T:
    """Read a TOML/JSON file (or start from the defaults), apply overrides, build `cls`: strict keys and types."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides), where=str(path or "config"))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def require_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, (int, float)) and value > 0):
            raise SemalignError(f"{type(obj).__name__}.{name} must be a positive number, got {value!r}")
