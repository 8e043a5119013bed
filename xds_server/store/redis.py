"""The intent in Redis, shared by every controller replica (`ROUTER_REDIS_URL`).

Layout (`prefix` defaults to "xds-server"):

    {prefix}:intent           hash {revision, intent: <codec JSON>, epoch, base, run}
    {prefix}:changes          pub/sub channel; every write publishes its revision
    {prefix}:recovery         hash {replica id: "revision\nintent"} while replicas reconcile
    {prefix}:recovery:window  present (with an expiry) while a recovery collects copies

Consistency model:
- Every write is a compare-and-set (one Lua script, store/redis_scripts.py, so
  atomic in Redis): it succeeds only if the stored revision and epoch are still
  the ones the change was computed from, and then stores intent and revision+1
  together and publishes. The change is computed (and, on the admin path,
  translated as a check) from the intent this replica last adopted, outside the
  lock and without reading Redis's intent first (`store.base.edit`);
  `compare_and_put` then reads only the stored revision (and Redis's clock) and
  sends the script. On a lost race (either step) it reads and adopts the fresh
  intent and the edit computes and checks again (bounded attempts, jittered), so
  concurrent admin writes through different replicas never lose an update.
- Replicas learn of writes by pub/sub, never by polling: a notification makes
  the store read the current (revision, intent) and adopt it when it continues
  what it serves. The subscription is confirmed before the read, so no write
  falls between. A heartbeat every HEARTBEAT_S (redis_io.py) checks that Redis
  answers within PING_TIMEOUT_S and still holds this replica's revision and
  epoch, written by the Redis process running now; it reads no intent.
- Seeding: at start, when Redis holds no intent and no recovery is under way, a
  replica that serves nothing yet seeds its config intent as revision 1 (one
  script: exactly one replica wins a race); every later replica and every
  restart adopts Redis's intent, whatever its own config says.
- Redis lost data (restarted, empty or with an older file; the key deleted):
  store/lineage.py judges what Redis holds against what this replica serves
  (revision regression, another Redis run id, a missing key, an epoch that lacks
  our revisions). Then writes are refused (NotStored, 503) while every replica
  that notices enters its copy into a recovery; after RECOVERY_WINDOW_S the
  newest copy (highest revision) becomes the intent of a new epoch, and every
  replica adopts it. docs/replicas.md has the rule, its window and its one
  residual case (a replica paused through the whole window whose newest write
  another replica has built on since: reported as `diverged`).

Outage: reads are served from the last adopted intent, so Envoys keep their
configuration; `connected` turns false; `run` reconnects with bounded, jittered
backoff and resynchronises. A write that was never sent, or that Redis refused,
raises NotStored (HTTP 503: nothing was stored). A write that was sent and not
answered within its bound raises OutcomeUnknown (HTTP 504): it may have run.
Its script carries a deadline in Redis's own clock (the moment this replica
stops waiting, minus DEADLINE_MARGIN_S), so a Redis that stalls and later runs
it refuses it: only a write that ran in time and whose answer was lost is
stored without the caller hearing of it, and the next resync adopts it.

Redis errors become DependencyUnavailable in exactly one place, `redis_errors`;
the shared health and metrics (health/shared.py, telemetry/shared.py) use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from xds_server.errors import ConfigError, DependencyUnavailable, NotStored, OutcomeUnknown
from xds_server.model.codec import decode_intent, encode_intent
from xds_server.model.intent import Intent
from xds_server.model.rules import ignored_grpc_weights
from xds_server.redis_io import (
    COMMAND_TIMEOUT_S,
    HEARTBEAT_S,
    PING_TIMEOUT_S,
    backoff_s,
    confirmed,
    connect,
    notifications,
    reconnecting,
    redis_errors,
)
from xds_server.store import redis_scripts
from xds_server.store.base import EditingStore, StoreCondition
from xds_server.store.lineage import Position, Stored, Verdict, judge

log = logging.getLogger("xds_server.redis_store")


DEFAULT_PREFIX = "xds-server"


START_TIMEOUT_S = 10.0  # how long start() waits for Redis before the controller gives up


# How long a recovery waits for the replicas' copies. Longer than a connected
# replica needs to notice a restart (its subscription breaks; it reconnects within
# BACKOFF_MAX_S, 1 s) with room to spare, and shorter than START_TIMEOUT_S.
RECOVERY_WINDOW_S = 5.0


# A write's script refuses to run later than its caller waits for it, minus this
# much (for clock-rate differences between this host and Redis's): see _deadline_us.
DEADLINE_MARGIN_S = 0.1


MAX_RECOVERY_ROUNDS = 100  # reads, claims and waits of one resync (each bounded)


@dataclass(frozen=True)
class Probe:
    """The stored revision and epoch, and Redis's clock, read before a write."""

    revision: int | None
    epoch: str
    redis_time_us: int
    replied_at: float  # this loop's clock when the answer came


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
        recovery_window_s: float = RECOVERY_WINDOW_S,
    ) -> None:
        self.url, self.prefix = url, prefix  # for the other shared state (health, metrics)
        self._client = connect(url)
        self._start_timeout_s = start_timeout_s
        self._recovery_window_s = recovery_window_s
        self._id = uuid.uuid4().hex  # this replica, in recovery claims
        self._key = f"{prefix}:intent"
        self._recovery = f"{prefix}:recovery"
        self._window = f"{prefix}:recovery:window"
        self._channel = f"{prefix}:changes"
        self._write_script = self._client.register_script(redis_scripts.WRITE)
        self._seed_script = self._client.register_script(redis_scripts.SEED)
        self._claim_script = self._client.register_script(redis_scripts.CLAIM)
        self._finish_script = self._client.register_script(redis_scripts.FINISH)
        self._intent = seed  # until start(): the config's intent, used only to seed
        self._revision = 1  # local and monotonic: what the publisher waits on
        self._remote = 0  # Redis's revision of self._intent; 0 = none adopted yet
        self._epoch = ""  # the epoch of self._intent (store/lineage.py)
        self._run_id = ""  # the Redis process's run id, as last asked (INFO server)
        self._callbacks: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()  # one read-modify-adopt at a time in this replica
        self._connected = False
        self._problem = "not started"  # why not connected
        self._reconciling: str | None = None  # why writes wait for a recovery
        self._diverged: str | None = None  # accepted writes this replica had to drop
        self._broken = asyncio.Event()  # any Redis error: the listener resubscribes
        self._subscriptions = 0  # successful subscribe-and-resync rounds, for the backoff
        self.conflicts = 0  # compare-and-set rounds lost to another writer (contention)
        self.recoveries = 0  # recoveries this replica took part in
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
    def condition(self) -> StoreCondition:
        if not self._connected:
            return StoreCondition("unavailable", self._problem, self._remote, self._diverged)
        if self._reconciling is not None:
            return StoreCondition("reconciling", self._reconciling, self._remote, self._diverged)
        return StoreCondition("ok", None, self._remote, self._diverged)

    @property
    def listening(self) -> bool:
        """True while the pub/sub subscription is live (run() is following writes)."""
        return self._listening

    @property
    def remote_revision(self) -> int:
        """Redis's revision of the intent this replica serves (equal on every replica in sync)."""
        return self._remote

    @property
    def epoch(self) -> str:
        """The epoch of the intent this replica serves (equal on every replica in sync)."""
        return self._epoch

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def compare_and_put(self, intent: Intent, revision: int) -> int | None:
        """Write `intent` over the Redis revision of the intent at `revision`, if Redis
        still holds that one; None (after adopting what it holds) when not.

        Raises NotStored when the write certainly did not land (Redis unreachable
        before it was sent, a recovery under way, or its deadline passed), and
        OutcomeUnknown when it was sent and no answer came."""
        async with self._lock:
            if revision != self._revision:
                return None  # adopted another write since: the edit computes again
            if self._reconciling is not None:
                raise NotStored(f"not stored, {self._reconciling}; try again shortly")
            # A read first: a write is never sent to a Redis that does not answer
            # (where it could not be told from one that ran), and it gives Redis's
            # clock for the write's deadline.
            probe = await self._probe()
            if probe.revision != self._remote or probe.epoch != self._epoch:
                self.conflicts += 1
                await self._settle()
                return None
            if intent == self._intent:
                return revision
            written = await self._write(intent, probe)
            if written == 1:
                self._adopt(Stored(self._remote + 1, intent, self._epoch, 0, True))
                return self._revision
            if written == 0:
                self.conflicts += 1
                await self._settle()  # the write that came first
                return None
            if written == -1:
                self._broken.set()  # the follower reconciles
                raise NotStored(
                    "not stored: Redis lost the intent or restarted; the replicas are "
                    "reconciling their copies, try again shortly"
                )
            raise NotStored(
                "not stored: Redis ran the write after its deadline (it stalled), and "
                "refused it; try again"
            )

    async def start(self) -> None:
        """Adopt Redis's intent, or seed Redis with ours, or take part in a recovery;
        waits (bounded) for Redis to answer."""
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
        self._problem = "stopped"
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    # ---- following other replicas -------------------------------------------------

    async def _follow(self) -> None:
        """Subscribe, resync, then adopt every notified write and check Redis every
        HEARTBEAT_S; returns when the connection must be rebuilt (after a Redis error
        seen elsewhere), raises on its own errors."""
        pubsub = self._client.pubsub()
        try:
            async with self._redis_errors("subscribing"):
                await pubsub.subscribe(self._channel)
                await confirmed(pubsub)
            self._broken.clear()
            await self._resync()
            self._listening = True
            self._subscriptions += 1
            loop = asyncio.get_running_loop()
            beat = loop.time() + HEARTBEAT_S
            while not self._broken.is_set():
                if await self._notified(pubsub):
                    await self._refresh()
                if loop.time() >= beat:
                    if not await self._heartbeat():
                        await self._refresh()
                    beat = loop.time() + HEARTBEAT_S
        finally:
            self._listening = False
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis 8.2

    async def _notified(self, pubsub: PubSub) -> bool:
        """Wait (bounded) for notifications; True if any arrived. Drains a burst into one."""
        async with self._redis_errors("listening"):
            return bool(await notifications(pubsub))

    async def _heartbeat(self) -> bool:
        """Redis answers within PING_TIMEOUT_S (else DependencyUnavailable) and still
        holds what this replica serves, written by the Redis process running now."""
        async with (
            self._redis_errors("answering a PING", timeout_s=PING_TIMEOUT_S),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.ping()
            for field in ("revision", "epoch", "run"):  # not the intent: that is never polled
                pipe.hget(self._key, field)
            pipe.exists(self._recovery)
            pipe.info("server")
            _, revision, epoch, run, recovering, info = await pipe.execute()
        self._seen_run(info.get("run_id"))
        return (
            revision == str(self._remote)
            and (epoch or "") == self._epoch
            and run == self._run_id
            and not recovering
        )

    def _seen_run(self, run_id: str | None) -> None:
        if run_id != self._run_id:
            if self._run_id:
                log.warning("Redis restarted (run id %s, was %s)", run_id, self._run_id)
            self._run_id = run_id or ""

    async def _refresh(self) -> None:
        async with self._lock:
            await self._settle(quiet=True)

    async def _settle(self, *, quiet: bool = False) -> None:
        """Read what Redis holds and adopt it if it continues what we serve; otherwise
        leave it to the follower's resync (Redis lost data: recover) and, unless
        `quiet`, raise NotStored for the write that found out."""
        stored, recovering = await self._read(ask_run=False)
        if stored is not None and not stored.current_run:
            stored, recovering = await self._read()  # our run id may be the stale one
        judged = judge(self._position, stored, recovering)
        if judged.verdict is Verdict.ADOPT and stored is not None:
            self._adopt(stored)
            return
        if judged.verdict is Verdict.DIVERGED and stored is not None:
            self._accept_divergence(stored, judged.why)
            return
        self._broken.set()  # the follower rebuilds its subscription and resyncs
        if not quiet:
            raise NotStored(f"not stored: {judged.why}; the replicas are reconciling, try again")

    async def _resync(self) -> None:
        """Adopt what Redis holds; seed it if nothing was ever stored; and if Redis lost
        data (or may have), take part in the recovery until it is over."""
        for _ in range(MAX_RECOVERY_ROUNDS):
            async with self._lock:
                stored, recovering = await self._read()
                self._reachable()
                judged = judge(self._position, stored, recovering)
                if judged.verdict is Verdict.ADOPT and stored is not None:
                    self._adopt(stored)
                    self._reconciled()
                    return
                if judged.verdict is Verdict.DIVERGED and stored is not None:
                    self._accept_divergence(stored, judged.why)
                    self._reconciled()
                    return
                if judged.verdict is Verdict.SEED:
                    log.info("Redis holds no intent; seeding it with this replica's config")
                    await self._seed()
                    continue
                self._reconciling_because(judged.why)
                left_ms = await self._claim(stored)
            if left_ms == -3:
                continue  # recovered meanwhile (by another replica): read again
            if left_ms > 0:
                await asyncio.sleep(left_ms / 1000)  # the lock is free: writes get 503
            async with self._lock:
                restored = await self._finish()
            if restored > 0:
                log.warning("recovery over: the newest copy, revision %d, is the intent", restored)
        raise DependencyUnavailable("Redis's intent kept changing during the recovery")

    def _reachable(self) -> None:
        if not self._connected and self._problem != "not started":
            log.warning("Redis reachable again; serving revision %d", self._remote)
        self._connected = True

    @property
    def _position(self) -> Position:
        return Position(self._epoch, self._remote)

    def _reconciling_because(self, why: str) -> None:
        if self._reconciling is None:
            self.recoveries += 1
            log.warning(
                "Redis data loss suspected (%s): reconciling the replicas' copies for "
                "%.1f s; writes are refused meanwhile, serving revision %d",
                why,
                self._recovery_window_s,
                self._remote,
            )
        self._reconciling = f"the replicas are reconciling: Redis lost data or may have ({why})"

    def _reconciled(self) -> None:
        if self._reconciling is not None:
            log.warning("reconciled: serving revision %d (epoch %s)", self._remote, self._epoch[:8])
        self._reconciling = None

    def _accept_divergence(self, stored: Stored, why: str) -> None:
        """Both Redis and this replica hold accepted writes the other lacks: converge on
        Redis's (the other replicas serve it already), and say so loudly."""
        log.error("replicas diverged: %s", why)
        self._diverged = why
        self._adopt(stored)

    def _adopt(self, stored: Stored) -> None:
        if stored.epoch == self._epoch and stored.revision <= self._remote:
            return  # an older read racing a newer adoption never takes the intent back
        self._remote, self._epoch = stored.revision, stored.epoch
        if stored.intent != self._intent:
            _warn_ignored(stored)
            self._intent = stored.intent
            self._revision += 1
            for callback in self._callbacks:
                callback()

    # ---- Redis commands ------------------------------------------------------------

    async def _read(self, *, ask_run: bool = True) -> tuple[Stored | None, bool]:
        """What Redis holds (None: no intent) and whether a recovery is under way.

        `ask_run=False` (reading a write just notified) judges `run` against the run
        id last asked for instead of asking INFO again: the write script checked it,
        and the heartbeat asks every HEARTBEAT_S anyway."""
        fields = ["revision", "intent", "epoch", "base", "run"]
        async with (
            self._redis_errors("reading the intent"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.hmget(self._key, fields)
            pipe.exists(self._recovery)
            if ask_run:
                pipe.info("server")
            replies = await pipe.execute()
        (revision, text, epoch, base, run), recovering = replies[0], replies[1]
        if ask_run:
            self._seen_run(replies[2].get("run_id"))
        if revision is None or text is None:
            return None, bool(recovering)
        try:
            stored = Stored(
                revision=int(revision),
                intent=decode_intent(text),
                epoch=epoch or "",
                base=int(base or 0),
                current_run=run is not None and run == self._run_id,
            )
        except (ValueError, ConfigError) as error:
            self._connected = False  # as good as unreachable: no write can build on it
            self._problem = f"the intent stored in Redis is unreadable: {error}"
            raise DependencyUnavailable(self._problem) from error
        return stored, bool(recovering)

    async def _probe(self) -> Probe:
        async with (
            self._redis_errors("reading the intent's revision"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.hmget(self._key, ["revision", "epoch"])
            pipe.time()
            (revision, epoch), (seconds, micros) = await pipe.execute()
        replied_at = asyncio.get_running_loop().time()
        try:
            held = None if revision is None else int(revision)
        except ValueError:
            held = None  # unreadable: _settle says why
        return Probe(held, epoch or "", int(seconds) * 1_000_000 + int(micros), replied_at)

    async def _write(self, intent: Intent, probe: Probe) -> int:
        """The compare-and-set script's answer (redis_scripts.WRITE)."""
        revision = self._remote + 1
        sent_at = asyncio.get_running_loop().time()
        # The script refuses to run once this replica has stopped waiting for it, in
        # Redis's own clock: a Redis that stalls and then runs what it was sent stores
        # nothing the caller was told failed.
        waited_s = sent_at + COMMAND_TIMEOUT_S - probe.replied_at - DEADLINE_MARGIN_S
        deadline_us = probe.redis_time_us + int(waited_s * 1_000_000)
        args: list[Any] = [str(self._remote), self._epoch, str(revision)]
        args += [encode_intent(intent), self._channel, str(deadline_us)]
        async with self._redis_errors("writing the intent", writes_revision=revision):
            written = await self._write_script(keys=[self._key, self._recovery], args=args)
        return int(written)

    async def _seed(self) -> None:
        args = [encode_intent(self._intent), uuid.uuid4().hex, self._channel]
        async with self._redis_errors("seeding the intent"):
            await self._seed_script(keys=[self._key, self._recovery], args=args)
        # A lost race is fine: another replica seeded first; the next read adopts it.

    async def _claim(self, observed: Stored | None) -> int:
        """Enter our copy into the recovery; the window's remaining ms (-2: over), or
        -3 when nothing needs recovering any more."""
        args: list[Any] = [self._id, str(self._remote), encode_intent(self._intent)]
        args += ["", ""] if observed is None else [str(observed.revision), observed.epoch]
        args.append(str(int(self._recovery_window_s * 1000)))
        async with self._redis_errors("claiming in the recovery"):
            left = await self._claim_script(
                keys=[self._key, self._recovery, self._window], args=args
            )
        return int(left)

    async def _finish(self) -> int:
        args = [uuid.uuid4().hex, self._channel]
        async with self._redis_errors("finishing the recovery"):
            restored = await self._finish_script(
                keys=[self._key, self._recovery, self._window], args=args
            )
        return int(restored)

    @contextlib.asynccontextmanager
    async def _redis_errors(
        self,
        doing: str,
        *,
        timeout_s: float = COMMAND_TIMEOUT_S,
        writes_revision: int | None = None,
    ) -> AsyncIterator[None]:
        try:
            async with redis_errors(doing, timeout_s=timeout_s, writes_revision=writes_revision):
                yield
        except OutcomeUnknown as error:
            self._lost_contact(str(error))
            raise
        except DependencyUnavailable as error:
            self._lost_contact(str(error))
            raise NotStored(str(error)) from error

    def _lost_contact(self, problem: str) -> None:
        if self._connected:
            self._problem = problem  # the first error of an outage says most about it
        self._connected = False
        self._broken.set()


def _warn_ignored(stored: Stored) -> None:
    """What a stored intent holds that no longer passes the file's and the admin
    API's rules but is published anyway, minus what cannot take effect: said
    once per adoption, so the operator can clear it with an admin call."""
    for problem in ignored_grpc_weights(stored.intent):
        log.warning(
            "stored intent revision %d: %s: %s; ignored (published with weight 1)",
            stored.revision,
            problem.path,
            problem.message,
        )
