"""Child-process supervision for the demo and the tests.

Promises:
- a child's stdout and stderr are always read (into a log file and a short in-memory
  tail), so a chatty child never blocks on a full pipe;
- waiting for the ready line is bounded; on timeout or early exit the child is
  stopped and the error carries the tail of its output;
- `stop()` always reaps, is idempotent, and escalates SIGTERM -> SIGKILL after a grace;
- children run in their own session, so Ctrl-C in a terminal reaches only the parent,
  which then stops them in its own order.

Signals go to the child only (through a pidfd), never to a name or a whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from xds_server.errors import ListenFailed, XdsServerError
from xds_server.model.intent import SocketAddress

_TAIL_LINES = 40
_CHUNK = 65536
# After SIGKILL the kernel ends the process at once; this bound only guards against
# a stuck reaper so that nothing here can hang forever.
_KILL_WAIT_S = 5.0


class ProcessFailed(XdsServerError):
    """A child did not become ready, or exited when it should not have."""

    def __init__(self, message: str, tail: str, pid: int | None = None) -> None:
        self.tail = tail
        self.pid = pid  # already stopped and reaped when set
        super().__init__(f"{message}\n--- last output ---\n{tail}" if tail else message)


class ChildProcess:
    """A started child; create it with `start_process`."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        argv: Sequence[str],
        log: IO[bytes] | None,
        ready_prefix: str | None,
    ) -> None:
        self._proc = proc
        self.argv = tuple(argv)
        self.ready_line: str | None = None
        self._log = log
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._ready_prefix = ready_prefix
        self._ready: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        assert proc.stdout is not None  # start_process always pipes stdout
        self._drain = asyncio.create_task(self._read_output(proc.stdout))
        self._stopping: asyncio.Task[int] | None = None
        self._pidfd = _open_pidfd(proc.pid)
        self._close_pidfd = weakref.finalize(self, _close_fd, self._pidfd)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """None while running; negative for death by signal (-9 for SIGKILL)."""
        return self._proc.returncode

    def output_tail(self) -> str:
        """The last lines the child wrote to stdout or stderr."""
        return "\n".join(self._tail)

    async def wait(self, timeout_s: float) -> int:
        """Wait for the child to exit on its own; TimeoutError if it has not in time."""
        async with asyncio.timeout(timeout_s):
            return await self._proc.wait()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called: an exit from then on is expected."""
        return self._stopping is not None

    async def exited(self) -> int:
        """Wait, without a bound, until the child exits; its exit code."""
        return await self._proc.wait()

    def kill(self) -> None:
        """SIGKILL now, for failure tests; `stop()` still reaps afterwards."""
        self._signal(signal.SIGKILL)

    async def stop(self, grace_s: float = 5.0) -> int:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; returns the exit code.

        Idempotent and safe to call concurrently: every caller awaits one shutdown.
        """
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._shutdown(grace_s))
        return await asyncio.shield(self._stopping)

    async def _shutdown(self, grace_s: float) -> int:
        self._signal(signal.SIGTERM)
        try:
            code = await self.wait(grace_s)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            code = await self.wait(_KILL_WAIT_S)
        await self._finish_output()
        return code

    def _signal(self, signum: signal.Signals) -> None:
        # Not asyncio's send_signal: it ends in Popen.send_signal, which first polls
        # with waitpid(). When the child has already exited (after kill(), or after
        # a crash) that poll reaps it before asyncio's child watcher can, and the
        # watcher then reports exit code 255 instead of the real one. A pidfd
        # signals without reaping and can never reach a recycled PID.
        if self._proc.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # exited and reaped meanwhile
                signal.pidfd_send_signal(self._pidfd, signum)

    async def _finish_output(self) -> None:
        # A grandchild could hold the pipe open after the child died; do not wait for it.
        try:
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._drain)
        except TimeoutError:
            self._drain.cancel()
        if self._log is not None:
            self._log.close()
        self._close_pidfd()

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(_CHUNK):
            if self._log is not None and not self._log.closed:
                self._log.write(chunk)
                self._log.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > _CHUNK:  # a line without end: keep memory bounded
                lines, pending = [*lines, pending], b""
            for line in lines:
                self._on_line(line.decode(errors="replace").rstrip("\r"))
        if pending:
            self._on_line(pending.decode(errors="replace"))
        if not self._ready.done():
            self._ready.set_result(None)  # EOF before the ready line

    def _on_line(self, line: str) -> None:
        self._tail.append(line)
        prefix = self._ready_prefix
        if prefix is not None and not self._ready.done() and line.startswith(prefix):
            self._ready.set_result(line)

    async def _await_ready(self, prefix: str, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                line = await asyncio.shield(self._ready)
        except TimeoutError:
            raise self._failure(f"no line starting {prefix!r} within {timeout_s:g} s") from None
        if line is None:
            code = await self.wait(_KILL_WAIT_S)
            raise self._failure(f"exited with code {code} before printing {prefix!r}")
        self.ready_line = line

    def _failure(self, what: str) -> ProcessFailed:
        return ProcessFailed(
            f"{self.argv[0]} (pid {self.pid}) {what}", self.output_tail(), self.pid
        )


def exit_status(code: int) -> str:
    """How a child ended, for a log line: "exit code 1", "killed by SIGKILL"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


async def start_process(
    argv: Sequence[str],
    *,
    ready_line_prefix: str | None,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> ChildProcess:
    """Start `argv` and, if `ready_line_prefix` is given, wait for an output line
    starting with it (bounded by `timeout_s`).

    `env` adds to (and overrides) the parent's environment. stdout and stderr are
    merged into `log_path` when given. On failure the child is stopped and
    ProcessFailed carries its last output.
    """
    log = _open_log(log_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env} if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        if log is not None:
            log.close()
        raise ProcessFailed(f"cannot start {argv[0]}: {exc}", "") from exc
    child = ChildProcess(proc, argv, log, ready_line_prefix)
    if ready_line_prefix is not None:
        await _ready_or_stop(child, ready_line_prefix, timeout_s)
    return child


async def _ready_or_stop(child: ChildProcess, prefix: str, timeout_s: float) -> None:
    try:
        await child._await_ready(prefix, timeout_s)
    except BaseException:  # also on cancellation: never leave an orphan behind
        await child.stop(grace_s=1.0)
        raise


def _open_pidfd(pid: int) -> int | None:
    # Opened right after the spawn. A child that already exited and was reaped
    # left its PID free (ProcessLookupError); for that PID to name another process
    # already, the kernel would have had to cycle through all PIDs meanwhile.
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:  # already exited and reaped: nothing left to signal
        return None


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _open_log(log_path: Path | None) -> IO[bytes] | None:
    if log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return log_path.open("ab")


# Ports the demo's defaults use: never handed out for tests.
_RESERVED_PORTS = frozenset({8000, 9901, 18000, 18080})
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` and stays free until we bind it.

    Picked below the kernel's ephemeral range: a port the kernel chose (port 0)
    is one it may give to the next outgoing connection too, and under load it
    did, before the backend meant for it could bind. Below the range only our
    own choices compete, and none is handed out twice in a process."""
    low, _ = _ephemeral_range()
    for _ in range(500):
        port = random.randint(max(1024, low - 16384), low - 1)
        if port not in _handed_out and port not in _RESERVED_PORTS and _bindable(host, port):
            _handed_out.add(port)
            return port
    raise ListenFailed(f"no free port below the ephemeral range ({low}) on {host}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def bind_error(address: SocketAddress) -> OSError | None:
    """Why a server cannot bind `address` now; None when it can. SO_REUSEADDR as
    servers (Envoy, aiohttp, gRPC) set it: a port with only closed connections
    left on it is free."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as error:
            return error
    return None
