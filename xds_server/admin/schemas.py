"""Pydantic models as OpenAPI 3.0 schema objects, their nested models shared under components.

pydantic writes JSON Schema 2020-12; OpenAPI 3.0.3 (the document's version)
spells three things differently, translated here: null (`nullable: true`, not a
`"null"` type), exclusive bounds (a boolean beside `minimum`), and a single
allowed value (`enum`, not `const`). A body or answer model is inlined into its
operation, so the document reads like the hand-kept one did; the models it
nests go to `components/schemas` once, referenced by name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from xds_server.model.fields import SchemaGenerator

Schema = dict[str, Any] | type[BaseModel]
REF_TEMPLATE = "#/components/schemas/{model}"
_NULL = {"type": "null"}


def schema_object(
    schema: Schema, components: dict[str, Any], mode: Literal["validation", "serialization"]
) -> dict[str, Any]:
    """An OpenAPI schema for `schema`; nested models are added to `components`."""
    if isinstance(schema, dict):
        return schema
    generated = schema.model_json_schema(
        ref_template=REF_TEMPLATE, schema_generator=SchemaGenerator, mode=mode
    )
    for name, definition in generated.pop("$defs", {}).items():
        _register(components, name, openapi_3_0(definition))
    converted: dict[str, Any] = openapi_3_0(generated)
    return converted


def _register(components: dict[str, Any], name: str, definition: dict[str, Any]) -> None:
    known = components.setdefault(name, definition)
    if known != definition:
        raise ValueError(f"two different schemas are named {name!r}")


def openapi_3_0(node: Any) -> Any:
    """A JSON Schema 2020-12 node as an OpenAPI 3.0 schema object."""
    if isinstance(node, list):
        return [openapi_3_0(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: openapi_3_0(value) for key, value in node.items()}
    _nullable(schema)
    for bound in ("Minimum", "Maximum"):
        exclusive = schema.get(f"exclusive{bound}")
        if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
            schema[bound.lower()], schema[f"exclusive{bound}"] = exclusive, True
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    return schema


def _nullable(schema: dict[str, Any]) -> None:
    options = schema.get("anyOf")
    if not isinstance(options, list) or _NULL not in options:
        return
    rest = [option for option in options if option != _NULL]
    del schema["anyOf"]
    if len(rest) == 1 and "$ref" not in rest[0]:
        schema.update({**rest[0], **schema})
    else:
        schema["allOf" if len(rest) == 1 else "anyOf"] = rest
    schema["nullable"] = True
