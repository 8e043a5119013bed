"""The bootstrap for an Envoy that reaches the controller by DNS name:
`make_bootstrap(xds=XdsHost(...))` and `xds-server bootstrap --xds-host NAME[:PORT]`,
plaintext, one-way TLS (`--ca` alone) and mutual TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tls_support import Pki
from xds_server import cli
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import (
    DNS_FAILURE_REFRESH,
    DNS_REFRESH,
    XdsClientTls,
    XdsHost,
    make_bootstrap,
    parse_xds_host,
)
from xds_server.proxy.envoy_process import validate_bootstrap

DNS_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"
ADMIN = SocketAddress("127.0.0.1", 9901)
BASE = ["--env-file", "/dev/null", "bootstrap", "--node-id", "n"]


def _cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    return cluster  # type: ignore[no-any-return]


def _tls_context(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return _cluster(bootstrap)["transport_socket"]["typed_config"]  # type: ignore[no-any-return]


def _by_name(tls: XdsClientTls | None = None) -> dict[str, Any]:
    return make_bootstrap(node_id="n", xds=XdsHost("controller", 18000), envoy_admin=ADMIN, tls=tls)


def test_a_name_makes_a_dns_cluster_that_envoy_re_resolves() -> None:
    """Strict DNS discovery (every address an endpoint), IPv4 first, refreshed
    every DNS_REFRESH whatever the record's TTL; the endpoint is the name."""
    cluster = _cluster(_by_name())
    assert "type" not in cluster  # cluster_type and type are one oneof
    extension = cluster["cluster_type"]
    assert extension["name"] == "envoy.cluster.dns"
    assert extension["typed_config"] == {
        "@type": DNS_CLUSTER,
        "dns_refresh_rate": DNS_REFRESH,
        "dns_failure_refresh_rate": DNS_FAILURE_REFRESH,
        "respect_dns_ttl": False,
        "dns_lookup_family": "V4_PREFERRED",
        "all_addresses_in_single_endpoint": False,
    }
    [locality] = cluster["load_assignment"]["endpoints"]
    [endpoint] = locality["lb_endpoints"]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    assert socket == {"address": "controller", "port_value": 18000}
    assert cluster["connect_timeout"] == "1s"
    assert "transport_socket" not in cluster


def test_a_name_gets_the_fast_ads_reconnect_one_ip_does_not() -> None:
    """The name may point at a restarted controller elsewhere: the lost stream is
    retried after 0.1-1 s. One IP keeps the bootstrap it always had."""

    def back_off(bootstrap: dict[str, Any]) -> object:
        [service] = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
        return service["envoy_grpc"].get("retry_policy")

    assert back_off(_by_name()) == {
        "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}
    }
    one_ip = make_bootstrap(node_id="n", xds=SocketAddress("127.0.0.1", 18000), envoy_admin=ADMIN)
    assert back_off(one_ip) is None
    assert _cluster(one_ip)["type"] == "STATIC"


def test_over_mutual_tls_the_name_is_the_sni_and_the_checked_san() -> None:
    tls = XdsClientTls("/certs/envoy.crt", "/certs/envoy.key", "/certs/ca.pem")
    context = _tls_context(_by_name(tls))
    assert context["sni"] == "controller"
    common = context["common_tls_context"]
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/certs/envoy.crt"},
            "private_key": {"filename": "/certs/envoy.key"},
        }
    ]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": "/certs/ca.pem"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "controller"}}],
    }
    assert common["alpn_protocols"] == ["h2"]


def test_one_way_tls_checks_the_controller_and_presents_nothing() -> None:
    context = _tls_context(_by_name(XdsClientTls.one_way("/certs/ca.pem")))
    common = context["common_tls_context"]
    assert "tls_certificates" not in common
    assert common["validation_context"]["trusted_ca"] == {"filename": "/certs/ca.pem"}
    assert context["sni"] == "controller"


def test_replicas_on_one_host_need_its_ip_san_once() -> None:
    replicas = [SocketAddress("127.0.0.1", 18000), SocketAddress("127.0.0.1", 18001)]
    bootstrap = make_bootstrap(
        node_id="n", xds=replicas, envoy_admin=ADMIN, tls=XdsClientTls.one_way("ca.pem")
    )
    validation = _tls_context(bootstrap)["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    assert "sni" not in _tls_context(bootstrap)  # STATIC by IP: no name to send


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("controller", XdsHost("controller", 18000)),
        ("Controller.Router.svc:19000", XdsHost("controller.router.svc", 19000)),
        ("localhost:1", XdsHost("localhost", 1)),
    ],
)
def test_xds_host_takes_a_name_and_an_optional_port(text: str, expected: XdsHost) -> None:
    assert parse_xds_host(text, 18000) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.0.0.1", "is an IP address"),
        ("[::1]:18000", "is an IP address"),
        ("::1", "is an IP address"),
        ("controller:0", "the port must be a number from 1 to 65535"),
        ("controller:65536", "the port must be a number from 1 to 65535"),
        ("controller:http", "the port must be a number from 1 to 65535"),
        ("xds_controller", "holds '_'"),
        ("controller.", "a trailing dot is not accepted"),
        ("", "it is empty"),
    ],
)
def test_xds_host_refuses_what_is_no_name_or_port(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^--xds-host ") as raised:
        parse_xds_host(text, 18000)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


async def test_envoy_accepts_the_by_name_bootstraps(tmp_path: Path) -> None:
    """`envoy --mode validate` on real certificate files: mutual, one-way, plaintext."""
    pki = Pki(tmp_path)
    client = pki.client_files("n")
    mutual = XdsClientTls(str(client.cert_file), str(client.key_file), str(client.ca_file))
    for tls in (mutual, XdsClientTls.one_way(str(pki.ca_file)), None):
        await validate_bootstrap(_by_name(tls))


def run_cli(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    code = cli.main([*BASE, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_xds_host_uses_the_configured_xds_port(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_XDS_ADDRESS", "127.0.0.1:18555")
    code, out, _ = run_cli(capsys, "--xds-host", "controller")
    assert code == 0
    socket = _cluster(yaml.safe_load(out))["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert socket["endpoint"]["address"]["socket_address"] == {
        "address": "controller",
        "port_value": 18555,
    }


def test_cli_ca_alone_is_one_way_tls(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--xds-host", "controller:18000", "--ca", "ca.pem")
    assert code == 0
    context = _tls_context(yaml.safe_load(out))
    assert "tls_certificates" not in context["common_tls_context"]
    assert context["sni"] == "controller"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--client-cert", "c.crt"], "--client-cert and --client-key go together"),
        (["--client-key", "c.key", "--ca", "ca.pem"], "--client-cert and --client-key go together"),
        (
            ["--client-cert", "c.crt", "--client-key", "c.key"],
            "--client-cert and --client-key need --ca (the controller's CA)",
        ),
        (["--xds-host", "10.0.0.1"], "--xds-host '10.0.0.1' is an IP address"),
        (["--xds-host", "controller:x"], "the port must be a number from 1 to 65535"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *flags)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("xds-server bootstrap: ") and message in line


def test_cli_a_controller_asking_for_client_certificates_needs_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """router.xds_tls.client_ca_file: one-way TLS would be refused at the handshake."""
    monkeypatch.setenv(
        "ROUTER_XDS_TLS",
        '{"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "ca.pem"}',
    )
    code, _, err = run_cli(capsys, "--ca", "ca.pem")
    assert code == 2
    [line] = err.splitlines()
    assert "router.xds_tls.client_ca_file is set" in line
    monkeypatch.setenv("ROUTER_XDS_TLS", '{"cert_file": "s.crt", "key_file": "s.key"}')
    assert run_cli(capsys, "--ca", "ca.pem")[0] == 0  # no client CA: one-way suffices


def test_cli_output_writes_what_stdout_would_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flags = ["--xds-host", "controller", "--ca", "ca.pem"]
    code, shown, _ = run_cli(capsys, *flags)
    assert code == 0
    target = tmp_path / "bootstrap.yaml"
    code, out, err = run_cli(capsys, *flags, "--output", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == shown
    assert err.strip() == f"xds-server bootstrap: wrote {target}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bootstrap.yaml"]  # no staged file left
