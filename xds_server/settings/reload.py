"""Reloading the config file: on request (SIGHUP) and when the file changes.

An invalid file changes nothing: every problem is logged and the running
configuration stays. So does a valid file whose intent cannot be stored (the
store is unreachable); the operator can reload again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from xds_server.errors import ConfigError, DependencyUnavailable
from xds_server.settings import Settings, format_problems, load_settings

log = logging.getLogger("xds_server.settings")

CONFIG_POLL_S = 1.0


class ConfigWatcher:
    def __init__(self, path: Path | None, apply: Callable[[Settings], Awaitable[None]]) -> None:
        self._path = path
        self._apply = apply  # stores the new intent; may raise DependencyUnavailable
        self._requested = asyncio.Event()

    def request_reload(self) -> None:
        self._requested.set()

    async def reload(self) -> bool:
        """Load the file again; False if it was refused or could not be stored."""
        try:
            settings = load_settings(self._path)
        except ConfigError as error:
            log.error(
                "config reload refused, keeping the running config:\n%s", format_problems(error)
            )
            return False
        try:
            await self._apply(settings)
        except DependencyUnavailable as error:
            log.error("config reload not stored: %s", error)
            return False
        log.info("config reloaded from %s", settings.source)
        return True

    async def run(self) -> None:
        """Poll the file's mtime every CONFIG_POLL_S, and wake at once on a request."""
        last = _mtime(self._path)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONFIG_POLL_S):
                    await self._requested.wait()
            now = _mtime(self._path)
            if self._requested.is_set() or now != last:
                self._requested.clear()
                last = now
                if self._path is not None:
                    await self.reload()


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None
