"""Routing totals and failover events in Redis, so the metrics survive a restart.

Layout (`prefix` as the intent's, xds_server/store/redis.py):

    {prefix}:traffic:totals        hash: totals that only grow (JSON field names)
    {prefix}:traffic:since         wall clock of the first reading ever counted
    {prefix}:traffic:proxy:{node}  hash {rev, body}: that proxy's last reading
    {prefix}:failover:events       list of JSON events, the last KEPT_EVENTS

Who counts what (the double-counting question): each replica reads only the
proxies connected to it (an Envoy holds one ADS stream, so one replica at a
time), and the reference every growth is measured from, the proxy's last
reading, is in Redis, not in the replica. So a restarted controller, or the
replica an Envoy moved to, continues from the last reading any replica counted
instead of counting Envoy's counters again from zero. A reading is counted by
one Lua script that checks the reference is still the one the growth was
measured from (compare-and-set on `rev`), adds the growth (HINCRBYFLOAT) and
stores the new reference, all at once: two replicas reading the same Envoy
during a handover never count one request twice, and a reading older than the
stored reference is dropped (it would look like a counter reset).

Outage: a reading that cannot be stored is not counted and its reference is
not advanced, so the next reading after the outage counts the growth in full;
only requests served between a reading and an Envoy counter reset that both
fall in the outage are lost. The report shows the last totals loaded. Events
wait in memory (bounded) and are written when Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from xds_server.errors import DependencyUnavailable
from xds_server.redis_io import as_text, backoff_s, redis_errors
from xds_server.telemetry.envoy_stats import TrafficReading
from xds_server.telemetry.failover import KEPT_EVENTS, FailoverEvent, merge
from xds_server.telemetry.traffic import (
    FORGET_PROXY_S,
    BackendTotals,
    Growth,
    Key,
    ProxyBaseline,
    TrafficBook,
    measure,
)

log = logging.getLogger("xds_server.redis_metrics")


MAX_ATTEMPTS = 10  # compare-and-set rounds for one reading (only a handover contends)


BACKEND, CLUSTER, FAILURE = "b", "c", "f"  # the kinds of total fields


# KEYS: the proxy's reference hash, the totals hash. ARGV: expected rev ("" = none),
# new rev, new reference JSON, its expiry in ms, the number of increments, then
# (field, amount) pairs to add, then (field, wall clock) pairs to raise to at least.
# Returns 1 when counted, 0 when the reference moved meanwhile.
COUNT_READING = """
local rev = redis.call('HGET', KEYS[1], 'rev') or ''
if rev ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  local current = tonumber(redis.call('HGET', KEYS[2], ARGV[i]))
  if not current or current < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
return 1
"""


# KEYS: the events list. ARGV: how many to keep, then the events (JSON).
APPEND_EVENTS = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
return 1
"""


class RedisLedger:
    """A Ledger (telemetry/sampler.py) whose totals and references are in Redis."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.book = TrafficBook()  # a copy of Redis's totals, reloaded at every sample
        self._client = client
        self._prefix = prefix
        self._totals = f"{prefix}:traffic:totals"
        self._since = f"{prefix}:traffic:since"
        self._count = client.register_script(COUNT_READING)
        self._warned = False

    async def apply(
        self, readings: Sequence[TrafficReading], clusters: set[str], at: float, wall: float
    ) -> None:
        try:
            for reading in readings:
                if reading.error is None:
                    await self._count_one(reading, clusters, wall)
            await self._load(wall)
        except DependencyUnavailable as error:
            if not self._warned:
                log.warning("routing totals not stored, counted when Redis is back: %s", error)
            self._warned = True
            return  # the book keeps the last totals loaded
        self._warned = False
        self.book.mark(at, wall)

    async def _count_one(self, reading: TrafficReading, clusters: set[str], wall: float) -> None:
        key = f"{self._prefix}:traffic:proxy:{reading.node_id}"
        for _ in range(MAX_ATTEMPTS):
            rev, baseline = await self._reference(key)
            if baseline.read_at > wall:
                return  # another replica counted a newer reading of this proxy
            growth, after = measure(reading, baseline, clusters, wall)
            if await self._store(key, rev, after, growth, wall):
                return
        log.warning("reading of %s not counted: its reference kept moving", reading.node_id)

    async def _reference(self, key: str) -> tuple[str, ProxyBaseline]:
        async with redis_errors("reading a proxy's last reading"):
            rev, body = await self._client.hmget(key, ["rev", "body"])
        if rev is None or body is None:
            return "", ProxyBaseline()
        return as_text(rev), decode_baseline(as_text(body))

    async def _store(
        self, key: str, rev: str, after: ProxyBaseline, growth: Growth, wall: float
    ) -> bool:
        increments = growth_fields(growth)
        failures = [(field_name(FAILURE, *b), wall) for b in sorted(growth.failed)]
        args: list[str | float | int] = [rev, str(int(rev or 0) + 1), encode_baseline(after)]
        args += [int(FORGET_PROXY_S * 1000), len(increments)]
        for name, value in [*increments, *failures]:
            args += [name, repr(value)]
        async with redis_errors("counting a reading"):
            counted = await self._count(keys=[key, self._totals], args=args)
        return bool(counted)

    async def _load(self, wall: float) -> None:
        async with redis_errors("loading the routing totals"):
            await self._client.set(self._since, repr(wall), nx=True)
            since = await self._client.get(self._since)
            fields = await self._client.hgetall(self._totals)
        backends, clusters = decode_totals({as_text(k): as_text(v) for k, v in fields.items()})
        self.book.load(backends, clusters, float(since) if since is not None else None)


def growth_fields(growth: Growth) -> list[tuple[str, float]]:
    """The non-zero increments of one reading, as totals hash fields."""
    fields = [(field_name(BACKEND, *k), v) for k, v in growth.backends.items() if v]
    fields += [(field_name(CLUSTER, *k), v) for k, v in growth.clusters.items() if v]
    return fields


def field_name(kind: str, *parts: str) -> str:
    """JSON: names may contain any character, and parsing back is unambiguous."""
    return json.dumps([kind, *parts], separators=(",", ":"))


def decode_totals(
    fields: dict[str, str],
) -> tuple[dict[tuple[str, str], BackendTotals], dict[tuple[str, str], float]]:
    backends: dict[tuple[str, str], BackendTotals] = {}
    clusters: dict[tuple[str, str], float] = {}
    for name, text in fields.items():
        kind, *parts = json.loads(name)
        value = float(text)
        if kind == BACKEND:
            cluster, host, counter = parts
            backends.setdefault((cluster, host), BackendTotals()).add(counter, value)
        elif kind == FAILURE:
            backends.setdefault((parts[0], parts[1]), BackendTotals()).last_failure_at = value
        elif kind == CLUSTER:
            clusters[(parts[0], parts[1])] = value
    return backends, clusters


def encode_baseline(baseline: ProxyBaseline) -> str:
    last = [[*key, value] for key, value in baseline.last.items()]
    return json.dumps({"at": baseline.read_at, "built": dict(baseline.built), "last": last})


def decode_baseline(text: str) -> ProxyBaseline:
    body = json.loads(text)
    last: dict[Key, float] = {tuple(item[:-1]): float(item[-1]) for item in body["last"]}
    return ProxyBaseline(last, dict(body["built"]), float(body["at"]))


class RedisEventLog:
    """An EventLog (failover.py) in a Redis list; shared by replicas, kept across restarts."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._key = f"{prefix}:failover:events"
        self._append = client.register_script(APPEND_EVENTS)
        self._pending: deque[FailoverEvent] = deque(maxlen=KEPT_EVENTS)  # not written yet
        self._known: list[FailoverEvent] = []  # the last list read, served in an outage
        self._wake = asyncio.Event()

    def add(self, event: FailoverEvent) -> None:
        self._pending.append(event)
        self._wake.set()

    async def events(self) -> list[FailoverEvent]:
        try:
            async with redis_errors("reading failover events"):
                texts = await self._client.lrange(self._key, 0, -1)
            self._known = [e for e in (decode_event(as_text(t)) for t in texts) if e is not None]
        except DependencyUnavailable:
            pass  # the last events read, and the ones waiting to be written
        # A write in flight may be in both lists; merge() takes identical events once.
        return merge([*self._known, *self._pending])

    async def run(self) -> None:
        """Write pending events until cancelled; in an outage retry with backoff."""
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
                attempt = 0
            except DependencyUnavailable as error:
                if attempt == 0:
                    log.warning("failover events not stored yet: %s", error)
                attempt += 1
                await asyncio.sleep(backoff_s(attempt))
                self._wake.set()

    async def _flush(self) -> None:
        batch = list(self._pending)
        if not batch:
            return
        async with redis_errors("storing failover events"):
            await self._append(
                keys=[self._key], args=[KEPT_EVENTS, *(encode_event(e) for e in batch)]
            )
        for event in batch:  # events added meanwhile stay pending
            if self._pending and self._pending[0] is event:
                self._pending.popleft()


def encode_event(event: FailoverEvent) -> str:
    return json.dumps(
        {
            "id": event.id,
            "source": event.source,
            "backend": event.backend,
            "at": event.at,
            "successful": event.successful,
            "failover_time_ms": event.failover_time_ms,
        }
    )


def decode_event(text: str) -> FailoverEvent | None:
    """None for an entry this version cannot read (skipped, never a failed report)."""
    try:
        body: dict[str, Any] = json.loads(text)
        return FailoverEvent(
            source=str(body["source"]),
            backend=str(body["backend"]),
            at=float(body["at"]),
            successful=bool(body["successful"]),
            failover_time_ms=body["failover_time_ms"],
            id=str(body.get("id", "")),
        )
    except (ValueError, KeyError, TypeError) as error:
        log.warning("skipping an unreadable failover event in Redis: %s", error)
        return None
