"""A private dnsmasq for a test: a free loopback port (UDP and TCP), only the
records the test writes (no /etc/hosts, no upstream, no config file), stopped by
its PID. Records change mid-test: the hosts file is rewritten and dnsmasq is
told by SIGHUP (to its PID) to read it again."""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from xds_server.proxy.processes import ChildProcess, free_port, start_process

DNSMASQ = "/usr/sbin/dnsmasq"
START_TIMEOUT_S = 10.0


class DnsServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts = workdir / "hosts"
        self.log = workdir / "dnsmasq.log"
        self.port = _free_udp_and_tcp_port()
        self.child: ChildProcess | None = None
        self.hosts.write_text("")

    @property
    def address(self) -> str:
        """What router.dns_servers takes: ip:port."""
        return f"127.0.0.1:{self.port}"

    async def start(self, records: dict[str, Iterable[str]] | None = None) -> None:
        self._write(records or {})
        argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null"]
        argv += [f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces"]
        argv += ["--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}", "--cache-size=0"]
        argv += [f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-"]
        # Stay the test's user: dnsmasq started by root would become `nobody`, who
        # cannot read the hosts file in the test's private tmp directory.
        argv += [f"--user={getpass.getuser()}"]
        reads = self._reads()
        self.child = await start_process(
            argv, ready_line_prefix=None, timeout_s=START_TIMEOUT_S, log_path=self.log
        )
        try:
            await self._wait_reads_beyond(reads)
        except BaseException:
            await self.stop()  # a server that never got ready is stopped too, by PID
            raise

    async def set_records(self, records: dict[str, Iterable[str]]) -> None:
        """Replace every record; returns once dnsmasq has read the new file."""
        assert self.child is not None and self.child.returncode is None
        self._write(records)
        reads = self._reads()
        os.kill(self.child.pid, signal.SIGHUP)
        await self._wait_reads_beyond(reads)

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(grace_s=3.0)
            self.child = None

    def _write(self, records: dict[str, Iterable[str]]) -> None:
        lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        assert all(_loopback(line.split()[0]) for line in lines), "records point at loopback only"
        self.hosts.write_text("".join(f"{line}\n" for line in lines))

    def _reads(self) -> int:
        """How often dnsmasq has logged reading the hosts file."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count(f"read {self.hosts}")

    async def _wait_reads_beyond(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._reads() <= count:
            assert self.child is not None and self.child.returncode is None, self.log.read_text()
            assert time.monotonic() < deadline, f"dnsmasq did not read {self.hosts}"
            await asyncio.sleep(0.02)


def _loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.")


def _free_udp_and_tcp_port() -> int:
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both UDP and TCP on 127.0.0.1")
