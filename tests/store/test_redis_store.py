"""The intent codec and RedisStore against a real redis-server (no Envoy here)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.redis_support import RedisServer, moved, redis_settings
from tests.support import eventually, finished, local_settings
from xds_server.app import Controller
from xds_server.errors import ConfigError, DependencyUnavailable, NotFound
from xds_server.model import codec
from xds_server.model.intent import (
    Backend,
    Intent,
    Policies,
    Protocol,
    Service,
    SocketAddress,
    Strategy,
)
from xds_server.proxy.processes import free_port
from xds_server.redis_io import COMMAND_TIMEOUT_S, connect, redis_errors
from xds_server.store.redis import DEFAULT_PREFIX, RedisStore

KEY = f"{DEFAULT_PREFIX}:intent"


def bumped(intent: Intent, backend: str, by: int = 1) -> Intent:
    """`intent` with `backend`'s weight raised by `by`."""

    def service(s: Service) -> Service:
        backends = tuple(
            dataclasses.replace(b, weight=b.weight + by) if b.name == backend else b
            for b in s.backends
        )
        return dataclasses.replace(s, backends=backends)

    return dataclasses.replace(intent, services=tuple(service(s) for s in intent.services))


def weight(intent: Intent, backend: str) -> int:
    return next(b.weight for b in intent.backends() if b.name == backend)


@contextlib.asynccontextmanager
async def running_store(url: str, seed: Intent) -> AsyncIterator[RedisStore]:
    """A started RedisStore with its listener running, stopped on exit."""
    store = RedisStore(url, seed)
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


def every_field_set() -> Intent:
    """An intent in which every model field with a default differs from it."""
    backend = Backend("b1", "10.0.0.1", 81, weight=3, priority=2, health_path="/h", draining=True)
    service = Service(
        "svc",
        ("/a/", "/b"),
        (backend, Backend("b2", "10.0.0.2", 82)),
        strategy=Strategy.MAGLEV,
        group="grp",
        hash_header="x-user",
        protocol=Protocol.GRPC,
    )
    defaults = Policies()
    policies = Policies(
        **{
            f.name: (getattr(defaults, f.name) * 2 + 1)
            for f in dataclasses.fields(Policies)
            if not isinstance(getattr(defaults, f.name), bool)
        }
    )
    return Intent(
        services=(service,),
        default_strategy=Strategy.RING_HASH,
        policies=policies,
        listen=SocketAddress("::1", 8001),
        admin=SocketAddress("127.0.0.2", 18081),
    )


def _non_default_everywhere(value: Any, seen: dict[type, set[str]]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if default is dataclasses.MISSING or getattr(value, f.name) != default:
                seen.setdefault(type(value), set()).add(f.name)
            _non_default_everywhere(getattr(value, f.name), seen)
    elif isinstance(value, tuple):
        for item in value:
            _non_default_everywhere(item, seen)


def test_codec_round_trip_covers_every_model_field() -> None:
    """Every field of the model survives encode/decode exactly, and the sample sets
    every field away from its default (a new model field fails here until covered)."""
    intent = every_field_set()
    seen: dict[type, set[str]] = {}
    _non_default_everywhere(intent, seen)
    for cls in (Intent, Service, Backend, Policies, SocketAddress):
        assert seen.get(cls) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
    assert codec.decode_intent(codec.encode_intent(intent)) == intent


def test_codec_is_deterministic_and_canonical() -> None:
    """Equal intents give byte-identical text (an int in a float field too), and the
    text is compact, key-sorted and tagged with its format."""
    intent = local_settings().intent
    as_int = dataclasses.replace(
        intent, policies=dataclasses.replace(intent.policies, retry_delay_s=2)
    )
    as_float = dataclasses.replace(
        intent, policies=dataclasses.replace(intent.policies, retry_delay_s=2.0)
    )
    assert codec.encode_intent(as_int) == codec.encode_intent(as_float)
    text = codec.encode_intent(intent)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["format"] == codec.FORMAT
    assert codec.encode_intent(codec.decode_intent(text)) == text


def test_codec_reports_every_problem_with_its_path() -> None:
    """Strict decoding: wrong types, unknown and missing fields, bad enum values and
    non-finite numbers are all reported at once, each with its path."""
    document = json.loads(codec.encode_intent(local_settings().intent))
    intent = document["intent"]
    intent["services"][0]["backends"][1]["weight"] = "3"
    intent["services"][0]["backends"][0]["draining"] = 0
    intent["services"][1]["colour"] = "blue"
    del intent["listen"]["port"]
    intent["default_strategy"] = "fastest"
    intent["policies"]["retry_delay_s"] = "INF"
    intent["policies"]["max_retries"] = True
    text = json.dumps(document).replace('"INF"', "1e999")  # JSON that parses as infinity
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(text)
    assert {p.path for p in raised.value.problems} == {
        "intent.services[0].backends[1].weight",
        "intent.services[0].backends[0].draining",
        "intent.services[1].colour",
        "intent.listen.port",
        "intent.default_strategy",
        "intent.policies.retry_delay_s",
        "intent.policies.max_retries",
    }


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"format": 2, "intent": {}}', "format"),
        ('{"intent": {}}', "format"),
        ("[1]", ""),
        ("not json", ""),
        ('{"format": 1, "intent": {"services": NaN}}', ""),
        ('{"format": 1}', "intent"),
    ],
)
def test_codec_refuses_what_it_cannot_trust(text: str, path: str) -> None:
    """An unknown format version, non-JSON, NaN or a missing intent is refused, with a reason."""
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(text)
    assert raised.value.problems[0].path == path
    assert str(raised.value)


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
    """An idle store reads nothing from Redis; a write through A reaches B by pub/sub
    within 100 ms and fires B's change callback once."""
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


async def test_outage_refuses_writes_then_recovers_and_restores(
    redis_server: RedisServer,
) -> None:
    """Redis down: the last intent is still served, writes raise DependencyUnavailable,
    `connected` is false. Redis back empty: the store reconnects by itself, writes its
    intent back at the same revision, and accepts writes again."""
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


def test_codec_reads_an_intent_stored_before_a_field_existed() -> None:
    """A field with a default (say `protocol`, added after the first release)
    may be missing from stored JSON: it takes its default. One without a
    default may not."""
    intent = local_settings().intent
    document = json.loads(codec.encode_intent(intent))
    for service in document["intent"]["services"]:
        del service["protocol"]
    assert codec.decode_intent(json.dumps(document)) == intent
    del document["intent"]["services"][0]["name"]
    with pytest.raises(ConfigError) as raised:
        codec.decode_intent(json.dumps(document))
    assert [p.path for p in raised.value.problems] == ["intent.services[0].name"]


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
