"""The spec's "Backend health status" answer (GET /api/v1/router/health), rendered
from the intent and the health states."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xds_server.dns.base import Resolved
from xds_server.health.verdict import CONTROLLER, BackendHealth, summarize
from xds_server.model.intent import Backend, Health, Intent, Service
from xds_server.model.values import is_ip
from xds_server.telemetry.passive import PassiveView
from xds_server.timefmt import iso_utc

log = logging.getLogger("xds_server.health")


def health_report(
    intent: Intent,
    states: Mapping[str, BackendHealth],
    resolved: Resolved | None = None,
    passive: PassiveView | None = None,
) -> dict[str, object]:
    """The spec's "Backend health status" shape, grouped by display group; a
    backend named by DNS also shows its addresses and its lookup's error; each
    backend the proxies ejecting it (`passive`: none without telemetry)."""
    groups: dict[str, dict[str, object]] = {}
    for service in intent.services:
        group = groups.setdefault(service.display_group, {})
        for key, backend in display_keys(service, group).items():
            entry = backend_entry(states.get(backend.name), backend)
            entry = entry | dns_entry(backend, resolved)
            entry["ejected_by"] = ejected_by(passive, backend.name)
            group[key] = entry
    summary = summarize(intent, states)
    return {
        "health_status": groups,
        "overall_health": summary.overall,
        "total_backends": summary.total,
        "healthy_backends": summary.healthy,
        "unhealthy_backends": summary.unhealthy,
        "unknown_backends": summary.unknown,
    }


def display_keys(service: Service, taken: dict[str, object]) -> dict[str, Backend]:
    """ "qdrant-primary" shows as "primary" under its service; the full name is
    kept when the short one is empty or already used in the group."""
    keys: dict[str, Backend] = {}
    for backend in service.backends:
        short = backend.name.removeprefix(f"{service.name}-")
        key = short if short and short not in taken and short not in keys else backend.name
        keys[key] = backend
    return keys


def ejected_by(passive: PassiveView | None, name: str) -> list[dict[str, str]]:
    """[{node, since}] of the proxies whose outlier detection ejects `name`."""
    if passive is None:
        return []
    return [{"node": e.node_id, "since": iso_utc(e.since)} for e in passive.ejected_by(name)]


def backend_entry(state: BackendHealth | None, backend: Backend) -> dict[str, object]:
    last = state.last if state is not None else None
    # Envoys checking by HDS report a status, not how long the probe took.
    timed = last if state is not None and CONTROLLER in state.checked_by else None
    entry: dict[str, object] = {
        "status": str(state.verdict if state is not None else Health.UNKNOWN),
        "response_time_ms": None if timed is None else round(timed.elapsed_s * 1000, 1),
        "last_check": None if last is None else iso_utc(last.at),
        "checked_by": [] if state is None else list(state.checked_by),
        "last_report": {}
        if state is None
        else {checker: iso_utc(at) for checker, at in state.reported_at.items()},
    }
    if last is not None and last.error is not None:
        entry["error"] = last.error
    if backend.draining:
        entry["draining"] = True
    return entry


def dns_entry(backend: Backend, resolved: Resolved | None) -> dict[str, object]:
    """For a backend named by DNS: the addresses Envoy has as its endpoints (the
    last good ones while lookups fail), the lookup error and the last success."""
    if is_ip(backend.address):
        return {}
    lookup = None if resolved is None else resolved.lookup_of(backend.address)
    if lookup is None:
        return {"addresses": []}
    entry: dict[str, object] = {"addresses": list(lookup.addresses)}
    if lookup.resolved_at is not None:
        entry["resolved_at"] = iso_utc(lookup.resolved_at)
    if lookup.error is not None:
        entry["dns_error"] = lookup.error
    return entry
