"""The one time format of every answer and log: ISO-8601 UTC with milliseconds
and a Z, e.g. 2025-07-15T14:30:00.123Z."""

from __future__ import annotations

import time


def iso_utc(epoch: float) -> str:
    """`epoch` (seconds since 1970, the wall clock) in the one format."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch * 1000) % 1000:03d}Z"


def utc_now() -> str:
    return iso_utc(time.time())
