"""The controller within its unit's sandbox, checked without systemd.

A container cannot run the unit (no systemd as PID 1), so strace records every
system call of a real `xds-server run` through its life (start, the admin API,
the metrics, a CSDS call on the xDS port, a reload, the stop), and each must
pass what request-router.service imposes: `SystemCallFilter=` (the groups as
this host's `systemd-analyze syscall-filter` expands them),
`MemoryDenyWriteExecute=` (no writable and executable mapping, no mprotect to
executable) and `RestrictAddressFamilies=`. A call the filter refuses would
fail with EPERM (`SystemCallErrorNumber=`) under systemd.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.systemd_support import Run, directives, start_run, stop_run, systemd_analyze

UNIT = "request-router.service"
SYSCALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed>)", re.MULTILINE)
WRITE_EXEC = re.compile(r"^\d+\s+mmap\(.*PROT_(?:WRITE\|PROT_EXEC|EXEC\|PROT_WRITE)", re.M)
TO_EXEC = re.compile(r"^\d+\s+(?:pkey_)?mprotect\(.*PROT_EXEC", re.MULTILINE)
FAMILY = re.compile(r"^\d+\s+socket(?:pair)?\((AF_\w+)", re.MULTILINE)


def syscall_groups() -> dict[str, list[str]]:
    """`@group` -> its members (calls and groups), as this host's systemd defines them."""
    listing = subprocess.run(
        [systemd_analyze(), "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and groups:
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def allowed_calls() -> set[str]:
    groups, allowed, denied = syscall_groups(), set(), set()
    for line in directives(UNIT)["SystemCallFilter"]:
        if line.startswith("~"):
            denied |= expand(line[1:].split(), groups)
        else:
            allowed |= expand(line.split(), groups)
    return allowed - denied


def strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("strace is missing: scripts/ensure-system-tools installs it")
    return found


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Run, Path]]:
    trace = tmp_path / "trace"
    wrapper = [strace(), "-f", "-qq", "-o", str(trace)]
    run = await start_run(tmp_path, watchdog_usec=1_000_000, wrapper=wrapper)
    try:
        yield run, trace
    finally:
        await stop_run(run)


def only_child(pid: int) -> int:
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


async def exercise(run: Run) -> None:
    """What a deployed controller does, under strace: slow, so generous waits."""
    ready = await run.notify.until("READY", timeout_s=120)
    controller_pid = only_child(run.process.pid)  # the controller, not strace
    async with aiohttp.ClientSession() as http:
        for path in ("/readyz", "/metrics", "/api/v1/router/health", "/api/v1/router/metrics"):
            async with http.get(f"http://{run.admin}{path}") as answer:
                assert answer.status == 200, path
    xds = ready["STATUS"].split()[2].rstrip(",")
    async with grpc.aio.insecure_channel(xds) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=30)
    await asyncio.sleep(2.5)  # health probes and watchdog pings
    os.kill(controller_pid, signal.SIGHUP)

    assert (await run.notify.until("READY", timeout_s=60))["STATUS"] == "config reloaded"
    os.kill(controller_pid, signal.SIGTERM)
    async with asyncio.timeout(60):
        assert await run.process.wait() == 0


async def test_the_controller_stays_within_its_sandbox(traced: tuple[Run, Path]) -> None:
    run, trace_file = traced
    await exercise(run)
    trace = trace_file.read_text()
    used = set(SYSCALL.findall(trace))
    print(f"{len(used)} distinct system calls: {' '.join(sorted(used))}")
    assert len(used) > 30  # the trace is real
    allowed = allowed_calls()
    assert {"socket", "epoll_wait"} <= allowed and not {"mount", "reboot", "setrlimit"} & allowed
    assert used - allowed == set(), "refused by SystemCallFilter="
    assert WRITE_EXEC.findall(trace) == [] and TO_EXEC.findall(trace) == []
    families = set(FAMILY.findall(trace))
    assert families <= set(directives(UNIT)["RestrictAddressFamilies"][0].split()), families
