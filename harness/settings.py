"""Typed settings of tasks and mitigations, and the one converter for `key=value` text.

A task's or mitigation's settings are a frozen dataclass whose fields carry a default and a
line of help (`setting(default, "what it means")`). The same converter reads
`--option TASK.KEY=VALUE` and a mitigation spec's `name:key=value`, so a boolean or a number
is spelled the same everywhere:

- bool: true/false, 1/0, yes/no (any case);
- int: ASCII digits with an optional sign (`128`, `-1`);
- float: a decimal or scientific number, `inf` (`0.5`, `1e-3`, `2`);
- str and Path: the text as given; Literal["a", "b"]: one of its values;
- `X | None`: `none` (any case) or an empty value is None, anything else an X.

Unknown keys and values of the wrong type raise SettingError, one line naming the valid keys
or the expected type.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

S = TypeVar("S")

INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
FLOAT_TEXT = re.compile(
    r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?inf", re.IGNORECASE
)
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
NONE = ("none", "")


class SettingError(ValueError):
    """A setting that is unknown or cannot be read as its type."""


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its default and a line saying what it means."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """For tasks and mitigations without settings."""


@dataclasses.dataclass(frozen=True)
class Described:
    """One setting as `harness list` shows it."""

    key: str
    kind: str  # the type in words
    default: Any
    help: str


def field_types(cls: type) -> dict[str, Any]:
    """Key -> type of each field of the settings dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe(cls: type) -> list[Described]:
    """Each setting of `cls`: key, type, default and meaning."""
    kinds = field_types(cls)
    return [
        Described(f.name, type_name(kinds[f.name]), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
    ]


def build(cls: type[S], values: Mapping[str, Any], owner: str, noun: str = "setting") -> S:
    """An instance of settings dataclass `cls` from `values` (text is converted, Python values
    are checked against the field's type); `owner` and `noun` word the errors, e.g.
    "task 'perplexity'" and "option"."""
    kinds = field_types(cls)
    unknown = [key for key in values if key not in kinds]
    if unknown:
        valid = f"valid: {', '.join(sorted(kinds))}" if kinds else f"it takes no {noun}s"
        raise SettingError(f"{owner} has no {noun} {unknown[0]!r}; {valid}")
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = coerce(value, kinds[key])
        except SettingError as err:
            raise SettingError(f"{owner} {noun} {key}={value!r} {err}") from None
    return cls(**converted)


def coerce(value: Any, kind: Any) -> Any:
    """`value` as a `kind`: text is parsed, other values checked (an int is also a float)."""
    if isinstance(value, str):
        return parse_value(value, kind)
    inner = _optional(kind)
    if inner is not None:
        return None if value is None else coerce(value, inner)
    if typing.get_origin(kind) is Literal:
        if value in typing.get_args(kind):
            return value
    elif isinstance(value, bool) != (kind is bool):
        pass  # a boolean is not a number here, nor a number a boolean
    elif kind is float and isinstance(value, int | float):
        return float(value)
    elif isinstance(kind, type) and isinstance(value, kind):
        return value
    raise SettingError(_expected(kind))


def parse_value(text: str, kind: Any) -> Any:
    """The one converter: `text` as a value of `kind` (see the module docstring)."""
    inner = _optional(kind)
    if inner is not None:
        return None if text.strip().lower() in NONE else parse_value(text, inner)
    if kind is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
    elif kind is int:
        if INTEGER_TEXT.fullmatch(text):
            return int(text)
    elif kind is float:
        if FLOAT_TEXT.fullmatch(text):
            return float(text)
    elif kind is str:
        return text
    elif kind is Path:
        if text.strip():  # an empty path would be the current folder
            return Path(text)
    elif typing.get_origin(kind) is Literal:
        if text in typing.get_args(kind):
            return text
    else:
        raise TypeError(f"settings of type {kind!r} are not supported")
    raise SettingError(_expected(kind))


def argument_type(kind: Any) -> Callable[[str], Any]:
    """An argparse `type=` reading a flag with the one converter, so that `--workers ５` is
    refused like `r=５` (Python's int() would take other scripts' digits)."""

    def convert(text: str) -> Any:
        try:
            return parse_value(text, kind)
        except SettingError as err:
            raise argparse.ArgumentTypeError(f"{text!r} {err}") from None

    convert.__name__ = type_name(kind)
    return convert


def type_name(kind: Any) -> str:
    """The type in words, as errors and `harness list` show it."""
    inner = _optional(kind)
    if inner is not None:
        return f"{type_name(inner)} or none"
    if typing.get_origin(kind) is Literal:
        return "one of " + "|".join(map(str, typing.get_args(kind)))
    names = {
        bool: "boolean: true/false, 1/0, yes/no",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
    }
    return names.get(kind, str(kind))


def _expected(kind: Any) -> str:
    """What a value of the wrong type is told, e.g. "is not an integer"."""
    inner = _optional(kind)
    if inner is not None:
        return f"{_expected(inner)} (nor none)"
    if typing.get_origin(kind) is Literal:
        return "is not valid; valid: " + ", ".join(map(str, typing.get_args(kind)))
    if kind is bool:
        return "is not a boolean: true/false, 1/0 or yes/no"
    return {int: "is not an integer", float: "is not a number"}.get(kind, "is empty")


def format_value(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value) if value != "" else '""'


def _optional(kind: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None


# flags read with the one converter: ASCII digits only; a path refused when empty (Path("")
# would be the current folder)
INT, FLOAT, PATH = argument_type(int), argument_type(float), argument_type(Path)
