"""One time format for every timestamp the controller answers."""

from __future__ import annotations

from xds_server.timefmt import iso_utc


def test_iso_utc_is_utc_with_milliseconds() -> None:
    """last_check: ISO-8601 UTC with a Z, as the spec shows."""
    assert iso_utc(1752589800.25) == "2025-07-15T14:30:00.250Z"
