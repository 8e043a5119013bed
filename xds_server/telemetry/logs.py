"""Logging: plain text for people, one JSON object per line for log pipelines.

`--log-json` or ROUTER_LOG_FORMAT=json switches to JSON. When stderr is the
journal (a systemd unit, deploy/systemd/), text lines carry their priority as
an sd-daemon prefix (`<3>`: `journalctl -p err` filters on it) and no
timestamp, which the journal keeps itself. Fields given as
`extra=` (proxy id, version, backend, ...) become top-level JSON keys, so a
pipeline can filter on `node_id` without parsing messages; in text mode they
are left out of the line (the message names them already).

XdsEventLog is the logging implementation of the protocol engine's observer
(metrics and logs are two observers of the same hooks): every xDS event with
proxy id, type, version and generation.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from xds_server.resources import SHORT_NAMES
from xds_server.timefmt import iso_utc
from xds_server.xds.limits import loggable
from xds_server.xds.observe import StreamInfo

TEXT, JSON = "text", "json"
LOG_FORMATS = (TEXT, JSON)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

log = logging.getLogger("xds_server.xds")


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", **extra, "exception"?} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JournalFormatter(logging.Formatter):
    """Text for the journal: each line (a traceback's too) starts with the record's
    syslog priority, which journald reads as the entry's (sd-daemon(3):
    https://www.freedesktop.org/software/systemd/man/latest/sd-daemon.html)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def syslog_priority(level: int) -> int:
    """2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    for threshold, priority in ((50, 2), (40, 3), (30, 4), (20, 6)):
        if level >= threshold:
            return priority
    return 7


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """systemd sets $JOURNAL_STREAM to `device:inode` of the journal stream it
    connected stdout/stderr to (systemd.exec(5)); an inherited value names another file."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat((sys.stderr if stream is None else stream).fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture)
        return False
    return bool(expected) and expected == f"{stat.st_dev}:{stat.st_ino}"


def _text_formatter() -> logging.Formatter:
    return JournalFormatter() if stderr_is_journal() else logging.Formatter(TEXT_FORMAT)


def configure_logging(debug: bool, verbose: bool, log_format: str = TEXT) -> None:
    """--debug: everything; --verbose: info; default: warnings, plus the demo's own lines."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == JSON else _text_formatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if not debug:
        logging.getLogger("xds_server.demo").setLevel(logging.INFO)


def _fields(info: StreamInfo, type_url: str | None = None, **more: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "node_id": info.node_id,
        "stream_id": info.stream_id,
        "stream_kind": info.kind,
    }
    if type_url is not None:
        fields["type"] = SHORT_NAMES.get(type_url, type_url)
    fields.update(more)
    return fields


@dataclass
class _RepeatedNack:
    """The latest NACK a stream logged, and how many identical ones followed."""

    key: tuple[str, str, str]  # type URL, version, message
    repeats: int = 0
    unreported: int = 0


class XdsEventLog:
    """xDS events as log records carrying proxy id, type and version as fields.

    docs/xds-protocol.md rule 37: text a client chose (its node id, a NACK's
    message, a type URL) is clipped and escaped (`xds.limits.loggable`), and a
    stream that NACKs the same version with the same message again and again
    logs it once, then how many more times: when its NACK changes, when it
    closes, and when the repeats reach 10, 100, 1000, ...
    """

    def __init__(self) -> None:
        self._nacks: dict[int, _RepeatedNack] = {}  # stream id -> its latest NACK

    def stream_opened(self, info: StreamInfo) -> None:
        log.info(
            "stream %d opened (%s) by %s",
            info.stream_id,
            info.kind,
            _who(info),
            extra=_fields(info, envoy_admin=info.envoy_admin, node_cluster=info.node_cluster),
        )

    def stream_closed(self, info: StreamInfo) -> None:
        held = self._nacks.pop(info.stream_id, None)
        if held is not None:
            self._report_repeats(info, held)
        log.info(
            "stream %d closed (%s) by %s",
            info.stream_id,
            info.kind,
            _who(info),
            extra=_fields(info),
        )

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        log.debug(
            "sent %s version %s (%d resources) to %s",
            SHORT_NAMES.get(type_url, type_url),
            version,
            len(names),
            _who(info),
            extra=_fields(
                info, type_url, version=version, generation=generation, resources=len(names)
            ),
        )

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        log.debug(
            "%s ACKed %s version %s",
            _who(info),
            SHORT_NAMES.get(type_url, type_url),
            version,
            extra=_fields(info, type_url, version=version, generation=generation, ack=True),
        )

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        key = (type_url, version, message)
        held = self._nacks.get(info.stream_id)
        if held is not None and held.key == key:
            held.repeats += 1
            held.unreported += 1
            if _is_power_of_ten(held.repeats):
                self._report_repeats(info, held)
            return
        if held is not None:
            self._report_repeats(info, held)
        self._nacks[info.stream_id] = _RepeatedNack(key)
        log.warning(
            "%s NACKed %s version %s: %s",
            _who(info),
            SHORT_NAMES.get(type_url, type_url),
            version,
            loggable(message),
            extra=_fields(info, type_url, version=version, generation=generation, ack=False),
        )

    def _report_repeats(self, info: StreamInfo, held: _RepeatedNack) -> None:
        if not held.unreported:
            return
        type_url, version, _ = held.key
        log.warning(
            "%s NACKed %s version %s %d more times with the same message",
            _who(info),
            SHORT_NAMES.get(type_url, type_url),
            version,
            held.unreported,
            extra=_fields(info, type_url, version=version, ack=False, repeats=held.unreported),
        )
        held.unreported = 0

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        pass

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        log.debug(
            "%s sent a stale nonce for %s",
            _who(info),
            SHORT_NAMES.get(type_url, type_url),
            extra=_fields(info, type_url),
        )

    def unserved_type(self, info: StreamInfo, type_url: str) -> None:
        """docs/xds-protocol.md rule 35: once per stream."""
        asked = loggable(type_url)
        log.warning(
            "%s asked for %s, which this server does not serve",
            _who(info),
            asked,
            extra={**_fields(info), "type": asked},
        )


def _who(info: StreamInfo) -> str:
    return loggable(info.node_id)


def _is_power_of_ten(count: int) -> bool:
    """10, 100, 1000, ..."""
    if count < 10:
        return False
    while count % 10 == 0:
        count //= 10
    return count == 1
