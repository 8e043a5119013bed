"""RedisStore against a real redis-server (no Envoy here); the codec it uses is
tested in tests/model/test_codec.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator

import pytest

from tests.factories import local_settings, moved, redis_settings
from tests.redis_support import RedisServer
from tests.support import eventually, finished
from xds_server.app import Controller
from xds_server.errors import DependencyUnavailable, NotFound, NotStored
from xds_server.model import codec
from xds_server.model.edits import update_backend
from xds_server.model.intent import (
    Backend,
    Intent,
    Protocol,
    Service,
    Strategy,
)
from xds_server.proxy.processes import free_port
from xds_server.redis_io import COMMAND_TIMEOUT_S, connect, redis_errors
from xds_server.store.base import edit
from xds_server.store.redis import DEFAULT_PREFIX, RedisStore

KEY = f"{DEFAULT_PREFIX}:intent"
RECOVERY_WINDOW_S = 0.5


def bumped(intent: Intent, backend: str, by: int = 1) -> Intent:
    """`intent` with `backend`'s weight raised by `by`."""
    owner = next(s for s in intent.services if s.backend(backend))
    return update_backend(intent, owner.name, backend, weight=weight(intent, backend) + by)


def weight(intent: Intent, backend: str) -> int:
    return next(b.weight for b in intent.backends() if b.name == backend)


@contextlib.asynccontextmanager
async def running_store(url: str, seed: Intent) -> AsyncIterator[RedisStore]:
    """A started RedisStore with its listener running, stopped on exit (a short
    recovery window: these tests have one replica, or all of them connected)."""
    store = RedisStore(url, seed, recovery_window_s=RECOVERY_WINDOW_S)
    await store.start()
    listener = asyncio.create_task(store.run())
    try:
        await eventually(lambda: _true(store.listening), timeout_s=5)
        yield store
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await store.stop()


async def stored(server: RedisServer) -> tuple[int, Intent]:
    client = server.client()
    try:
        revision, text = await client.hmget(KEY, ["revision", "intent"])
    finally:
        await client.aclose()
    return int(revision), codec.decode_intent(text)


async def _true(value: bool) -> bool:
    return value


# ---- codec ---------------------------------------------------------------------------


# ---- RedisStore --------------------------------------------------------------------


async def test_first_replica_seeds_later_ones_adopt(redis_server: RedisServer) -> None:
    """Redis without intent is seeded (revision 1) from the first store's config; a
    second store with a different config serves Redis's intent, not its own."""
    first = local_settings().intent
    other = dataclasses.replace(first, default_strategy=Strategy.RANDOM)
    async with running_store(redis_server.url, first) as a:
        assert await stored(redis_server) == (1, first)
        async with running_store(redis_server.url, other) as b:
            assert b.intent == first
            assert b.remote_revision == a.remote_revision == 1


async def test_concurrent_updates_through_two_stores_lose_none(redis_server: RedisServer) -> None:
    """2 x 50 interleaved weight increments of different backends through two stores:
    every increment is in Redis, and both stores converge on the same intent."""
    seed = local_settings().intent
    async with (
        running_store(redis_server.url, seed) as a,
        running_store(redis_server.url, seed) as b,
    ):

        async def increments(store: RedisStore, backend: str) -> None:
            for _ in range(50):
                await store.update(lambda i: bumped(i, backend))

        await asyncio.gather(increments(a, "qdrant-primary"), increments(b, "embedding-gpu0"))
        revision, intent = await stored(redis_server)
        assert revision == 101
        assert weight(intent, "qdrant-primary") == weight(seed, "qdrant-primary") + 50
        assert weight(intent, "embedding-gpu0") == weight(seed, "embedding-gpu0") + 50
        await eventually(lambda: _true(a.intent == b.intent == intent), timeout_s=2)
        print(f"\ncompare-and-set conflicts retried: {a.conflicts + b.conflicts}")
        assert a.conflicts + b.conflicts > 0  # the writers really raced


async def test_replicas_learn_by_notification_not_polling(redis_server: RedisServer) -> None:
    """An idle store never reads the intent from Redis (its heartbeat reads only the
    revision, with HGET; the intent is read with HMGET); a write through A reaches B
    by pub/sub within 100 ms and fires B's change callback once."""
    seed = local_settings().intent
    async with (
        running_store(redis_server.url, seed) as a,
        running_store(redis_server.url, seed) as b,
    ):
        changed = asyncio.Event()
        b.on_change(changed.set)
        reads = await hmget_calls(redis_server)
        await asyncio.sleep(1.2)  # more than two listener timeouts
        assert await hmget_calls(redis_server) == reads
        started = time.monotonic()
        await a.update(lambda i: bumped(i, "phi3"))
        await asyncio.wait_for(changed.wait(), 0.1)
        print(f"\nA -> B store propagation: {(time.monotonic() - started) * 1000:.1f} ms")
        assert b.intent == a.intent and b.remote_revision == 2


async def hmget_calls(server: RedisServer) -> int:
    client = server.client()
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def test_start_without_redis_fails_within_its_bound() -> None:
    """No Redis at start: start() gives up with DependencyUnavailable after its bound
    (the CLI then exits 1) instead of serving a config other replicas may not share."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(url, local_settings().intent, start_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        await store.start()
    assert time.monotonic() - started < 1.5
    assert not store.connected
    await store.stop()


async def test_refused_change_stores_nothing(redis_server: RedisServer) -> None:
    """A change function that raises leaves Redis and the store untouched."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as store:

        def refuse(intent: Intent) -> Intent:
            raise NotFound("no such backend")

        with pytest.raises(NotFound):
            await store.update(refuse)
        assert await stored(redis_server) == (1, seed)
        assert store.intent == seed and store.revision == 1


async def test_unreadable_intent_is_a_dependency_failure(redis_server: RedisServer) -> None:
    """Garbage in Redis never replaces the served intent: writes answer
    DependencyUnavailable naming the problem, and the store reports itself down."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as store:
        client = redis_server.client()
        await client.hset(KEY, mapping={"revision": 2, "intent": '{"format": 99}'})
        await client.publish(f"{DEFAULT_PREFIX}:changes", 2)
        await client.aclose()
        with pytest.raises(DependencyUnavailable, match=r"unreadable.*format"):
            await store.update(lambda i: bumped(i, "phi3"))
        assert store.intent == seed
        await eventually(lambda: _true(not store.connected), timeout_s=2)


async def test_a_stored_grpc_weight_is_adopted_with_a_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An intent stored before gRPC weights were refused stays usable: the store
    adopts it and logs a WARNING naming the weight's path, which is ignored
    (the translator publishes weight 1; tests/translate/test_translate_grpc.py)."""
    seed = local_settings().intent
    grpc = Service(
        name="greeter",
        routes=(),
        backends=(Backend("greeter-a", "127.0.0.1", 50051, weight=5),),
        protocol=Protocol.GRPC,
    )
    older = dataclasses.replace(seed, services=(*seed.services, grpc))
    async with running_store(redis_server.url, seed) as store:
        client = redis_server.client()
        await client.hset(KEY, mapping={"revision": 2, "intent": codec.encode_intent(older)})
        await client.publish(f"{DEFAULT_PREFIX}:changes", 2)
        await client.aclose()
        with caplog.at_level("WARNING", logger="xds_server.redis_store"):
            await eventually(lambda: _true(store.intent == older), timeout_s=5)
        path = f"services[{len(seed.services)}].backends[0].weight"
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(path in w and "ignored" in w for w in warnings), warnings


async def test_outage_refuses_writes_then_recovers_and_restores(
    redis_server: RedisServer,
) -> None:
    """Redis down: the last intent is still served, writes raise DependencyUnavailable,
    `connected` is false. Redis back empty: the store reconnects by itself, refuses
    writes while it reconciles (it is the only replica: after the window its copy
    wins), writes its intent back at the same revision, and accepts writes again."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as store:
        await store.update(lambda i: bumped(i, "hermes", 4))
        known = store.intent
        await redis_server.stop()
        with pytest.raises(DependencyUnavailable):
            await store.update(lambda i: bumped(i, "hermes"))
        assert store.intent == known and not store.connected
        await redis_server.start()  # same port, no data
        took = await eventually(lambda: _true(store.connected), timeout_s=5)
        print(f"\nstore reconnected {took * 1000:.0f} ms after redis-server was back")
        assert store.condition.state == "reconciling"
        with pytest.raises(NotStored, match="reconciling"):
            await store.update(lambda i: bumped(i, "hermes"))
        await eventually(lambda: _true(store.condition.state == "ok"), timeout_s=5)
        assert await stored(redis_server) == (2, known)
        await store.update(lambda i: bumped(i, "hermes"))
        assert weight((await stored(redis_server))[1], "hermes") == weight(known, "hermes") + 1


async def test_a_hung_redis_fails_calls_within_their_bound_then_recovers(
    redis_server: RedisServer,
) -> None:
    """redis-server stopped (SIGSTOP): connections stay open and nothing answers.
    A write fails with DependencyUnavailable within the command bound instead of
    hanging (the client has no socket timeout: the bound is redis_errors'), and the
    store keeps its intent. Resumed: the store reconnects and writes again."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as store:
        known = store.intent
        redis_server.pause()
        try:
            started = time.monotonic()
            async with asyncio.timeout(COMMAND_TIMEOUT_S + 5):  # a hang fails here
                with pytest.raises(DependencyUnavailable):
                    await store.update(lambda i: bumped(i, "hermes"))
            took = time.monotonic() - started
            assert store.intent == known and not store.connected
        finally:
            redis_server.resume()
        await eventually(lambda: _true(store.connected), timeout_s=10)
        await store.update(lambda i: bumped(i, "hermes"))
        assert weight((await stored(redis_server))[1], "hermes") == weight(known, "hermes") + 1
    print(f"\nhung Redis: the write failed after {took * 1000:.0f} ms")
    assert took < COMMAND_TIMEOUT_S + 0.5


# ---- controllers on one Redis ------------------------------------------------------


def resource_bytes(controller: Controller) -> dict[str, dict[str, bytes]]:
    snapshot = controller.cache.snapshot
    assert snapshot is not None
    return {
        type_url: {name: r.packed.SerializeToString() for name, r in t.resources.items()}
        for type_url, t in snapshot.types.items()
    }


async def test_restarted_controller_serves_same_versions_and_intent(
    redis_server: RedisServer,
) -> None:
    """A controller restarted on the same Redis serves the intent changed before the
    restart (not its config file's) at exactly the versions it served before."""
    settings = redis_settings(redis_server)
    first = Controller(settings)
    await first.start()
    try:
        await first.store.update(lambda i: bumped(i, "mixtral", 2))
        await first.store.update(lambda i: dataclasses.replace(i, default_strategy=Strategy.RANDOM))
        await first.publisher.publish_now()
        assert first.cache.snapshot is not None
        versions, intent = first.cache.snapshot.versions(), first.store.intent
    finally:
        await first.stop()
    assert intent != settings.intent
    again = Controller(settings)
    await again.start()
    try:
        assert again.store.intent == intent
        assert again.cache.snapshot is not None and again.cache.snapshot.versions() == versions
    finally:
        await again.stop()


async def test_replicas_serve_byte_identical_resources(redis_server: RedisServer) -> None:
    """Two replicas on one Redis serve byte-identical resources at identical versions,
    at start and after a write through one of them."""
    settings = redis_settings(redis_server)
    a, b = Controller(settings), Controller(moved(settings))
    await a.start()
    try:
        await b.start()
        try:
            assert resource_bytes(a) == resource_bytes(b)
            listener = asyncio.create_task(b.store.run())
            await a.store.update(lambda i: bumped(i, "qdrant-secondary", 5))
            await eventually(lambda: _true(b.store.intent == a.store.intent), timeout_s=2)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await a.publisher.publish_now()
            await b.publisher.publish_now()
            assert resource_bytes(a) == resource_bytes(b)
            assert a.cache.snapshot and b.cache.snapshot
            assert a.cache.snapshot.versions() == b.cache.snapshot.versions()
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_a_task_looping_on_redis_always_ends_when_cancelled(
    redis_server: RedisServer,
) -> None:
    """Every loop of ours that calls Redis must end when cancelled, or a controller
    asked to stop never does. With redis-py's socket_timeout this failed: its sends
    go through asyncio.wait_for, which on Python 3.11 loses a cancellation arriving
    as the send completes (about 1 in 3 here). Cancelled at random moments, 300 times."""
    client = connect(redis_server.url)

    async def loop() -> None:
        while True:
            async with redis_errors("reading"):
                await client.hget("k", "f")

    survived = 0
    try:
        for _ in range(300):
            task = asyncio.create_task(loop())
            await asyncio.sleep(random.uniform(0, 0.005))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            if not done:
                survived += 1
                task.cancel()  # counted; now stop it for good
                await asyncio.wait({task}, timeout=1)
    finally:
        await client.aclose()
    assert survived == 0, f"{survived} of 300 loops outlived their cancellation"


async def test_a_replica_stopped_at_any_moment_ends(redis_server: RedisServer) -> None:
    """What the loop above guards, for a whole controller: replica B, stopped at a
    random moment while replica A writes the intent and both probe, follow and
    claim the prober lease in quick succession, always ends (15 times)."""
    fast = dataclasses.replace(
        redis_settings(redis_server),
        health_check_interval_s=0.05,
        health_check_timeout_s=0.05,
        health_check_jitter=0.0,
    )
    a = Controller(fast, health_lease_s=0.3)
    await a.start()
    a_stop = asyncio.Event()
    a_task = asyncio.create_task(a.run(a_stop))

    async def keep_writing() -> None:
        for n in range(100_000):  # bounded; cancelled long before
            await a.store.update(lambda i, n=n: bumped(i, "mixtral", 1 if n % 2 == 0 else -1))
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_writing())
    try:
        for _ in range(15):
            b = Controller(moved(fast), health_lease_s=0.3)
            await b.start()
            b_stop = asyncio.Event()
            b_task = asyncio.create_task(b.run(b_stop))
            await asyncio.sleep(random.uniform(0, 0.5))
            b_stop.set()
            await finished(b_task, 5)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        a_stop.set()
        await finished(a_task, 5)


async def test_a_lost_race_checks_again_against_the_winners_intent(
    redis_server: RedisServer,
) -> None:
    """A replica that has not heard of another's write yet computes and checks its
    change against what it serves, outside the store's lock; the compare-and-put
    finds the revision moved, adopts the winner's intent and the edit computes
    and checks once more, against it. Both writes are in Redis."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as winner:
        late = RedisStore(redis_server.url, seed)  # started, but not following writes
        await late.start()
        try:
            await winner.update(lambda i: bumped(i, "phi3"))
            checked: list[Intent] = []
            edited = await edit(late, lambda i: bumped(i, "hermes"), checked.append)
            assert [weight(i, "phi3") for i in checked] == [
                weight(seed, "phi3"),  # what it served
                weight(seed, "phi3") + 1,  # the winner's, after the lost race
            ]
            revision, intent = await stored(redis_server)
            assert revision == 3 and intent == edited.after == late.intent
            assert weight(intent, "phi3") == weight(seed, "phi3") + 1
            assert weight(intent, "hermes") == weight(seed, "hermes") + 1
            assert late.conflicts == 1
        finally:
            await late.stop()


async def test_a_refused_check_after_a_lost_race_stores_nothing(
    redis_server: RedisServer,
) -> None:
    """The check that runs again after a lost race may refuse; then nothing of this
    edit is stored and the replica serves the winner's intent."""
    seed = local_settings().intent
    async with running_store(redis_server.url, seed) as winner:
        late = RedisStore(redis_server.url, seed)
        await late.start()
        try:
            await winner.update(lambda i: bumped(i, "phi3"))

            def refuse_after_the_race(intent: Intent) -> None:
                if weight(intent, "phi3") != weight(seed, "phi3"):
                    raise NotFound("phi3 moved")

            with pytest.raises(NotFound):
                await edit(late, lambda i: bumped(i, "hermes"), refuse_after_the_race)
            assert await stored(redis_server) == (2, winner.intent)
            assert late.intent == winner.intent
        finally:
            await late.stop()
