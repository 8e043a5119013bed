"""Reloading the config file: on request (SIGHUP) and when the file changes.

Promises:
- A file is applied only once it has settled: two reads SETTLE_S apart found
  the same mtime, size, inode and content hash, and what is parsed is those
  bytes (no third read that could catch a new writer). A file written in place
  is therefore never applied half-written while its writer pauses less than
  SETTLE_S; writing a temporary file and renaming it over the config (README,
  "Configuration reload") is atomic whatever the pauses. A file still changing
  after SETTLE_GIVE_UP_S is refused for now; its next change is looked at again.
- An invalid file changes nothing: every problem is logged and the running
  configuration stays. So does a valid file whose intent cannot be stored (the
  store is unreachable); the operator can reload again. A file beyond the
  limits of settings/yamlfile.py (size, nesting, aliases) is an invalid file.
- The file is read and parsed in a daemon thread: a large file does not hold
  the event loop (xDS streams, the admin API, the watchdog keep running), and a
  stop does not wait for a parse in progress.
- The watcher outlives any fault of a reload, a bug included: it is logged and
  the watching goes on.
- Changes are measured from when the watcher was made (at the controller's
  construction, right after the start read the file), not from its first poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from xds_server.errors import ConfigError, DependencyUnavailable, Problem
from xds_server.settings import (
    EMBEDDED_DEFAULTS,
    EMBEDDED_SOURCE,
    Settings,
    format_problems,
    settings_from,
)
from xds_server.settings.yamlfile import DEFAULT_LIMITS, read_config_bytes

log = logging.getLogger("xds_server.settings")

CONFIG_POLL_S = 1.0  # how often the file's stat is looked at
SETTLE_S = 0.5  # how long a file must stay the same before it is applied
SETTLE_GIVE_UP_S = 10.0  # a file still changing after this is refused, for now

T = TypeVar("T")
StatKey = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True)
class FileState:
    """What one read of the file saw: its bytes and its stat, taken right after."""

    key: StatKey
    digest: str  # SHA-256 of content
    content: bytes = field(repr=False, compare=False)


class ConfigWatcher:
    def __init__(self, path: Path | None, apply: Callable[[Settings], Awaitable[None]]) -> None:
        self._path = path
        self._apply = apply  # stores the new intent; may raise DependencyUnavailable
        self._requested = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()  # a request and a change: applied in turn
        self._seen = _stat_key(path)

    def request_reload(self) -> None:
        self._requested.set()

    async def reload(self) -> bool:
        """Load the file again once it has settled; False if it was refused or
        could not be stored."""
        async with self._one_at_a_time:
            try:
                settings = await self._settled_settings()
            except ConfigError as error:
                log.error(
                    "config reload refused, keeping the running config:\n%s",
                    format_problems(error),
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
        """Poll the file's stat every CONFIG_POLL_S, and wake at once on a request."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONFIG_POLL_S):
                    await self._requested.wait()
            now = _stat_key(self._path)
            if self._requested.is_set() or now != self._seen:
                self._requested.clear()
                self._seen = now
                if self._path is not None:
                    await self._reload_come_what_may()

    async def _reload_come_what_may(self) -> None:
        try:
            await self.reload()
        except Exception:  # a bug: the running config stays, and so does the watcher
            log.exception("config reload failed, keeping the running config")

    async def _settled_settings(self) -> Settings:
        if self._path is None:
            content = await _in_daemon_thread(_read_embedded)
            return await _in_daemon_thread(settings_from, content, os.environ, EMBEDDED_SOURCE)
        source = os.fspath(self._path)
        state = await self._settled(self._path, source)
        return await _in_daemon_thread(settings_from, state.content, os.environ, source)

    async def _settled(self, path: Path, source: str) -> FileState:
        """The file once two reads SETTLE_S apart agree."""
        deadline = time.monotonic() + SETTLE_GIVE_UP_S
        state = await _in_daemon_thread(_read_state, path, source)
        while True:
            await asyncio.sleep(SETTLE_S)
            again = await _in_daemon_thread(_read_state, path, source)
            self._seen = again.key
            if again == state:
                return again
            if time.monotonic() > deadline:
                raise ConfigError(
                    [
                        Problem(
                            source,
                            f"the file is still changing after {SETTLE_GIVE_UP_S:g} s; write"
                            " it to a temporary file and rename that over it",
                        )
                    ]
                )
            state = again


def _read_state(path: Path, source: str) -> FileState:
    content = read_config_bytes(path, source, DEFAULT_LIMITS.max_bytes)
    key = _stat_key(path)
    if key is None:  # gone since it was read: certainly not settled
        raise ConfigError([Problem(source, "cannot read: the file disappeared")])
    return FileState(key, hashlib.sha256(content).hexdigest(), content)


def _read_embedded() -> bytes:
    return read_config_bytes(EMBEDDED_DEFAULTS, EMBEDDED_SOURCE, DEFAULT_LIMITS.max_bytes)


def _stat_key(path: Path | None) -> StatKey | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


async def _in_daemon_thread(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a thread of its own, off the event loop. Not
    asyncio.to_thread: its executor's threads are joined at exit (on 3.11 without
    a bound), so a stop would wait for a parse in progress; a daemon thread is
    abandoned instead."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            result = function(*args)
        except BaseException as error:  # handed to the waiter, which raises it
            _hand_over(loop, _set_exception, done, error)
        else:
            _hand_over(loop, _set_result, done, result)

    threading.Thread(target=work, name="config-read", daemon=True).start()
    return await done


def _hand_over(loop: asyncio.AbstractEventLoop, setter: Callable[..., None], *args: object) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        loop.call_soon_threadsafe(setter, *args)


def _set_result(done: asyncio.Future[T], result: T) -> None:
    if not done.done():  # the waiter may have been cancelled meanwhile
        done.set_result(result)


def _set_exception(done: asyncio.Future[object], error: BaseException) -> None:
    if not done.done():
        done.set_exception(error)
