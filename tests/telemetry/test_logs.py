"""Log lines for the journal: priority prefixes when stderr is the journal stream."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from xds_server.telemetry.logs import JournalFormatter, stderr_is_journal


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
