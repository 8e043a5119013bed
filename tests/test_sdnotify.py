"""sd_notify over a real unix datagram socket: a path, and the abstract namespace."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xds_server.sdnotify import READY, WATCHDOG, Notifier, reloading, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    with sock:
        yield sock, os.fspath(path)


def test_sends_one_datagram_of_lines(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.send(READY, "STATUS=serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_namespace() -> None:
    name = f"xds-server-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(READY)
        assert sock.recv(4096) == b"READY=1"


def test_without_a_socket_nothing_is_sent(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).send(READY)
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    # a socket that is gone: reported as not sent, never raised
    assert not Notifier({"NOTIFY_SOCKET": os.fspath(tmp_path / "gone")}).send(READY)


def test_watchdog_interval_is_half_and_only_ours() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(pid)}, pid) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_interval({}, pid) is None


def test_reloading_carries_the_monotonic_clock() -> None:
    first, clock = reloading().split("\n")
    assert first == "RELOADING=1"
    usec = int(clock.removeprefix("MONOTONIC_USEC="))
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000


async def test_keep_alive_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # every 50 ms
    task = asyncio.create_task(notifier.keep_alive())
    await asyncio.sleep(0.5)
    task.cancel()
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    print(f"{len(pings)} pings in 0.5 s at a 50 ms interval")
    assert set(pings) == {WATCHDOG.encode()}
    assert 5 <= len(pings) <= 11
