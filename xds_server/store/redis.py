"""The intent in Redis, shared by every controller replica (`ROUTER_REDIS_URL`).

Layout (`prefix` defaults to "xds-server"):

    {prefix}:intent    hash {revision: N, intent: <xds_server.codec JSON>}
    {prefix}:changes   pub/sub channel; every write publishes its revision

Consistency model:
- Every write is a compare-and-set (one Lua script, so atomic in Redis): it
  succeeds only if the stored revision is still the one the change was
  computed from, and then stores intent and revision+1 together and publishes.
  The change is computed (and, on the admin path, translated as a check) from
  the intent this replica last adopted, outside the lock and without reading
  Redis's intent first (`store.base.edit`); `compare_and_put` then reads only
  the stored revision and sends the script. On a lost race (either step) it
  reads and adopts the fresh intent and the edit computes and checks again
  (bounded attempts, jittered), so concurrent admin writes through different
  replicas never lose an update.
- Replicas learn of writes by pub/sub, never by polling: a notification makes
  the store read the current (revision, intent) and adopt it when it is newer.
  The subscription is confirmed before the read, so no write falls between.
- Seeding: at start, when Redis holds no intent, the first replica's config
  intent becomes revision 1 (compare-and-set against "absent": exactly one
  replica wins a race); every later replica and every restart adopts Redis's
  intent, whatever its own config says, so all serve identical versions.
- Redis lost its data (restarted without persistence, or restored from an older
  copy): a replica that knows a newer revision than Redis holds writes its copy
  back at that revision. A write acknowledged to a client is known to the
  replica that made it, so it survives as long as that replica does.

Outage: reads are served from the last adopted intent, so Envoys keep their
configuration; `update` raises DependencyUnavailable (HTTP 503) and stores
nothing; `connected` turns false; `run` reconnects with bounded, jittered
backoff and resynchronises (restoring the intent if Redis came back empty).
One caveat inherent to any remote store: if the connection drops after Redis
executed a write but before its reply arrived, the caller sees 503 although the
write took effect; the next resync adopts it, so replicas still agree.

Redis errors become DependencyUnavailable in exactly one place, `redis_errors`;
the shared health and metrics (health/shared.py, telemetry/shared.py) use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from xds_server.errors import ConfigError, DependencyUnavailable
from xds_server.model.codec import decode_intent, encode_intent
from xds_server.model.intent import Intent
from xds_server.redis_io import (
    backoff_s,
    confirmed,
    connect,
    notifications,
    reconnecting,
    redis_errors,
)
from xds_server.store.base import EditingStore

log = logging.getLogger("xds_server.redis_store")


DEFAULT_PREFIX = "xds-server"


START_TIMEOUT_S = 10.0  # how long start() waits for Redis before the controller gives up


# KEYS[1]: the intent hash. ARGV: expected revision ("" = no intent stored),
# new revision, intent JSON, channel. Returns 1 when written, 0 when the stored
# revision was not the expected one (someone else wrote first).
COMPARE_AND_SET = """
local current = redis.call('HGET', KEYS[1], 'revision')
if (current or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'intent', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Stored:
    revision: int
    intent: Intent


class RedisStore(EditingStore):
    """An IntentStore kept in Redis; see the module docstring for the guarantees."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        seed: Intent,
        *,
        prefix: str = DEFAULT_PREFIX,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.url, self.prefix = url, prefix  # for the other shared state (health, metrics)
        self._client = connect(url)
        self._start_timeout_s = start_timeout_s
        self._key = f"{prefix}:intent"
        self._channel = f"{prefix}:changes"
        self._cas = self._client.register_script(COMPARE_AND_SET)
        self._intent = seed  # until start(): the config's intent, used only to seed
        self._revision = 1  # local and monotonic: what the publisher waits on
        self._remote = 0  # Redis's revision of self._intent; 0 = none adopted yet
        self._callbacks: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()  # one read-modify-adopt at a time in this replica
        self._connected = False
        self._broken = asyncio.Event()  # any Redis error: the listener resubscribes
        self._subscriptions = 0  # successful subscribe-and-resync rounds, for the backoff
        self.conflicts = 0  # compare-and-set rounds lost to another writer (contention)
        self._listening = False

    # ---- IntentStore -----------------------------------------------------------

    @property
    def intent(self) -> Intent:
        return self._intent

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def listening(self) -> bool:
        """True while the pub/sub subscription is live (run() is following writes)."""
        return self._listening

    @property
    def remote_revision(self) -> int:
        """Redis's revision of the intent this replica serves (equal on every replica in sync)."""
        return self._remote

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def compare_and_put(self, intent: Intent, revision: int) -> int | None:
        """Write `intent` over the Redis revision of the intent at `revision`, if Redis
        still holds that one; None (after adopting what it holds) when not."""
        async with self._lock:
            if revision != self._revision:
                return None  # adopted another write since: the edit computes again
            # One HGET first: a write is never sent to a Redis that does not answer,
            # where it could still run once it does, after the caller was told 503.
            if await self._remote_revision() != self._remote:
                self.conflicts += 1
                self._adopt(await self._read_current())
                return None
            if intent == self._intent:
                return revision
            written = Stored(self._remote + 1, intent)
            if await self._write(written, expected=self._remote):
                self._adopt(written)
                return self._revision
            self.conflicts += 1
            self._adopt(await self._read_current())  # the write that came first
            return None

    async def start(self) -> None:
        """Adopt Redis's intent, or seed Redis with ours; waits (bounded) for Redis to answer."""
        deadline = asyncio.get_running_loop().time() + self._start_timeout_s
        for attempt in range(1_000_000):  # bounded by the deadline
            try:
                await self._resync()
                self._connected = True
                return
            except DependencyUnavailable:
                delay = backoff_s(attempt)
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)

    async def run(self) -> None:
        """Follow writes made elsewhere until cancelled, reconnecting with bounded backoff."""
        await reconnecting(
            self._follow, lambda: self._subscriptions, "serving the last known intent"
        )

    async def stop(self) -> None:
        self._connected = False
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    # ---- following other replicas -------------------------------------------------

    async def _follow(self) -> None:
        """Subscribe, resync, then adopt every notified write; returns when the connection
        must be rebuilt (after a Redis error seen elsewhere), raises on its own errors."""
        pubsub = self._client.pubsub()
        try:
            async with self._redis_errors("subscribing"):
                await pubsub.subscribe(self._channel)
                await confirmed(pubsub)
            self._broken.clear()
            await self._resync()
            if not self._connected:
                log.warning("Redis reachable again; intent at revision %d", self._remote)
            self._connected = self._listening = True
            self._subscriptions += 1
            while not self._broken.is_set():
                if await self._notified(pubsub):
                    await self._refresh()
        finally:
            self._listening = False
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated upstream

    async def _notified(self, pubsub: PubSub) -> bool:
        """Wait (bounded) for notifications; True if any arrived. Drains a burst into one."""
        async with self._redis_errors("listening"):
            return bool(await notifications(pubsub))

    async def _refresh(self) -> None:
        async with self._lock:
            stored = await self._read()
            if stored is None or stored.revision < self._remote:
                self._broken.set()  # Redis lost data: rebuild and resync, which restores
                return
            self._adopt(stored)

    async def _resync(self) -> None:
        """Adopt what Redis holds; write ours back if Redis holds nothing or an older revision."""
        async with self._lock:
            stored = await self._read()
            if stored is None or stored.revision < self._remote:
                await self._restore(stored)
                stored = await self._read()
            if stored is None:
                raise DependencyUnavailable("Redis holds no intent right after it was written")
            self._adopt(stored)

    async def _restore(self, stored: Stored | None) -> None:
        if stored is None and not self._remote:
            log.info("Redis holds no intent; seeding it with this replica's config")
        else:
            held = "nothing" if stored is None else f"revision {stored.revision}"
            log.warning(
                "Redis holds %s; restoring revision %d from this replica", held, self._remote
            )
        ours = Stored(max(self._remote, 1), self._intent)
        # A lost race is fine: another replica restored or wrote first; we adopt its intent.
        await self._write(ours, expected=None if stored is None else stored.revision)

    def _adopt(self, stored: Stored) -> None:
        if stored.revision <= self._remote:
            return  # an older read racing a newer adoption never takes the intent back
        self._remote = stored.revision
        if stored.intent != self._intent:
            self._intent = stored.intent
            self._revision += 1
            for callback in self._callbacks:
                callback()

    # ---- Redis commands ------------------------------------------------------------

    async def _read(self) -> Stored | None:
        async with self._redis_errors("reading the intent"):
            revision, text = await self._client.hmget(self._key, ["revision", "intent"])
        if revision is None or text is None:
            return None
        try:
            return Stored(int(revision), decode_intent(text))
        except (ValueError, ConfigError) as error:
            self._connected = False  # as good as unreachable: no write can build on it
            raise DependencyUnavailable(
                f"the intent stored in Redis is unreadable: {error}"
            ) from error

    async def _remote_revision(self) -> int | None:
        """The revision Redis holds; None if none (or unreadable: _read_current says why)."""
        async with self._redis_errors("reading the intent's revision"):
            revision = await self._client.hget(self._key, "revision")
        try:
            return None if revision is None else int(revision)
        except ValueError:
            return None

    async def _read_current(self) -> Stored:
        """The stored intent, refusing to build on a copy older than the one we serve."""
        stored = await self._read()
        if stored is None or stored.revision < self._remote:
            self._broken.set()
            raise DependencyUnavailable("Redis lost the intent; it is being restored, try again")
        return stored

    async def _write(self, stored: Stored, *, expected: int | None) -> bool:
        args = ["" if expected is None else str(expected), str(stored.revision)]
        async with self._redis_errors("writing the intent"):
            written = await self._cas(
                keys=[self._key], args=[*args, encode_intent(stored.intent), self._channel]
            )
        return bool(written)

    @contextlib.asynccontextmanager
    async def _redis_errors(self, doing: str) -> AsyncIterator[None]:
        try:
            async with redis_errors(doing):
                yield
        except DependencyUnavailable:
            self._connected = False
            self._broken.set()
            raise
