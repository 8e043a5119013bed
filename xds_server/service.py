"""`xds-server run` as a systemd service (deploy/systemd/request-router.service, `Type=notify`).

What systemd is told, over sd_notify (xds_server/sdnotify.py):
- READY=1 once `Controller.start` returned: the first snapshot is published and
  the xDS port is open, so an Envoy started after the controller
  (`After=request-router.service`) gets its configuration on its first request;
- WATCHDOG=1 every half `WatchdogSec=`, from the event loop (a stuck loop is restarted);
- RELOADING=1 when SIGHUP (`systemctl reload`) starts a reload of the config
  file, READY=1 when it is done, with STATUS= saying whether it was applied;
- STOPPING=1 on SIGTERM or SIGINT, before the controller shuts down.

Without `$NOTIFY_SOCKET` nothing is sent and the signals do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from xds_server.app import Controller
from xds_server.sdnotify import READY, STOPPING, Notifier, reloading

log = logging.getLogger("xds_server.service")


class SystemdService:
    def __init__(self, controller: Controller, notifier: Notifier) -> None:
        self.controller = controller
        self.notifier = notifier
        self._reloading = asyncio.Lock()  # one reload at a time, in the order asked
        self._reloads: set[asyncio.Task[None]] = set()

    def handle_signals(self) -> asyncio.Event:
        """SIGTERM and SIGINT set the returned event; SIGHUP reloads the config file."""
        stop = asyncio.Event()

        def stopping() -> None:
            self.notifier.send(STOPPING)
            for task in self._reloads:  # the controller is about to stop under it
                task.cancel()
            stop.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stopping)
        loop.add_signal_handler(signal.SIGTERM, stopping)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        return stop

    def ready(self) -> None:
        c = self.controller
        status = f"STATUS=xDS on {c.xds_address}, admin API on http://{c.admin_address}"
        self.notifier.send(READY, status)

    def request_reload(self) -> None:
        if self.controller.config_path is None:  # the embedded defaults: nothing to reload
            self.controller.request_reload()
            return
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        """Always answered by READY=1 (systemd holds the unit in "reloading" until
        then), except when stopping cancels it: STOPPING=1 was said."""
        async with self._reloading:
            self.notifier.send(reloading(), "STATUS=reloading the config file")
            try:
                applied = await self.controller.reload()
            except Exception:  # a bug, not a bad file: nothing was applied, keep serving
                log.exception("config reload failed, keeping the running config")
                applied = False
            outcome = "reloaded" if applied else "reload refused (see the log), running config kept"
            self.notifier.send(READY, f"STATUS=config {outcome}")

    @contextlib.asynccontextmanager
    async def watchdog(self) -> AsyncIterator[None]:
        """WATCHDOG=1 pings while the body runs."""
        pings = asyncio.get_running_loop().create_task(self.notifier.keep_alive())
        try:
            yield
        finally:
            pings.cancel()
            await asyncio.gather(pings, *self._reloads, return_exceptions=True)
