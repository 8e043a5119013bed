"""router.access_log's file, checked when the settings load.

Envoy opens its access log file when it takes the listener; a file it cannot
open makes it refuse (NACK) the whole listener, so no request would be served
at all (docs/envoy-notes.md, "Access logs"). So `xds-server validate`, the
start and a reload refuse a path whose directory is missing or is no
directory, or that names an existing directory, at `router.access_log` (or
`env:ROUTER_ACCESS_LOG`). The check runs on the controller's host: the right
one for the deployments this project ships, where Envoy runs beside the
controller with a file, or logs to stdout (compose, Kubernetes).
"""

from __future__ import annotations

from pathlib import Path

from xds_server.model.access_log import AccessLogSink
from xds_server.model.validation import Located
from xds_server.settings.environment import Router


def access_log_problems(router: Router) -> list[Located]:
    log = router.values.access_log
    if log.sink is not AccessLogSink.FILE or "access_log" in router.unknown:
        return []
    problem = _file_problem(Path(log.path))
    return [] if problem is None else [Located(router.loc_of("access_log"), problem)]


def _file_problem(path: Path) -> str | None:
    directory = path.parent
    try:
        if path.is_dir():
            return f"{str(path)!r} is a directory; name a file in it"
        if not directory.exists():
            return f"the directory {str(directory)!r} does not exist"
        if not directory.is_dir():
            return f"{str(directory)!r} is not a directory"
    except OSError as error:  # e.g. a parent without search permission
        return f"{str(path)!r} cannot be checked: {error.strerror or error}"
    return None
