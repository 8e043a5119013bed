"""Golden files for the pure translator: YAML intent in, Envoy resources out.

Each case is tests/golden/<case>/input.yaml (a router config document plus an
optional `health:` map of verdicts and an optional `addresses:` map, DNS name ->
its resolved addresses) and expected.yaml (every resource, as
Envoy's JSON mapping). `make golden` (pytest --regenerate-golden) rewrites the
expected files and removes those whose input is gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from xds_server.model.intent import Health, SocketAddress
from xds_server.proxy.envoy_process import validate_bootstrap
from xds_server.proxy.static_config import static_bootstrap
from xds_server.resources import SHORT_NAMES, Resources
from xds_server.settings import parse_settings
from xds_server.translate import translate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").exists())


def translated(case: str) -> Resources:
    """The case's input through the translator, its verdicts and addresses included."""
    document = yaml.safe_load((GOLDEN / case / "input.yaml").read_text())
    health = {name: Health(v) for name, v in (document.pop("health", None) or {}).items()}
    addresses = {name: tuple(ips) for name, ips in (document.pop("addresses", None) or {}).items()}
    settings = parse_settings(document, {}, f"golden/{case}")
    return translate(settings.intent, health, addresses=addresses)


def rendered(case: str) -> str:
    resources = translated(case)
    as_json: dict[str, Any] = {
        SHORT_NAMES[type_url]: {
            name: json_format.MessageToDict(message, preserving_proto_field_name=True)
            for name, message in sorted(messages.items())
        }
        for type_url, messages in resources.items()
    }
    # A JSON round trip turns the OrderedDicts of Any fields into plain dicts.
    return yaml.safe_dump(json.loads(json.dumps(as_json)), sort_keys=True, width=100)


@pytest.mark.parametrize("case", CASES)
def test_translation_matches_golden(case: str, request: pytest.FixtureRequest) -> None:
    """The translator's output for each golden input is exactly the stored output."""
    expected = GOLDEN / case / "expected.yaml"
    actual = rendered(case)
    if request.config.getoption("--regenerate-golden"):
        expected.write_text(actual)
    assert expected.exists(), f"no {expected}; run `make golden`"
    assert actual == expected.read_text()


def test_no_stale_golden_outputs(request: pytest.FixtureRequest) -> None:
    """Every expected.yaml has its input; regeneration deletes the orphans."""
    stale = [p for p in GOLDEN.glob("*/expected.yaml") if not (p.parent / "input.yaml").exists()]
    if request.config.getoption("--regenerate-golden"):
        for path in stale:
            path.unlink()
        stale = []
    assert stale == []


@pytest.mark.envoy
@pytest.mark.parametrize("case", CASES)
async def test_envoy_accepts_golden_translation(case: str) -> None:
    """Envoy 1.40 itself (`--mode validate`) accepts each golden translation,
    loaded as a static bootstrap: the translator emits no config Envoy rejects."""
    bootstrap = static_bootstrap(translated(case), SocketAddress("127.0.0.1", 0))
    await validate_bootstrap(bootstrap)
