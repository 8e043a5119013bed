"""Read back what the proxies see: per-backend counters from each Envoy's admin.

`GET /clusters?format=json` lists, per cluster, every host with its hostname
(our backend name, see translate/endpoints.py) and counters such as
`cx_active`, `rq_active`, `rq_total`. Envoy writes the numbers as strings and
leaves zeros out (docs/envoy-notes.md); here every missing counter reads as 0.

Promises: every read is bounded by a short timeout (the whole body included)
and by a size cap (MAX_BODY_BYTES), proxies are read concurrently, and a proxy
that cannot be read is reported with the reason in `ProxyStats.error`; it never
makes the caller hang, fail or grow without bound. Only `http://<ip>:<port>`
plus this module's fixed paths is ever dialled: the address comes from the
proxy's node metadata, which the xDS layer checked (docs/xds-protocol.md rule
34), and is parsed again here before any connection.

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
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import aiohttp

from xds_server.errors import XdsServerError
from xds_server.model.values import to_ip_socket_address
from xds_server.xds.status import ProxyStatus

READ_TIMEOUT_S = 1.0
CLUSTERS_PATH = "/clusters?format=json"
# Envoy's /clusters?format=json weighs about 920 bytes per host with idle
# counters: 13.9 MB for 5,000 services of 3 backends each (measured on Envoy
# 1.40). Busy counters add a few hundred bytes per host; this leaves room for
# that twice over. Larger answers are refused, never held.
MAX_BODY_BYTES = 32 * 1024 * 1024
# At most this many GETs of one reader are under way at once, so the bodies it
# holds stay under MAX_CONCURRENT_GETS x MAX_BODY_BYTES however many proxies
# (genuine or not) are connected. Local Envoys answer in milliseconds: a
# reading of 100 of them queues for a few milliseconds.
MAX_CONCURRENT_GETS = 8
_READ_CHUNK = 64 * 1024


class AdminAnswerTooLarge(XdsServerError):
    """An Envoy admin answer outgrew MAX_BODY_BYTES; the read was abandoned."""


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


_UNREADABLE = (
    aiohttp.ClientError,
    AdminAnswerTooLarge,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
)


def admin_base_url(envoy_admin: str) -> str:
    """`http://<ip>:<port>` of an admin address; InvalidValue (a ValueError) for
    anything that is not exactly an IP and a port (a path, a user, a host name)."""
    return f"http://{to_ip_socket_address(envoy_admin)}"


async def read_body(response: aiohttp.ClientResponse, max_bytes: int = MAX_BODY_BYTES) -> str:
    """The body as text, or AdminAnswerTooLarge as soon as it passes `max_bytes`
    (a declared length says so before anything is read)."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise AdminAnswerTooLarge(f"answer of {declared} bytes is larger than {max_bytes}")
    # Chunks joined once at the end: a growing buffer would be copied at every
    # reallocation and hold up to twice its size meanwhile.
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise AdminAnswerTooLarge(f"answer larger than {max_bytes} bytes; not read further")
            chunks.append(chunk)
        return b"".join(chunks).decode(response.get_encoding())
    finally:
        # Whatever ends the read, the bytes go now: an exception's traceback keeps
        # this frame alive until the garbage collector finds it, and the
        # collector counts objects, not bytes (a few chunks may weigh 32 MiB).
        chunks.clear()


async def read_proxy(
    session: aiohttp.ClientSession,
    node_id: str,
    envoy_admin: str | None,
    *,
    refused: str | None = None,
    max_bytes: int = MAX_BODY_BYTES,
    slots: asyncio.Semaphore | None = None,
) -> ProxyStats:
    """One proxy's hosts; any failure (no address, refused, timeout, junk) is reported.
    `refused`: why the xDS layer believed no admin address for this proxy;
    `slots`: shared by the reads that may not all run at once."""
    if not envoy_admin:
        return ProxyStats(node_id, envoy_admin, error=refused or _NO_ADDRESS)
    try:
        url = admin_base_url(envoy_admin) + CLUSTERS_PATH
        text = await _get(session, url, max_bytes, slots)
        return ProxyStats(node_id, envoy_admin, hosts=parse_clusters(json.loads(text)))
    except TimeoutError:
        return ProxyStats(node_id, envoy_admin, error="no answer within the read timeout")
    except _UNREADABLE as error:
        return ProxyStats(node_id, envoy_admin, error=_reason(error))


_NO_ADDRESS = "no admin_address in node metadata"


def _reason(error: Exception) -> str:
    if isinstance(error, AdminAnswerTooLarge):
        return str(error)
    return f"{type(error).__name__}: {error}"


async def read_proxies(
    proxies: Iterable[ProxyStatus], timeout_s: float = READ_TIMEOUT_S
) -> list[ProxyStats]:
    """Read every given proxy concurrently (MAX_CONCURRENT_GETS at a time); each GET
    takes at most ~timeout_s."""
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
    session: aiohttp.ClientSession,
    node_id: str,
    envoy_admin: str | None,
    *,
    refused: str | None = None,
    max_bytes: int = MAX_BODY_BYTES,
    slots: asyncio.Semaphore | None = None,
) -> TrafficReading:
    """Hosts, cluster counters and cluster build times of one proxy, read concurrently."""
    if not envoy_admin:
        return TrafficReading(node_id, envoy_admin, error=refused or _NO_ADDRESS)
    try:
        base = admin_base_url(envoy_admin)
        hosts, stats, builds = await _all_or_none(
            _get(session, base + path, max_bytes, slots)
            for path in (CLUSTERS_PATH, STATS_PATH, VERSIONS_PATH)
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
    except _UNREADABLE as error:
        return TrafficReading(node_id, envoy_admin, error=_reason(error))


async def _all_or_none(gets: Iterable[Coroutine[Any, Any, str]]) -> list[str]:
    """Every GET's body; the first failure cancels the others (a reading is of no
    use without all three) and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(get) for get in gets]
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _get(
    session: aiohttp.ClientSession, url: str, max_bytes: int, slots: asyncio.Semaphore | None
) -> str:
    """The session's total timeout covers the body too: it runs until the
    response is released, which is after read_body. It starts once a slot is
    free, so a queued GET is not timed out by the ones before it."""
    async with slots or contextlib.nullcontext(), session.get(url, allow_redirects=False) as got:
        if got.status != 200:
            raise ValueError(f"HTTP {got.status} from {url}")
        return await read_body(got, max_bytes)


async def read_traffic_of(
    proxies: Iterable[ProxyStatus], timeout_s: float = READ_TIMEOUT_S
) -> list[TrafficReading]:
    """`read_traffic` of every given proxy concurrently (MAX_CONCURRENT_GETS GETs at a
    time), each GET bounded by ~timeout_s."""
    async with one_shot(timeout_s) as reader:
        return await reader.traffic(proxies)


_Reading = TypeVar("_Reading", covariant=True)


class _Read(Protocol[_Reading]):
    """read_proxy or read_traffic: one proxy's reading (an unreadable one carries its error)."""

    def __call__(
        self,
        session: aiohttp.ClientSession,
        node_id: str,
        envoy_admin: str | None,
        *,
        refused: str | None = ...,
        slots: asyncio.Semaphore | None = ...,
    ) -> Awaitable[_Reading]: ...


class AdminReader:
    """Reads Envoy admins through one kept session (module docstring: why).

    The session opens at the first read (it needs the running loop); after
    `aclose` every read opens and closes a session of its own, so a late read
    at shutdown still answers and leaves nothing open."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)  # per request, body included
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_GETS)

    async def hosts(self, proxies: Iterable[ProxyStatus]) -> list[ProxyStats]:
        """`GET /clusters` of every given proxy, concurrently."""
        return await self._each(read_proxy, proxies)

    async def traffic(self, proxies: Iterable[ProxyStatus]) -> list[TrafficReading]:
        """`read_traffic` of every given proxy, concurrently."""
        return await self._each(read_traffic, proxies)

    async def _each(self, read: _Read[_Reading], proxies: Iterable[ProxyStatus]) -> list[_Reading]:
        async with self._using() as session:
            reads = (
                read(
                    session,
                    p.node_id,
                    p.envoy_admin,
                    refused=p.envoy_admin_problem,
                    slots=self._slots,
                )
                for p in proxies
            )
            return list(await asyncio.gather(*reads))

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._closed:
            async with self._new_session() as session:
                yield session
            return
        if self._session is None:
            self._session = self._new_session()
        yield self._session

    def _new_session(self) -> aiohttp.ClientSession:
        # Envoy's admin does not compress; a compressed answer is not inflated
        # behind the size cap's back, it is junk.
        return aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)


@contextlib.asynccontextmanager
async def one_shot(timeout_s: float = READ_TIMEOUT_S) -> AsyncIterator[AdminReader]:
    """A reader whose session lives only for the `async with`."""
    reader = AdminReader(timeout_s)
    try:
        yield reader
    finally:
        await reader.aclose()
