"""A backend's `tls` in router_config.yaml: `true` or the mapping, every problem
with its field path in the same pass as the others, the CA's PEM text read into
the intent, and the loud warning of insecure_skip_verify."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.tls_support import Pki
from xds_server.errors import ConfigError
from xds_server.model.upstream_tls import UpstreamTls
from xds_server.settings import Settings, parse_settings

AT = "services[0].backends[0].tls"


def document(tls: object, *, address: str = "127.0.0.1", protocol: str = "http") -> object:
    backend = {"name": "llm-a", "address": address, "port": 443, "tls": tls}
    service: dict[str, object] = {"name": "llm", "protocol": protocol, "backends": [backend]}
    if protocol == "http":
        service["routes"] = ["/v1"]
    return {"services": [service]}


def parsed(tls: object, **where: str) -> Settings:
    return parse_settings(document(tls, **where), {}, "f")


def problems(tls: object, **where: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parsed(tls, **where)
    return [str(p) for p in error.value.problems]


def tls_of(settings: Settings) -> UpstreamTls | None:
    return settings.intent.backends()[0].tls


def test_no_tls_false_and_true() -> None:
    """Omitted or false: plaintext; true on an IP address: refused, as there is no
    host name to verify (a host name address is its own SNI: model/upstream_tls.py)."""
    assert tls_of(parsed(False)) is None
    plain = document(False)
    del plain["services"][0]["backends"][0]["tls"]  # type: ignore[index]
    assert parse_settings(plain, {}, "f").intent.backends()[0].tls is None
    assert problems(True) == [
        f"{AT}.sni: required: the address 127.0.0.1 is an IP address, so the certificate "
        "has no host name to be checked against; set the name it carries (or "
        "insecure_skip_verify)"
    ]


def test_true_with_a_sni_trusts_the_system_cas() -> None:
    """With a name to check, `{sni: ...}` is `true` plus the name: no CA read."""
    assert tls_of(parsed({"sni": "llm.example.com"})) == UpstreamTls(sni="llm.example.com")


def test_the_ca_file_is_read_into_the_intent(tmp_path: Path) -> None:
    """The CA's PEM text is what the translator inlines and the probes trust."""
    pki = Pki(tmp_path)
    tls = tls_of(parsed({"ca_file": str(pki.ca_file), "sni": "llm.test"}))
    assert tls is not None and tls.ca_pem == pki.ca_file.read_text()
    assert tls.ca_file == str(pki.ca_file)


def test_every_problem_of_the_files_has_its_path(tmp_path: Path) -> None:
    """Missing and non-PEM files, a certificate without its key and a pair that
    does not match are reported together, each at its own key."""
    pki = Pki(tmp_path)
    cert, key = pki.backend_files("client.test")
    other_cert, _ = pki.backend_files("other.test")
    missing = str(tmp_path / "nope.pem")
    assert problems({"ca_file": missing, "sni": "x.test", "client_cert_file": str(cert)}) == [
        f"{AT}.client_key_file: required with client_cert_file",
        f"{AT}.ca_file: cannot read {missing!r}: No such file or directory",
    ]
    assert problems({"sni": "x.test", "client_key_file": str(key)}) == [
        f"{AT}.client_cert_file: required with client_key_file"
    ]
    wrong_pair = {
        "ca_file": str(key),  # a key is no CA certificate
        "sni": "x.test",
        "client_cert_file": str(other_cert),
        "client_key_file": str(key),
    }
    found = problems(wrong_pair)
    assert [p.split(":")[0] for p in found] == [f"{AT}.ca_file", f"{AT}.client_cert_file"]
    assert "holds no PEM CA certificate" in found[0]
    assert "do not load as a PEM certificate and its key" in found[1]


def test_shapes_are_checked_with_their_paths() -> None:
    """A value that is neither boolean nor mapping, a bad sni, an unknown key."""
    assert problems("yes") == [f"{AT}: must be true, false or a mapping, got 'yes' (str)"]
    assert problems({"sni": "10.0.0.1", "insecure_skip_verify": "no", "ca_fil": "x"}) == [
        f"{AT}.ca_fil: unknown key; did you mean 'ca_file'?",
        f"{AT}.sni: must be a DNS host name (the certificate's SAN), got '10.0.0.1'",
        f"{AT}.insecure_skip_verify: must be true or false, got 'no' (str)",
    ]


def test_a_grpc_services_backend_cannot_have_tls() -> None:
    """Proxyless gRPC clients read the same cluster and would connect in plaintext."""
    assert problems({"sni": "g.test"}, protocol="grpc") == [
        f"{AT}: not supported on a grpc service's backends: its cluster is also served to "
        "proxyless gRPC clients, which would ignore it and connect in plaintext"
    ]


def test_tls_problems_come_with_the_others() -> None:
    """One pass: a bad port and a TLS problem in one ConfigError."""
    doc = document(True)
    doc["services"][0]["backends"][0]["port"] = 0  # type: ignore[index]
    with pytest.raises(ConfigError) as error:
        parse_settings(doc, {}, "f")
    paths = [p.path for p in error.value.problems]
    assert paths == ["services[0].backends[0].port", f"{AT}.sni"]


def test_insecure_skip_verify_is_logged_loudly_once_per_backend_and_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WARNING naming the backend, at each load; the IP needs no name then."""
    with caplog.at_level(logging.WARNING, logger="xds_server.settings"):
        settings = parsed({"insecure_skip_verify": True})
        parsed({"insecure_skip_verify": True})
    tls = tls_of(settings)
    assert tls is not None and tls.insecure_skip_verify
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("llm-a" in r.getMessage() and "NOT verified" in r.getMessage() for r in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xds_server.settings"):
        parsed({"sni": "llm.test"})
    assert caplog.records == []
