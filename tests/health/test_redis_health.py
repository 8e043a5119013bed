"""Shared health, below the controller: the pure rules (which record counts,
seeding) and the Redis scripts against a private redis-server (no Envoy)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from redis.asyncio import Redis

from tests.factories import one_service
from tests.support import eventually
from xds_server.health.checker import HealthChecker
from xds_server.health.shared import (
    CLAIM,
    HOLD,
    WRITE,
    HealthMirror,
    Record,
    decode_record,
    effective,
    encode_record,
)
from xds_server.health.verdict import BackendHealth, HealthPolicy, ProbeResult
from xds_server.model.intent import Backend, Health, Intent, Protocol, Service
from xds_server.store.memory import MemoryStore

A = Backend("svc-a", "127.0.0.1", 1001)
B = Backend("svc-b", "127.0.0.1", 1002)
INTENT = one_service(A, B)
TARGET_A = ("127.0.0.1", 1001, "/health")


def failed(at: float = 100.0) -> ProbeResult:
    return ProbeResult(ok=False, definitive=True, elapsed_s=0.002, at=at, error="HTTP 503")


def unhealthy(at: float = 100.0) -> BackendHealth:
    return BackendHealth(Health.UNHEALTHY, passes=0, failures=1, last=failed(at), since=at)


# --- which record counts ---------------------------------------------------------------


def test_a_record_counts_only_for_its_target_unless_held() -> None:
    """As one controller's checker: a backend moved to another address starts over
    (UNKNOWN), except while held by an experiment; gRPC backends are never probed."""
    records = {"svc-a": Record(TARGET_A, unhealthy()), "svc-b": Record(TARGET_A, unhealthy())}
    assert set(effective(INTENT, records, ())) == {"svc-a"}  # svc-b's record is elsewhere
    assert set(effective(INTENT, records, {"svc-b"})) == {"svc-a", "svc-b"}
    grpc = Intent(services=(Service("g", ("/g/",), (A,), protocol=Protocol.GRPC),))
    assert effective(grpc, records, ()) == {}


def test_records_round_trip_and_junk_is_skipped() -> None:
    """A record keeps verdict, counts, probe figures and target; an unreadable one is
    None (the backend stays UNKNOWN), never an exception in the follower."""
    record = decode_record(encode_record(TARGET_A, unhealthy()))
    assert record == Record(TARGET_A, unhealthy())
    assert decode_record('{"verdict": "sideways"}') is None


def test_records_keep_who_checked() -> None:
    """checked_by and the report times travel with the record (the report on every
    replica names the same checkers); a record written before them reads as none."""
    state = unhealthy()
    state.checked_by, state.reported_at = ("envoy-a", "envoy-b"), {"envoy-a": 5.0, "envoy-b": 6.0}
    assert decode_record(encode_record(TARGET_A, state)) == Record(TARGET_A, state)
    old = json.loads(encode_record(TARGET_A, unhealthy()))
    del old["checked_by"], old["reported_at"]
    decoded = decode_record(json.dumps(old))
    assert decoded is not None and decoded.state.checked_by == ()


def test_mirror_writes_every_verdict_before_observers_hear_and_keeps_on_an_empty_read() -> None:
    """Observers (failover timing) see the complete new verdicts; a change back to
    UNKNOWN removes the verdict; an empty full read (Redis lost its data) keeps them."""
    verdicts: dict[str, Health] = {}
    heard: list[tuple[str, dict[str, Health], float]] = []
    marks: list[int] = []

    class Ear:
        def probed(self, name: str, result: ProbeResult) -> None:
            raise AssertionError("the mirror reports verdicts, not probes")

        def verdict_changed(
            self, name: str, previous: Health, current: Health, result: ProbeResult
        ) -> None:
            heard.append((name, dict(verdicts), result.at))

    mirror = HealthMirror(lambda: INTENT, verdicts, lambda: marks.append(1), [Ear()])
    later = dataclasses.replace(unhealthy(100.0), last=failed(130.0))  # probed again since
    target_b = ("127.0.0.1", 1002, "/health")
    mirror.replace({"svc-a": Record(TARGET_A, later), "svc-b": Record(target_b, unhealthy())})
    both = {"svc-a": Health.UNHEALTHY, "svc-b": Health.UNHEALTHY}
    assert verdicts == both and len(marks) == 1
    assert [(n, seen) for n, seen, _ in heard] == [("svc-a", both), ("svc-b", both)]
    assert heard[0][2] == 100.0  # the time of the change, identical on every replica
    mirror.replace({})
    assert verdicts == both
    mirror.update({"svc-a": None})
    assert verdicts == {"svc-b": Health.UNHEALTHY}


async def test_a_seeded_checker_continues_the_thresholds() -> None:
    """A new prober starts from the shared record: an UNHEALTHY backend that answers
    again needs healthy_threshold passes (a fresh checker would pass it at once)."""
    passes: list[float] = []

    async def prober(backend: Backend) -> ProbeResult:
        passes.append(time.monotonic())
        return ProbeResult(ok=True, definitive=False, elapsed_s=0.001, at=time.time())

    seen: list[Health] = []
    policy = HealthPolicy(interval_s=0.05, timeout_s=0.01, healthy_threshold=3, jitter=0)
    checker = HealthChecker(
        MemoryStore(Intent(services=(Service("svc", ("/svc/",), (A,)),))),
        {},
        lambda: None,
        policy,
        prober=prober,
        on_state=lambda name: seen.append(checker.states[name].verdict),
        seed=lambda name, target: unhealthy() if target == TARGET_A else None,
    )
    task = asyncio.create_task(checker.run())
    await eventually(lambda: _true(len(seen) >= 3), timeout_s=2)
    task.cancel()
    assert seen[:3] == [Health.UNHEALTHY, Health.UNHEALTHY, Health.HEALTHY]


async def _true(value: bool) -> bool:
    return value


# --- the scripts against Redis ----------------------------------------------------------------


async def test_only_the_lease_holder_writes_and_held_backends_are_skipped(
    redis_client: Redis,
) -> None:
    """The prober lease is taken by one replica and renewed only by it; a replica
    that does not hold it writes nothing (the fence); a held backend's record is not
    written even by the holder, while any of its holds lasts; an expired lease can
    be taken by another."""
    claim, write, hold = map(redis_client.register_script, (CLAIM, WRITE, HOLD))
    lease, keys = "t:prober", ["t:prober", "t:records", "t:holds"]
    assert await claim(keys=[lease], args=["a", "300"]) == "a"
    assert await claim(keys=[lease], args=["b", "300"]) == "a"
    assert await write(keys=keys, args=["b", "t:ch", "svc-a", "from-b"]) == -1
    assert await write(keys=keys, args=["a", "t:ch", "svc-a", "one"]) == 1
    await hold(keys=["t:holds"], args=["svc-a/x1", "60000", "t:ch"])
    await hold(keys=["t:holds"], args=["svc-a/y1", "60000", "t:ch"])  # a second experiment
    assert await write(keys=keys, args=["a", "t:ch", "svc-a", "two", "svc-b", "b1"]) == 1
    assert await redis_client.hgetall("t:records") == {"svc-a": "one", "svc-b": "b1"}
    await hold(keys=["t:holds"], args=["svc-a/y1", "", "t:ch"])  # one released: still held
    assert await write(keys=keys, args=["a", "t:ch", "svc-a", "three"]) == 0
    await hold(keys=["t:holds"], args=["svc-a/x1", "", "t:ch"])  # both released
    assert await write(keys=keys, args=["a", "t:ch", "svc-a", ""]) == 1  # "" deletes
    assert await redis_client.hgetall("t:records") == {"svc-b": "b1"}
    await asyncio.sleep(0.4)  # a's lease expires unrenewed
    assert await claim(keys=[lease], args=["b", "300"]) == "b"
