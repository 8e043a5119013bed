"""The JSON Schema of router_config.yaml: printed by `xds-server schema`, committed
for editors, and in agreement with the file's own validation.

jsonschema is not a dependency, so `conforms` below checks the few JSON Schema
keywords the generated schema uses (and fails on any other, so it cannot pass
by ignoring one).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server.cli import main
from xds_server.errors import ConfigError
from xds_server.model.schema import ConfigDocument, config_json_schema
from xds_server.settings import EMBEDDED_DEFAULTS, parse_settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "router_config.yaml"
COMMITTED = ROOT / "config" / "router_config.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=router_config.schema.json"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_schema_command_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`xds-server schema` prints the models' JSON Schema and exits 0, even with a bad
    environment: it reads no config file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTER_QUEUE_SIZE", "lots")
        assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == config_json_schema()
    assert printed["$schema"].endswith("/2020-12/schema")
    assert printed["required"] == ["services"]


def test_committed_schema_is_the_command_output(capsys: pytest.CaptureFixture[str]) -> None:
    """config/router_config.schema.json cannot go stale: `make schema` rewrites it."""
    main(["schema"])
    assert COMMITTED.read_text(encoding="utf-8") == capsys.readouterr().out


@pytest.mark.parametrize("path", [SHIPPED, EMBEDDED_DEFAULTS], ids=["shipped", "embedded"])
def test_shipped_configs_conform_to_the_schema(path: Path) -> None:
    """Both shipped files point editors at the schema, conform to it, and
    round-trip through the model unchanged."""
    assert path.read_text(encoding="utf-8").splitlines()[0] == SCHEMA_LINE
    document = load(path)
    assert conforms(document, config_json_schema())
    parsed = ConfigDocument.model_validate(document)
    assert parsed.model_dump(mode="json", exclude_unset=True) == document


def minimal() -> dict[str, Any]:
    backend = {"name": "svc-0", "address": "127.0.0.1", "port": 9000}
    return {"services": [{"name": "svc", "routes": ["/svc/"], "backends": [backend]}]}


def changed(path: str, value: object) -> dict[str, Any]:
    """minimal() with the value at a dotted path (`services.0.backends.0.port`) set."""
    document = copy.deepcopy(minimal())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = document
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[last] = value
    return document


# Field-level cases: the schema and the file's validation must agree on each.
CASES = [
    ("services.0.backends.0.port", 65535, True),
    ("services.0.backends.0.port", 0, False),
    ("services.0.backends.0.port", True, False),
    ("services.0.backends.0.weight", 1_000_001, False),
    ("services.0.backends.0.address", "::1", True),
    ("services.0.backends.0.colour", "red", False),
    ("services.0.name", "Upper", False),
    ("services.0.routes", ["/api/v1/router/x"], False),
    ("services.0.routes", ["/api/v1/health"], False),
    ("services.0.routes", ["no-slash"], False),
    ("services.0.hash_header", "x-user", True),
    ("services.0.hash_header", "X-User", False),
    ("services.0.strategy", "maglev", True),
    ("services.0.strategy", None, False),
    ("services.0.protocol", "tcp", False),
    ("services.0.backends", [], False),
    ("router.strategy", "fastest", False),
    ("router.queue_size", 1, True),
    ("router.queue_size", 0, False),
    ("router.health_check_interval", 0, False),
    ("router.health_check_jitter", 1.5, False),
    ("router.retry_delay", 0.001, True),
    ("router.listen_address", "[::1]:8000", True),
    ("router.listen_address", "127.0.0.1", False),
    ("router.redis_url", "redis://r:6379", True),
    ("router.redis_url", "http://r", False),
    ("router.redis_url", "", True),
    ("router.admin_token", None, True),
    ("router.queu_size", 3, False),
]


@pytest.mark.parametrize(("path", "value", "valid"), CASES)
def test_schema_and_validation_agree(path: str, value: object, valid: bool) -> None:
    """A value the schema refuses, the file's validation refuses too, and back."""
    document = changed(path, value)
    assert conforms(document, config_json_schema()) is valid
    try:
        parse_settings(document, {}, "case")
    except ConfigError:
        assert not valid
    else:
        assert valid


def test_an_empty_router_section_conforms() -> None:
    """`router:` with nothing under it is null in YAML, and means the defaults."""
    document = minimal() | {"router": None}
    assert conforms(document, config_json_schema())
    assert parse_settings(document, {}, "x").worker_threads == 8


# ---- a small JSON Schema checker, for the keywords the schema uses -------------------

# `format` is an annotation in JSON Schema 2020-12 (editors may check it; validators need not).
_ANNOTATIONS = {"title", "description", "default", "format", "$schema", "$defs"}


def conforms(value: object, schema: dict[str, Any], root: dict[str, Any] | None = None) -> bool:
    root = schema if root is None else root
    unknown = set(schema) - _ANNOTATIONS - set(_KEYWORDS)
    assert not unknown, f"keywords this checker does not know: {unknown}"
    return all(_KEYWORDS[k](value, schema[k], schema, root) for k in schema if k in _KEYWORDS)


def _type(value: object, kind: str, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return bool(checks[kind](value))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _properties(value: object, properties: dict[str, Any], schema: Any, root: Any) -> bool:
    if not isinstance(value, dict):
        return True
    return all(conforms(value[k], s, root) for k, s in properties.items() if k in value)


def _additional(value: object, allowed: bool, schema: dict[str, Any], root: Any) -> bool:
    assert allowed is False
    return not isinstance(value, dict) or set(value) <= set(schema.get("properties", {}))


def _ref(value: object, ref: str, schema: Any, root: dict[str, Any]) -> bool:
    name = ref.removeprefix("#/$defs/")
    return conforms(value, root["$defs"][name], root)


_KEYWORDS: dict[str, Any] = {
    "type": _type,
    "enum": lambda v, allowed, s, r: v in allowed,
    "const": lambda v, const, s, r: v == const,
    "pattern": lambda v, p, s, r: not isinstance(v, str) or re.search(p, v) is not None,
    "minimum": lambda v, m, s, r: not _number(v) or v >= m,
    "maximum": lambda v, m, s, r: not _number(v) or v <= m,
    "exclusiveMinimum": lambda v, m, s, r: not _number(v) or v > m,
    "minItems": lambda v, n, s, r: not isinstance(v, list) or len(v) >= n,
    "items": lambda v, item, s, r: not isinstance(v, list) or all(conforms(i, item, r) for i in v),
    "required": lambda v, keys, s, r: not isinstance(v, dict) or set(keys) <= set(v),
    "properties": _properties,
    "additionalProperties": _additional,
    "anyOf": lambda v, options, s, r: any(conforms(v, o, r) for o in options),
    "not": lambda v, negated, s, r: not conforms(v, negated, r),
    "$ref": _ref,
}
