"""Where Envoy writes its access log: one JSON object per request on the router listener.

`router.access_log` is `stdout`, `off` or an absolute file path. It is part of
the intent, beside the listener's edge settings (model/edge.py): every replica
then builds the same listener, and a config reload that changes it reaches
Envoy as one LDS update. What each line holds is the translator's
(translate/access_log.py); the routing metrics never read it (they come from
Envoy's counters, xds_server/telemetry/). Nothing here does I/O: whether the
file's directory exists is checked when the settings load
(settings/access_log.py). The converter of the config value is
model/values.py's `to_access_log`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath


class AccessLogSink(StrEnum):
    STDOUT = "stdout"  # Envoy's standard output (a container's log, the journal)
    FILE = "file"  # a file on Envoy's host
    OFF = "off"


MAX_PATH = 4096  # Linux's PATH_MAX, terminating NUL included
EXPECTED = "stdout, off or an absolute file path"


@dataclass(frozen=True)
class AccessLog:
    sink: AccessLogSink = AccessLogSink.STDOUT
    path: str = ""  # the file, with sink FILE; "" otherwise

    def __str__(self) -> str:
        """As router_config.yaml spells it."""
        return self.path if self.sink is AccessLogSink.FILE else self.sink.value


def path_problem(path: str) -> str | None:
    """Why `path` cannot be Envoy's access log file, as far as the text tells."""
    if not path.startswith("/"):
        # Envoy would open it relative to its own working directory, which is
        # neither the config file's nor the operator's.
        return "is a relative path (Envoy's working directory would decide where it lands)"
    if len(path) > MAX_PATH:
        return f"is longer than {MAX_PATH} characters"
    if any(c in path for c in "\0\n\r"):
        return "holds a NUL or line break"
    if path.endswith("/") or PurePosixPath(path).name in ("", ".", ".."):
        return "names a directory, not a file"
    return None
