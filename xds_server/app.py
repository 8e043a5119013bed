"""The controller: wiring, start-up order, config reload and graceful shutdown.

Start-up: load the intent from the store (Redis: adopt the shared intent, or
seed it), publish the first snapshot, then open the admin API, then the xDS
port, so the first proxy to connect already gets configuration. Shutdown runs
in reverse. One TaskGroup owns every background task.

With a Redis store, the state replicas must agree on is shared there too:
health verdicts (one elected prober, xds_server/redis_health.py), routing
totals and failover events (xds_server/redis_metrics.py). With the memory
store all of it stays in this process. docs/replicas.md has the why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from xds_server.admin import make_admin_app
from xds_server.cache import SnapshotCache
from xds_server.errors import ConfigError, DependencyUnavailable
from xds_server.experiments import Experiments, Recorded
from xds_server.health.checker import HealthChecker, Seed
from xds_server.health.shared import SharedHealth
from xds_server.health.verdict import BackendHealth, HealthObserver, HealthPolicy
from xds_server.model.intent import Health, SocketAddress
from xds_server.pipeline.publisher import Publisher
from xds_server.redis_io import connect
from xds_server.settings import Settings, format_problems, load_settings
from xds_server.store.base import IntentStore
from xds_server.store.factory import open_store
from xds_server.store.redis import RedisStore
from xds_server.telemetry.failover import (
    EventLog,
    FailoverEvent,
    FailoverTracker,
    MemoryEventLog,
    experiment_event,
)
from xds_server.telemetry.logs import XdsEventLog
from xds_server.telemetry.prometheus import ControllerMetrics, StateReaders, rejecting
from xds_server.telemetry.sampler import Ledger, MemoryLedger, TrafficSampler
from xds_server.telemetry.shared import RedisEventLog, RedisLedger
from xds_server.xds.observe import Observers, XdsObserver
from xds_server.xds.server import XdsEngine, start_server
from xds_server.xds.status import ProxyRegistry

log = logging.getLogger("xds_server.app")

CONFIG_POLL_S = 1.0
SHUTDOWN_GRACE_S = 2.0
PRE_CHANGE_READ_S = 0.3


class Controller:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        store: IntentStore | None = None,
        health_lease_s: float | None = None,  # default: settings.health_prober_lease
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.store: IntentStore = store or open_store(settings)
        # Shared state of replicas; None with the memory store.
        self.redis: Redis | None = None
        if isinstance(self.store, RedisStore):
            self.redis = connect(self.store.url)
        self.cache = SnapshotCache()
        self.proxies = ProxyRegistry()
        self.health: dict[str, Health] = {}
        self._observe(settings.metrics_enabled)
        self.engine = XdsEngine(self.cache, self.observers)
        self.publisher = Publisher(
            self.store,
            self.cache,
            lambda: self.health,
            on_build=self.metrics.publish.observe_build if self.metrics else None,
            before_cluster_change=self.count_traffic,
        )
        self.shared_health: SharedHealth | None = None
        lease = health_lease_s if health_lease_s is not None else settings.health_prober_lease
        self.health_checker = self._health(lease)
        # At most one resilience experiment at a time; each answer is a failover event.
        self.experiments = Experiments(on_record=self._experiment_recorded)
        self.xds_address = settings.xds_address
        self.admin_address = settings.intent.admin
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._reload_requested = asyncio.Event()

    # ---- observation (style.md, items 9 and 10) -------------------------------

    def _observe(self, metrics_enabled: bool) -> None:
        """Metrics, the traffic sampler and failover timing exist only with metrics on;
        logs and proxy status always."""
        self.registry = CollectorRegistry()
        self.metrics: ControllerMetrics | None = None
        self.traffic: TrafficSampler | None = None
        self.failovers: FailoverTracker | None = None
        self.event_log: EventLog = MemoryEventLog()
        observers: list[XdsObserver] = [self.proxies, XdsEventLog()]
        if metrics_enabled:
            self.metrics = ControllerMetrics(self.registry, self._state_readers())
            ledger: Ledger = MemoryLedger()
            if self.redis is not None:
                prefix = self._redis_prefix()
                ledger = RedisLedger(self.redis, prefix)
                self.event_log = RedisEventLog(self.redis, prefix)
            self.traffic = TrafficSampler(self.proxies, lambda: self.store.intent, ledger=ledger)
            self.failovers = FailoverTracker(
                self.cache,
                self.proxies,
                lambda: self.store.intent,
                lambda: self.health,
                on_event=self.event_log.add,
            )
            observers.append(self.metrics.xds)
        self.observers = Observers(observers)

    def _redis_prefix(self) -> str:
        assert isinstance(self.store, RedisStore)
        return self.store.prefix

    def _health(self, lease_s: float) -> HealthChecker:
        """The checker. Memory store: it writes verdicts into self.health, each change
        marks the publisher dirty. Redis store: it runs only on the elected prober and
        writes records; every replica's mirror writes self.health (redis_health.py)."""
        probes: list[HealthObserver] = [self.metrics.health] if self.metrics else []
        verdicts: list[HealthObserver] = [self.failovers] if self.failovers else []
        if self.redis is None:
            return HealthChecker(
                self.store,
                self.health,
                self.publisher.mark_dirty,
                health_policy(self.settings),
                observers=[*probes, *verdicts],
            )

        def make_checker(on_state: Callable[[str], None], seed: Seed) -> HealthChecker:
            # Its own verdicts are private: only verdicts read back from Redis publish.
            policy = health_policy(self.settings)
            return HealthChecker(
                self.store, {}, _nothing, policy, observers=probes, on_state=on_state, seed=seed
            )

        self.shared_health = SharedHealth(
            self.redis,
            self._redis_prefix(),
            self.store,
            self.health,
            self.publisher.mark_dirty,
            make_checker,
            observers=verdicts,
            lease_s=lease_s,
        )
        return self.shared_health.checker

    def health_states(self) -> dict[str, BackendHealth]:
        """What the health report shows: the verdicts this replica publishes, with the
        probe figures behind them (the prober's, with replicas)."""
        if self.shared_health is not None:
            return self.shared_health.states
        return self.health_checker.states

    @contextlib.asynccontextmanager
    async def hold_health(self, name: str, ttl_s: float) -> AsyncIterator[None]:
        """Freeze one backend's health (experiments); on every replica with Redis."""
        if self.shared_health is None:
            with self.health_checker.held(name):
                yield
            return
        async with self.shared_health.held(name, ttl_s):
            yield

    def _experiment_recorded(self, recorded: Recorded) -> None:
        event = experiment_event(recorded)
        if event is not None:
            self.event_log.add(event)

    def _state_readers(self) -> StateReaders:
        """Read at scrape time: nothing to keep in step."""
        return StateReaders(
            generation=lambda: self.cache.generation,
            connected_proxies=lambda: len(self.proxies.connected()),
            open_streams=lambda: sum(len(p.streams) for p in self.proxies.connected()),
            nacked_proxies=lambda: rejecting(self.proxies.connected()),
            backend_verdicts=lambda: [
                (s.name, b.name, self.health.get(b.name, Health.UNKNOWN))
                for s in self.store.intent.services
                for b in s.backends
            ],
        )

    async def count_traffic(self) -> None:
        """Take a traffic reading now (before a change that may reset Envoy's counters).

        Bounded by PRE_CHANGE_READ_S: a local Envoy answers in milliseconds, and a
        hung admin must not hold up the change (its reading is simply skipped)."""
        if self.traffic is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRE_CHANGE_READ_S):
                    await self.traffic.sample()

    async def failover_events(self) -> list[FailoverEvent]:
        """Health-check and experiment failovers (with Redis: of every replica, kept
        across restarts)."""
        return await self.event_log.events()

    # ---- life ----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        if self.shared_health is not None:
            await self.shared_health.start()
        await self._start_admin()
        await self.publisher.publish_now()
        self._grpc, port = await start_server(self.engine, str(self.settings.xds_address))
        self.xds_address = SocketAddress(self.settings.xds_address.host, port)

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(SHUTDOWN_GRACE_S)
            self._grpc = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        if self.shared_health is not None:
            await self.shared_health.stop()  # hands the prober lease over at once
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):  # closing a dead connection may fail
                await self.redis.aclose()
        await self.store.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set. Expects start() to have run."""
        try:
            async with asyncio.TaskGroup() as tasks:
                health = (
                    self.shared_health.run() if self.shared_health else self.health_checker.run()
                )
                background = [
                    tasks.create_task(self.publisher.run()),
                    tasks.create_task(self.store.run()),
                    tasks.create_task(self._watch_config()),
                    tasks.create_task(health),
                    tasks.create_task(self.event_log.run()),
                ]
                if self.traffic is not None and self.failovers is not None:
                    background.append(tasks.create_task(self.traffic.run()))
                    background.append(tasks.create_task(self.failovers.run()))
                await stop.wait()
                for task in background:
                    task.cancel()
        finally:
            await self.stop()

    async def _start_admin(self) -> None:
        self._admin = web.AppRunner(make_admin_app(self), access_log=None)
        await self._admin.setup()
        wanted = self.settings.intent.admin
        site = web.TCPSite(self._admin, wanted.host, wanted.port)
        await site.start()
        port = self._admin.addresses[0][1]
        self.admin_address = SocketAddress(wanted.host, port)
        if port != wanted.port:  # port 0: Envoy must learn the real one
            # Only while the stored intent still names port 0: a shared intent that
            # another replica already completed is not this replica's to change.
            await self.store.update(
                lambda i: (
                    dataclasses.replace(i, admin=self.admin_address) if i.admin == wanted else i
                )
            )

    # ---- configuration reload --------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP handler: reload the config file at the next opportunity."""
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Load the config file again. An invalid file changes nothing and logs every problem."""
        try:
            settings = load_settings(self.config_path)
        except ConfigError as error:
            log.error(
                "config reload refused, keeping the running config:\n%s", format_problems(error)
            )
            return False
        intent = dataclasses.replace(settings.intent, admin=self.admin_address)
        try:
            await self.store.put(intent)
        except DependencyUnavailable as error:  # keep running; the operator can reload again
            log.error("config reload not stored: %s", error)
            return False
        log.info("config reloaded from %s", settings.source)
        return True

    async def _watch_config(self) -> None:
        last = _mtime(self.config_path)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONFIG_POLL_S):
                    await self._reload_requested.wait()
            now = _mtime(self.config_path)
            if self._reload_requested.is_set() or now != last:
                self._reload_requested.clear()
                last = now
                if self.config_path is not None:
                    await self.reload()


def health_policy(settings: Settings) -> HealthPolicy:
    return HealthPolicy(
        interval_s=settings.health_check_interval_s,
        timeout_s=settings.health_check_timeout_s,
        healthy_threshold=settings.health_check_healthy_threshold,
        unhealthy_threshold=settings.health_check_unhealthy_threshold,
        jitter=settings.health_check_jitter,
    )


def _nothing() -> None:
    pass


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None
