"""router.tls: the listener's certificate files, from the file or ROUTER_TLS, each
problem with its field path."""

from __future__ import annotations

import pytest

from xds_server.errors import ConfigError
from xds_server.settings import parse_settings

SERVICES = [
    {"name": "a", "routes": ["/a"], "backends": [{"name": "b", "address": "127.0.0.1", "port": 9}]}
]


def problems(router: dict[str, object], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_settings({"router": router, "services": SERVICES}, environ or {}, "f")
    return [str(p) for p in error.value.problems]


def test_default_is_plain_http() -> None:
    """No router.tls: the listener serves plain HTTP."""
    assert parse_settings({"services": SERVICES}, {}, "f").tls is None


def test_tls_from_the_file() -> None:
    """All three files are read from router.tls."""
    tls = {"cert_file": "e.crt", "key_file": "e.key", "client_ca_file": "ca.pem"}
    settings = parse_settings({"router": {"tls": tls}, "services": SERVICES}, {}, "f")
    assert settings.tls is not None
    assert (settings.tls.cert_file, settings.tls.key_file) == ("e.crt", "e.key")
    assert settings.tls.client_ca_file == "ca.pem"


def test_tls_from_the_environment_beats_the_file() -> None:
    """ROUTER_TLS (a JSON object, as ROUTER_XDS_TLS) replaces the file's router.tls."""
    environ = {"ROUTER_TLS": '{"cert_file": "env.crt", "key_file": "env.key"}'}
    router = {"tls": {"cert_file": "file.crt", "key_file": "file.key"}}
    settings = parse_settings({"router": router, "services": SERVICES}, environ, "f")
    assert settings.tls is not None
    assert (settings.tls.cert_file, settings.tls.client_ca_file) == ("env.crt", None)


def test_every_tls_problem_is_listed_with_its_path() -> None:
    """A bad value, a misspelt key and a missing key, each named."""
    assert sorted(problems({"tls": {"cert_file": "", "key_fil": "k"}})) == [
        "router.tls.cert_file: must name a PEM file, got an empty string",
        "router.tls.key_fil: unknown key; did you mean 'key_file'?",
        "router.tls.key_file: required",
    ]
    assert problems({}, {"ROUTER_TLS": "[1]"})[0].startswith("env:ROUTER_TLS: ")
