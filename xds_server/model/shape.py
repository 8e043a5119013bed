"""The base of every mapping of the config file, and the PEM file path fields.

Below model/schema.py and model/tls_schema.py, which both build on them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict

from xds_server.errors import InvalidValue
from xds_server.model.fields import Rule
from xds_server.model.values import to_text


class Shape(BaseModel):
    """A mapping of the config file: unknown keys are errors (typo protection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _file_path(value: object) -> str:
    text = to_text(value)
    if not text.strip():
        raise InvalidValue("must name a PEM file, got an empty string")
    return text


def _optional_file_path(value: object) -> str | None:
    return None if value is None else _file_path(value)


_PEM_SCHEMA = {"type": "string", "minLength": 1}
PemFile = Annotated[str, Rule(_file_path, _PEM_SCHEMA)]
OptionalPemFile = Annotated[
    str | None, Rule(_optional_file_path, {"anyOf": [_PEM_SCHEMA, {"type": "null"}]})
]
