"""router.xds_tls and router.envoy_admin_allowlist: file, environment, and the
rule that a non-loopback xDS port needs TLS (docs/xds-protocol.md rule 34)."""

from __future__ import annotations

import ipaddress

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


def test_defaults_are_plaintext_and_no_allowlist() -> None:
    settings = parse_settings({"services": SERVICES}, {}, "f")
    assert settings.xds_tls is None and settings.envoy_admin_allowlist == ()


def test_a_non_loopback_xds_address_needs_tls_naming_both_settings() -> None:
    assert problems({"xds_address": "0.0.0.0:18000"}) == [
        "router.xds_tls: required when xds_address is not loopback "
        "(0.0.0.0:18000, from router.xds_address)"
    ]
    assert problems({}, {"ROUTER_XDS_ADDRESS": "192.0.2.1:18000"}) == [
        "router.xds_tls: required when xds_address is not loopback "
        "(192.0.2.1:18000, from env:ROUTER_XDS_ADDRESS)"
    ]


def test_with_tls_any_xds_address_is_allowed() -> None:
    tls = {"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "ca.pem"}
    settings = parse_settings(
        {"router": {"xds_address": "0.0.0.0:18000", "xds_tls": tls}, "services": SERVICES}, {}, "f"
    )
    assert settings.xds_tls is not None
    assert (settings.xds_tls.cert_file, settings.xds_tls.client_ca_file) == ("s.crt", "ca.pem")


def test_tls_fields_are_checked_with_their_paths() -> None:
    assert sorted(problems({"xds_tls": {"cert_file": "", "key_fil": "k"}})) == [
        "router.xds_tls.cert_file: must name a PEM file, got an empty string",
        "router.xds_tls.key_fil: unknown key; did you mean 'key_file'?",
        "router.xds_tls.key_file: required",
    ]


def test_tls_and_allowlist_from_the_environment() -> None:
    environ = {
        "ROUTER_XDS_TLS": '{"cert_file": "s.crt", "key_file": "s.key"}',
        "ROUTER_ENVOY_ADMIN_ALLOWLIST": "10.0.0.0/8, 192.0.2.7",
    }
    settings = parse_settings({"services": SERVICES}, environ, "f")
    assert settings.xds_tls is not None and settings.xds_tls.client_ca_file is None
    assert settings.envoy_admin_allowlist == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )


def test_an_allowlist_entry_that_is_no_network_is_a_problem() -> None:
    found = problems({"envoy_admin_allowlist": ["10.0.0.0/8", "10.1.2.3/8", "admin.local"]})
    assert [p.split(":")[0] for p in found] == [
        "router.envoy_admin_allowlist[1]",
        "router.envoy_admin_allowlist[2]",
    ]
