"""The composition root: builds every component, wires each to the narrow
collaborators it uses, and owns start-up and shutdown order.

Only this module knows every concrete class. The one choice between memory
and Redis is made once, in `open_state`: with a Redis store, the state
replicas must agree on is shared there too (health verdicts from one elected
prober, routing totals, failover events; docs/replicas.md has the why); with
the memory store all of it stays in this process.

Start-up: load the intent from the store (Redis: adopt the shared intent, or
seed it), read the shared health, open the admin API, publish the first
snapshot, then open the xDS port, so the first proxy to connect already gets
configuration. Shutdown runs in reverse. One TaskGroup owns every background
task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from xds_server.admin import make_admin_app
from xds_server.admin.context import AdminContext
from xds_server.cache import SnapshotCache
from xds_server.dns.base import Resolved
from xds_server.dns.cares import CaresResolver
from xds_server.dns.refresher import DnsRefresher
from xds_server.errors import AddressUnavailable, ConfigError, Problem
from xds_server.experiments import Experiments, LabPorts
from xds_server.health.base import HealthSource
from xds_server.health.checker import Delegate, HealthChecker, Seed
from xds_server.health.delegation import Delegation
from xds_server.health.local import LocalHealth
from xds_server.health.shared import SharedHealth
from xds_server.health.verdict import HealthObserver, HealthPolicy
from xds_server.model.certificates import EdgeCertificate
from xds_server.model.health_checker import HealthChecker as HealthCheckerKind
from xds_server.model.intent import Health, SocketAddress
from xds_server.pemfiles import TlsFiles, TlsFilesUnusable
from xds_server.pipeline.certificates import CertificateWatcher
from xds_server.pipeline.changes import IntentChanges
from xds_server.pipeline.publisher import Publisher
from xds_server.redis_io import connect
from xds_server.settings import Settings
from xds_server.settings.reload import ConfigWatcher
from xds_server.settings.start_only import start_only_changes
from xds_server.store.base import IntentStore
from xds_server.store.memory import MemoryStore
from xds_server.store.redis import RedisStore
from xds_server.telemetry import Telemetry
from xds_server.telemetry.failover import EventLog, FailoverTracker, MemoryEventLog
from xds_server.telemetry.logs import XdsEventLog
from xds_server.telemetry.models import model_traffic
from xds_server.telemetry.passive import PassiveView
from xds_server.telemetry.prometheus import ControllerMetrics, StateReaders, rejecting
from xds_server.telemetry.sampler import Ledger, MemoryLedger, TrafficSampler
from xds_server.telemetry.shared import RedisEventLog, RedisLedger
from xds_server.xds.hds import HdsSessions
from xds_server.xds.identity import Admission
from xds_server.xds.observe import Observers, XdsObserver
from xds_server.xds.server import XdsEngine, start_server
from xds_server.xds.status import ProxyRegistry
from xds_server.xds.tls import ReloadingCredentials

log = logging.getLogger("xds_server.app")

SHUTDOWN_GRACE_S = 2.0
PRE_CHANGE_READ_S = 0.3
# A DNS answer on a working network takes milliseconds; a server that does not
# answer must not hold start-up or a round for long (the last addresses stay).
DNS_TIMEOUT_S = 2.0


# ---- memory or Redis: chosen once ----------------------------------------------------


class LocalState:
    """One controller: everything in this process."""

    def __init__(self, store: IntentStore) -> None:
        self.store = store

    def ledger(self) -> Ledger:
        return MemoryLedger()

    def event_log(self) -> EventLog:
        return MemoryEventLog()

    def health(self, wiring: HealthWiring) -> HealthSource:
        observers = [*wiring.probe_observers, *wiring.verdict_observers]
        return LocalHealth(
            self.store,
            wiring.on_change,
            wiring.policy,
            observers,
            resolved=wiring.resolved,
            ejected=wiring.ejected,
            delegate=wiring.delegate,
        )

    async def close(self) -> None:
        pass


class SharedState:
    """Replicas on one Redis: the intent's prefix keys the shared health and telemetry."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.redis: Redis = connect(store.url)

    def ledger(self) -> Ledger:
        return RedisLedger(self.redis, self.store.prefix)

    def event_log(self) -> EventLog:
        return RedisEventLog(self.redis, self.store.prefix)

    def health(self, wiring: HealthWiring) -> HealthSource:
        def make_checker(on_state: Callable[[str], None], seed: Seed) -> HealthChecker:
            # Its own verdicts are private: only verdicts read back from Redis publish.
            return HealthChecker(
                self.store,
                {},
                _nothing,
                wiring.policy,
                observers=wiring.probe_observers,
                on_state=on_state,
                seed=seed,
                resolved=wiring.resolved,
                ejected=wiring.ejected,
                delegate=wiring.delegate,
            )

        return SharedHealth(
            self.redis,
            self.store.prefix,
            self.store,
            wiring.on_change,
            make_checker,
            observers=wiring.verdict_observers,
            lease_s=wiring.lease_s,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection may fail
            await self.redis.aclose()


State = LocalState | SharedState


@dataclasses.dataclass(frozen=True)
class HealthWiring:
    policy: HealthPolicy
    on_change: Callable[[], None]  # a verdict changed: publish
    probe_observers: Sequence[HealthObserver]  # every probe (metrics)
    verdict_observers: Sequence[HealthObserver]  # published verdict changes (failovers)
    lease_s: float  # the prober's lease, with replicas
    resolved: Resolved  # the addresses of backends named by DNS, which probes visit
    # Envoy's outlier detection ejects this backend on some proxy (telemetry/passive.py)
    ejected: Callable[[str], bool] | None = None
    # router.health_checker: envoy - the Envoys on HDS probe (health/delegation.py)
    delegate: Delegate | None = None


def open_state(settings: Settings, store: IntentStore | None = None) -> State:
    """RedisStore when settings.redis_url is set (ROUTER_REDIS_URL), else MemoryStore."""
    if store is None:
        store = (
            RedisStore(settings.redis_url, settings.intent)
            if settings.redis_url
            else MemoryStore(settings.intent)
        )
    return SharedState(store) if isinstance(store, RedisStore) else LocalState(store)


def health_policy(settings: Settings) -> HealthPolicy:
    return HealthPolicy(
        interval_s=settings.health_check_interval_s,
        timeout_s=settings.health_check_timeout_s,
        healthy_threshold=settings.health_check_healthy_threshold,
        unhealthy_threshold=settings.health_check_unhealthy_threshold,
        jitter=settings.health_check_jitter,
    )


# ---- the controller ------------------------------------------------------------------


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
        self.state = open_state(settings, store)
        self.store = self.state.store
        self.cache = SnapshotCache()
        self.proxies = ProxyRegistry()
        self.registry = CollectorRegistry()
        self.event_log = self.state.event_log()
        self.telemetry = self._telemetry() if settings.metrics_enabled else None
        self.dns = DnsRefresher(
            self.store,
            CaresResolver(settings.dns_servers, timeout_s=DNS_TIMEOUT_S),
            lambda: self.publisher.mark_dirty(),  # a changed record set: one publish
            interval_s=settings.dns_refresh_interval_s,
            timeout_s=DNS_TIMEOUT_S,
        )
        # HDS is served whoever probes: an Envoy bootstrapped with hds_config waits
        # for a specifier rather than retrying a refused stream.
        self.hds = HdsSessions()
        self.delegation = (
            Delegation(
                self.hds,
                self.store,
                health_policy(settings),
                settings.health_checkers_per_backend,
                self.dns,
            )
            if settings.health_checker is HealthCheckerKind.ENVOY
            else None
        )
        lease_s = settings.health_prober_lease if health_lease_s is None else health_lease_s
        self.health = self._health(lease_s)
        self.edge_tls: CertificateWatcher | None = None  # router.tls, loaded by start()
        self.publisher = Publisher(
            self.store,
            self.cache,
            lambda: self.health.verdicts,
            addresses=lambda: self.dns.addresses,
            on_build=self.telemetry.metrics.publish.observe_build if self.telemetry else None,
            before_cluster_change=self.count_traffic,
            certificate=self._edge_certificate,
        )
        self.engine = XdsEngine(
            self.cache,
            self._xds_observers(),
            admission=Admission(
                admin_allowlist=settings.envoy_admin_allowlist,
                require_certificate=settings.xds_tls is not None
                and settings.xds_tls.client_ca_file is not None,
            ),
        )
        self.changes = IntentChanges(self.store, self.publisher, self.proxies)
        self.experiments = Experiments(on_event=self.event_log.add)
        self.config = ConfigWatcher(config_path, self._reloaded)
        self.xds_address = settings.xds_address
        self.admin_address = settings.intent.admin
        self._grpc: grpc.aio.Server | None = None
        self._admin: web.AppRunner | None = None

    def _edge_certificate(self) -> EdgeCertificate | None:
        """The listener's certificate as of now (router.tls; None: plain HTTP)."""
        return self.edge_tls.current if self.edge_tls is not None else None

    def _telemetry(self) -> Telemetry:
        intent = lambda: self.store.intent  # noqa: E731 - read at each use
        # The first ejection of a backend seen asks for an early probe (health/checker.py).
        passive = PassiveView(on_first=lambda name: self.health.probe_now(name))
        sampler = TrafficSampler(self.proxies, intent, ledger=self.state.ledger(), passive=passive)
        readers = StateReaders(  # read at scrape time: nothing to keep in step
            generation=lambda: self.cache.generation,
            connected_proxies=lambda: len(self.proxies.connected()),
            open_streams=lambda: sum(len(p.streams) for p in self.proxies.connected()),
            nacked_proxies=lambda: rejecting(self.proxies.connected()),
            backend_verdicts=lambda: [
                (s.name, b.name, self.health.verdicts.get(b.name, Health.UNKNOWN))
                for s in self.store.intent.services
                for b in s.backends
            ],
            # The front door's per-model totals, as of the sampler's latest reading.
            model_traffic=lambda: model_traffic(sampler.book, self.store.intent),
            ejecting_proxies=lambda: passive.ejecting(self.store.intent.services),
            ejections_seen=lambda: passive.seen(self.store.intent.services),
            backend_states=lambda: [
                (s.name, b.name, state)
                for s in self.store.intent.services
                for b in s.backends
                if (state := self.health.states.get(b.name)) is not None
            ],
        )
        return Telemetry(
            metrics=ControllerMetrics(self.registry, readers),
            sampler=sampler,
            failovers=FailoverTracker(
                self.cache,
                self.proxies,
                intent,
                lambda: dict(self.health.verdicts),
                on_event=self.event_log.add,
            ),
            events=self.event_log,
            passive=passive,
        )

    def _health(self, lease_s: float) -> HealthSource:
        telemetry = self.telemetry
        return self.state.health(
            HealthWiring(
                policy=health_policy(self.settings),
                on_change=lambda: self.publisher.mark_dirty(),
                probe_observers=[telemetry.metrics.health] if telemetry else [],
                verdict_observers=[telemetry.failovers] if telemetry else [],
                lease_s=lease_s,
                resolved=self.dns,
                delegate=self.delegation,
                ejected=telemetry.passive.ejected if telemetry else None,
            )
        )

    def _xds_observers(self) -> Observers:
        observers: list[XdsObserver] = [self.proxies, XdsEventLog()]
        if self.telemetry is not None:
            observers.append(self.telemetry.metrics.xds)
        return Observers(observers)

    def admin_context(self) -> AdminContext:
        return AdminContext(
            intent=self.store,
            changes=self.changes,
            health=self.health,
            proxies=self.proxies,
            published=self.publisher,
            lab=LabPorts(
                self.store,
                self.changes,
                self.health,
                self.proxies,
                self.experiments,
                listener_certificate=self._edge_certificate,
            ),
            telemetry=self.telemetry,
            admin_token=self.settings.admin_token,
            dns=self.dns,
        )

    async def count_traffic(self) -> None:
        """Take a traffic reading now (before a change that may reset Envoy's counters),
        unless an admin change just took one for it (telemetry/sampler.py).

        Bounded by PRE_CHANGE_READ_S: a local Envoy answers in milliseconds, and a
        hung admin must not hold up the change (its reading is simply skipped)."""
        if self.telemetry is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRE_CHANGE_READ_S):
                    await self.telemetry.sampler.before_cluster_change()

    # ---- life ----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.dns.start()  # names resolved before the first probe and publish
        await self.health.start()
        await self._start_admin()
        self.edge_tls = edge_certificates(self.settings, self.publisher.mark_dirty)
        await self.publisher.publish_now()
        tls = xds_credentials(self.settings)
        with _listening("xDS server", self.settings.xds_address, "router.xds_address"):
            self._grpc, port = await start_server(
                self.engine, str(self.settings.xds_address), tls, hds=self.hds
            )
        self.xds_address = SocketAddress(self.settings.xds_address.host, port)

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(SHUTDOWN_GRACE_S)
            self._grpc = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        await self.health.stop()  # a shared prober hands its lease over at once
        await self.dns.close()
        await self.state.close()
        if self.telemetry is not None:
            await self.telemetry.sampler.aclose()  # its kept connections to the Envoys
        await self.store.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set. Expects start() to have run."""
        try:
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(self.publisher.run()),
                    tasks.create_task(self.store.run()),
                    tasks.create_task(self.config.run()),
                    tasks.create_task(self.health.run()),
                    tasks.create_task(self.dns.run()),
                    tasks.create_task(self.event_log.run()),
                ]
                if self.edge_tls is not None:
                    background.append(tasks.create_task(self.edge_tls.run()))
                if self.telemetry is not None:
                    background.append(tasks.create_task(self.telemetry.sampler.run()))
                    background.append(tasks.create_task(self.telemetry.failovers.run()))
                await stop.wait()
                for task in background:
                    task.cancel()
        finally:
            await self.stop()

    async def _start_admin(self) -> None:
        self._admin = web.AppRunner(make_admin_app(self.admin_context()), access_log=None)
        await self._admin.setup()
        wanted = self.settings.intent.admin
        site = web.TCPSite(self._admin, wanted.host, wanted.port)
        with _listening("admin API", wanted, "router.admin_address"):
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
        self.config.request_reload()

    async def reload(self) -> bool:
        """Load the config file again. An invalid file changes nothing and logs every problem."""
        return await self.config.reload()

    async def _reloaded(self, settings: Settings) -> None:
        # A running experiment restores state when it ends: the file waits for that,
        # so its values are the last word (experiments/__init__.py).
        if self.experiments.running is not None:
            log.info("config reload waits until %s has ended", self.experiments.running)
            await self.experiments.idle()
        # The admin port may have been chosen at start (port 0): keep the real one.
        await self.store.put(dataclasses.replace(settings.intent, admin=self.admin_address))
        for key in start_only_changes(self.settings, settings):
            log.warning(
                "config reload: %s changed, but it is read only at start; the running value "
                "stays until a restart",
                key,
                extra={"setting": key},
            )


def xds_credentials(settings: Settings) -> ReloadingCredentials | None:
    """router.xds_tls as server credentials; files that cannot be used are a
    ConfigError naming the setting (checked before the port opens)."""
    tls = settings.xds_tls
    if tls is None:
        return None
    files = _tls_files(tls.cert_file, tls.key_file, tls.client_ca_file)
    try:
        return ReloadingCredentials(files)
    except TlsFilesUnusable as error:
        raise _config_error("router.xds_tls", error) from error


def edge_certificates(
    settings: Settings, on_change: Callable[[], None]
) -> CertificateWatcher | None:
    """router.tls as the watched certificate of the listener; files that cannot be
    used are a ConfigError naming the setting (checked before the first publish)."""
    tls = settings.tls
    if tls is None:
        return None
    files = _tls_files(tls.cert_file, tls.key_file, tls.client_ca_file)
    try:
        return CertificateWatcher(files, on_change)
    except TlsFilesUnusable as error:
        raise _config_error("router.tls", error) from error


def _config_error(setting: str, error: TlsFilesUnusable) -> ConfigError:
    return ConfigError([Problem(f"{setting}.{key}", message) for key, message in error.problems])


def _tls_files(cert_file: str, key_file: str, client_ca_file: str | None) -> TlsFiles:
    ca = None if client_ca_file is None else Path(client_ca_file)
    return TlsFiles(Path(cert_file), Path(key_file), ca)


@contextlib.contextmanager
def _listening(server: str, address: SocketAddress, setting: str) -> Iterator[None]:
    """A bind that fails (port taken, address not local) as one clear error."""
    try:
        yield
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise AddressUnavailable(server, address, reason, setting) from error


def _nothing() -> None:
    pass
