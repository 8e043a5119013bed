"""Config errors for the DNS and TLS keys: router.dns_servers, router.dns_refresh_interval,
router.tls and a backend's tls mapping. Every problem at once, each at its field
path, from the file and from ROUTER_* alike (`env:ROUTER_TLS.key_file`); files
checked for what they hold, not only for being there; DNS names refused with a
reason a person can act on; start-only keys changed by a reload are a WARNING
naming the key."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import config_file, local_settings, running_controller
from tests.tls_support import Pki
from xds_server.errors import ConfigError
from xds_server.settings import Settings, parse_settings
from xds_server.settings.start_only import start_only_changes

SERVICES = [
    {"name": "a", "routes": ["/a"], "backends": [{"name": "b", "address": "127.0.0.1", "port": 9}]}
]


def problems(
    router: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    services: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    document: dict[str, Any] = {"services": services or SERVICES}
    if router is not None:
        document["router"] = router
    with pytest.raises(ConfigError) as error:
        parse_settings(document, environ or {}, "f")
    return {p.path: p.message for p in error.value.problems}


def settings(router: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    return parse_settings({"router": router, "services": SERVICES}, environ or {}, "f")


@pytest.fixture
def junk(tmp_path: Path) -> dict[str, str]:
    """Files that exist but hold no PEM: empty, and text."""
    empty, text = tmp_path / "empty.pem", tmp_path / "text.pem"
    empty.write_text("")
    text.write_text("not a certificate\n")
    return {"empty": str(empty), "text": str(text), "missing": str(tmp_path / "none.pem")}


def with_tls_backend(tls: object, address: str = "backend.example") -> list[dict[str, Any]]:
    backend = {"name": "b", "address": address, "port": 443, "tls": tls}
    return [{"name": "a", "routes": ["/a"], "backends": [backend]}]


# ---- router.dns_servers, router.dns_refresh_interval ---------------------------------


def test_every_bad_dns_server_is_listed_from_the_file_and_the_environment() -> None:
    found = problems({"dns_servers": ["nope", "127.0.0.1:53", "1.2.3.4:99999"]})
    assert list(found) == ["router.dns_servers[0]", "router.dns_servers[2]"]
    from_env = problems(environ={"ROUTER_DNS_SERVERS": "nope,127.0.0.1,zz:1"})
    assert list(from_env) == ["env:ROUTER_DNS_SERVERS[0]", "env:ROUTER_DNS_SERVERS[2]"]
    assert "'zz:1' must be an IP address" in from_env["env:ROUTER_DNS_SERVERS[2]"]


def test_dns_servers_that_are_not_a_list_say_what_is_expected() -> None:
    message = problems({"dns_servers": 5})["router.dns_servers"]
    assert "list" in message and "5" in message and "valid tuple" not in message


@pytest.mark.parametrize("interval", [0.001, 0.5])
def test_dns_refresh_interval_has_a_lower_bound_of_a_second(interval: float) -> None:
    """Re-resolving every backend name many times a second would flood the DNS
    server; one second is the smallest interval taken, from the file or the env."""
    assert ">= 1" in problems({"dns_refresh_interval": interval})["router.dns_refresh_interval"]
    from_env = problems(environ={"ROUTER_DNS_REFRESH_INTERVAL": str(interval)})
    assert ">= 1" in from_env["env:ROUTER_DNS_REFRESH_INTERVAL"]
    assert settings({"dns_refresh_interval": 1}).dns_refresh_interval_s == 1.0


# ---- router.tls ----------------------------------------------------------------------


def test_router_tls_from_the_environment_lists_each_problem_at_its_key() -> None:
    """ROUTER_TLS is a JSON object: its problems have paths below the variable, as
    router.tls's have below the key, and all of them are listed."""
    environ = {"ROUTER_TLS": json.dumps({"cert_file": 5, "kee_file": "k"})}
    found = problems(environ=environ)
    assert set(found) == {
        "env:ROUTER_TLS.kee_file",
        "env:ROUTER_TLS.key_file",
        "env:ROUTER_TLS.cert_file",
    }
    assert "did you mean 'key_file'" in found["env:ROUTER_TLS.kee_file"]
    assert found["env:ROUTER_TLS.key_file"] == "required"
    not_json = problems(environ={"ROUTER_TLS": "cert_file=x"})["env:ROUTER_TLS"]
    assert "JSON object" in not_json and "valid dictionary" not in not_json


def test_router_tls_reports_every_file_at_fault(tmp_path: Path, junk: dict[str, str]) -> None:
    """A missing certificate does not hide an empty client CA; a certificate
    that is not PEM does not hide a key that is not PEM either."""
    missing = problems(
        {
            "tls": {
                "cert_file": junk["missing"],
                "key_file": junk["text"],
                "client_ca_file": junk["empty"],
            }
        }
    )
    assert set(missing) == {
        "router.tls.cert_file",
        "router.tls.key_file",
        "router.tls.client_ca_file",
    }
    assert "no such file" in missing["router.tls.cert_file"]
    assert "private key" in missing["router.tls.key_file"]
    assert "certificate" in missing["router.tls.client_ca_file"]
    files = Pki(tmp_path).server_files(clients=False)
    good_pair = {"cert_file": str(files.cert_file), "key_file": str(files.key_file)}
    only_ca = problems({"tls": good_pair | {"client_ca_file": junk["text"]}})
    assert list(only_ca) == ["router.tls.client_ca_file"]
    from_env = problems(environ={"ROUTER_TLS": json.dumps(good_pair | {"key_file": junk["empty"]})})
    assert list(from_env) == ["env:ROUTER_TLS.key_file"]


def test_router_tls_key_of_another_certificate_is_a_pair_problem(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    one, other = pki.server_files(clients=False), pki.server_files(clients=False)
    found = problems({"tls": {"cert_file": str(one.cert_file), "key_file": str(other.key_file)}})
    assert list(found) == ["router.tls.cert_file"]
    assert "private key" in found["router.tls.cert_file"]


# ---- a backend's tls mapping ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty", "text"])
def test_a_backend_ca_file_without_a_certificate_is_refused(
    junk: dict[str, str], kind: str
) -> None:
    found = problems(services=with_tls_backend({"ca_file": junk[kind]}))
    assert list(found) == ["services[0].backends[0].tls.ca_file"]
    assert "no PEM CA certificate" in found["services[0].backends[0].tls.ca_file"]


def test_every_file_problem_of_a_backend_tls_mapping_is_listed(junk: dict[str, str]) -> None:
    """CA, client certificate and client key are each checked, and each bad one
    reported; the pair is checked only once both load on their own."""
    tls = {
        "ca_file": junk["empty"],
        "client_cert_file": junk["text"],
        "client_key_file": junk["empty"],
    }
    found = problems(services=with_tls_backend(tls))
    at = "services[0].backends[0].tls"
    assert set(found) == {f"{at}.ca_file", f"{at}.client_cert_file", f"{at}.client_key_file"}
    assert "certificate" in found[f"{at}.client_cert_file"]
    assert "private key" in found[f"{at}.client_key_file"]


def test_a_backend_client_pair_that_does_not_match_is_one_problem(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    (cert, _), (_, key) = pki.backend_files("a.example"), pki.backend_files("b.example")
    tls = {"client_cert_file": str(cert), "client_key_file": str(key)}
    found = problems(services=with_tls_backend(tls))
    assert list(found) == ["services[0].backends[0].tls.client_cert_file"]


def test_backend_tls_keys_of_every_kind_are_listed_at_once(junk: dict[str, str]) -> None:
    tls = {
        "ca_file": "",
        "sni": 5,
        "insecure_skip_verify": "yes",
        "client_cert_file": junk["missing"],
    }
    found = problems(services=with_tls_backend(tls))
    at = "services[0].backends[0].tls"
    assert set(found) == {
        f"{at}.ca_file",
        f"{at}.sni",
        f"{at}.insecure_skip_verify",
    }


# ---- DNS names -----------------------------------------------------------------------


def test_a_trailing_dot_in_a_name_gets_a_clear_message() -> None:
    address = problems(services=with_tls_backend(None, "backend.example."))
    message = address["services[0].backends[0].address"]
    assert "trailing dot" in message and "'backend.example'" in message
    sni = problems(services=with_tls_backend({"sni": "backend.example."}))
    message = sni["services[0].backends[0].tls.sni"]
    assert "trailing dot" in message and "'backend.example'" in message


def test_an_underscore_in_a_name_gets_a_clear_message() -> None:
    address = problems(services=with_tls_backend(None, "my_backend.internal"))
    message = address["services[0].backends[0].address"]
    assert "'_'" in message and "hyphen" in message
    sni = problems(services=with_tls_backend({"sni": "my_backend.internal"}))
    message = sni["services[0].backends[0].tls.sni"]
    assert "'_'" in message and "hyphen" in message


# ---- start-only keys on reload -------------------------------------------------------


def test_start_only_keys_changed_on_reload_are_named(tmp_path: Path) -> None:
    """A reload applies the intent; the DNS resolver, the listener's certificate
    files and the other process settings are read at start only: each changed one
    is named (and only the keys, never a value: some are secrets)."""
    running = settings({})
    files = Pki(tmp_path).server_files(clients=False)
    tls = {"cert_file": str(files.cert_file), "key_file": str(files.key_file)}
    changed = settings(
        {"dns_servers": ["127.0.0.1:5353"], "dns_refresh_interval": 5, "tls": tls},
        {"ROUTER_ADMIN_TOKEN": "s3cret"},
    )
    assert start_only_changes(running, changed) == [
        "router.dns_servers",
        "router.dns_refresh_interval",
        "router.admin_token",
        "router.tls",
    ]
    assert start_only_changes(running, settings({"max_retries": 1})) == []
    new_intent = dataclasses.replace(running.intent, services=())
    assert start_only_changes(running, dataclasses.replace(running, intent=new_intent)) == []


async def test_a_reload_that_changes_a_start_only_key_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start = local_settings()
    path = config_file(start, tmp_path / "router_config.yaml")
    async with running_controller(start, config_path=path) as controller:
        document = yaml.safe_load(path.read_text())
        document["router"]["dns_refresh_interval"] = 7
        path.write_text(yaml.safe_dump(document))
        with caplog.at_level(logging.WARNING):
            assert await controller.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("router.dns_refresh_interval" in w and "restart" in w for w in warnings), warnings
