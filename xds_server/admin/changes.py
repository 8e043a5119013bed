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

from xds_server.admin.requests import MALFORMED
from xds_server.model.intent import Intent
from xds_server.pipeline.changes import MAX_WAIT_S, Applied, ChangeApplier, wait_seconds

# No "maximum": a longer wait is accepted and clamped, so the schema says no more
# than the validator (pipeline/changes.py wait_seconds) refuses.
WAIT_S_SCHEMA: dict[str, Any] = {
    "type": "number",
    "minimum": 0,
    "default": 5,
    "description": f"How long to wait for every proxy's ACK, in seconds (clamped to "
    f"{MAX_WAIT_S:g}).",
}
NOT_CONFIRMED = "stored, but not ACKed by every proxy in time (or NACKed): see failures"
# Error answers every changing route can give (besides its own 404/409; the
# document adds the ones every mutating call shares, admin/openapi.py).
CHANGE_ERRORS: dict[int, str] = {
    400: MALFORMED,
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
