"""Per-name watches: a change reaches the streams that
subscribe to it and nothing else; streams it does not concern are not woken."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tests.factories import intent_of
from tests.xds.conftest import DeltaClient, Harness, XdsClient, names_of, poll
from tests.xds.test_delta import names
from xds_server.cache import Snapshot, SnapshotCache, build_snapshot
from xds_server.model.intent import Health
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.translate import translate
from xds_server.xds.stream import XdsStream

SERVICES = ["svc-0", "svc-1", "svc-2"]


async def publish_health(xds: Harness, health: Mapping[str, Health]) -> Snapshot:
    """Publish the harness's intent under these health verdicts."""
    assert xds.intent is not None
    xds.generation += 1
    snapshot = build_snapshot(translate(xds.intent, health), xds.generation, xds.cache.snapshot)
    await xds.cache.publish(snapshot)
    return snapshot


def streams_of(xds: Harness, node_id: str) -> list[XdsStream[Any, Any]]:
    return [s for s in xds.engine.open_streams if s.info and s.info.node_id == node_id]


def wakeups(xds: Harness) -> dict[str, int]:
    """Writer wake-ups per node, once every writer has answered what woke it."""
    counts: dict[str, int] = {}
    for stream in xds.engine.open_streams:
        if stream.info is not None:
            counts[stream.info.node_id] = counts.get(stream.info.node_id, 0) + stream.wakeups
    return counts


async def idle(xds: Harness) -> None:
    await poll(lambda: not any(s.pending for s in xds.engine.open_streams))


def responses_sent(xds: Harness) -> dict[str, int]:
    counts = dict.fromkeys(SERVICES, 0)
    for node, _type_url, _names in xds.recorder.sent():
        counts[node] += 1
    return counts


def acks(xds: Harness, node_id: str) -> int:
    proxy = xds.registry.proxies.get(node_id)
    return 0 if proxy is None else proxy.type(ENDPOINT).acks


# ---- the cache alone -----------------------------------------------------------


async def test_cache_calls_only_watchers_of_a_changed_name() -> None:
    """A health flip on svc-1 calls the watcher of svc-1 (with EDS as the type
    concerned) and neither the watcher of svc-0 nor the CDS wildcard watcher; a
    name that appears wakes the watcher that waited for it
    (docs/xds-protocol.md rule 12); a closed watcher is never called again."""
    cache = SnapshotCache()
    calls: dict[str, list[tuple[frozenset[str], int]]] = {
        k: [] for k in ("svc-0", "svc-1", "cds", "svc-3", "closed")
    }

    def recorder(key: str) -> Callable[[frozenset[str], int], None]:
        return lambda types, generation: calls[key].append((types, generation))

    watches = {key: cache.watch(recorder(key)) for key in calls}
    for key in ("svc-0", "svc-1", "svc-3", "closed"):
        watches[key].subscribe(ENDPOINT, {key.replace("closed", "svc-0")}, wildcard=False)
    watches["cds"].subscribe(CLUSTER, set(), wildcard=True)
    watches["closed"].close()
    intent = intent_of(3)
    await cache.publish(build_snapshot(translate(intent), 1))
    assert all(len(calls[k]) == 1 for k in ("svc-0", "svc-1", "cds", "svc-3"))  # the first

    flipped = {"svc-1-b0": Health.UNHEALTHY}
    await cache.publish(build_snapshot(translate(intent, flipped), 2, cache.snapshot))
    assert calls["svc-1"][1:] == [(frozenset({ENDPOINT}), 2)]
    assert [len(calls[k]) for k in ("svc-0", "cds", "svc-3")] == [1, 1, 1]

    await cache.publish(build_snapshot(translate(intent_of(4), flipped), 3, cache.snapshot))
    assert calls["svc-3"][1:] == [(frozenset({ENDPOINT}), 3)]
    assert calls["cds"][1:] == [(frozenset({CLUSTER}), 3)]
    assert len(calls["svc-0"]) == len(calls["svc-1"]) - 1 == 1
    assert calls["closed"] == []
    assert cache.watcher_count == 4


# ---- SotW and Delta streams ------------------------------------------------------


async def test_sotw_health_flip_reaches_only_its_subscriber(xds: Harness) -> None:
    """Three SotW streams each subscribe to one CLA; a health flip on svc-1
    sends exactly one response with the one resource to svc-1's stream; the
    other two get nothing and their writers are not even woken."""
    await xds.publish(intent_of(3))
    clients: dict[str, XdsClient] = {}
    for name in SERVICES:
        clients[name] = client = xds.client(node_id=name)
        client.send(ENDPOINT, [name])
        client.ack(await client.recv_type(ENDPOINT))
    for client in clients.values():
        await xds.settled(client)
    await idle(xds)
    before, sent_before = wakeups(xds), responses_sent(xds)

    await publish_health(xds, {"svc-1-b0": Health.UNHEALTHY})
    response = await clients["svc-1"].recv_type(ENDPOINT)
    assert names_of(response) == ["svc-1"]
    await clients["svc-0"].expect_silence(0.3)
    await clients["svc-2"].expect_silence(0.0)

    after, sent_after = wakeups(xds), responses_sent(xds)
    assert {n: after[n] - before[n] for n in SERVICES} == {"svc-0": 0, "svc-1": 1, "svc-2": 0}
    assert {n: sent_after[n] - sent_before[n] for n in SERVICES} == {
        "svc-0": 0,
        "svc-1": 1,
        "svc-2": 0,
    }


async def test_delta_health_flip_reaches_only_its_subscriber(xds: Harness) -> None:
    """The same over Delta: one response naming one resource, to one stream;
    the others are neither answered nor woken."""
    await xds.publish(intent_of(3))
    clients: dict[str, DeltaClient] = {}
    for name in SERVICES:
        clients[name] = client = DeltaClient(xds, node_id=name)
        client.send(ENDPOINT, subscribe=[name])
        client.ack(await client.recv())
        await poll(lambda name=name: acks(xds, name) == 1)  # type: ignore[misc]
    await idle(xds)
    before, sent_before = wakeups(xds), responses_sent(xds)

    await publish_health(xds, {"svc-1-b0": Health.UNHEALTHY})
    response = await clients["svc-1"].recv()
    assert names(response) == ["svc-1"] and list(response.removed_resources) == []
    await clients["svc-0"].expect_silence(0.3)
    await clients["svc-2"].expect_silence(0.0)

    after, sent_after = wakeups(xds), responses_sent(xds)
    assert {n: after[n] - before[n] for n in SERVICES} == {"svc-0": 0, "svc-1": 1, "svc-2": 0}
    assert {n: sent_after[n] - sent_before[n] for n in SERVICES} == {
        "svc-0": 0,
        "svc-1": 1,
        "svc-2": 0,
    }
    for client in clients.values():
        await client.close()


async def test_deleted_name_wakes_its_delta_subscriber(xds: Harness) -> None:
    """A removal is a change of that name: its Delta subscriber is woken and
    told (docs/xds-protocol.md rule 19); a subscriber of another name is not
    woken."""
    await xds.publish(intent_of(3))
    clients = {name: DeltaClient(xds, node_id=name) for name in ("svc-0", "svc-2")}
    for name, client in clients.items():
        client.send(ENDPOINT, subscribe=[name])
        client.ack(await client.recv())
        await poll(lambda name=name: acks(xds, name) == 1)  # type: ignore[misc]
    await idle(xds)
    before = wakeups(xds)

    await xds.publish(intent_of(2))  # svc-2 is gone
    response = await clients["svc-2"].recv()
    assert list(response.removed_resources) == ["svc-2"]
    await clients["svc-0"].expect_silence(0.3)
    assert wakeups(xds)["svc-0"] == before["svc-0"]
    for client in clients.values():
        await client.close()


async def test_unconcerned_streams_count_as_applied(xds: Harness) -> None:
    """A stream that a change does not concern is current without being
    woken: waiting until a flip is applied ends as soon as its subscriber
    ACKs, even with per-type CDS and EDS streams of another node."""
    await xds.publish(intent_of(3))
    other_cds = xds.client("cds", node_id="other")
    other_eds = xds.client("eds", node_id="other")
    subscriber = xds.client(node_id="svc-1")
    other_cds.send(CLUSTER)
    other_cds.ack(await other_cds.recv_type(CLUSTER))
    other_eds.send(ENDPOINT, ["svc-0"])
    other_eds.ack(await other_eds.recv_type(ENDPOINT))
    subscriber.send(ENDPOINT, ["svc-1"])
    subscriber.ack(await subscriber.recv_type(ENDPOINT))
    for client in (other_cds, other_eds, subscriber):
        await xds.settled(client)
    await idle(xds)
    quiet_before = wakeups(xds)["other"]

    snapshot = await publish_health(xds, {"svc-1-b1": Health.UNHEALTHY})
    subscriber.ack(await subscriber.recv_type(ENDPOINT))
    assert await xds.registry.wait_until_applied(snapshot.generation, timeout_s=2) == []
    assert xds.registry.lagging(snapshot.generation) == []
    assert wakeups(xds)["other"] == quiet_before
    assert len(streams_of(xds, "other")) == 2


def test_the_watch_index_forgets_a_type_nobody_watches() -> None:
    """docs/xds-protocol.md rule 35 at the cache: a type's entries leave the
    watch index with its last watcher, named or wildcard; they used to stay,
    an empty entry per type URL ever watched."""
    cache = SnapshotCache()
    for i in range(100):
        watch = cache.watch(lambda types, generation: None)
        watch.subscribe(f"type.googleapis.com/test.T{i}", {"a"}, wildcard=True)
        watch.subscribe(f"type.googleapis.com/test.T{i}", set(), wildcard=False)
        watch.subscribe(f"type.googleapis.com/test.U{i}", {"a"}, wildcard=True)
        watch.close()
    assert cache._index._named == {} and cache._index._wildcard == {}
    assert cache.watcher_count == 0
