"""Child processes: port allocation for tests and benchmarks, start on a ready
line, stop and kill by PID."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time

import pytest

from xds_server.model.intent import SocketAddress
from xds_server.proxy.processes import (
    ProcessFailed,
    _ephemeral_range,
    bind_error,
    free_port,
    start_process,
)


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    """The kernel never hands these to outgoing connections (it did, under load,
    with port-0 picks), no port is handed out twice, and each can be bound."""
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


async def test_start_process_reports_early_exit_with_output() -> None:
    """A child that dies before its ready line raises ProcessFailed carrying its output."""
    argv = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(ProcessFailed, match="boom") as caught:
        await start_process(argv, ready_line_prefix="READY", timeout_s=10)
    assert "code 3" in str(caught.value)


async def test_start_process_times_out_and_stops_the_child() -> None:
    """A child that never prints its ready line is stopped and reaped after timeout_s."""
    argv = [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"]
    with pytest.raises(ProcessFailed, match="waiting") as caught:
        await start_process(argv, ready_line_prefix="READY", timeout_s=1)
    assert caught.value.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(caught.value.pid, 0)


async def test_stop_escalates_to_sigkill_and_is_idempotent() -> None:
    """A child ignoring SIGTERM is SIGKILLed after the grace; a second stop() is a no-op."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += "print('READY', flush=True); time.sleep(60)"
    child = await start_process(
        [sys.executable, "-c", code], ready_line_prefix="READY", timeout_s=10
    )
    assert await child.stop(grace_s=0.5) == -signal.SIGKILL
    assert await child.stop() == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL


async def test_kill_then_stop_reaps() -> None:
    """kill() ends the child at once (for failure tests); stop() afterwards only reaps."""
    argv = [sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(60)"]
    child = await start_process(argv, ready_line_prefix="READY", timeout_s=10)
    child.kill()
    assert await child.stop(grace_s=5) == -signal.SIGKILL


async def test_stop_after_the_child_exited_reports_its_own_exit_code() -> None:
    """stop() on a child that exited before asyncio heard of it reports the child's
    code, not the 255 asyncio reports when something else reaped the child (signalling
    through Popen.send_signal did: it polls first). The race needs asyncio's
    child-watcher thread to be slow, so this catches a regression mostly under load."""
    argv = [sys.executable, "-c", "print('READY', flush=True); raise SystemExit(3)"]
    for _ in range(5):  # the reap race needs the child dead before asyncio hears of it
        child = await start_process(argv, ready_line_prefix="READY", timeout_s=10)
        _block_until_exited(child.pid)
        assert await child.stop(grace_s=5) == 3


def _block_until_exited(pid: int) -> None:
    """Until the child has exited, without reaping it (WNOWAIT). Blocking on purpose:
    the event loop must not run, so asyncio has not heard of the exit yet."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:  # asyncio's child watcher reaped it already
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} did not exit within 10 s")


def test_bind_error_says_why_a_port_cannot_be_bound() -> None:
    """A port another socket listens on gives the OS's reason; a free one, None."""
    address = SocketAddress("127.0.0.1", free_port())
    assert bind_error(address) is None
    with socket.socket() as holder:
        holder.bind((address.host, address.port))
        holder.listen()
        error = bind_error(address)
    assert error is not None and error.errno == errno.EADDRINUSE
