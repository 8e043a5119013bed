"""Health verdicts shared by controller replicas: one elected prober, every replica applies.

Why one elected prober rather than every replica probing (docs/replicas.md):
- Identical EDS everywhere. Replicas probing on their own reach verdicts at
  different moments (and, for a flapping or partly reachable backend,
  different verdicts), so their EDS resources, and with them the versions,
  would differ; an Envoy moving between replicas would get configuration
  churn. With one source of verdicts every replica translates the same
  (intent, verdicts) into the same bytes at the same version.
- Load on the backends stays that of one controller, however many replicas run.
- One failure detector: a dead backend is seen once, and one replica's view
  (a network partition between it and a backend) cannot fight another's.
The cost is a takeover delay when the prober dies: at most the lease plus one
claim period (LEASE_S + LEASE_S / 3) without probes, during which every
replica keeps publishing the last verdicts (Envoy's outlier detection still
ejects failing hosts on its own).

Layout (`prefix` as the intent's, xds_server/store/redis.py):

    {prefix}:health:prober    string: the prober's id, set NX with a PX lease
    {prefix}:health:records   hash: backend -> JSON record (verdict, probe figures, target)
    {prefix}:health:holds     hash: "backend/hold id" -> hold expiry (Redis TIME, ms)
    {prefix}:health:changes   pub/sub channel: {"verdicts": [...]}, {"holds": 1},
                              {"released": id}

Election: every replica runs `claim` (one Lua script: renew if ours, take if
free) every LEASE_S / 3. The holder runs the HealthChecker; a replica stops
probing at once when Redis names another holder, and otherwise when its own
lease has run out by its own clock (measured from before the claim was sent,
so it never outlives the lease Redis sees). A replica that stops gracefully
releases the lease and says so on the channel: the others claim at once.

Writes are fenced: the Lua script that stores records runs only while the
writer still holds the lease, so a prober that was paused past its lease
(and does not know it yet) cannot overwrite its successor's verdicts; the
script also skips held backends (below).

Applying: every replica, the prober included, mirrors the records hash
(subscribed before a full read; then the notified names are read again) and
derives its verdicts from the mirror and its intent with `effective`: a
record counts only for a probed backend of the intent whose target (address,
port, health path) is the record's, or that is held. That is what a single
controller's checker does (a retargeted backend starts over as UNKNOWN), and
as a pure function of shared inputs it gives every replica the same verdicts.
A new prober seeds its checker from the mirror, so the thresholds continue
where the last prober left them (an UNHEALTHY backend still needs
`healthy_threshold` passes) and a takeover changes no verdict by itself.

Holds: an experiment freezes one backend's health (health.py, `held`). The
hold is shared state with an expiry (so a replica that dies mid-experiment
cannot freeze a backend forever): the prober, wherever it runs, stops probing
that backend, and the fenced write refuses its record meanwhile. Each hold is
its own entry, so experiments on one backend through two replicas each keep
it held until they end: the first to finish releases only its own.

Outage: every replica keeps its last verdicts, so Envoys keep their EDS. The
prober keeps probing until its lease runs out (probes that cannot be written
are retried), then stops; nobody probes until Redis is back and a replica
claims the lease again, seeded from its mirror. A Redis that comes back empty
does not erase the mirror: the verdicts stay until the new prober writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from xds_server.errors import DependencyUnavailable, LeaseLost
from xds_server.health.checker import HealthChecker, Seed, Target, probed_backends
from xds_server.health.verdict import BackendHealth, HealthObserver, ProbeResult
from xds_server.model.intent import Health, Intent
from xds_server.redis_io import (
    as_text,
    backoff_s,
    confirmed,
    notifications,
    reconnecting,
    redis_errors,
)
from xds_server.store.base import IntentStore

log = logging.getLogger("xds_server.redis_health")

LEASE_S = 5.0  # how long a prober's claim lasts without renewal

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the lease. ARGV: this replica's id, the lease in ms. Returns the holder afterwards.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return holder
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
"""

# KEYS: the lease. ARGV: this replica's id, the channel. Returns 1 when released.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({released = ARGV[1]}))
return 1
"""

# A hold's field is "backend/hold id" (backend names cannot contain "/"); a field
# without one is a hold stored by an earlier version, on the whole backend.
_HELD = """
local held = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then held[string.match(all[i], '^(.*)/') or all[i]] = true end
end
"""

# KEYS: the lease, the records, the holds. ARGV: this replica's id, the channel, then
# (backend, record JSON or "" to delete) pairs. Returns -1 when the lease is not ours
# (nothing written), else how many records were written (held backends are skipped).
WRITE = (
    _NOW_MS
    + _HELD
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local changed = {}
for i = 3, #ARGV, 2 do
  if not held[ARGV[i]] then
    if ARGV[i + 1] == '' then
      redis.call('HDEL', KEYS[2], ARGV[i])
    else
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
    changed[#changed + 1] = ARGV[i]
  end
end
if #changed > 0 then redis.call('PUBLISH', ARGV[2], cjson.encode({verdicts = changed})) end
return #changed
"""
)

# KEYS: the holds. ARGV: "backend/hold id", hold in ms ("" = release), the channel.
HOLD = (
    _NOW_MS
    + """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])))
end
redis.call('PUBLISH', ARGV[3], cjson.encode({holds = 1}))
return 1
"""
)

# KEYS: the holds. Returns ("backend/hold id", ms left) pairs; expired holds are deleted.
READ_HOLDS = (
    _NOW_MS
    + """
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    live[#live + 1] = all[i]
    live[#live + 1] = string.format('%d', left)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"""
)


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One backend's shared health: the checker's state and what it probed."""

    target: Target
    state: BackendHealth


def encode_record(target: Target, state: BackendHealth) -> str:
    last = state.last
    return json.dumps(
        {
            "target": list(target),
            "verdict": str(state.verdict),
            "passes": state.passes,
            "failures": state.failures,
            "since": state.since,
            "last": None if last is None else dataclasses.asdict(last),
            "checked_by": list(state.checked_by),
            "reported_at": state.reported_at,
        }
    )


def decode_record(text: str) -> Record | None:
    """None for a record this version cannot read (logged; the backend stays UNKNOWN)."""
    try:
        body: dict[str, Any] = json.loads(text)
        address, port, path = body["target"]
        last = body["last"]
        state = BackendHealth(
            verdict=Health(body["verdict"]),
            passes=int(body["passes"]),
            failures=int(body["failures"]),
            last=None if last is None else ProbeResult(**last),
            since=body["since"],
            # Records written before HDS carry neither: the controller probed.
            checked_by=tuple(str(c) for c in body.get("checked_by", ())),
            reported_at={str(k): float(v) for k, v in body.get("reported_at", {}).items()},
        )
        return Record((str(address), int(port), str(path)), state)
    except (ValueError, KeyError, TypeError) as error:
        log.warning("skipping an unreadable health record: %s", error)
        return None


def effective(
    intent: Intent, records: Mapping[str, Record], held: Collection[str]
) -> dict[str, BackendHealth]:
    """The states a single controller's checker would have: a record counts for a
    probed backend whose target it is, or that is held (its verdict stays put)."""
    states: dict[str, BackendHealth] = {}
    for name, probed in probed_backends(intent).items():
        record = records.get(name)
        if record is not None and (record.target == probed.target or name in held):
            states[name] = record.state
    return states


# --- the mirror: records -> verdicts, on every replica ---------------------------------------


class HealthMirror:
    """Redis's records and holds as this replica last read them, and the verdicts
    they give with the current intent. No I/O: SharedHealth feeds it."""

    def __init__(
        self,
        intent: Callable[[], Intent],
        verdicts: MutableMapping[str, Health],
        on_change: Callable[[], None],
        observers: Sequence[HealthObserver] = (),
        on_holds: Callable[[frozenset[str]], None] = lambda _: None,
    ) -> None:
        self.records: dict[str, Record] = {}
        self.holds: dict[str, float] = {}  # backend -> deadline (event loop clock)
        self.states: dict[str, BackendHealth] = {}  # effective: what the report shows
        self._intent, self._verdicts, self._on_change = intent, verdicts, on_change
        self._observers, self._on_holds = list(observers), on_holds

    def replace(self, records: dict[str, Record]) -> None:
        """A full read. An empty hash while we know records means Redis lost its data:
        the verdicts stay until the prober writes again, rather than all going UNKNOWN."""
        if records or not self.records:
            self.records = records
        self.refresh()

    def update(self, changed: Mapping[str, Record | None]) -> None:
        for name, record in changed.items():
            if record is None:
                self.records.pop(name, None)
            else:
                self.records[name] = record
        self.refresh()

    def set_holds(self, holds: Mapping[str, float]) -> None:
        if holds != self.holds:
            self.holds = dict(holds)
            self._on_holds(frozenset(holds))
            self.refresh()

    def expire(self, now: float) -> None:
        """Drop holds past their deadline (their owner may have died)."""
        live = {name: until for name, until in self.holds.items() if until > now}
        if len(live) != len(self.holds):
            self.set_holds(live)

    def seed(self, name: str, target: Target) -> BackendHealth | None:
        """A copy of the shared state of `name` if it is about `target` (the checker mutates it)."""
        record = self.records.get(name)
        if record is None or record.target != target:
            return None
        return dataclasses.replace(record.state)

    def refresh(self) -> None:
        """Derive the verdicts again. As the checker does: every verdict is written,
        then the publisher is marked dirty, then observers hear of each change (so a
        failover observer sees the whole new picture, backups included)."""
        self.states = effective(self._intent(), self.records, frozenset(self.holds))
        changes: list[tuple[str, Health, Health]] = []
        for name in sorted(set(self._verdicts) | set(self.states)):
            state = self.states.get(name)
            current = state.verdict if state is not None else Health.UNKNOWN
            previous = self._verdicts.get(name, Health.UNKNOWN)
            if current is not previous:
                changes.append((name, previous, current))
                if current is Health.UNKNOWN:
                    del self._verdicts[name]
                else:
                    self._verdicts[name] = current
        if not changes:
            return
        self._on_change()
        for name, previous, current in changes:
            state = self.states.get(name)
            if state is not None and state.last is not None:
                self._tell(name, previous, current, state)

    def _tell(self, name: str, previous: Health, current: Health, state: BackendHealth) -> None:
        assert state.last is not None
        # The verdict changed at `since` (the probe that changed it); every replica
        # reads the same record, so observers agree on when (failover event ids).
        since = state.since if state.since is not None else state.last.at
        result = dataclasses.replace(state.last, at=since)
        for observer in self._observers:
            try:
                observer.verdict_changed(name, previous, current, result)
            except Exception:  # an observer must not stop verdicts from applying
                log.exception("health observer %r failed", observer)


# --- the prober's side: writing records -----------------------------------------------------


class VerdictWriter:
    """Collects the backends whose state changed (the checker's `on_state`) and writes
    their records, coalescing bursts into one fenced script call."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    def note(self, name: str) -> None:
        self._pending.add(name)
        self._wake.set()

    def clear(self) -> None:
        self._pending.clear()
        self._wake.clear()

    async def run(
        self, checker: HealthChecker, write: Callable[[dict[str, str]], Awaitable[int]]
    ) -> None:
        """Write until cancelled; raises LeaseLost when the fence refuses."""
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._pending = self._pending, set()
            batch = {name: record_text(checker, name) for name in sorted(names)}
            try:
                written = await write(batch)
            except DependencyUnavailable:
                self._pending |= names  # written later: the state is read again then
                attempt += 1
                await asyncio.sleep(backoff_s(attempt))
                self._wake.set()
                continue
            attempt = 0
            if written < 0:
                raise LeaseLost


def record_text(checker: HealthChecker, name: str) -> str:
    """The record of `name` as the checker knows it now; "" when it is not probed."""
    state, target = checker.states.get(name), checker.target_of(name)
    return "" if state is None or target is None else encode_record(target, state)


def replica_id() -> str:
    """Unique per process and readable in Redis: host, pid, a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


CheckerFactory = Callable[[Callable[[str], None], Seed], HealthChecker]


class SharedHealth:
    """Election, probing while elected, and following the shared records."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        store: IntentStore,
        on_change: Callable[[], None],
        make_checker: CheckerFactory,
        *,
        observers: Sequence[HealthObserver] = (),
        lease_s: float = LEASE_S,
    ) -> None:
        self.replica_id = replica_id()
        self.prober: str | None = None  # the holder Redis named at the last claim
        self.lease_s = lease_s
        self.release_on_stop = True  # False: the lease expires, as after a crash (tests)
        self._verdicts: dict[str, Health] = {}
        self.mirror = HealthMirror(
            lambda: store.intent, self._verdicts, on_change, observers, self._sync_holds
        )
        self.writer = VerdictWriter()
        self.checker = make_checker(self.writer.note, self.mirror.seed)
        store.on_change(self.mirror.refresh)  # verdicts follow retargets at once
        self._client = client
        self._keys = {k: f"{prefix}:health:{k}" for k in ("prober", "records", "holds")}
        self._channel = f"{prefix}:health:changes"
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        self._write = client.register_script(WRITE)
        self._hold = client.register_script(HOLD)
        self._read_holds = client.register_script(READ_HOLDS)
        self._lease_until = 0.0  # event loop clock; probing only before it
        self._probing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # claim now: the lease was released, or lost
        self._subscriptions = 0
        self.following = False  # the subscription is live

    @property
    def probing(self) -> bool:
        return self._probing is not None and not self._probing.done()

    @property
    def verdicts(self) -> Mapping[str, Health]:
        """What this replica publishes: the mirror's verdicts (the prober's own stay private)."""
        return self._verdicts

    @property
    def states(self) -> dict[str, BackendHealth]:
        return self.mirror.states

    def probe_now(self, name: str) -> bool:
        """An early probe, if this replica is the prober now (only its checker probes);
        an ejection seen by another replica's proxies does not reach the prober."""
        return self.probing and self.checker.probe_now(name)

    async def start(self) -> None:
        """Read the shared verdicts before the first publish, so a replica that starts
        (or restarts) serves the versions the others serve from its first snapshot."""
        try:
            await self._resync()
        except DependencyUnavailable as error:  # the follower keeps trying in run()
            log.warning("health verdicts not read at start: %s", error)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            tasks.create_task(self._elect())

    async def stop(self) -> None:
        """Stop probing and hand the lease over at once (no wait for its expiry)."""
        await self._stop_probing()
        if not self.release_on_stop:
            return
        try:
            async with redis_errors("releasing the prober lease"):
                await self._release(
                    keys=[self._keys["prober"]], args=[self.replica_id, self._channel]
                )
        except DependencyUnavailable:
            pass  # it expires by itself

    @contextlib.asynccontextmanager
    async def held(self, name: str, ttl_s: float) -> AsyncIterator[None]:
        """Freeze `name`'s health on every replica for at most `ttl_s` (experiments)."""
        field = f"{name}/{uuid.uuid4().hex}"
        await self._set_hold(field, str(int(ttl_s * 1000)))
        loop = asyncio.get_running_loop()
        deadline = max(loop.time() + ttl_s, self.mirror.holds.get(name, 0.0))
        self.mirror.set_holds({**self.mirror.holds, name: deadline})  # no wait
        try:
            yield
        finally:
            try:
                await self._set_hold(field, "")
                await self._resync_holds()  # another replica's hold may remain
            except DependencyUnavailable as error:
                log.warning("hold on %s not released (it expires by itself): %s", name, error)
                self.mirror.set_holds({n: t for n, t in self.mirror.holds.items() if n != name})

    # ---- election ----------------------------------------------------------------------

    async def _elect(self) -> None:
        loop = asyncio.get_running_loop()
        renew_s = self.lease_s / 3
        try:
            while True:
                await self._claim_once(loop.time())
                elected = loop.time() < self._lease_until
                if elected and not self.probing:
                    log.info("this replica (%s) is the health prober now", self.replica_id)
                    self._probing = asyncio.create_task(self._probe(), name="health prober")
                elif not elected and self.probing:
                    log.info("this replica stops probing; the prober is %s", self.prober)
                    await self._stop_probing()
                timeout = renew_s
                if self.probing:  # wake at the lease's end even if Redis stays silent
                    timeout = min(timeout, max(0.0, self._lease_until - loop.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            await self._stop_probing()

    async def _claim_once(self, asked: float) -> None:
        try:
            async with redis_errors("claiming the prober lease"):
                args = [self.replica_id, str(int(self.lease_s * 1000))]
                holder = await self._claim(keys=[self._keys["prober"]], args=args)
        except DependencyUnavailable:
            return  # keep probing until the lease we may hold runs out
        self.prober = as_text(holder)
        # From before the claim was sent: never later than the expiry Redis applies.
        self._lease_until = asked + self.lease_s if self.prober == self.replica_id else 0.0

    async def _probe(self) -> None:
        self.writer.clear()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.checker.run())
                tasks.create_task(self.writer.run(self.checker, self._write_records))
        except* LeaseLost:
            log.warning("another replica holds the prober lease; this one stops probing")
            self._lease_until = 0.0
            self._wake.set()
        except* (
            Exception
        ) as errors:  # a bug here must not end xDS serving; retried at the next claim
            log.error("health probing failed", exc_info=errors)

    async def _stop_probing(self) -> None:
        task, self._probing = self._probing, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The probing task's cancellation is expected; ours is not to
                # be swallowed, or a controller stopping meanwhile never ends.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self.writer.clear()

    async def _write_records(self, batch: dict[str, str]) -> int:
        args: list[str] = [self.replica_id, self._channel]
        for name, text in batch.items():
            args += [name, text]
        keys = [self._keys["prober"], self._keys["records"], self._keys["holds"]]
        async with redis_errors("writing health records"):
            written = await self._write(keys=keys, args=args)
        return int(written)

    async def _set_hold(self, field: str, ttl_ms: str) -> None:
        async with redis_errors("holding a backend's health"):
            await self._hold(keys=[self._keys["holds"]], args=[field, ttl_ms, self._channel])

    def _sync_holds(self, held: frozenset[str]) -> None:
        for name in held - self.checker.holds:
            self.checker.hold(name)
        for name in self.checker.holds - held:
            self.checker.release(name)

    # ---- following the records ------------------------------------------------------------

    async def _follow(self) -> None:
        """Mirror the records until cancelled, reconnecting with bounded backoff."""
        await reconnecting(
            self._follow_once, lambda: self._subscriptions, "keeping the last health verdicts"
        )

    async def _follow_once(self) -> None:
        loop = asyncio.get_running_loop()
        pubsub = self._client.pubsub()
        try:
            async with redis_errors("subscribing to health changes"):
                await pubsub.subscribe(self._channel)
                await confirmed(pubsub)
            await self._resync()  # after the subscription: no write falls between
            self._subscriptions += 1
            self.following = True
            while True:
                await self._handle(await self._notified(pubsub))
                self.mirror.expire(loop.time())
        finally:
            self.following = False
            with contextlib.suppress(RedisError, OSError):  # the connection may be dead
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis 8.2

    async def _notified(self, pubsub: PubSub) -> list[dict[str, Any]]:
        """The notifications of one listening period (redis_io.notifications)."""
        async with redis_errors("listening for health changes"):
            texts = await notifications(pubsub)
        notes: list[dict[str, Any]] = []
        for text in texts:
            with contextlib.suppress(ValueError, TypeError):
                notes.append(json.loads(text))
        return notes

    async def _handle(self, notes: list[dict[str, Any]]) -> None:
        names = sorted({str(n) for note in notes for n in note.get("verdicts", ())})
        if names:
            async with redis_errors("reading health records"):
                texts = await self._client.hmget(self._keys["records"], names)
            self.mirror.update({n: _decoded(t) for n, t in zip(names, texts, strict=True)})
        if any("holds" in note for note in notes):
            await self._resync_holds()
        if any("released" in note for note in notes):
            self._wake.set()  # the prober stepped down: claim now, not at the next period

    async def _resync(self) -> None:
        async with redis_errors("reading health records"):
            texts = await self._client.hgetall(self._keys["records"])
        records = {as_text(n): _decoded(t) for n, t in texts.items()}
        self.mirror.replace({n: r for n, r in records.items() if r is not None})
        await self._resync_holds()

    async def _resync_holds(self) -> None:
        async with redis_errors("reading health holds"):
            flat = await self._read_holds(keys=[self._keys["holds"]])
        now = asyncio.get_running_loop().time()
        holds: dict[str, float] = {}
        for field, left in zip(flat[::2], flat[1::2], strict=True):
            text = as_text(field)
            name = text.rpartition("/")[0] or text  # or a hold stored before hold ids
            holds[name] = max(holds.get(name, 0.0), now + int(left) / 1000)
        self.mirror.set_holds(holds)


def _decoded(text: bytes | str | None) -> Record | None:
    return None if text is None else decode_record(as_text(text))
