"""Making a backend fail for real, and the temporary intent changes an
experiment makes; each is undone on exit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp

from xds_server.errors import Conflict, DependencyUnavailable
from xds_server.experiments.lab import (
    APPLY_WAIT_S,
    CONNECTION_REFUSED,
    DEFAULT_EJECTION_S,
    HTTP_503,
    POLL_S,
    Lab,
    Limits,
)
from xds_server.model.edits import find_backend, swap_address, swap_ejection_time
from xds_server.model.intent import Backend, Intent, SocketAddress
from xds_server.pipeline.changes import Applied, ChangeApplier
from xds_server.telemetry import envoy_stats

# --- making the backend fail, and undoing it -------------------------------------------


class Failure(Protocol):
    mode: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SampleFault:
    """The sample backend's own fault injection: 503 to every request, /health untouched."""

    mode = HTTP_503

    def __init__(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        self._session = session
        self._url = f"http://{SocketAddress(backend.address, backend.port)}/_control/fault"
        self._previous: dict[str, Any] | None = None

    async def start(self) -> None:
        self._previous = await fault_state(self._session, self._url)
        await self._post({"status": 503, "delay_ms": 0})

    async def stop(self) -> None:
        if self._previous is not None:
            previous = self._previous
            await self._post({"status": previous["status"], "delay_ms": previous["delay_ms"]})

    async def _post(self, body: dict[str, Any]) -> None:
        async with self._session.post(self._url, json=body) as response:
            if response.status != 200:
                raise DependencyUnavailable(f"{self._url} answered {response.status}")


async def fault_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """The sample backend's fault settings, or None when it has no such control."""
    try:
        async with session.get(url) as response:
            body = json.loads(await response.text()) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) and "status" in body else None


class RefusedPort:
    """Point the backend at a loopback port that refuses connections, by intent.

    Only the backend's address and port change, and only they are put back, and
    only while they are still the refusing port: the port is bound by this run,
    so no one else's value can equal it, and a weight or drain set meanwhile stays."""

    mode = CONNECTION_REFUSED

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._socket: socket.socket | None = None
        self._name = lab.target.name
        self._original = SocketAddress(lab.target.address, lab.target.port)
        self._refusing: SocketAddress | None = None
        self._entry = ""

    async def start(self) -> None:
        # Bound but never listening: connects are refused, and nobody else can
        # take the port while the experiment holds it.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        refusing = self._refusing = SocketAddress("127.0.0.1", self._socket.getsockname()[1])
        move = functools.partial(swap_address, name=self._name, old=self._original, new=refusing)
        self._entry = f"{self._name} pointed at refusing port {refusing} (restored)"
        self._lab.temporary_changes.append(self._entry)
        await change_intent(self._lab.ports.changes, move)

    async def stop(self) -> None:
        try:
            refusing = self._refusing
            if refusing is not None:
                back = functools.partial(
                    swap_address, name=self._name, old=refusing, new=self._original
                )
                applied = await change_intent(self._lab.ports.changes, back)
                if not _at(applied.before, self._name, refusing):
                    not_restored(self._lab, self._entry)
        finally:
            if self._socket is not None:
                self._socket.close()


def _at(intent: Intent, name: str, where: SocketAddress) -> bool:
    backend = find_backend(intent, name)
    return backend is not None and (backend.address, backend.port) == (where.host, where.port)


async def choose_failure(lab: Lab, wanted: str | None) -> Failure:
    url = f"http://{SocketAddress(lab.target.address, lab.target.port)}/_control/fault"
    controllable = await fault_state(lab.admin, url) is not None
    if wanted == HTTP_503 and not controllable:
        raise Conflict(f"{lab.target.name} has no /_control/fault; use connection_refused")
    if wanted == CONNECTION_REFUSED or not controllable:
        return RefusedPort(lab)
    return SampleFault(lab.admin, lab.target)


@contextlib.asynccontextmanager
async def failing(failure: Failure) -> AsyncIterator[None]:
    # stop() undoes what start() got done, also when start() failed halfway
    # (a stored change some proxy did not ACK).
    try:
        await failure.start()
        yield
    finally:
        await failure.stop()


# --- temporary intent changes ------------------------------------------------------------


async def change_intent(changes: ChangeApplier, change: Callable[[Intent], Intent]) -> Applied:
    """Store, publish and wait (bounded) for every proxy's ACK; DependencyUnavailable if not:
    an experiment must not run on a config some proxy does not have."""
    applied = await changes.apply(change, APPLY_WAIT_S)
    if not applied.applied:
        reasons = "; ".join(f"{f.node_id}: {f.reason}" for f in applied.failures)
        raise DependencyUnavailable(f"the experiment's intent change was not applied: {reasons}")
    return applied


KEPT = "(not restored: changed meanwhile by someone else, whose value stays)"


def not_restored(lab: Lab, entry: str) -> None:
    """Say in the answer that a temporary change was not undone, and why."""
    lab.temporary_changes[lab.temporary_changes.index(entry)] = entry.replace("(restored)", KEPT)


def ejection_time(intent: Intent, limits: Limits) -> float:
    configured = intent.policies.circuit_breaker_timeout_s
    return limits.ejection_time_s or min(configured, DEFAULT_EJECTION_S)


@contextlib.asynccontextmanager
async def ejection_time_set(lab: Lab, seconds: float) -> AsyncIterator[None]:
    """Run the block with `seconds` as the ejection time, restoring the configured one."""
    changes = lab.ports.changes
    configured = lab.ports.intent.intent.policies.circuit_breaker_timeout_s
    if seconds == configured:
        yield
        return
    entry = f"circuit_breaker_timeout {configured:g} s -> {seconds:g} s during the test (restored)"
    lab.temporary_changes.append(entry)
    try:
        await change_intent(changes, lambda i: swap_ejection_time(i, configured, seconds))
        await wait_cluster_ejection(lab, seconds)
        yield
    finally:
        back = await change_intent(changes, lambda i: swap_ejection_time(i, seconds, configured))
        if back.before.policies.circuit_breaker_timeout_s != seconds:
            not_restored(lab, entry)


async def wait_cluster_ejection(lab: Lab, seconds: float) -> None:
    """Wait until the proxy's active cluster carries `seconds` (it is rebuilt and re-warmed)."""
    # A believed ip:port (docs/xds-protocol.md rule 34), the answer size-capped.
    base = envoy_stats.admin_base_url(lab.proxy.envoy_admin or "")
    url = f"{base}/config_dump?resource=dynamic_active_clusters"
    while time.monotonic() < lab.deadline:
        with contextlib.suppress(
            aiohttp.ClientError, TimeoutError, ValueError, envoy_stats.AdminAnswerTooLarge
        ):
            async with lab.admin.get(url, allow_redirects=False) as response:
                dump = json.loads(await envoy_stats.read_body(response))
            if cluster_ejection_s(dump, lab.service.name) == seconds:
                return
        await asyncio.sleep(POLL_S)
    raise DependencyUnavailable("Envoy did not activate the temporary ejection time in time")


def cluster_ejection_s(dump: Any, name: str) -> float | None:
    for entry in dump.get("configs", []):
        cluster = entry.get("cluster", {})
        if cluster.get("name") == name:
            text = cluster.get("outlier_detection", {}).get("base_ejection_time", "")
            return float(text.removesuffix("s")) if text.endswith("s") else None
    return None
