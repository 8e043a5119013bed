"""What every intent-changing admin call shares: the bounded wait, the timing,
and how "applied" is reported.

Status codes of a change that passed validation:
- 200/201: stored, published, and ACKed by every connected proxy;
- 202: stored and published, but some proxy NACKed it or did not ACK within
  the wait; the body says which proxy and why.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xds_server.model.intent import Intent
from xds_server.pipeline.changes import MAX_WAIT_S, Applied, ChangeApplier, wait_seconds

WAIT_S_SCHEMA: dict[str, Any] = {
    "type": "number",
    "minimum": 0,
    "maximum": MAX_WAIT_S,
    "default": 5,
    "description": "How long to wait for every proxy's ACK, in seconds (clamped to 60).",
}
NOT_CONFIRMED = "stored, but not ACKed by every proxy in time (or NACKed): see failures"
# Error answers every changing route can give (besides its own 404/409).
CHANGE_ERRORS: dict[int, str] = {
    400: "malformed body (not JSON, or not an object)",
    401: "missing or wrong bearer token (only when ROUTER_ADMIN_TOKEN is set)",
    422: "invalid value; `field` names it",
    503: 'nothing was stored (`outcome` "not_stored"): the store (Redis) is unreachable, '
    "or reconciling after a data loss; safe to retry",
    504: 'the store did not answer after the write was sent (`outcome` "unknown"): it may '
    "have been stored as `revision`; read the state back (`check` says how) before retrying",
}


def wait_value(value: object) -> float:
    """`wait_s` as a converter (admin/bodies.py and the DELETE query; raises InvalidValue)."""
    return wait_seconds(value)


@dataclass(frozen=True)
class Timed:
    applied: Applied
    seconds: float


async def timed_apply(
    changes: ChangeApplier,
    change: Callable[[Intent], Intent],
    wait_s: float,
    *,
    ready: Awaitable[object] | None = None,  # see pipeline.changes.ChangeApplier
) -> Timed:
    started = time.monotonic()
    applied = await changes.apply(change, wait_s, ready=ready)
    return Timed(applied, time.monotonic() - started)


def outcome(timed: Timed) -> dict[str, Any]:
    """The confirmation part of a change's answer."""
    applied = timed.applied
    return {
        "applied": applied.applied,
        "generation": applied.generation,
        "proxies": applied.proxies,
        "failures": [{"node_id": f.node_id, "reason": f.reason} for f in applied.failures],
        "apply_ms": round(timed.seconds * 1000, 1),
    }


def status_of(timed: Timed, success: int = 200) -> int:
    return success if timed.applied.applied else 202
