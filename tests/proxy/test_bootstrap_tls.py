"""The bootstrap for an Envoy that reaches the xDS port over mutual TLS:
`make_bootstrap(tls=...)` and `xds-server bootstrap --client-cert --client-key --ca`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tls_support import Pki
from xds_server import cli
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import XdsClientTls, make_bootstrap
from xds_server.proxy.envoy_process import validate_bootstrap

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _transport_socket(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    socket: dict[str, Any] = cluster["transport_socket"]
    return socket


def test_the_xds_cluster_presents_the_certificate_and_checks_the_controllers() -> None:
    tls = XdsClientTls("/etc/envoy/node.crt", "/etc/envoy/node.key", "/etc/envoy/ca.pem")
    replicas = [SocketAddress("10.0.0.1", 18000), SocketAddress("10.0.0.2", 18000)]
    bootstrap = make_bootstrap(
        node_id="n", xds=replicas, envoy_admin=SocketAddress("127.0.0.1", 9901), tls=tls
    )
    socket = _transport_socket(bootstrap)
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"] == UPSTREAM_TLS
    common = context["common_tls_context"]
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/etc/envoy/node.crt"},
            "private_key": {"filename": "/etc/envoy/node.key"},
        }
    ]
    validation = common["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/envoy/ca.pem"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.2"}},
    ]
    assert common["alpn_protocols"] == ["h2"]


def test_without_tls_the_bootstrap_is_plaintext_as_before() -> None:
    bootstrap = make_bootstrap(
        node_id="n",
        xds=SocketAddress("127.0.0.1", 18000),
        envoy_admin=SocketAddress("127.0.0.1", 9901),
    )
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert "transport_socket" not in cluster


async def test_envoy_accepts_the_tls_bootstrap(tmp_path: Path) -> None:
    """`envoy --mode validate` on real certificate files."""
    pki = Pki(tmp_path)
    client = pki.client_files("n")
    tls = XdsClientTls(str(client.cert_file), str(client.key_file), str(client.ca_file))
    bootstrap = make_bootstrap(
        node_id="n",
        xds=SocketAddress("127.0.0.1", 18000),
        envoy_admin=SocketAddress("127.0.0.1", 9901),
        tls=tls,
    )
    await validate_bootstrap(bootstrap)


def test_cli_bootstrap_with_client_certificate_flags(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--env-file", "/dev/null", "bootstrap", "--node-id", "n"]
    argv += ["--client-cert", "c.crt", "--client-key", "c.key", "--ca", "ca.pem"]
    assert cli.main(argv) == 0
    bootstrap = yaml.safe_load(capsys.readouterr().out)
    common = _transport_socket(bootstrap)["typed_config"]["common_tls_context"]
    assert common["tls_certificates"][0]["certificate_chain"] == {"filename": "c.crt"}
    assert common["validation_context"]["trusted_ca"] == {"filename": "ca.pem"}


def test_cli_bootstrap_wants_cert_and_key_together(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--env-file", "/dev/null", "bootstrap", "--node-id", "n", "--client-cert", "c.crt"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "xds-server bootstrap: --client-cert and --client-key go together"
    )


def test_cli_bootstrap_for_a_tls_controller_needs_the_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROUTER_XDS_TLS (a JSON object) says the controller speaks TLS: a plaintext
    bootstrap would never connect, so none is printed."""
    monkeypatch.setenv("ROUTER_XDS_TLS", '{"cert_file": "s.crt", "key_file": "s.key"}')
    assert cli.main(["--env-file", "/dev/null", "bootstrap", "--node-id", "n"]) == 2
    assert "router.xds_tls is set" in capsys.readouterr().err


def test_the_demo_stays_plaintext(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its Envoy is bootstrapped without certificates: with router.xds_tls set it
    would never connect, so the demo says so instead of starting."""
    monkeypatch.setenv("ROUTER_XDS_TLS", '{"cert_file": "s.crt", "key_file": "s.key"}')
    assert cli.main(["--env-file", "/dev/null", "demo"]) == 1
    assert "unset router.xds_tls" in capsys.readouterr().err
