"""Read back what the proxies see: per-backend counters from each Envoy's admin.

`GET /clusters?format=json` lists, per cluster, every host with its hostname
(our backend name, see translate/endpoints.py) and counters such as
`cx_active`, `rq_active`, `rq_total`. Envoy writes the numbers as strings and
leaves zeros out (docs/envoy-notes.md); here every missing counter reads as 0.

Promises: every read is bounded by a short timeout, proxies are read
concurrently, and a proxy that cannot be read is reported with the reason in
`ProxyStats.error`; it never makes the caller hang or fail.

`AdminReader` keeps one HTTP session across reads, so a read reuses its
keep-alive connection to each Envoy admin instead of connecting anew: on
loopback a `GET /clusters` then takes about 0.5 ms instead of 0.8 ms, a traffic
reading about 1.4 ms instead of 2.0 ms (bench/README.md, admin change). A
connection Envoy closed meanwhile is retried once on a new one (aiohttp does
that for a GET on a reused connection). `read_proxies` / `read_traffic_of`
are the one-shot forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp

from xds_server.xds.status import ProxyStatus

READ_TIMEOUT_S = 1.0
CLUSTERS_PATH = "/clusters?format=json"


@dataclass(frozen=True)
class HostStats:
    """One host of one cluster as one Envoy reports it."""

    cluster: str
    hostname: str
    address: str
    counters: Mapping[str, int] = field(default_factory=dict)
    health: Mapping[str, Any] = field(default_factory=dict)

    def get(self, counter: str) -> int:
        return self.counters.get(counter, 0)


@dataclass(frozen=True)
class ProxyStats:
    """Everything read from one proxy, or why nothing could be read."""

    node_id: str
    envoy_admin: str | None
    hosts: tuple[HostStats, ...] = ()
    error: str | None = None


def parse_clusters(document: object) -> tuple[HostStats, ...]:
    """Every host of every cluster in a `/clusters?format=json` document."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return tuple(
        _host(cluster.get("name", ""), host)
        for cluster in document.get("cluster_statuses", [])
        for host in cluster.get("host_statuses", [])
    )


def _host(cluster: str, host: Mapping[str, Any]) -> HostStats:
    socket = host.get("address", {}).get("socket_address", {})
    return HostStats(
        cluster=cluster,
        hostname=host.get("hostname", ""),
        address=f"{socket.get('address', '')}:{socket.get('port_value', '')}",
        counters={s["name"]: int(s.get("value", 0)) for s in host.get("stats", []) if "name" in s},
        health=host.get("health_status", {}),
    )


async def read_proxy(
    session: aiohttp.ClientSession, node_id: str, envoy_admin: str | None
) -> ProxyStats:
    """One proxy's hosts; any failure (no address, refused, timeout, junk) is reported."""
    if not envoy_admin:
        return ProxyStats(node_id, envoy_admin, error="no admin_address in node metadata")
    try:
        async with session.get(f"http://{envoy_admin}{CLUSTERS_PATH}") as response:
            text = await response.text()
            if response.status != 200:
                return ProxyStats(node_id, envoy_admin, error=f"HTTP {response.status}")
        return ProxyStats(node_id, envoy_admin, hosts=parse_clusters(json.loads(text)))
    except TimeoutError:
        return ProxyStats(node_id, envoy_admin, error="no answer within the read timeout")
    except (aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError) as error:
        return ProxyStats(node_id, envoy_admin, error=f"{type(error).__name__}: {error}")


async def read_proxies(
    proxies: Iterable[ProxyStatus], timeout_s: float = READ_TIMEOUT_S
) -> list[ProxyStats]:
    """Read every given proxy concurrently; the whole call takes at most ~timeout_s."""
    async with one_shot(timeout_s) as reader:
        return await reader.hosts(proxies)


class ProxyReading(Protocol):
    """What `per_backend` and `unreadable` need: a ProxyStats or a TrafficReading."""

    @property
    def node_id(self) -> str: ...
    @property
    def envoy_admin(self) -> str | None: ...
    @property
    def hosts(self) -> tuple[HostStats, ...]: ...
    @property
    def error(self) -> str | None: ...


def per_backend(
    stats: Sequence[ProxyReading], counter: str, backends: Iterable[str]
) -> dict[str, int]:
    """`counter` per backend name, summed over proxies; 0 for a backend none reports.

    Matching is by hostname, which the translator sets to the backend name.
    """
    totals = dict.fromkeys(sorted(backends), 0)
    for proxy in stats:
        for host in proxy.hosts:
            if host.hostname in totals:
                totals[host.hostname] += host.get(counter)
    return totals


def unreadable(stats: Sequence[ProxyReading]) -> list[dict[str, str | None]]:
    """The proxies that could not be read, and why (for API answers)."""
    return [
        {"node_id": p.node_id, "envoy_admin": p.envoy_admin, "error": p.error}
        for p in stats
        if p.error is not None
    ]


# --- what the traffic sampler reads (xds_server/traffic) ----------------------------------

# Cluster-level figures that no per-host counter has: every request answered for
# the cluster (once per client request, retries not double counted), the 5xx
# among those answers, the requests Envoy refused itself (queue overflow, the
# concurrency limit: one 503 counts in exactly one of the two overflow counters;
# no healthy host), and the upstream response-time histogram.
CLUSTER_COUNTERS = (
    "upstream_rq_completed",
    "upstream_rq_5xx",
    "upstream_rq_pending_overflow",
    "upstream_rq_active_overflow",
    "upstream_cx_none_healthy",
)
RQ_TIME = "upstream_rq_time"
# The OpenAI front door's per-model routes (translate/openai.py) have route
# stats of their own: answers, 5xx answers and upstream time per model, streamed
# answers apart. Read into the same (key, figure) map as the clusters, keyed
# ROUTE_KEY + the route's stat prefix: no service (cluster) name holds a ':'.
ROUTE_KEY = "route:"
ROUTE_COUNTERS = ("upstream_rq_completed", "upstream_rq_5xx")
_ROUTE_FILTER = rf"vhost\.[^.]+\.route\.openai_[a-z]+_\w+\.({'|'.join((*ROUTE_COUNTERS, RQ_TIME))})"
_CLUSTER_FILTER = rf"cluster\.[^.]+\.({'|'.join((*CLUSTER_COUNTERS, RQ_TIME))})"
_STATS_FILTER = rf"^({_CLUSTER_FILTER}|{_ROUTE_FILTER})$"
# usedonly: a stat never written since Envoy (re)created it is left out, which halves
# the cost of this GET (0.45 -> 0.23 ms on loopback); it reads as absent, i.e. as
# a counter that starts from 0 (traffic.py), which is what it is.
STATS_PATH = "/stats/prometheus?" + urlencode({"filter": _STATS_FILTER}) + "&usedonly"
# last_updated changes exactly when Envoy (re)builds a cluster, which gives every
# host of it fresh counters starting at 0 (docs/envoy-notes.md).
VERSIONS_PATH = "/config_dump?resource=dynamic_active_clusters&mask=cluster.name,last_updated"
_SAMPLE = re.compile(r"^envoy_cluster_(\w+)\{([^}]*)\} (\S+)$")
_ROUTE_SAMPLE = re.compile(r"^envoy_vhost_route_(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class TrafficReading:
    """One proxy's counters at one moment, or why they could not be read."""

    node_id: str
    envoy_admin: str | None
    hosts: tuple[HostStats, ...] = ()
    # (cluster, counter) -> value; the histogram as RQ_TIME + "_sum" / "_count" (ms)
    clusters: Mapping[tuple[str, str], float] = field(default_factory=dict)
    built: Mapping[str, str] = field(default_factory=dict)  # cluster -> last_updated
    error: str | None = None


def parse_cluster_stats(text: str) -> dict[tuple[str, str], float]:
    """(cluster, counter) -> value from Envoy's Prometheus text, and (ROUTE_KEY +
    route, counter) for the front door's route stats; other lines are ignored."""
    wanted = {*CLUSTER_COUNTERS, f"{RQ_TIME}_sum", f"{RQ_TIME}_count"}
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            _route_sample(line, values)
            continue
        if match.group(1) not in wanted:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        if "envoy_cluster_name" in labels:
            values[(labels["envoy_cluster_name"], match.group(1))] = float(match.group(3))
    return values


def _route_sample(line: str, values: dict[tuple[str, str], float]) -> None:
    """Route stats: Envoy's Prometheus output tags upstream_rq_5xx as
    upstream_rq_xx{envoy_response_code_class="5"}."""
    match = _ROUTE_SAMPLE.match(line)
    if match is None:
        return
    name, labels = match.group(1), dict(_LABEL.findall(match.group(2)))
    if name == "upstream_rq_xx":
        name = "upstream_rq_5xx" if labels.get("envoy_response_code_class") == "5" else ""
    wanted = {"upstream_rq_completed", "upstream_rq_5xx", f"{RQ_TIME}_sum", f"{RQ_TIME}_count"}
    if name in wanted and "envoy_route" in labels:
        values[(ROUTE_KEY + labels["envoy_route"], name)] = float(match.group(3))


def parse_cluster_builds(document: object) -> dict[str, str]:
    """cluster -> last_updated from a masked `/config_dump` of the active clusters."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return {
        entry["cluster"]["name"]: str(entry.get("last_updated", ""))
        for entry in document.get("configs", [])
        if "name" in entry.get("cluster", {})
    }


async def read_traffic(
    session: aiohttp.ClientSession, node_id: str, envoy_admin: str | None
) -> TrafficReading:
    """Hosts, cluster counters and cluster build times of one proxy, read concurrently."""
    if not envoy_admin:
        return TrafficReading(node_id, envoy_admin, error="no admin_address in node metadata")
    base = f"http://{envoy_admin}"
    try:
        hosts, stats, builds = await asyncio.gather(
            _get(session, base + CLUSTERS_PATH),
            _get(session, base + STATS_PATH),
            _get(session, base + VERSIONS_PATH),
        )
        return TrafficReading(
            node_id,
            envoy_admin,
            hosts=parse_clusters(json.loads(hosts)),
            clusters=parse_cluster_stats(stats),
            built=parse_cluster_builds(json.loads(builds)),
        )
    except TimeoutError:
        return TrafficReading(node_id, envoy_admin, error="no answer within the read timeout")
    except (aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError) as error:
        return TrafficReading(node_id, envoy_admin, error=f"{type(error).__name__}: {error}")


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        text = await response.text()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status} from {url}")
        return text


async def read_traffic_of(
    proxies: Iterable[ProxyStatus], timeout_s: float = READ_TIMEOUT_S
) -> list[TrafficReading]:
    """`read_traffic` of every given proxy concurrently, bounded by ~timeout_s."""
    async with one_shot(timeout_s) as reader:
        return await reader.traffic(proxies)


class AdminReader:
    """Reads Envoy admins through one kept session (module docstring: why).

    The session opens at the first read (it needs the running loop); after
    `aclose` every read opens and closes a session of its own, so a late read
    at shutdown still answers and leaves nothing open."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)  # per request
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def hosts(self, proxies: Iterable[ProxyStatus]) -> list[ProxyStats]:
        """`GET /clusters` of every given proxy, concurrently."""
        async with self._using() as session:
            reads = (read_proxy(session, p.node_id, p.envoy_admin) for p in proxies)
            return list(await asyncio.gather(*reads))

    async def traffic(self, proxies: Iterable[ProxyStatus]) -> list[TrafficReading]:
        """`read_traffic` of every given proxy, concurrently."""
        async with self._using() as session:
            reads = (read_traffic(session, p.node_id, p.envoy_admin) for p in proxies)
            return list(await asyncio.gather(*reads))

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._closed:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                yield session
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        yield self._session


@contextlib.asynccontextmanager
async def one_shot(timeout_s: float = READ_TIMEOUT_S) -> AsyncIterator[AdminReader]:
    """A reader whose session lives only for the `async with`."""
    reader = AdminReader(timeout_s)
    try:
        yield reader
    finally:
        await reader.aclose()
