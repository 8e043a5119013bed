"""systemd's service notification protocol (sd_notify), for a `Type=notify` unit.

The protocol is one datagram of `KEY=VALUE` lines sent to the unix socket named
by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace):
https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html. It is a
few lines, so it is written here rather than taken from a library (the pure
Python `sdnotify` package has had no release since 2017; `systemd-python` and
`cysystemd` need libsystemd headers to build). Without `$NOTIFY_SOCKET` (not
started by systemd) every call does nothing.

The watchdog (`WatchdogSec=` in the unit) sets `$WATCHDOG_USEC`, and
`$WATCHDOG_PID` when it is meant for one process only; `keep_alive` pings at
half that interval, from the event loop, so a blocked loop stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("xds_server.sdnotify")

READY = "READY=1"
STOPPING = "STOPPING=1"
RELOADING = "RELOADING=1"
WATCHDOG = "WATCHDOG=1"


def socket_address(value: str) -> str | None:
    """The address of `$NOTIFY_SOCKET`, or None for a kind this module does not speak."""
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL byte, no file
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:, for virtual machines: not used by a service on a VM host


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of `$WATCHDOG_USEC`), or None when no watchdog is ours."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2e6


def reloading() -> str:
    """RELOADING=1 with the clock reading systemd 253+ expects with it (Type=notify-reload)."""
    return f"{RELOADING}\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%s: unsupported address, not notifying systemd", raw)
        self.watchdog_s = watchdog_interval(env, os.getpid()) if self.address else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; False when there is no socket or it refused (logged)."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as error:
            log.warning("sd_notify %r failed: %s", lines[0] if lines else "", error)
            return False
        return True

    async def keep_alive(self) -> None:
        """WATCHDOG=1 every half watchdog interval, until cancelled (nothing without one)."""
        if self.watchdog_s is None:
            return
        while True:
            self.send(WATCHDOG)
            await asyncio.sleep(self.watchdog_s)
