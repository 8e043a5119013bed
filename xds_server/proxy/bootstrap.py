"""The Envoy bootstrap that points an Envoy at this xDS server (docs/envoy-notes.md,
"The ADS bootstrap").

Everything beyond the bootstrap comes over one ADS stream: CDS and LDS name ADS,
and the clusters and listeners they deliver name ADS for EDS and RDS in turn.

The xds_cluster dials IP literals (STATIC), or with `--xds-host` one DNS name
that Envoy resolves itself (`XdsHost`): a controller in compose or Kubernetes
is reached by its service name, whatever address it had after a restart.

`envoy/bootstrap-ads.yaml` and `envoy/bootstrap-delta.yaml` are generated from
`make_bootstrap`; a test keeps them equal. Regenerate them with
`python -m xds_server.proxy.bootstrap --write [DIR]` (DIR defaults to `envoy`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xds_server.model.edge import Edge
from xds_server.model.intent import SocketAddress
from xds_server.model.values import host_name_problem, is_ip
from xds_server.proxy.overload import exempt_admin, overload_manager

XDS_CLUSTER = "xds_cluster"
DEFAULT_NODE_ID = "envoy-local"
DEFAULT_XDS = SocketAddress("127.0.0.1", 18000)
DEFAULT_ENVOY_ADMIN = SocketAddress("127.0.0.1", 9901)
STATS_FLUSH_S = 1.0  # Envoy's stats flush (histograms), in seconds
# Envoy writes its access log (router.access_log) when 64 KiB are buffered or
# every --file-flush-interval-msec, 10 s by default: a quiet router's lines
# would show up to 10 s late. Every Envoy this project starts or documents
# runs with 1 s (docs/envoy-notes.md, "Access logs").
ACCESS_LOG_FLUSH_FLAGS = ("--file-flush-interval-msec", "1000")
SAMPLE_FILES = {"bootstrap-ads.yaml": False, "bootstrap-delta.yaml": True}  # name -> delta

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DNS_CLUSTER = "envoy.extensions.clusters.dns.v3.DnsCluster"
# How often Envoy re-resolves the controller's name, and how soon after a
# failed lookup: a restarted controller container may come back at another
# address, and the ADS stream should find it within seconds (Envoy's default
# is 5 s for both).
DNS_REFRESH = "2s"
DNS_FAILURE_REFRESH = {"base_interval": "0.5s", "max_interval": "2s"}
CONNECT_TIMEOUT = "1s"


@dataclass(frozen=True)
class XdsClientTls:
    """The files a proxy connects to the xDS server with over TLS: the CA that
    signed the controller's certificate and, for mutual TLS (router.xds_tls with
    client_ca_file, docs/xds-protocol.md rule 34), its own certificate (naming
    its node id) and key. Without them the TLS is one-way: the proxy checks the
    controller, the controller asks for no certificate."""

    cert_file: str | None
    key_file: str | None
    ca_file: str

    @classmethod
    def one_way(cls, ca_file: str) -> XdsClientTls:
        return cls(None, None, ca_file)


@dataclass(frozen=True)
class XdsHost:
    """The controller by DNS name (`xds-server bootstrap --xds-host NAME[:PORT]`).

    Envoy resolves the name itself and re-resolves it every DNS_REFRESH, so a
    controller that comes back at a new address (a restarted container) is
    found again. Over TLS the name is the SNI and the DNS SAN the controller's
    certificate must carry."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


def parse_xds_host(text: str, default_port: int) -> XdsHost:
    """`NAME` or `NAME:PORT`; ValueError saying what is wrong (one line)."""
    name, sep, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if sep and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"--xds-host {text!r}: the port must be a number from 1 to 65535")
    name = name.lower()
    if is_ip(name.strip("[]")) or is_ip(text):
        raise ValueError(
            f"--xds-host {text!r} is an IP address; it takes a DNS name "
            "(an IP goes in router.xds_address)"
        )
    problem = host_name_problem(name)
    if problem is not None:
        raise ValueError(f"--xds-host {text!r} is not a DNS name: {problem}")
    return XdsHost(name, int(port_text) if sep else default_port)


def make_bootstrap(
    *,
    node_id: str,
    xds: SocketAddress | Sequence[SocketAddress] | XdsHost,
    envoy_admin: SocketAddress,
    node_cluster: str = "xds-server",
    delta: bool = False,
    tls: XdsClientTls | None = None,
    edge: Edge | None = None,
    hds: bool = False,
) -> dict[str, Any]:
    """An ADS bootstrap for node `node_id` talking SotW (or Delta) gRPC to `xds`,
    over TLS with `tls` (mutual when it holds a certificate).

    `xds` is one controller or several replicas sharing one Redis, each an IP
    literal (a STATIC xds_cluster), or one DNS name (`XdsHost`: a DNS cluster
    with every address the name resolves to). With several replicas or a name,
    Envoy re-establishes a lost ADS stream after 0.1-1 s (not its default
    0.5-30 s), which reaches another replica or the name's new address.
    One IP address gives exactly the bootstrap it always gave.

    `edge` (default: the built-in edge settings) sets the overload manager's
    limits (proxy/overload.py); pass the intent's, `settings.intent.edge`.

    `hds`: Envoy also opens the Health Discovery Service stream to the same
    xds_cluster and runs the health checks the controller assigns it
    (router.health_checker envoy; docs/envoy-notes.md, "HDS").
    """
    replicas = [xds] if isinstance(xds, SocketAddress | XdsHost) else list(xds)
    if not replicas:
        raise ValueError("make_bootstrap needs at least one xDS address")
    fast_retry = len(replicas) > 1 or isinstance(xds, XdsHost)
    bootstrap: dict[str, Any] = {
        "node": {
            "id": node_id,
            "cluster": node_cluster,
            # The controller reads this proxy's stats from here (docs/envoy-notes.md).
            "metadata": {"admin_address": str(envoy_admin)},
        },
        "admin": exempt_admin({"address": _socket_address(envoy_admin)}),
        "overload_manager": overload_manager(edge or Edge()),
        # Histograms (the mean response time the routing metrics report) reach the
        # admin's /stats at each flush: every 1 s rather than the default 5 s.
        "stats_flush_interval": f"{STATS_FLUSH_S:g}s",
        "static_resources": {"clusters": [_xds_cluster(replicas, tls)]},
        "dynamic_resources": {
            "ads_config": _ads_config(delta, fast_retry=fast_retry),
            "cds_config": _via_ads(),
            "lds_config": _via_ads(),
        },
    }
    if hds:
        bootstrap["hds_config"] = _hds_config()
    return bootstrap


def _via_ads() -> dict[str, Any]:
    # A fresh dict each time: yaml.safe_dump writes shared objects as &anchors.
    return {"ads": {}, "resource_api_version": "V3"}


def _socket_address(address: SocketAddress | XdsHost) -> dict[str, Any]:
    host = address.name if isinstance(address, XdsHost) else address.host
    return {"socket_address": {"address": host, "port_value": address.port}}


def _xds_cluster(
    dialled: Sequence[SocketAddress | XdsHost], tls: XdsClientTls | None = None
) -> dict[str, Any]:
    """The controller's replicas by IP (STATIC), or its one name (`XdsHost`)."""
    endpoints = [{"endpoint": {"address": _socket_address(one)}} for one in dialled]
    by_name = any(isinstance(one, XdsHost) for one in dialled)
    cluster: dict[str, Any] = {"name": XDS_CLUSTER}
    cluster.update(_dns_discovery() if by_name else {"type": "STATIC"})
    cluster.update(
        {
            "connect_timeout": CONNECT_TIMEOUT,
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{"lb_endpoints": endpoints}],
            },
            # gRPC needs HTTP/2 to the upstream; the default would be HTTP/1.1.
            "typed_extension_protocol_options": {
                _HTTP_OPTIONS: {
                    "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                    "explicit_http_config": {"http2_protocol_options": _http2_keepalive()},
                }
            },
            # TCP keepalive notices a vanished peer even while HTTP/2 is quiet.
            "upstream_connection_options": {"tcp_keepalive": {}},
        }
    )
    if tls is not None:
        cluster["transport_socket"] = _client_tls(dialled, tls)
    return cluster


def _dns_discovery() -> dict[str, Any]:
    """Strict DNS discovery (every address of the name is an endpoint), in the
    DnsCluster extension's spelling: Envoy 1.40 deprecates the Cluster's own
    dns_refresh_rate and friends ("will be removed from Envoy soon"). IPv4 is
    asked first: compose and most Kubernetes networks are IPv4."""
    return {
        "cluster_type": {
            "name": "envoy.cluster.dns",
            "typed_config": {
                "@type": f"type.googleapis.com/{_DNS_CLUSTER}",
                "dns_refresh_rate": DNS_REFRESH,
                "dns_failure_refresh_rate": dict(DNS_FAILURE_REFRESH),
                "respect_dns_ttl": False,  # compose's DNS says 600 s
                "dns_lookup_family": "V4_PREFERRED",
                "all_addresses_in_single_endpoint": False,
            },
        }
    }


def _client_tls(dialled: Sequence[SocketAddress | XdsHost], tls: XdsClientTls) -> dict[str, Any]:
    """UpstreamTlsContext: our certificate (if any) for the controller to check,
    and the controller's checked against the CA and against what was dialled,
    as gRPC clients check it: an IP SAN for a STATIC xds_cluster, a DNS SAN
    and that name as SNI for `XdsHost`."""
    common: dict[str, Any] = {}
    if tls.cert_file is not None and tls.key_file is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": tls.cert_file},
                "private_key": {"filename": tls.key_file},
            }
        ]
    common["validation_context"] = {
        "trusted_ca": {"filename": tls.ca_file},
        # Replicas on one host (other ports) need its SAN once.
        "match_typed_subject_alt_names": _unique([_san_of(one) for one in dialled]),
    }
    common["alpn_protocols"] = ["h2"]
    context: dict[str, Any] = {"@type": f"type.googleapis.com/{_UPSTREAM_TLS}"}
    by_name = [one.name for one in dialled if isinstance(one, XdsHost)]
    if by_name:
        context["sni"] = by_name[0]
    context["common_tls_context"] = common
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _unique(sans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {(san["san_type"], san["matcher"]["exact"]): san for san in sans}
    return list(seen.values())


def _san_of(dialled: SocketAddress | XdsHost) -> dict[str, Any]:
    if isinstance(dialled, XdsHost):
        return {"san_type": "DNS", "matcher": {"exact": dialled.name}}
    return {"san_type": "IP_ADDRESS", "matcher": {"exact": dialled.host}}


def _http2_keepalive() -> dict[str, Any]:
    # A dead controller is noticed within interval + timeout and Envoy reconnects.
    # The gRPC server must accept pings this often without data
    # (grpc.http2.min_ping_interval_without_data_ms <= 60000), or it answers
    # GOAWAY "too_many_pings" after two strikes (gRPC default: one per 5 minutes).
    return {"connection_keepalive": {"interval": "60s", "timeout": "10s"}}


def _ads_config(delta: bool, *, fast_retry: bool = False) -> dict[str, Any]:
    envoy_grpc: dict[str, Any] = {"cluster_name": XDS_CLUSTER}
    if fast_retry:
        # EnvoyGrpc.retry_policy.retry_back_off governs re-establishing the xDS
        # stream. A short one is harmless with replicas: the next attempt usually
        # lands on a live one (the xds_cluster round-robins over them).
        envoy_grpc["retry_policy"] = {
            "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}
        }
    return {
        "api_type": "DELTA_GRPC" if delta else "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": envoy_grpc}],
        # The server keeps the node of the first request per stream (xDS protocol).
        "set_node_on_first_message_only": True,
    }


def _hds_config() -> dict[str, Any]:
    # Envoy retries a lost HDS stream on its own timer (measured with 1.40: every
    # 0.2-0.75 s, docs/envoy-notes.md "HDS"); EnvoyGrpc.retry_policy does not apply.
    return {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
    }


def render_bootstrap(bootstrap: dict[str, Any]) -> str:
    """YAML text of a bootstrap, keys in the order they were built."""
    return yaml.safe_dump(bootstrap, sort_keys=False, default_flow_style=False)


def sample_file_text(delta: bool) -> str:
    """The exact text of `envoy/bootstrap-ads.yaml` (or `-delta.yaml`)."""
    mode = "Delta (DELTA_GRPC)" if delta else "State-of-the-World (GRPC)"
    header = (
        f"# Envoy bootstrap for xds-server, {mode} ADS.\n"
        "# Generated by `python -m xds_server.proxy.bootstrap --write`; do not edit by hand\n"
        "# (tests/proxy/test_envoy_process.py fails when this file and make_bootstrap differ).\n"
        f"# Node {DEFAULT_NODE_ID}, xDS server {DEFAULT_XDS}, Envoy admin {DEFAULT_ENVOY_ADMIN}.\n"
    )
    bootstrap = make_bootstrap(
        node_id=DEFAULT_NODE_ID, xds=DEFAULT_XDS, envoy_admin=DEFAULT_ENVOY_ADMIN, delta=delta
    )
    return header + render_bootstrap(bootstrap)


def write_sample_files(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, delta in SAMPLE_FILES.items():
        path = directory / name
        path.write_text(sample_file_text(delta))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xds_server.proxy.bootstrap")
    parser.add_argument("--write", metavar="DIR", nargs="?", const="envoy", type=Path)
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(sample_file_text(delta=False))
        return 0
    for path in write_sample_files(args.write):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
