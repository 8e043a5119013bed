"""Settings: the shipped file, ROUTER_* overrides, and every-problem validation."""

from __future__ import annotations

import copy
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server.errors import ConfigError
from xds_server.model.intent import Intent, Policies, SocketAddress, Strategy
from xds_server.settings import (
    EMBEDDED_DEFAULTS,
    MAX_WEIGHT,
    format_problems,
    load_settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "router_config.yaml"


def shipped_document() -> dict[str, Any]:
    document = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def minimal_document() -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "svc",
                "routes": ["/svc/"],
                "backends": [{"name": "svc-0", "address": "127.0.0.1", "port": 9000}],
            }
        ]
    }


def problem_paths(document: object, environ: dict[str, str] | None = None) -> set[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, environ or {}, "test.yaml")
    return {p.path for p in caught.value.problems}


def test_shipped_config_has_the_spec_services() -> None:
    """The shipped file loads: 5 services, 7 backends, the spec's names, ports and groups."""
    settings = load_settings(SHIPPED, {})
    intent = settings.intent
    assert [s.name for s in intent.services] == ["qdrant", "embedding", "phi3", "hermes", "mixtral"]
    assert {b.name: b.port for b in intent.backends()} == {
        "qdrant-primary": 6333,
        "qdrant-secondary": 6334,
        "embedding-gpu0": 8001,
        "embedding-gpu1": 8002,
        "phi3": 11401,
        "hermes": 11402,
        "mixtral": 11403,
    }
    assert {s.name: s.display_group for s in intent.services} == {
        "qdrant": "qdrant",
        "embedding": "embedding",
        "phi3": "external",
        "hermes": "external",
        "mixtral": "external",
    }
    assert intent.service("qdrant") is not None
    assert intent.service("qdrant").routes == ("/api/v1/vectors/",)  # type: ignore[union-attr]
    assert settings.source == str(SHIPPED)


def test_shipped_router_values_are_the_model_defaults() -> None:
    """Every value in the shipped router: section equals the built-in default."""
    shipped = load_settings(SHIPPED, {})
    without_router = {k: v for k, v in shipped_document().items() if k != "router"}
    assert parse_settings(without_router, {}, str(SHIPPED)) == shipped
    assert shipped.intent.policies == Policies()
    defaults = Intent(services=())
    assert shipped.intent.listen == defaults.listen
    assert shipped.intent.admin == defaults.admin
    assert shipped.intent.default_strategy == defaults.default_strategy


def test_omitted_optional_keys_take_dataclass_defaults() -> None:
    """Omitted service and backend keys take the model's dataclass defaults."""
    settings = parse_settings(minimal_document(), {}, "x")
    service = settings.intent.services[0]
    backend = service.backends[0]
    assert (service.strategy, service.group, service.hash_header) == (None, "", "x-session-id")
    assert (backend.weight, backend.priority, backend.health_path, backend.draining) == (
        1,
        0,
        "/health",
        False,
    )


def test_all_optional_keys_are_read() -> None:
    """Every optional service and backend key reaches the model."""
    document = minimal_document()
    document["services"][0] |= {"strategy": "maglev", "group": "g", "hash_header": "x-user"}
    document["services"][0]["backends"][0] |= {
        "weight": 3,
        "priority": 1,
        "health_path": "/ready",
        "draining": True,
    }
    service = parse_settings(document, {}, "x").intent.services[0]
    assert (service.strategy, service.group, service.hash_header) == (
        Strategy.MAGLEV,
        "g",
        "x-user",
    )
    backend = service.backends[0]
    assert (backend.weight, backend.priority, backend.health_path, backend.draining) == (
        3,
        1,
        "/ready",
        True,
    )


# (variable, env text, Settings attribute it sets, expected value)
SPEC_OVERRIDES = [
    ("ROUTER_STRATEGY", "least_connections", "intent.default_strategy", Strategy.LEAST_CONNECTIONS),
    ("ROUTER_HEALTH_CHECK_INTERVAL", "45", "health_check_interval_s", 45.0),
    ("ROUTER_HEALTH_CHECK_TIMEOUT", "2.5", "health_check_timeout_s", 2.5),
    ("ROUTER_CIRCUIT_BREAKER_THRESHOLD", "4", "intent.policies.circuit_breaker_threshold", 4),
    ("ROUTER_CIRCUIT_BREAKER_TIMEOUT", "20", "intent.policies.circuit_breaker_timeout_s", 20.0),
    ("ROUTER_MAX_RETRIES", "0", "intent.policies.max_retries", 0),
    ("ROUTER_RETRY_DELAY", "0.25", "intent.policies.retry_delay_s", 0.25),
    ("ROUTER_QUEUE_SIZE", "50", "intent.policies.queue_size", 50),
    ("ROUTER_WORKER_THREADS", "2", "worker_threads", 2),
    ("ROUTER_METRICS_ENABLED", "No", "metrics_enabled", False),
]


@pytest.mark.parametrize(("variable", "text", "attribute", "expected"), SPEC_OVERRIDES)
def test_spec_environment_variable_overrides_yaml(
    variable: str, text: str, attribute: str, expected: object
) -> None:
    """Each of the spec's ten ROUTER_* variables beats its value in the shipped file."""
    read = attrgetter(attribute)
    assert read(load_settings(SHIPPED, {})) != expected
    assert read(load_settings(SHIPPED, {variable: text})) == expected


def test_further_environment_variables_override_yaml() -> None:
    """Addresses, limits, Redis URL and token follow the same ROUTER_<KEY> pattern."""
    environ = {
        "ROUTER_LISTEN_ADDRESS": "[::1]:8080",
        "ROUTER_ADMIN_ADDRESS": "10.0.0.5:18081",
        "ROUTER_ADMIN_TOKEN": "s3cret",
        "ROUTER_XDS_ADDRESS": "127.0.0.2:18001",
        "ROUTER_ENVOY_ADMIN_ADDRESS": "127.0.0.1:9902",
        "ROUTER_REDIS_URL": "redis://localhost:6379/0",
        "ROUTER_MAX_REQUESTS": "7",
        "ROUTER_MAX_CONNECTIONS": "8",
        "ROUTER_REQUEST_TIMEOUT": "3",
        "ROUTER_HEALTHY_PANIC_THRESHOLD": "50",
    }
    settings = load_settings(SHIPPED, environ)
    assert settings.intent.listen == SocketAddress("::1", 8080)
    assert settings.intent.admin == SocketAddress("10.0.0.5", 18081)
    assert settings.xds_address == SocketAddress("127.0.0.2", 18001)
    assert settings.envoy_admin_address == SocketAddress("127.0.0.1", 9902)
    assert (settings.admin_token, settings.redis_url) == ("s3cret", "redis://localhost:6379/0")
    policies = settings.intent.policies
    assert (policies.max_requests, policies.max_connections) == (7, 8)
    assert policies.request_timeout_s == 3.0
    assert policies.healthy_panic_threshold_percent == 50.0


def test_empty_redis_url_and_token_mean_unset() -> None:
    """An empty ROUTER_REDIS_URL / ROUTER_ADMIN_TOKEN switches the file's value off."""
    document = minimal_document() | {
        "router": {"redis_url": "redis://r:6379", "admin_token": "t"},
    }
    settings = parse_settings(document, {"ROUTER_REDIS_URL": "", "ROUTER_ADMIN_TOKEN": ""}, "x")
    assert (settings.redis_url, settings.admin_token) == (None, None)


def test_unknown_router_variables_are_ignored() -> None:
    """ROUTER_* names that match no key are ignored, so other tools may share the prefix."""
    settings = parse_settings(minimal_document(), {"ROUTER_NO_SUCH_KNOB": "x"}, "x")
    assert settings == parse_settings(minimal_document(), {}, "x")


def test_every_problem_is_reported_with_its_path() -> None:
    """A document with many mistakes reports all of them, each at its exact path."""
    document: dict[str, Any] = {
        "router": {
            "strategy": "fastest",
            "queue_size": True,
            "queu_size": 3,
            "health_check_interval": 5,
            "health_check_timeout": 10,
            "retry_delay": 0,
            "healthy_panic_threshold": 101,
            "max_retries": -1,
            "listen_address": "127.0.0.1",
        },
        "extra": 1,
        "services": [
            {
                "name": "Qdrant",
                "routes": ["api/v1", "/api/v1/router/x", "/api/v1/health"],
                "backends": [{"name": "a", "address": "http://x", "port": 70000}],
            },
            {
                "name": "b",
                "routes": ["/x", "/x"],
                "hash_header": "X-Upper",
                "backends": [{"name": "a", "address": "h:1", "port": "1", "weight": 0, "x": 1}],
            },
            {"name": "b", "routes": [], "backends": "nope", "strategy": "best"},
            {"routes": ["/y"], "backends": [{"name": "c", "address": "", "health_path": "h"}]},
            3,
        ],
    }
    assert problem_paths(document) == {
        "extra",
        "router.strategy",
        "router.queue_size",
        "router.queu_size",
        "router.health_check_timeout",
        "router.retry_delay",
        "router.healthy_panic_threshold",
        "router.max_retries",
        "router.listen_address",
        "services[0].name",
        "services[0].routes[0]",
        "services[0].routes[1]",
        "services[0].routes[2]",
        "services[0].backends[0].address",
        "services[0].backends[0].port",
        "services[1].routes[1]",
        "services[1].hash_header",
        "services[1].backends[0].name",
        "services[1].backends[0].address",
        "services[1].backends[0].port",
        "services[1].backends[0].weight",
        "services[1].backends[0].x",
        "services[2].name",
        "services[2].routes",
        "services[2].backends",
        "services[2].strategy",
        "services[3].name",
        "services[3].backends[0].address",
        "services[3].backends[0].port",
        "services[3].backends[0].health_path",
        "services[4]",
    }


def test_duplicate_routes_across_services_are_rejected() -> None:
    """A route prefix may belong to one service only."""
    document = minimal_document()
    other = copy.deepcopy(document["services"][0])
    other["name"] = "other"
    other["backends"][0]["name"] = "other-0"
    document["services"].append(other)
    assert problem_paths(document) == {"services[1].routes[0]"}


def test_a_model_declared_by_two_services_is_rejected() -> None:
    """A model id picks one service on the OpenAI front door; the second claim is
    the problem, with its path and where the first is."""
    document = minimal_document()
    document["services"][0]["models"] = ["phi3", "hermes"]
    other = copy.deepcopy(document["services"][0])
    other |= {"name": "other", "routes": ["/other/"], "models": ["mixtral", "hermes"]}
    other["backends"][0]["name"] = "other-0"
    document["services"].append(other)
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {}, "test.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "services[1].models[1]: duplicate model 'hermes' (first at services[0].models[1])"
    ]


def test_model_ids_are_checked_with_their_paths() -> None:
    """Not a list, not a string, spaces or quotes: each a problem at its path."""
    document = minimal_document()
    document["services"][0]["models"] = ["ok-1", 7, "has space", 'q"uote']
    assert problem_paths(document) == {
        "services[0].models[1]",
        "services[0].models[2]",
        "services[0].models[3]",
    }
    document["services"][0]["models"] = "phi3"
    assert problem_paths(document) == {"services[0].models"}


def test_models_reach_the_intent() -> None:
    document = minimal_document()
    document["services"][0]["models"] = ["phi3", "meta-llama/Llama-3.1-8B:q4"]
    intent = parse_settings(document, {}, "test.yaml").intent
    assert intent.services[0].models == ("phi3", "meta-llama/Llama-3.1-8B:q4")


def test_bool_is_not_an_integer() -> None:
    """YAML booleans are rejected where integers are expected, and vice versa."""
    document = minimal_document()
    document["services"][0]["backends"][0] |= {"port": True, "draining": 1}
    document["router"] = {"worker_threads": False, "metrics_enabled": 1}
    assert problem_paths(document) == {
        "services[0].backends[0].port",
        "services[0].backends[0].draining",
        "router.worker_threads",
        "router.metrics_enabled",
    }


def test_top_level_shape() -> None:
    """The document must be a mapping holding `services`; `router` is optional."""
    assert problem_paths(None) == {"test.yaml"}
    assert problem_paths({"router": {}}) == {"services"}
    assert problem_paths({"services": []}) == {"services"}
    assert parse_settings(minimal_document() | {"router": None}, {}, "x").worker_threads == 8


def test_strategy_message_lists_the_allowed_values() -> None:
    """A bad strategy names every allowed one."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(minimal_document(), {"ROUTER_STRATEGY": "fastest"}, "x")
    assert [p.path for p in caught.value.problems] == ["env:ROUTER_STRATEGY"]
    assert all(s.value in caught.value.problems[0].message for s in Strategy)


def test_bad_environment_values_are_reported_with_env_paths() -> None:
    """Every bad ROUTER_* value is reported at env:<NAME>, alongside file problems."""
    environ = {
        "ROUTER_QUEUE_SIZE": "lots",
        "ROUTER_WORKER_THREADS": "0",
        "ROUTER_METRICS_ENABLED": "maybe",
        "ROUTER_RETRY_DELAY": "nan",
        "ROUTER_LISTEN_ADDRESS": "::1:80",
        "ROUTER_XDS_ADDRESS": "127.0.0.1:0",
        "ROUTER_REDIS_URL": "http://redis",
        "ROUTER_STRATEGY": "",
    }
    document = minimal_document() | {"router": {"max_connections": 0}}
    assert problem_paths(document, environ) == {
        "router.max_connections",
        *(f"env:{name}" for name in environ),
    }


def test_valid_environment_value_does_not_hide_a_bad_file_value() -> None:
    """The file is still checked where the environment overrides it."""
    document = minimal_document() | {"router": {"queue_size": "big"}}
    assert problem_paths(document, {"ROUTER_QUEUE_SIZE": "10"}) == {"router.queue_size"}


def test_environment_can_fix_the_timeout_interval_relation() -> None:
    """timeout < interval is checked on the effective values, env included."""
    document = minimal_document() | {"router": {"health_check_timeout": 40}}
    assert problem_paths(document) == {"router.health_check_timeout"}
    settings = parse_settings(document, {"ROUTER_HEALTH_CHECK_INTERVAL": "60"}, "x")
    assert (settings.health_check_timeout_s, settings.health_check_interval_s) == (40.0, 60.0)


def test_a_rule_blames_the_variable_that_set_the_value() -> None:
    """timeout < interval broken by ROUTER_HEALTH_CHECK_TIMEOUT is that variable's
    problem, not the file key's; from the file, the file key's."""
    environ = {"ROUTER_HEALTH_CHECK_TIMEOUT": "40"}
    with pytest.raises(ConfigError) as caught:
        parse_settings(minimal_document(), environ, "x")
    assert [str(p) for p in caught.value.problems] == [
        "env:ROUTER_HEALTH_CHECK_TIMEOUT: must be less than health_check_interval (30), got 40"
    ]
    from_file = minimal_document() | {"router": {"health_check_timeout": 40}}
    assert problem_paths(from_file) == {"router.health_check_timeout"}
    # The file's value, overridden by a good variable, is not blamed either.
    assert problem_paths(from_file, {"ROUTER_HEALTH_CHECK_TIMEOUT": "45"}) == {
        "env:ROUTER_HEALTH_CHECK_TIMEOUT"
    }


def test_an_empty_file_says_so_and_names_the_file(tmp_path: Path) -> None:
    """An empty file (or one of comments only) is one problem naming the file, so
    a reload's log line says which file it refused."""
    for text in ("", "# nothing yet\n"):
        path = tmp_path / "router_config.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_settings(path, {})
        assert [str(p) for p in caught.value.problems] == [
            f"{path}: the file is empty; it needs at least a `services:` list"
        ]
    with pytest.raises(ConfigError) as caught:
        parse_settings([1], {}, "mine.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "mine.yaml: the configuration must be a mapping, got [1] (list)"
    ]


def test_booleans_read_as_the_file_spells_them() -> None:
    """A boolean where it does not belong reads `got true (boolean)`, like YAML."""
    document = minimal_document()
    document["services"][0]["backends"][0]["port"] = True
    document["router"] = {"strategy": False}
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {}, "x")
    messages = [str(p) for p in caught.value.problems]
    assert "services[0].backends[0].port: must be an integer, got true (boolean)" in messages
    assert any(m.endswith("got false (boolean)") for m in messages), messages
    assert not any("True" in m or "(bool)" in m for m in messages), messages


@pytest.mark.parametrize("address", ["0.0.0.0:18080", "10.1.2.3:18080", "[::]:18080"])
def test_non_loopback_admin_without_token_is_rejected(address: str) -> None:
    """An admin API reachable from other hosts needs a token."""
    environ = {"ROUTER_ADMIN_ADDRESS": address}
    with pytest.raises(ConfigError) as caught:
        parse_settings(minimal_document(), environ, "x")
    assert [p.path for p in caught.value.problems] == ["router.admin_token"]
    assert "not loopback" in caught.value.problems[0].message
    token = parse_settings(minimal_document(), environ | {"ROUTER_ADMIN_TOKEN": "t"}, "x")
    assert token.admin_token == "t"


@pytest.mark.parametrize("address", ["127.0.0.1:1", "127.9.9.9:1", "[::1]:1"])
def test_loopback_admin_needs_no_token(address: str) -> None:
    """Loopback admin addresses (127.0.0.0/8, ::1) work without a token."""
    settings = parse_settings(minimal_document(), {"ROUTER_ADMIN_ADDRESS": address}, "x")
    assert settings.admin_token is None


@pytest.mark.parametrize(
    "key", ["listen_address", "envoy_admin_address", "xds_address", "admin_address"]
)
@pytest.mark.parametrize("host", ["localhost", "ctl.internal"])
def test_every_address_is_an_ip_literal(key: str, host: str) -> None:
    """What router_config.yaml says: every *_address is ip:port, no host names
    (Envoy reaches each through a static cluster, which resolves none), in the
    file and in the environment alike."""
    document = minimal_document() | {"router": {key: f"{host}:18090"}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {}, "x")
    assert [p.path for p in caught.value.problems] == [f"router.{key}"]
    assert "must be an IPv4 or IPv6 address" in caught.value.problems[0].message
    assert problem_paths(minimal_document(), {f"ROUTER_{key.upper()}": f"{host}:1"}) == {
        f"env:ROUTER_{key.upper()}"
    }
    shipped = SHIPPED.read_text(encoding="utf-8")
    assert "the *_address keys read ip:port or [ipv6]:port, IP literals only" in shipped


def test_an_admin_address_from_the_environment_is_named_in_the_token_rule() -> None:
    """The token rule says where the non-loopback address came from."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(minimal_document(), {"ROUTER_ADMIN_ADDRESS": "10.0.0.5:1"}, "x")
    assert [str(p) for p in caught.value.problems] == [
        "router.admin_token: required when admin_address is not loopback "
        "(10.0.0.5:1, from env:ROUTER_ADMIN_ADDRESS)"
    ]


def test_secrets_stay_out_of_repr() -> None:
    """The admin token and Redis URL (which may hold a password) are not in repr()."""
    environ = {"ROUTER_ADMIN_TOKEN": "tok-123", "ROUTER_REDIS_URL": "redis://:pw-456@r"}
    text = repr(parse_settings(minimal_document(), environ, "x"))
    assert "tok-123" not in text
    assert "pw-456" not in text


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """Broken YAML is a ConfigError at the file name, with line and column."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("services:\n  - name: [a\n    b: : c\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(broken, {})
    (problem,) = caught.value.problems
    assert problem.path == str(broken)
    assert "line 3" in problem.message
    assert "column" in problem.message


def test_duplicate_yaml_keys_are_a_config_error(tmp_path: Path) -> None:
    """A key given twice is an error, not silently the last one."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("router:\n  queue_size: 1\n  queue_size: 2\nservices: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'queue_size'"):
        load_settings(twice, {})


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file."""
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(missing, {})
    assert [p.path for p in caught.value.problems] == [str(missing)]


def test_format_problems_gives_one_line_per_problem() -> None:
    """format_problems prints `path: message`, one per line."""
    document = minimal_document() | {"router": {"queue_size": 0, "max_retries": "3"}}
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {}, "x")
    lines = format_problems(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("router.queue_size: ")
    assert lines[1].startswith("router.max_retries: ")


def test_embedded_defaults_are_the_shipped_config() -> None:
    """The wheel's embedded defaults are byte-identical to config/router_config.yaml."""
    assert EMBEDDED_DEFAULTS.read_bytes() == SHIPPED.read_bytes()


def test_load_settings_none_uses_embedded_defaults() -> None:
    """load_settings(None) loads the embedded defaults and says so in `source`."""
    settings = load_settings(None, {})
    assert settings.source == "<embedded defaults>"
    assert settings.intent == load_settings(SHIPPED, {}).intent


def test_load_settings_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environ, os.environ is used."""
    monkeypatch.setenv("ROUTER_QUEUE_SIZE", "77")
    assert load_settings(None).intent.policies.queue_size == 77


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "999.1.1.1:80", ":80", "[1.2.3.4]:80", "::1:80", "http://h:80", "h:0"]
)
def test_bad_socket_addresses_are_rejected(text: str) -> None:
    """Addresses must be host:port with a valid host, IPv6 in brackets, port 1..65535."""
    assert problem_paths(minimal_document(), {"ROUTER_XDS_ADDRESS": text}) == {
        "env:ROUTER_XDS_ADDRESS"
    }


@pytest.mark.parametrize("host", ["10.0.0.7", "::1", "127.0.0.1"])
def test_backend_address_accepts_ip_addresses(host: str) -> None:
    """A backend address is an IPv4/IPv6 address."""
    document = minimal_document()
    document["services"][0]["backends"][0]["address"] = host
    assert parse_settings(document, {}, "x").intent.backends()[0].address == host


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("gpu-0.internal", "gpu-0.internal"),
        ("localhost", "localhost"),
        ("Qdrant.LAN", "qdrant.lan"),
    ],
)
def test_backend_host_names_are_accepted(host: str, stored: str) -> None:
    """A backend address may be a DNS name (the controller resolves it: xds_server/dns/),
    kept in lower case, as DNS compares names."""
    document = minimal_document()
    document["services"][0]["backends"][0]["address"] = host
    assert parse_settings(document, {}, "x").intent.backends()[0].address == stored


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("gpu_0.internal", "label 'gpu_0'"),
        ("-qdrant.lan", "label '-qdrant'"),
        ("qdrant..lan", "label ''"),
        ("a" * 64 + ".lan", "label 'aaaa"),
        ("1.2.3", "last label is all digits"),
        ("256.1.1.1", "last label is all digits"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("", "it is empty"),
    ],
)
def test_bad_backend_host_names_are_refused_with_the_reason(host: str, why: str) -> None:
    """An address that is neither an IP nor an RFC 1123 host name is a problem at
    the field's path that says which label (or what) is wrong."""
    document = minimal_document()
    document["services"][0]["backends"][0]["address"] = host
    with pytest.raises(ConfigError) as raised:
        parse_settings(document, {}, "x")
    [problem] = raised.value.problems
    assert problem.path == "services[0].backends[0].address"
    assert "neither an IP address nor a DNS name" in problem.message and why in problem.message


def test_health_verdict_settings_are_read_from_file_and_environment() -> None:
    """Thresholds and jitter of the health checker: defaults, file, ROUTER_* env, and bounds."""
    defaults = parse_settings(minimal_document(), {}, "x")
    assert (
        defaults.health_check_healthy_threshold,
        defaults.health_check_unhealthy_threshold,
        defaults.health_check_jitter,
    ) == (2, 3, 0.1)
    document = minimal_document() | {
        "router": {"health_check_healthy_threshold": 4, "health_check_jitter": 0.5}
    }
    environ = {"ROUTER_HEALTH_CHECK_UNHEALTHY_THRESHOLD": "1", "ROUTER_HEALTH_CHECK_JITTER": "0"}
    settings = parse_settings(document, environ, "x")
    assert (
        settings.health_check_healthy_threshold,
        settings.health_check_unhealthy_threshold,
        settings.health_check_jitter,
    ) == (4, 1, 0.0)
    bad = minimal_document() | {
        "router": {"health_check_healthy_threshold": 0, "health_check_jitter": 1.5}
    }
    assert problem_paths(bad) == {
        "router.health_check_healthy_threshold",
        "router.health_check_jitter",
    }


def test_settings_cap_backend_weight() -> None:
    """The file refuses a weight Envoy could not sum per locality (shared API rule)."""
    backend = {"name": "a", "address": "127.0.0.1", "port": 1, "weight": MAX_WEIGHT + 1}
    document = {"services": [{"name": "s", "routes": ["/s/"], "backends": [backend]}]}
    with pytest.raises(ConfigError) as raised:
        parse_settings(document, {}, "test")
    assert [p.path for p in raised.value.problems] == ["services[0].backends[0].weight"]


def test_settings_bound_backend_priority_to_uint32() -> None:
    """Envoy's LocalityLbEndpoints.priority is a uint32: 2**32 - 1 is the
    largest priority the file takes, and the message says the range."""
    backend = {"name": "a", "address": "127.0.0.1", "port": 1, "priority": 2**32 - 1}
    document = {"services": [{"name": "s", "routes": ["/s/"], "backends": [backend]}]}
    [service] = parse_settings(document, {}, "test").intent.services
    assert service.backends[0].priority == 2**32 - 1
    backend["priority"] = 2**32
    with pytest.raises(ConfigError) as raised:
        parse_settings(document, {}, "test")
    [problem] = raised.value.problems
    assert problem.path == "services[0].backends[0].priority"
    assert "between 0 and 4294967295" in problem.message


def test_rules_across_fields_are_reported_with_field_problems() -> None:
    """One pass reports a bad value and every rule across fields together: the
    gRPC strategy rule, a duplicate route, timeout < interval, and a non-grpc
    service without routes, next to a bad port and an unknown key."""
    grpc_backend = {"name": "g-0", "address": "127.0.0.1", "port": 9001}
    document = minimal_document() | {
        "router": {"health_check_timeout": 40, "qeue_size": 1},
    }
    document["services"][0]["backends"][0]["port"] = 0
    document["services"] += [
        {"name": "g", "protocol": "grpc", "strategy": "random", "backends": [grpc_backend]},
        {"name": "dup", "routes": ["/svc/"], "backends": [grpc_backend | {"name": "d-0"}]},
        {"name": "none", "backends": [grpc_backend | {"name": "n-0"}]},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {}, "x")
    problems = [str(p) for p in caught.value.problems]  # in document order
    assert problems[:1] + problems[2:] == [
        "services[0].backends[0].port: must be an integer between 1 and 65535, got 0",
        "services[2].routes[0]: duplicate route '/svc/' (first at services[0].routes[0])",
        "services[3].routes: required (only grpc services may omit it)",
        "router.qeue_size: unknown key; did you mean 'queue_size'?",
        "router.health_check_timeout: must be less than health_check_interval (30), got 40",
    ]
    assert problems[1].startswith("services[1].strategy: random cannot serve gRPC service 'g'")


def test_grpc_rule_skips_a_strategy_that_is_not_known() -> None:
    """A gRPC service inheriting a bad router.strategy gets the strategy's own
    problem only, not a gRPC rule about a default nobody chose."""
    backend = {"name": "g-0", "address": "127.0.0.1", "port": 9001}
    document = {
        "router": {"strategy": "fastest"},
        "services": [{"name": "g", "protocol": "grpc", "backends": [backend]}],
    }
    assert problem_paths(document) == {"router.strategy"}
    assert problem_paths(document | {"router": {}}, {"ROUTER_STRATEGY": "nope"}) == {
        "env:ROUTER_STRATEGY"
    }


def test_grpc_health_service_is_read_and_a_bad_name_refused_with_its_path() -> None:
    """The gRPC health check's service name comes from the file (default ""); a
    name that is no gRPC service name is a problem at its field path."""
    backend = {"name": "g-0", "address": "127.0.0.1", "port": 9001}
    service = {"name": "g", "protocol": "grpc", "backends": [backend]}
    default = parse_settings({"services": [service]}, {}, "test.yaml")
    assert default.intent.services[0].grpc_health_service == ""
    named = {"services": [service | {"grpc_health_service": "greeter.v1.Greeter"}]}
    parsed = parse_settings(named, {}, "test.yaml")
    assert parsed.intent.services[0].grpc_health_service == "greeter.v1.Greeter"
    bad = {"services": [service | {"grpc_health_service": "not a name/"}]}
    assert problem_paths(bad) == {"services[0].grpc_health_service"}


def test_problem_messages_are_pinned() -> None:
    """The wording of each kind of problem: unknown key (with a hint, or the
    allowed keys), required, not a mapping, not a list, a bad value, and env."""
    document: dict[str, Any] = {
        "zzz": 1,
        "router": {"strategy": "fastest"},
        "services": [
            {"name": "s", "routes": "/s/", "backends": [{"nme": "b", "address": "::1"}]},
            7,
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, {"ROUTER_QUEUE_SIZE": "lots"}, "x")
    strategies = ", ".join(s.value for s in Strategy)
    assert [str(p) for p in caught.value.problems] == [
        "zzz: unknown key; allowed: router, services",
        f"router.strategy: must be one of {strategies}, got 'fastest' (str)",
        "services[0].routes: must be a non-empty list of path prefixes, got '/s/' (str)",
        "services[0].backends[0].nme: unknown key; did you mean 'name'?",
        "services[0].backends[0].name: required",
        "services[0].backends[0].port: required",
        "services[1]: must be a mapping, got 7 (int)",
        "env:ROUTER_QUEUE_SIZE: must be an integer, got 'lots'",
    ]


def test_dns_settings_are_read_from_file_and_environment() -> None:
    """router.dns_servers (ip or ip:port each; comma separated in ROUTER_DNS_SERVERS)
    and router.dns_refresh_interval: defaults, file, and the environment over the file."""
    defaults = parse_settings(minimal_document(), {}, "x")
    assert (defaults.dns_servers, defaults.dns_refresh_interval_s) == ((), 30.0)
    document = minimal_document()
    document["router"] = {"dns_servers": ["127.0.0.1:5353", "::1"], "dns_refresh_interval": 5}
    from_file = parse_settings(document, {}, "x")
    assert (from_file.dns_servers, from_file.dns_refresh_interval_s) == (
        ("127.0.0.1:5353", "::1"),
        5.0,
    )
    env = {"ROUTER_DNS_SERVERS": "10.0.0.2, [::1]:53", "ROUTER_DNS_REFRESH_INTERVAL": "1.5"}
    from_env = parse_settings(document, env, "x")
    assert (from_env.dns_servers, from_env.dns_refresh_interval_s) == (
        ("10.0.0.2", "[::1]:53"),
        1.5,
    )


def test_bad_dns_settings_name_their_field_paths() -> None:
    """A name server that is no IP (or ip:port) and a non-positive refresh interval
    are problems at their paths, in the file and in the environment, all listed."""
    document = minimal_document()
    document["router"] = {
        "dns_servers": ["ns1.example", "127.0.0.1:99999"],
        "dns_refresh_interval": 0,
    }
    assert problem_paths(document) == {
        "router.dns_servers[0]",
        "router.dns_servers[1]",
        "router.dns_refresh_interval",
    }
    env = {"ROUTER_DNS_SERVERS": "ns1.example", "ROUTER_DNS_REFRESH_INTERVAL": "-1"}
    with pytest.raises(ConfigError) as caught:
        parse_settings(minimal_document(), env, "x")
    # Each bad item of the variable's list at its index, as in the file.
    assert {p.path for p in caught.value.problems} == {
        "env:ROUTER_DNS_SERVERS[0]",
        "env:ROUTER_DNS_REFRESH_INTERVAL",
    }
