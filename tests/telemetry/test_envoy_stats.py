"""Reading Envoy's admin stats: /clusters JSON parsing, summing over proxies, bounded reads."""

from __future__ import annotations

import asyncio
import time

from xds_server.telemetry import envoy_stats

CLUSTERS_DOC = {
    "cluster_statuses": [
        {
            "name": "qdrant",
            "host_statuses": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 6333}},
                    "hostname": "qdrant-primary",
                    "stats": [
                        {"name": "cx_connect_fail"},
                        {"value": "5", "name": "cx_total"},
                        {"type": "GAUGE", "value": "3", "name": "cx_active"},
                        {"type": "GAUGE", "name": "rq_active"},
                        {"value": "10", "name": "rq_total"},
                    ],
                    "health_status": {"eds_health_status": "HEALTHY"},
                },
                {"hostname": "qdrant-secondary", "stats": [{"name": "cx_active"}]},
            ],
        }
    ]
}


def test_clusters_json_strings_and_omitted_zeros() -> None:
    """Envoy's string numbers become ints, omitted zeros read 0, hosts keep their cluster."""
    hosts = envoy_stats.parse_clusters(CLUSTERS_DOC)
    primary, secondary = hosts
    assert (primary.cluster, primary.hostname, primary.address) == (
        "qdrant",
        "qdrant-primary",
        "127.0.0.1:6333",
    )
    assert (primary.get("cx_active"), primary.get("rq_active"), primary.get("rq_total")) == (
        3,
        0,
        10,
    )
    assert secondary.get("cx_active") == 0 and secondary.get("never_reported") == 0


def test_per_backend_sums_over_proxies_and_ignores_unreadable_ones() -> None:
    """Counters are summed over proxies; unknown hostnames are ignored; a backend
    nobody reports reads 0; an unreadable proxy is listed with its error."""
    hosts = envoy_stats.parse_clusters(CLUSTERS_DOC)
    stats = [
        envoy_stats.ProxyStats("a", "127.0.0.1:1", hosts),
        envoy_stats.ProxyStats("b", "127.0.0.1:2", hosts),
        envoy_stats.ProxyStats("c", None, error="no admin_address in node metadata"),
    ]
    counts = envoy_stats.per_backend(stats, "cx_active", ["qdrant-primary", "mixtral"])
    assert counts == {"mixtral": 0, "qdrant-primary": 6}
    assert envoy_stats.unreadable(stats) == [
        {"node_id": "c", "envoy_admin": None, "error": "no admin_address in node metadata"}
    ]


async def test_read_proxies_is_bounded(silent_admin: str) -> None:
    """A silent admin and a closed port are reported within the read timeout."""
    from xds_server.xds.status import ProxyStatus

    closed = await _closed_port()
    proxies = [
        ProxyStatus("silent", "c", silent_admin, 0.0),
        ProxyStatus("closed", "c", f"127.0.0.1:{closed}", 0.0),
    ]
    started = time.monotonic()
    stats = await envoy_stats.read_proxies(proxies, timeout_s=0.3)
    assert time.monotonic() - started < 1.0
    assert [(s.node_id, s.hosts, s.error is not None) for s in stats] == [
        ("silent", (), True),
        ("closed", (), True),
    ]


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
