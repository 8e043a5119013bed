"""The intent codec: what the Redis store writes and reads, checked without Redis."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tests.factories import local_settings
from xds_server.errors import ConfigError
from xds_server.model import codec
from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.model.edge import Edge, EscapedSlashes, UnderscoreHeaders
from xds_server.model.intent import (
    Backend,
    Intent,
    Policies,
    Protocol,
    Service,
    SocketAddress,
    Strategy,
)
from xds_server.model.upstream_tls import UpstreamTls


def every_field_set() -> Intent:
    """An intent in which every model field with a default differs from it."""
    tls = UpstreamTls(
        sni="b1.test",
        ca_file="/ca.pem",
        ca_pem="-----BEGIN CERTIFICATE-----\n...",
        client_cert_file="/c.crt",
        client_key_file="/c.key",
        insecure_skip_verify=True,
    )
    backend = Backend(
        "b1", "10.0.0.1", 81, weight=3, priority=2, health_path="/h", draining=True, tls=tls
    )
    service = Service(
        "svc",
        ("/a/", "/b"),
        (backend, Backend("b2", "10.0.0.2", 82)),
        strategy=Strategy.MAGLEV,
        group="grp",
        hash_header="x-user",
        protocol=Protocol.GRPC,
        grpc_health_service="greeter.Health",
        models=("phi3", "meta-llama/Llama-3.1-8B"),
        request_timeout_s=0.0,
        idle_timeout_s=30.0,
        retry_on=("connect-failure", "503"),
    )
    defaults = Policies()
    policies = Policies(
        **{
            f.name: (getattr(defaults, f.name) or 1) * 2 + 1
            for f in dataclasses.fields(Policies)
            if not isinstance(getattr(defaults, f.name), bool)
        }
    )
    return Intent(
        services=(service,),
        default_strategy=Strategy.RING_HASH,
        policies=policies,
        listen=SocketAddress("::1", 8001),
        admin=SocketAddress("127.0.0.2", 18081),
        admin_via_listener=False,
        edge=every_edge_field_set(),
        access_log=AccessLog(AccessLogSink.FILE, "/var/log/envoy/access.log"),
    )


def every_edge_field_set() -> Edge:
    defaults = Edge()
    changed: dict[str, Any] = {
        f.name: getattr(defaults, f.name) * 2 + 1
        for f in dataclasses.fields(Edge)
        if not isinstance(getattr(defaults, f.name), bool | str)
    }
    return Edge(
        **changed,
        normalize_path=False,
        merge_slashes=False,
        path_with_escaped_slashes_action=EscapedSlashes.KEEP_UNCHANGED,
        headers_with_underscores_action=UnderscoreHeaders.ALLOW,
    )


def _non_default_everywhere(value: Any, seen: dict[type, set[str]]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if default is dataclasses.MISSING or getattr(value, f.name) != default:
                seen.setdefault(type(value), set()).add(f.name)
            _non_default_everywhere(getattr(value, f.name), seen)
    elif isinstance(value, tuple):
        for item in value:
            _non_default_everywhere(item, seen)


def test_codec_round_trip_covers_every_model_field() -> None:
    """Every field of the model survives encode/decode exactly, and the sample sets
    every field away from its default (a new model field fails here until covered)."""
    intent = every_field_set()
    seen: dict[type, set[str]] = {}
    _non_default_everywhere(intent, seen)
    classes = (Intent, Service, Backend, Policies, SocketAddress, Edge, UpstreamTls, AccessLog)
    for cls in classes:
        assert seen.get(cls) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
    assert codec.decode_intent(codec.encode_intent(intent)) == intent


def test_codec_is_deterministic_and_canonical() -> None:
    """Equal intents give byte-identical text (an int in a float field too), and the
    text is compact, key-sorted and tagged with its format."""
    intent = local_settings().intent
    as_int = dataclasses.replace(
        intent, policies=dataclasses.replace(intent.policies, retry_delay_s=2)
    )
    as_float = dataclasses.replace(
        intent, policies=dataclasses.replace(intent.policies, retry_delay_s=2.0)
    )
    assert codec.encode_intent(as_int) == codec.encode_intent(as_float)
    text = codec.encode_intent(intent)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["format"] == codec.FORMAT
    assert codec.encode_intent(codec.decode_intent(text)) == text


def test_codec_reports_every_problem_with_its_path() -> None:
    """Strict decoding: wrong types, unknown and missing fields, bad enum values and
    non-finite numbers are all reported at once, each with its path."""
    document = json.loads(codec.encode_intent(local_settings().intent))
    intent = document["intent"]
    intent["services"][0]["backends"][1]["weight"] = "3"
    intent["services"][0]["backends"][0]["draining"] = 0
    intent["services"][1]["colour"] = "blue"
    del intent["listen"]["port"]
    intent["default_strategy"] = "fastest"
    intent["policies"]["retry_delay_s"] = "INF"
    intent["policies"]["max_retries"] = True
    text = json.dumps(document).replace('"INF"', "1e999")  # JSON that parses as infinity
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(text)
    assert {p.path for p in raised.value.problems} == {
        "intent.services[0].backends[1].weight",
        "intent.services[0].backends[0].draining",
        "intent.services[1].colour",
        "intent.listen.port",
        "intent.default_strategy",
        "intent.policies.retry_delay_s",
        "intent.policies.max_retries",
    }


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"format": 2, "intent": {}}', "format"),
        ('{"intent": {}}', "format"),
        ("[1]", ""),
        ("not json", ""),
        ('{"format": 1, "intent": {"services": NaN}}', ""),
        ('{"format": 1}', "intent"),
    ],
)
def test_codec_refuses_what_it_cannot_trust(text: str, path: str) -> None:
    """An unknown format version, non-JSON, NaN or a missing intent is refused, with a reason."""
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(text)
    assert raised.value.problems[0].path == path
    assert str(raised.value)


def test_codec_reads_an_intent_stored_before_a_field_existed() -> None:
    """A field with a default (say `protocol`, added after the first release)
    may be missing from stored JSON: it takes its default. One without a
    default may not."""
    intent = local_settings().intent
    document = json.loads(codec.encode_intent(intent))
    for service in document["intent"]["services"]:
        del service["protocol"]
    assert codec.decode_intent(json.dumps(document)) == intent
    del document["intent"]["services"][0]["name"]
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(json.dumps(document))
    assert [p.path for p in raised.value.problems] == ["intent.services[0].name"]
