"""timefmt: split from xds_server.health."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("xds_server.health")


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2025-07-15T14:30:00.123Z."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch * 1000) % 1000:03d}Z"
