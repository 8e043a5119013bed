"""Pydantic's validation errors as our problems: a field path and a message people can act on.

- `loc` ("services", 1, "backends", 0, "port") becomes `services[1].backends[0].port`;
- a field type's own message (model/fields.py) is kept as it is;
- an unknown key says "unknown key; did you mean 'x'?" (or lists what is allowed);
- a missing key says "required"; a non-mapping says "must be a mapping, got ...".

Problems come in document order, and within one mapping unknown keys first,
then missing ones, then bad values: the first problem is the one an admin
answer names in `field`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from xds_server.errors import ConfigError, Problem
from xds_server.model.values import shown

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

UNKNOWN, MISSING, VALUE = "extra_forbidden", "missing", "value"
_RANK = {UNKNOWN: 0, MISSING: 1}
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class Located:
    """A problem found at `loc` of a document; `kind` orders it among its siblings."""

    loc: Loc
    message: str
    kind: str = VALUE

    @property
    def problem(self) -> Problem:
        return Problem(path_of(self.loc), self.message)


def path_of(loc: Loc) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def loc_of(path: str) -> Loc:
    """The inverse of path_of, for problems that other checks report by path."""
    return tuple(int(index) if index else key for key, index in _PATH_PART.findall(path))


def parse(model: type[M], raw: object) -> M:
    """`raw` as `model`, or ConfigError listing every problem with its field path."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(problems_of(raw, located(model, error))) from None


def located(model: type[BaseModel], error: ValidationError) -> list[Located]:
    return [_located(model, detail) for detail in error.errors()]


def problems_of(document: object, found: Iterable[Located]) -> list[Problem]:
    """Our problems, in the document's order (see the module docstring)."""
    return [f.problem for f in sorted(found, key=lambda f: _document_order(document, f))]


def _located(model: type[BaseModel], detail: ErrorDetails) -> Located:
    loc, kind = tuple(detail["loc"]), detail["type"]
    if kind == "invalid_key":  # YAML allows keys that are not strings; none is ours
        loc, kind = (*loc[:-1], str(loc[-1])), UNKNOWN
    if kind == UNKNOWN:
        allowed = list(getattr(_model_at(model, loc[:-1]), "model_fields", {}))
        return Located(loc, unknown_key(str(loc[-1]), allowed), UNKNOWN)
    if kind == MISSING:
        return Located(loc, "required", MISSING)
    if kind == "model_type":
        subject = "" if loc else "the configuration "
        return Located(loc, f"{subject}must be a mapping, got {shown(detail['input'])}")
    return Located(loc, detail["msg"])


def unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key; {hint}"


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (list indexes skipped)."""
    current: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, str) and current is not None:
            field = current.model_fields.get(part)
            current = None if field is None else _model_in(field.annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = (_model_in(arg) for arg in get_args(annotation))
    return next((model for model in found if model is not None), None)


def _document_order(document: object, found: Located) -> tuple[tuple[int, int], ...]:
    """Per level of `loc`: (unknown 0 / missing 1 / value 2, position in the document)."""
    key, node = [], document
    for depth, part in enumerate(found.loc):
        last = depth == len(found.loc) - 1
        key.append((_RANK.get(found.kind, 2) if last else 2, _position(node, part)))
        node = _child(node, part)
    return tuple(key)


def _position(node: object, part: str | int) -> int:
    if isinstance(node, dict):
        keys = list(node)
        return keys.index(part) if part in keys else len(keys)
    return part if isinstance(part, int) else 0


def _child(node: object, part: str | int) -> object:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None
