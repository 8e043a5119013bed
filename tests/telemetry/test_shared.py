"""Shared routing metrics and failover events across replicas: the pure merge rule,
and the Redis ledgers and event log against a private redis-server (no Envoy)."""

from __future__ import annotations

import asyncio
import dataclasses

from redis.asyncio import Redis

from tests.support import eventually
from xds_server.telemetry.envoy_stats import HostStats, TrafficReading
from xds_server.telemetry.failover import FailoverEvent, merge
from xds_server.telemetry.shared import RedisEventLog, RedisLedger


def test_one_failover_timed_by_two_replicas_is_one_event() -> None:
    """Same id: one event, successful only if both were, timed to the slower replica;
    events without an id are never merged."""
    fast = FailoverEvent("health_check", "svc-a", 10.0, True, 12.0, id="x")
    slow = FailoverEvent("health_check", "svc-a", 11.0, True, 30.0, id="x")
    late = FailoverEvent("health_check", "svc-a", 12.0, False, None, id="x")
    assert merge([fast, slow]) == [dataclasses.replace(slow, at=11.0)]
    assert merge([fast, slow, late]) == [dataclasses.replace(late, failover_time_ms=None)]
    plain = FailoverEvent("failover_test", "svc-a", 1.0, True, 5.0)
    assert merge([plain, plain]) == [plain, plain]


def reading(node: str, total: int, completed: float, built: str = "t0") -> TrafficReading:
    host = HostStats("svc", "svc-a", "127.0.0.1:1001", {"rq_total": total})
    clusters = {("svc", "upstream_rq_completed"): completed}
    return TrafficReading(node, "x", hosts=(host,), clusters=clusters, built={"svc": built})


def completed(ledger: RedisLedger) -> float:
    return ledger.book.cluster_total("upstream_rq_completed")


async def test_ledgers_share_totals_without_double_counting(redis_client: Redis) -> None:
    """Replica A counts an Envoy to 10; the Envoy moves to replica B, which continues
    from A's last reading (10 -> 25 adds 15, not 25); a stale reading A took before
    is dropped; a restarted replica (a new ledger) continues too, across an Envoy
    counter reset (25 -> 4: Envoy restarted, 4 more)."""
    a, b = RedisLedger(redis_client, "t"), RedisLedger(redis_client, "t")
    await a.apply([reading("envoy", 10, 10)], {"svc"}, 1.0, 1000.0)
    await b.apply([reading("envoy", 25, 25)], {"svc"}, 1.0, 1002.0)
    await a.apply([reading("envoy", 20, 20)], {"svc"}, 2.0, 1001.0)  # taken before B's
    assert completed(b) == 25 and completed(a) == 25
    restarted = RedisLedger(redis_client, "t")
    await restarted.apply([reading("envoy", 4, 4, built="t1")], {"svc"}, 1.0, 1003.0)
    assert completed(restarted) == 29
    assert restarted.book.backends[("svc", "svc-a")].rq_total == 29
    assert restarted.book.first_reading_at == 1000.0


async def test_failover_events_outlive_the_log_that_wrote_them(redis_client: Redis) -> None:
    """Events written by one log (one controller) are read by a new one (after a
    restart), and the same failover recorded by two replicas counts once."""
    first = RedisEventLog(redis_client, "t")
    writer = asyncio.create_task(first.run())
    event = FailoverEvent("health_check", "svc-a", 10.0, True, 12.0, id="svc-a@1")
    first.add(event)
    first.add(dataclasses.replace(event, failover_time_ms=20.0))  # another replica's timing
    first.add(FailoverEvent("failover_test", "svc-b", 11.0, False, None, id="t@2"))
    await eventually(lambda: _stored(redis_client, 3), timeout_s=2)
    writer.cancel()
    again = RedisEventLog(redis_client, "t")
    events = await again.events()
    assert [(e.backend, e.failover_time_ms) for e in events] == [("svc-a", 20.0), ("svc-b", None)]


async def _stored(redis_client: Redis, count: int) -> bool:
    return bool(await redis_client.llen("t:failover:events") == count)
