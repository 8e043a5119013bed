"""Incremental publishing: the translator's memory and the
snapshot's reuse of serialized resources save work and change nothing else."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable

import pytest

from tests.factories import intent_of, service
from xds_server.cache import Snapshot, SnapshotCache, build_snapshot
from xds_server.model.edits import update_backend, with_policies, with_service
from xds_server.model.intent import Health, Intent, Protocol, SocketAddress, Strategy
from xds_server.pipeline.publisher import Publisher
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.store.memory import MemoryStore
from xds_server.translate import translate
from xds_server.translate.memo import Memory

Health_ = dict[str, Health]
Step = Callable[[Intent, Health_], tuple[Intent, Health_]]

STEPS: list[tuple[str, Step]] = [
    ("health flip", lambda i, h: (i, {**h, "svc-1-b0": Health.UNHEALTHY})),
    ("flip back", lambda i, h: (i, {**h, "svc-1-b0": Health.HEALTHY})),
    ("weight", lambda i, h: (update_backend(i, "svc-2", "svc-2-b1", weight=5), h)),
    ("weighted", lambda i, h: (with_service(i, "svc-2", strategy=Strategy.WEIGHTED), h)),
    ("port", lambda i, h: (update_backend(i, "svc-0", "svc-0-b0", port=1), h)),
    ("route", lambda i, h: (with_service(i, "svc-0", routes=("/zero/", "/z/")), h)),
    ("policies", lambda i, h: (with_policies(i, max_retries=1), h)),
    ("listen", lambda i, h: (dataclasses.replace(i, listen=SocketAddress("0.0.0.0", 8001)), h)),
    ("add", lambda i, h: (dataclasses.replace(i, services=(*i.services, service(7))), h)),
    ("remove", lambda i, h: (dataclasses.replace(i, services=i.services[1:]), h)),
    ("rebuilt equal", lambda i, h: (dataclasses.replace(i, services=tuple(i.services)), dict(h))),
]


def contents(snapshot: Snapshot) -> dict[str, dict[str, bytes]]:
    return {
        t: {n: r.packed.value for n, r in s.resources.items()} for t, s in snapshot.types.items()
    }


def with_grpc_service(intent: Intent) -> Intent:
    """svc-1 served to proxyless gRPC clients too (the overlay of translate.grpc)."""
    return with_service(intent, "svc-1", protocol=Protocol.GRPC)


@pytest.mark.parametrize(
    "base", [intent_of(4), with_grpc_service(intent_of(4))], ids=["http", "grpc"]
)
def test_incremental_builds_equal_full_rebuilds(base: Intent) -> None:
    """After every kind of change, the snapshot built with the translator's
    memory and the previous snapshot has the bytes and versions of one built
    from scratch (determinism, docs/xds-protocol.md rule 27), with and without
    a gRPC service."""
    intent, health = base, {"svc-1-b0": Health.HEALTHY}
    memory = Memory()
    previous = build_snapshot(translate(intent, health, memory), 1)
    for generation, (label, step) in enumerate(STEPS, start=2):
        intent, health = step(intent, health)
        incremental = build_snapshot(translate(intent, health, memory), generation, previous)
        full = build_snapshot(translate(intent, health), generation)
        assert incremental.versions() == full.versions(), label
        assert contents(incremental) == contents(full), label
        previous = incremental


def test_memory_holds_only_the_current_intent() -> None:
    """The memory forgets removed services: it stays the size of the intent."""
    memory = Memory()
    translate(intent_of(5), {}, memory)
    translate(intent_of(2), {}, memory)
    assert len(memory.assignments) == 2 and len(memory.service_routes) == 2
    assert len(memory.clusters) == 3  # and the admin cluster


async def second_snapshot(
    change: Callable[[MemoryStore, Health_], Awaitable[object]], first: Intent | None = None
) -> Snapshot:
    """Publish `first` (intent_of(3)), apply `change` to the store or the health
    verdicts, publish again; returns the second snapshot."""
    health: Health_ = {}
    store, cache = MemoryStore(first or intent_of(3)), SnapshotCache()
    publisher = Publisher(store, cache, lambda: health)
    await publisher.publish_now()
    await change(store, health)
    await publisher.publish_now()
    assert cache.snapshot is not None and cache.snapshot.generation == 2
    return cache.snapshot


async def test_health_flip_serializes_only_the_changed_assignment() -> None:
    """A health flip re-serializes one ClusterLoadAssignment and
    reuses every other serialized resource."""

    async def flip(_store: MemoryStore, health: Health_) -> None:
        health["svc-1-b0"] = Health.UNHEALTHY

    snapshot = await second_snapshot(flip)
    assert dict(snapshot.serialized) == {CLUSTER: (), ENDPOINT: ("svc-1",), LISTENER: (), ROUTE: ()}


@pytest.mark.parametrize("flipped", ["svc-1-b0", "svc-2-b0"])
async def test_with_a_grpc_service_a_health_flip_serializes_one_assignment(flipped: str) -> None:
    """svc-1 is a gRPC service: a flip of its backend re-serializes its one
    (gRPC-shaped) assignment, a flip elsewhere leaves every gRPC resource alone."""

    async def flip(_store: MemoryStore, health: Health_) -> None:
        health[flipped] = Health.UNHEALTHY

    snapshot = await second_snapshot(flip, with_grpc_service(intent_of(3)))
    changed = flipped.rsplit("-", 1)[0]
    assert dict(snapshot.serialized) == {CLUSTER: (), ENDPOINT: (changed,), LISTENER: (), ROUTE: ()}


async def test_port_change_leaves_routes_and_listeners_alone() -> None:
    """A backend's port changes its service's endpoints; the route
    configuration, equal after the change, is not serialized again (the
    service's cluster is rebuilt, to equal bytes, and so concerns no client)."""

    async def move(store: MemoryStore, _health: Health_) -> object:
        return await store.update(lambda i: update_backend(i, "svc-1", "svc-1-b0", port=1))

    snapshot = await second_snapshot(move)
    assert snapshot.serialized[ROUTE] == () and snapshot.serialized[LISTENER] == ()
    assert snapshot.serialized[ENDPOINT] == ("svc-1",)


async def test_checks_publish_nothing_and_leave_publishes_equal_to_full_rebuilds() -> None:
    """Publisher.check (admin validation) builds with the publisher's memory. The
    intents it checks are not published, and a publish after checking another
    intent still has the versions of a full rebuild, after every kind of change."""
    health: Health_ = {"svc-1-b0": Health.HEALTHY}
    store, cache = MemoryStore(intent_of(4)), SnapshotCache()
    publisher = Publisher(store, cache, lambda: health)
    await publisher.publish_now()
    for (label, checked), (_, applied) in itertools.pairwise(STEPS):
        generation = cache.generation
        publisher.check(checked(store.intent, health)[0])
        assert cache.generation == generation, label
        intent, after = applied(store.intent, health)
        health.clear()
        health.update(after)
        await store.put(intent)
        await publisher.publish_now()
        assert cache.snapshot is not None
        full = build_snapshot(translate(intent, health), cache.generation)
        assert cache.snapshot.versions() == full.versions(), label


async def test_the_publish_of_a_checked_intent_is_the_checked_snapshot() -> None:
    """check() builds the snapshot; the publish of that very intent, with the same
    health and the same current snapshot, publishes it instead of building again.
    Anything it was built from changed (here: a health verdict), it is rebuilt,
    equal to a full rebuild. Either way the publish reports one build."""
    health: Health_ = {"svc-1-b0": Health.HEALTHY}
    store, cache = MemoryStore(intent_of(4)), SnapshotCache()
    builds: list[float] = []
    publisher = Publisher(store, cache, lambda: health, on_build=builds.append)
    await publisher.publish_now()
    for flip in (False, True):
        strategy = Strategy.RANDOM if flip else Strategy.MAGLEV
        intent = with_service(store.intent, "svc-2", strategy=strategy)
        publisher.check(intent)
        checked = publisher._checked  # what the check built
        assert checked is not None and checked.intent is intent
        if flip:
            health["svc-1-b0"] = Health.UNHEALTHY
        await store.put(intent)
        await publisher.publish_now()
        assert (cache.snapshot is checked.snapshot) is not flip
        # The build the publish reports (metrics) is the check's when it reused it.
        assert (builds[-1] == checked.build_s) is not flip
        full = build_snapshot(translate(intent, health), cache.generation)
        assert cache.snapshot is not None and cache.snapshot.versions() == full.versions()
