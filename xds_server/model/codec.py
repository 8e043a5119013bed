"""Intent <-> JSON, the form in which replicas share the intent through Redis.

Promises:
- deterministic: equal intents give byte-identical text (keys sorted, no
  whitespace, floats written as floats), so stored text can be compared;
- versioned: the document is `{"format": FORMAT, "intent": {...}}`; a reader
  refuses a format it does not know rather than guess at it;
- strict: decoding checks every field's type, refuses unknown fields, missing
  fields that have no default, and non-finite numbers, and reports every problem with its path
  (`intent.services[0].backends[1].weight`) in one ConfigError;
- complete by construction: both directions walk the model's dataclass fields
  and type hints, so a field added to `xds_server.model` is stored without
  touching this module. A type the walk does not know raises TypeError when
  encoding (tests/model/test_codec.py round-trips an intent with every field set).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from enum import Enum
from typing import Any

from xds_server.errors import ConfigError, Problem
from xds_server.model.intent import Intent

FORMAT = 1

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]


class _Bad:
    """Marks a value that failed to decode (its problem is already recorded)."""


_BAD = _Bad()


def encode_intent(intent: Intent) -> str:
    """The canonical JSON text of `intent`."""
    document = {"format": FORMAT, "intent": _encode(intent, Intent)}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_intent(text: str | bytes) -> Intent:
    """Parse and check a stored intent. Raises ConfigError listing every problem."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError([Problem("", f"stored intent is not JSON: {error}")]) from error
    if not isinstance(document, dict):
        raise ConfigError([Problem("", f"stored intent must be an object, got {_kind(document)}")])
    if document.get("format") != FORMAT:
        found = document.get("format")
        message = f"unknown intent format {found!r}; this controller reads format {FORMAT}"
        raise ConfigError([Problem("format", message)])
    problems = [
        Problem(key, "unknown field") for key in sorted(document.keys() - {"format", "intent"})
    ]
    intent = _decode(document.get("intent"), Intent, "intent", problems)
    if problems or not isinstance(intent, Intent):
        raise ConfigError(problems or [Problem("intent", "missing")])
    return intent


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number this format allows")


# ---- encoding -----------------------------------------------------------------------


def _encode(value: Any, hint: Any) -> Json:
    inner = _optional(hint)
    if inner is not None:
        return None if value is None else _encode(value, inner)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {name: _encode(getattr(value, name), sub) for name, sub in _fields(hint).items()}
    if typing.get_origin(hint) is tuple:
        return [_encode(item, _item_type(hint)) for item in value]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return typing.cast(Json, hint(value).value)
    if hint is float:
        return float(value)  # 2 and 2.0 are equal intents: write both the same way
    if hint in (bool, int, str):
        return typing.cast(Json, value)
    raise TypeError(f"codec cannot store a field of type {hint!r}")


# ---- decoding -----------------------------------------------------------------------


def _decode(raw: Json, hint: Any, path: str, problems: list[Problem]) -> Any:
    inner = _optional(hint)
    if inner is not None:
        return None if raw is None else _decode(raw, inner, path, problems)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(raw, hint, path, problems)
    if typing.get_origin(hint) is tuple:
        return _decode_tuple(raw, _item_type(hint), path, problems)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _decode_enum(raw, hint, path, problems)
    return _decode_scalar(raw, hint, path, problems)


def _decode_dataclass(raw: Json, cls: type, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        problems.append(Problem(path, f"must be an object, got {_kind(raw)}"))
        return _BAD
    fields = _fields(cls)
    problems.extend(Problem(f"{path}.{k}", "unknown field") for k in sorted(raw.keys() - fields))
    # A field with a default may be missing: intents stored before the field
    # existed still load, taking the default. A field without one may not.
    required = _required(cls)
    problems.extend(
        Problem(f"{path}.{k}", "missing") for k in fields if k not in raw and k in required
    )
    values = {
        name: _decode(raw[name], sub, f"{path}.{name}", problems)
        for name, sub in fields.items()
        if name in raw
    }
    if required - values.keys() or any(v is _BAD for v in values.values()):
        return _BAD
    return cls(**values)


def _decode_tuple(raw: Json, item: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, list):
        problems.append(Problem(path, f"must be a list, got {_kind(raw)}"))
        return _BAD
    items = [_decode(value, item, f"{path}[{i}]", problems) for i, value in enumerate(raw)]
    return _BAD if any(v is _BAD for v in items) else tuple(items)


def _decode_enum(raw: Json, cls: type[Enum], path: str, problems: list[Problem]) -> Any:
    allowed = [member.value for member in cls]
    if raw not in allowed or isinstance(raw, bool):
        problems.append(
            Problem(path, f"must be one of {', '.join(map(str, allowed))}, got {raw!r}")
        )
        return _BAD
    return cls(raw)


def _decode_scalar(raw: Json, hint: Any, path: str, problems: list[Problem]) -> Any:
    if hint is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        if math.isfinite(raw):
            return float(raw)
    elif hint in (int, str, bool) and type(raw) is hint:  # exact: True is no int here
        return raw
    elif hint not in (float, int, str, bool):
        raise TypeError(f"codec cannot read a field of type {hint!r}")
    problems.append(Problem(path, f"must be {_NAMES[hint]}, got {_kind(raw)} {raw!r}"))
    return _BAD


_NAMES = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false"}


# ---- type hints ---------------------------------------------------------------------


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _required(cls: type) -> frozenset[str]:
    """The fields without a default."""
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _optional(hint: Any) -> Any:
    """X for `X | None`, else None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
        raise TypeError(f"codec cannot store a field of type {hint!r}")
    return None


def _item_type(hint: Any) -> Any:
    args = typing.get_args(hint)
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError(f"codec stores only tuple[X, ...], not {hint!r}")
    return args[0]


def _kind(raw: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(raw), "number")
