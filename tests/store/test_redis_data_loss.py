"""Redis losing data, restarting or stalling under two RedisStore replicas (a real
redis-server each time): no accepted write is lost, the replicas converge, and a
write's answer says what is known about it (docs/replicas.md, "The intent when
Redis loses data")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.factories import local_settings, redis_settings, running_controller
from tests.redis_support import RedisServer
from tests.store.test_redis_store import _true, bumped, weight
from tests.support import eventually
from xds_server.errors import DependencyUnavailable, OutcomeUnknown
from xds_server.model.codec import decode_intent
from xds_server.model.intent import Intent
from xds_server.store.redis import DEFAULT_PREFIX, RedisStore

KEY = f"{DEFAULT_PREFIX}:intent"
WINDOW_S = 2.0  # the recovery window of these tests' replicas (5 s by default)


class Follower:
    """A store's `run()` as a task that can be paused (cancelled) and resumed: a replica
    that is stopped (SIGSTOP, a long GC pause, a partition) follows nothing meanwhile."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._task: asyncio.Task[None] | None = None

    def resume(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self.store.run())

    async def pause(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.asynccontextmanager
async def replicas(
    url: str, seed: Intent, count: int = 2, window_s: float = WINDOW_S
) -> AsyncIterator[list[Follower]]:
    """`count` started stores on one Redis, each following writes."""
    stores = [RedisStore(url, seed, recovery_window_s=window_s) for _ in range(count)]
    followers = [Follower(s) for s in stores]
    try:
        for follower in followers:
            await follower.store.start()
            follower.resume()
            await eventually(lambda s=follower.store: _true(s.listening), timeout_s=5)
        yield followers
    finally:
        for follower in followers:
            await follower.pause()
            await follower.store.stop()


async def redis_holds(server: RedisServer) -> tuple[int, Intent] | None:
    client = server.client()
    try:
        revision, text = await client.hmget(KEY, ["revision", "intent"])
    finally:
        await client.aclose()
    return None if revision is None else (int(revision), decode_intent(text))


async def written_until_accepted(
    store: RedisStore, change: Callable[[Intent], Intent], timeout_s: float = 15
) -> list[str]:
    """What a client does with a 503: retry (bounded). Returns the refusals seen."""
    refusals: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await store.update(change)
            return refusals
        except DependencyUnavailable as error:
            refusals.append(str(error))
            assert loop.time() < deadline, refusals[-3:]
            await asyncio.sleep(0.1)


async def anything_written(server: RedisServer) -> bool:
    client: Redis = server.client()
    try:
        return bool(await client.exists(KEY, f"{DEFAULT_PREFIX}:recovery"))
    finally:
        await client.aclose()


@pytest.mark.parametrize("comes_back", ["empty", "with an older copy"])
async def test_redis_losing_data_while_replicas_were_paused_loses_no_write(
    redis_server: RedisServer, comes_back: str, caplog: pytest.LogCaptureFixture
) -> None:
    """B paused; x written through A; A paused too; Redis restarted, either empty or
    with the copy it held before x (what loading an older RDB or AOF file does: DUMP
    and RESTORE of the key). B resumes first (its copy is older: no x) and a client
    writes y through it; A resumes a moment later. No accepted write may be lost:
    both replicas end up serving x and y, at one revision, and Redis holds the same."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed) as (a, b):
        await b.pause()
        older_copy = await dump(redis_server)
        await a.store.update(lambda i: bumped(i, "qdrant-primary", 5))  # x
        await a.pause()
        await redis_server.restart()  # same port, empty
        if comes_back != "empty":
            await restore(redis_server, older_copy)
        b.resume()
        if comes_back == "empty":
            await eventually(lambda: anything_written(redis_server), timeout_s=5)
            assert b.store.condition.state == "reconciling"  # what /readyz reports
        else:
            await asyncio.sleep(0.3)  # B reconnected: it holds what Redis holds
        y = asyncio.create_task(
            written_until_accepted(b.store, lambda i: bumped(i, "embedding-gpu0", 3))
        )
        await asyncio.sleep(0.2)
        a.resume()
        refusals = await y
        assert refusals, "y was accepted while the replicas had not reconciled"
        assert all("reconciling" in r for r in refusals), refusals
        assert b.store.recoveries == a.store.recoveries == 1
        assert "Redis data loss suspected" in caplog.text
        await eventually(lambda: _true(a.store.intent == b.store.intent), timeout_s=10)
        held = await redis_holds(redis_server)
        assert held is not None
        revision, intent = held
        assert intent == a.store.intent == b.store.intent
        assert a.store.remote_revision == b.store.remote_revision == revision
        assert weight(intent, "qdrant-primary") == weight(seed, "qdrant-primary") + 5  # x
        assert weight(intent, "embedding-gpu0") == weight(seed, "embedding-gpu0") + 3  # y


async def dump(server: RedisServer) -> bytes:
    client = Redis.from_url(server.url)  # raw bytes: DUMP's payload is binary
    try:
        payload: bytes = await client.dump(KEY)
        return payload
    finally:
        await client.aclose()


async def restore(server: RedisServer, payload: bytes) -> None:
    client = Redis.from_url(server.url)
    try:
        await client.restore(KEY, 0, payload)
    finally:
        await client.aclose()


async def test_a_write_refused_during_a_stall_is_not_stored_later(
    redis_server: RedisServer,
) -> None:
    """Redis stalls: first its writes (CLIENT PAUSE WRITE: the write's read answers,
    its script waits inside Redis), then the whole process (SIGSTOP, by PID) for
    longer than the command bound. The write fails within the bound; when Redis
    resumes it runs the script it held, and that must not store a write the
    caller was told failed."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, count=1) as (a,):
        admin = redis_server.client()
        await admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        await admin.aclose()
        write = asyncio.create_task(a.store.update(lambda i: bumped(i, "hermes")))
        await asyncio.sleep(0.5)
        redis_server.pause()
        try:
            with pytest.raises(DependencyUnavailable) as refused:
                await write
        finally:
            redis_server.resume()
        await asyncio.sleep(1.0)  # Redis runs what it held
        print(f"\nanswer during the stall: {type(refused.value).__name__}: {refused.value}")
        assert await redis_holds(redis_server) == (1, seed)
        # Sent and never answered: the caller is told the outcome is unknown (it may
        # have run before its deadline), not that nothing was stored.
        assert isinstance(refused.value, OutcomeUnknown) and refused.value.revision == 2
        await eventually(lambda: _true(a.store.condition.state == "ok"), timeout_s=10)
        await a.store.update(lambda i: bumped(i, "hermes"))
        assert await redis_holds(redis_server) == (2, a.store.intent)


async def test_a_replica_paused_through_a_whole_recovery_adopts_it(
    redis_server: RedisServer,
) -> None:
    """B paused while x is written and Redis comes back empty; A alone recovers (its
    copy is the newest). B resumes long after, holding only the seed: its next write
    finds a new epoch that contains its revision, adopts it and builds y on x."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, window_s=0.5) as (a, b):
        await b.pause()
        await a.store.update(lambda i: bumped(i, "qdrant-primary", 5))  # x
        await redis_server.restart()
        await eventually(lambda: _true(a.store.condition.state == "ok"), timeout_s=10)
        assert a.store.recoveries == 1 and await redis_holds(redis_server) == (2, a.store.intent)
        await b.store.update(lambda i: bumped(i, "embedding-gpu0", 3))  # y, B still paused
        _, intent = await redis_holds(redis_server) or (0, seed)
        assert weight(intent, "qdrant-primary") == weight(seed, "qdrant-primary") + 5
        assert weight(intent, "embedding-gpu0") == weight(seed, "embedding-gpu0") + 3
        await eventually(lambda: _true(a.store.intent == b.store.intent == intent), timeout_s=5)


async def test_the_replica_with_the_newest_copy_restores_it_even_after_the_window(
    redis_server: RedisServer,
) -> None:
    """z written through B, which A had not heard of (A paused); B paused, Redis back
    empty; A alone recovers revision 2. When B resumes, Redis's epoch lacks z but has
    taken no write since: B's copy is the newer one, a second recovery restores it,
    and A adopts z."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, window_s=0.5) as (a, b):
        await a.store.update(lambda i: bumped(i, "qdrant-primary", 5))  # x, both hear of it
        await eventually(lambda: _true(b.store.remote_revision == 2), timeout_s=5)
        await a.pause()
        await b.store.update(lambda i: bumped(i, "phi3", 2))  # z: revision 3, B only
        await b.pause()
        await redis_server.restart()
        a.resume()
        await recovered_alone(a.store, redis_server, 2)
        b.resume()
        await eventually(lambda: _true(a.store.intent == b.store.intent), timeout_s=10)
        assert weight(a.store.intent, "phi3") == weight(seed, "phi3") + 2  # z survived
        assert a.store.condition.diverged is None and b.store.condition.diverged is None
        assert await redis_holds(redis_server) == (3, b.store.intent)


async def recovered_alone(store: RedisStore, server: RedisServer, revision: int) -> None:
    """`store` went through a recovery and Redis holds its copy at `revision`."""
    await eventually(lambda: _true(store.recoveries == 1), timeout_s=10)
    await eventually(lambda: _true(store.condition.state == "ok"), timeout_s=10)
    assert await redis_holds(server) == (revision, store.intent)


async def test_diverged_replicas_converge_and_say_what_was_lost(
    redis_server: RedisServer,
) -> None:
    """As above, but A took a write (w) after its recovery and before B resumed: both
    hold an accepted write the other lacks. B converges on Redis's intent (the one
    every other replica serves) and reports, in its condition (/healthz, /readyz),
    which revisions it had to drop."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, window_s=0.5) as (a, b):
        await a.pause()
        await b.store.update(lambda i: bumped(i, "phi3", 2))  # z: revision 2, B only
        await b.pause()
        await redis_server.restart()
        a.resume()
        await recovered_alone(a.store, redis_server, 1)
        await a.store.update(lambda i: bumped(i, "hermes", 1))  # w: revision 2 of a new epoch
        b.resume()
        await eventually(lambda: _true(a.store.intent == b.store.intent), timeout_s=10)
        diverged = b.store.condition.diverged
        assert diverged is not None and "revisions 2 to 2" in diverged, diverged
        assert weight(b.store.intent, "hermes") == weight(seed, "hermes") + 1


async def test_a_deleted_intent_is_noticed_without_a_write_and_restored(
    redis_server: RedisServer,
) -> None:
    """The intent's key deleted while Redis runs (no restart, no write, no
    notification): the heartbeat notices within a second or two, the replicas
    reconcile and write their copy back at its revision."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, window_s=0.5) as (a, b):
        await a.store.update(lambda i: bumped(i, "hermes", 4))
        await eventually(lambda: _true(b.store.remote_revision == 2), timeout_s=5)
        client = redis_server.client()
        await client.delete(KEY)
        await client.aclose()
        took = await eventually(lambda: _true(a.store.recoveries == 1), timeout_s=5)
        await eventually(lambda: redis_has(redis_server, 2, a.store.intent), timeout_s=5)
        assert b.store.intent == a.store.intent
    print(f"\ndeleted intent noticed after {took:.1f} s")


async def redis_has(server: RedisServer, revision: int, intent: Intent) -> bool:
    return await redis_holds(server) == (revision, intent)


async def test_fresh_replica_waits_for_a_recovery_under_way(redis_server: RedisServer) -> None:
    """A replica starting while the others reconcile neither seeds its config nor
    serves it: its start waits for the recovery and adopts the result."""
    seed = local_settings().intent
    async with replicas(redis_server.url, seed, count=1, window_s=1.0) as (a,):
        await a.store.update(lambda i: bumped(i, "hermes", 4))
        await redis_server.restart()
        await eventually(lambda: anything_written(redis_server), timeout_s=5)
        fresh = RedisStore(redis_server.url, seed, recovery_window_s=1.0)
        try:
            await fresh.start()
            assert fresh.intent == a.store.intent and fresh.remote_revision == 2
        finally:
            await fresh.stop()


# ---- a whole controller: what its probes and its admin API answer ---------------------


async def get_json(admin: object, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}{path}") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_probes_report_a_hung_redis_without_waiting_for_a_write(
    redis_server: RedisServer,
) -> None:
    """redis-server SIGSTOPped (by PID) with no write in flight: within a few seconds
    /readyz answers 503 naming the store's problem and /healthz (liveness) stays 200
    but says "degraded". SIGCONT: both are "ok" again, by themselves."""
    async with running_controller(redis_settings(redis_server)) as controller:
        admin = controller.admin_address
        store = controller.store
        assert isinstance(store, RedisStore)
        await eventually(lambda: _true(store.listening), timeout_s=5)  # idle, following
        code, ready = await get_json(admin, "/readyz")
        assert code == 200 and ready["status"] == "ok", ready
        redis_server.pause()
        try:

            async def unready() -> bool:
                return (await get_json(admin, "/readyz"))[0] == 503

            took = await eventually(unready, timeout_s=6, interval_s=0.1)
            code, ready = await get_json(admin, "/readyz")
            assert code == 503 and ready["ready"] is False
            assert ready["store"] == "unavailable" and "PING" in ready["reason"], ready
            code, health = await get_json(admin, "/healthz")
            assert code == 200 and health["status"] == "degraded", health
        finally:
            redis_server.resume()

        async def ready_again() -> bool:
            code, body = await get_json(admin, "/readyz")
            return code == 200 and body["status"] == "ok"

        back = await eventually(ready_again, timeout_s=10, interval_s=0.1)
    print(f"\nhung Redis: /readyz 503 after {took:.1f} s; ok {back:.1f} s after SIGCONT")


async def patch_weight(admin: object, weight: int) -> tuple[int, dict[str, Any]]:
    url = f"http://{admin}/api/v1/router/services/qdrant/backends/qdrant-primary"
    async with aiohttp.ClientSession() as http, http.patch(url, json={"weight": weight}) as reply:
        body: dict[str, Any] = await reply.json()
        return reply.status, body


async def test_admin_answers_say_whether_a_write_was_stored(redis_server: RedisServer) -> None:
    """A PATCH that never reached Redis (stopped): 503, outcome "not_stored". A PATCH
    sent to a Redis that stalled before answering: 504, outcome "unknown", with the
    revision it would have made and how to check; it did not land when Redis
    resumed. The OpenAPI document lists both statuses for the change routes."""
    async with running_controller(redis_settings(redis_server)) as controller:
        admin = controller.admin_address
        store = controller.store
        assert isinstance(store, RedisStore)
        await eventually(lambda: _true(store.listening), timeout_s=5)
        before = await redis_holds(redis_server)
        assert before is not None

        client = redis_server.client()
        await client.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        await client.aclose()
        answer = asyncio.create_task(patch_weight(admin, 7))
        await asyncio.sleep(0.5)
        redis_server.pause()
        try:
            status, body = await answer
        finally:
            redis_server.resume()
        assert status == 504, body
        assert body["outcome"] == "unknown" and body["revision"] == before[0] + 1, body
        assert "GET /readyz" in body["check"], body
        await eventually(lambda: _true(store.condition.state == "ok"), timeout_s=10)
        assert await redis_holds(redis_server) == before  # the late script refused itself

        await redis_server.stop()
        status, body = await patch_weight(admin, 8)
        assert status == 503 and body["outcome"] == "not_stored", body
        assert controller.store.intent == before[1]

        _, document = await get_json(admin, "/api/v1/router/openapi.json")
        responses = document["paths"]["/api/v1/router/services/{service}/backends/{backend}"]
        assert {"503", "504"} <= set(responses["patch"]["responses"]), responses["patch"]


async def test_probes_report_a_recovery_while_it_lasts(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted empty under a controller: while the replicas reconcile, /readyz
    answers 503 with store "reconciling" and the reason, /healthz 200 "degraded", a
    warning is logged, and a PATCH answers 503 not_stored. Then all is "ok" again and
    Redis holds the controller's copy at its revision."""
    settings = redis_settings(redis_server)
    store = RedisStore(settings.redis_url or "", settings.intent, recovery_window_s=1.5)
    async with running_controller(settings, store=store) as controller:
        admin = controller.admin_address
        await eventually(lambda: _true(store.listening), timeout_s=5)
        status, _ = await patch_weight(admin, 9)
        assert status == 200
        held = await redis_holds(redis_server)
        await redis_server.restart()

        async def reconciling() -> bool:
            return (await get_json(admin, "/readyz"))[1].get("store") == "reconciling"

        await eventually(reconciling, timeout_s=5, interval_s=0.02)
        code, ready = await get_json(admin, "/readyz")
        assert code == 503 and "Redis holds no intent" in ready["reason"], ready
        code, health = await get_json(admin, "/healthz")
        assert code == 200 and health["status"] == "degraded", health
        assert health["store"] == "reconciling", health
        status, body = await patch_weight(admin, 10)
        assert status == 503 and body["outcome"] == "not_stored", body
        assert "reconciling" in body["detail"], body
        assert "Redis data loss suspected" in caplog.text

        async def ready() -> bool:
            return (await get_json(admin, "/readyz"))[0] == 200

        await eventually(ready, timeout_s=10)
        assert await redis_holds(redis_server) == held
