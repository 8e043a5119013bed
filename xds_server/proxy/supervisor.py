"""Watch the parts of a running stack and say at once when one ends on its own.

A part that ends before `close()` (a child process that was not stopped, a task
that returned or failed) is logged as an error naming it and how it ended. If
the part is vital (Envoy, the controller), `failure()` returns that line, and
whoever runs the stack stops everything (xds_server/demo.py). A sample backend
is not vital: Envoy fails over from it, which is what the router is for.
"""

from __future__ import annotations

import asyncio
import logging

from xds_server.proxy.processes import ChildProcess, exit_status

log = logging.getLogger("xds_server.demo")


class Supervisor:
    def __init__(self) -> None:
        self._watchers: list[asyncio.Task[None]] = []
        self._failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._closed = False

    def child(self, name: str, child: ChildProcess, *, vital: bool) -> None:
        self._watchers.append(asyncio.create_task(self._watch(name, child, vital)))

    def task(self, name: str, task: asyncio.Task[None]) -> None:
        """A vital in-process part: it must run until `close()`."""
        task.add_done_callback(lambda done: self._task_ended(name, done))

    async def failure(self) -> str:
        """Return when a vital part ended on its own: what ended, and how."""
        return await asyncio.shield(self._failure)

    async def close(self) -> None:
        """From now on parts end because they are being stopped: nothing to report."""
        self._closed = True
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _watch(self, name: str, child: ChildProcess, vital: bool) -> None:
        code = await child.exited()
        if not child.stopping:
            self._ended(f"{name} (pid {child.pid}) exited unexpectedly: {exit_status(code)}", vital)

    def _task_ended(self, name: str, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if self._closed:
            if error is not None:  # while stopping: still never lost
                log.error("%s failed while stopping", name, exc_info=error)
            return
        how = f"failed: {error!r}" if error is not None else "stopped unexpectedly"
        self._ended(f"{name} {how}", vital=True, error=error)

    def _ended(self, what: str, vital: bool, error: BaseException | None = None) -> None:
        if self._closed:
            return
        log.error("%s", what, exc_info=error)
        if vital and not self._failure.done():
            self._failure.set_result(what)
