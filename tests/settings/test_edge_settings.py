"""router.edge and router.admin_via_listener: the file, ROUTER_EDGE_* variables,
their problems' paths, and the rules that refuse an open front door."""

from __future__ import annotations

from typing import Any

import pytest

from xds_server.errors import ConfigError
from xds_server.model.edge import Edge, EscapedSlashes
from xds_server.settings import format_problems, parse_settings
from xds_server.settings.envfile import known_keys, parse_env_file


def document(**router: Any) -> dict[str, Any]:
    return {
        "router": router,
        "services": [
            {
                "name": "svc",
                "routes": ["/svc/"],
                "backends": [{"name": "svc-0", "address": "127.0.0.1", "port": 9000}],
            }
        ],
    }


def problems(document: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, environ or {}, "test.yaml")
    return format_problems(caught.value).splitlines()


def test_edge_defaults_are_the_model_defaults() -> None:
    settings = parse_settings(document(), {}, "test.yaml")
    assert settings.intent.edge == Edge()
    assert settings.intent.admin_via_listener is True
    assert parse_settings(document(edge=None), {}, "t").intent.edge == Edge()


def test_file_and_environment_set_edge_keys_and_the_environment_wins() -> None:
    edge = {"max_connections": 10, "request_headers_timeout": 2, "normalize_path": False}
    environ = {
        "ROUTER_EDGE_MAX_CONNECTIONS": "20",
        "ROUTER_EDGE_PATH_WITH_ESCAPED_SLASHES_ACTION": "unescape_and_redirect",
        "ROUTER_ADMIN_VIA_LISTENER": "false",
    }
    settings = parse_settings(document(edge=edge), environ, "test.yaml")
    assert settings.intent.edge == Edge(
        max_connections=20,
        request_headers_timeout_s=2.0,
        normalize_path=False,
        path_with_escaped_slashes_action=EscapedSlashes.UNESCAPE_AND_REDIRECT,
    )
    assert settings.intent.admin_via_listener is False


def test_bad_edge_values_are_named_by_their_file_path_or_variable() -> None:
    edge = {"max_connections": 0, "headers_with_underscores_action": "shout", "typo": 1}
    environ = {"ROUTER_EDGE_IDLE_TIMEOUT": "soon", "ROUTER_EDGE_MAX_REQUEST_HEADERS_KB": "9000"}
    found = problems(document(edge=edge), environ)
    assert found[0].startswith("router.edge.typo: unknown key; allowed: xff_num_trusted_hops,")
    assert found[1:] == [
        "router.edge.max_connections: must be an integer >= 1, got 0",
        "router.edge.headers_with_underscores_action: must be one of reject_request, "
        "drop_header, allow, got 'shout' (str)",
        "env:ROUTER_EDGE_IDLE_TIMEOUT: must be a number, got 'soon'",
        "env:ROUTER_EDGE_MAX_REQUEST_HEADERS_KB: must be an integer between 1 and 8192, got 9000",
    ], found


def test_a_public_listener_routing_the_admin_api_needs_a_token() -> None:
    found = problems(document(listen_address="0.0.0.0:8000"))
    assert found == [
        "router.admin_token: required when listen_address is not loopback (0.0.0.0:8000, "
        "from router.listen_address) and the admin API is routed through the listener "
        "(router.admin_via_listener: true; false keeps it off the listener)"
    ]
    for fine in (
        document(listen_address="0.0.0.0:8000", admin_token="t"),
        document(listen_address="0.0.0.0:8000", admin_via_listener=False),
        document(listen_address="[::1]:8000"),
        document(listen_address="127.0.0.2:8000"),
    ):
        parse_settings(fine, {}, "test.yaml")
    via_env = problems(document(), {"ROUTER_LISTEN_ADDRESS": "[::]:8000"})
    assert via_env[0].startswith(
        "router.admin_token: required when listen_address is not "
        "loopback ([::]:8000, from env:ROUTER_LISTEN_ADDRESS)"
    )
    unknown = problems(document(listen_address="0.0.0.0:8000", admin_via_listener="maybe"))
    assert [line.split(":")[0] for line in unknown] == ["router.admin_via_listener"]


def test_the_stream_idle_timeout_may_not_cut_what_request_timeout_allows() -> None:
    found = problems(document(request_timeout=30, edge={"stream_idle_timeout": 20}))
    assert found == [
        "router.edge.stream_idle_timeout: must be at least request_timeout (30), got 20"
    ]
    env = problems(document(), {"ROUTER_EDGE_STREAM_IDLE_TIMEOUT": "5"})
    assert env == [
        "env:ROUTER_EDGE_STREAM_IDLE_TIMEOUT: must be at least request_timeout (15), got 5"
    ]


def test_env_files_know_the_edge_variables() -> None:
    known = known_keys()
    assert "ROUTER_EDGE_MAX_CONNECTIONS" in known and "ROUTER_EDGE" not in known
    parsed = parse_env_file("ROUTER_EDGE_MAX_CONECTIONS=5\n", ".env", known)
    assert [str(p) for p in parsed.problems] == [
        ".env:1: ROUTER_EDGE_MAX_CONECTIONS: unknown setting; did you mean "
        "ROUTER_EDGE_MAX_CONNECTIONS?"
    ]
