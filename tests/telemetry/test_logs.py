"""Log lines for the journal: priority prefixes when stderr is the journal stream;
the xDS event log's NACK lines (docs/xds-protocol.md rule 37)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from xds_server.resources import ENDPOINT
from xds_server.telemetry.logs import JournalFormatter, XdsEventLog, stderr_is_journal
from xds_server.xds.observe import StreamInfo


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("xds_server.test", level, __file__, 1, message, None, None)


def test_every_line_carries_the_priority() -> None:
    formatter = JournalFormatter()
    assert formatter.format(record(logging.ERROR, "refused")) == "<3>ERROR xds_server.test: refused"
    assert formatter.format(record(logging.INFO, "a\nb")).splitlines() == [
        "<6>INFO xds_server.test: a",
        "<6>b",
    ]
    assert formatter.format(record(logging.DEBUG, "x")).startswith("<7>")
    assert formatter.format(record(logging.WARNING, "x")).startswith("<4>")


def test_the_journal_is_recognized_by_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert stderr_is_journal(stream)
        assert not stderr_is_journal(other)  # inherited by a process whose stderr moved
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal(stream)


def test_nack_repeats_are_counted_at_powers_of_ten(caplog: pytest.LogCaptureFixture) -> None:
    """docs/xds-protocol.md rule 37: 2,500 identical NACKs of one stream are 5
    lines (the first; 10, 90 and 900 more as the repeats reach 10, 100 and
    1,000; the 1,499 left at close), and
    another stream's NACK is its own."""
    events = XdsEventLog()
    one = StreamInfo(1, "ads", "node-1", "c", None)
    two = StreamInfo(2, "ads", "node-2", "c", None)
    caplog.set_level(logging.WARNING, "xds_server.xds")
    for _ in range(2_500):
        events.nacked(one, ENDPOINT, "v1", "bad", 1)
    events.nacked(two, ENDPOINT, "v1", "bad", 1)
    events.stream_closed(one)
    events.stream_closed(two)
    assert [r.getMessage() for r in caplog.records] == [
        "node-1 NACKed eds version v1: bad",
        "node-1 NACKed eds version v1 10 more times with the same message",
        "node-1 NACKed eds version v1 90 more times with the same message",
        "node-1 NACKed eds version v1 900 more times with the same message",
        "node-2 NACKed eds version v1: bad",
        "node-1 NACKed eds version v1 1499 more times with the same message",
    ]
    assert not events._nacks  # nothing kept for closed streams
