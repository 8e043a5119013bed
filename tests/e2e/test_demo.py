"""`xds-server demo` as a user runs it, in its own process: a taken port, a
child that dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import NO_DOT_ENV, config_file, local_settings
from tests.support import eventually
from xds_server.model.intent import SocketAddress
from xds_server.proxy.processes import ChildProcess, start_process
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

BANNER_END = "Ctrl-C stops everything."
DEMO_START_TIMEOUT_S = 60.0
DEMO_STOP_TIMEOUT_S = 30.0


def demo_argv(settings: Settings, workdir: Path) -> list[str]:
    config = config_file(settings, workdir / "router_config.yaml")
    return [sys.executable, "-m", "xds_server.cli", "demo", *NO_DOT_ENV, "--config", str(config)]


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[ChildProcess]:
    """A running demo on free ports, its banner printed; stopped at teardown."""
    child = await start_process(
        demo_argv(local_settings(), tmp_path),
        ready_line_prefix=BANNER_END,
        timeout_s=DEMO_START_TIMEOUT_S,
        log_path=tmp_path / "demo.log",
    )
    try:
        yield child
    finally:
        await child.stop()


def banner_pids(demo: ChildProcess) -> tuple[int, dict[str, int]]:
    """Envoy's PID and each backend's, as the banner prints them."""
    text = demo.output_tail()
    envoy = re.search(r"^Envoy worker threads .*\(pid (\d+)\)$", text, re.M)
    backends = re.findall(r"^backend (\S+) .*, pid (\d+)\)$", text, re.M)
    assert envoy is not None and backends, text
    return int(envoy.group(1)), {name: int(pid) for name, pid in backends}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def someone_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_demo_logs_a_dead_backend_and_stops_when_envoy_dies(demo: ChildProcess) -> None:
    """SIGKILL of a sample backend is logged at once with its name and how it
    ended; SIGKILL of Envoy stops the whole demo with a non-zero exit and no
    child left behind."""
    envoy, backends = banner_pids(demo)
    os.kill(backends["qdrant-primary"], signal.SIGKILL)
    logged = f"backend qdrant-primary (pid {backends['qdrant-primary']}) exited unexpectedly"
    await eventually(lambda: _said(demo, f"{logged}: killed by SIGKILL"), timeout_s=5)
    assert demo.returncode is None  # a backend is not vital: Envoy fails over
    os.kill(envoy, signal.SIGKILL)
    code = await demo.wait(DEMO_STOP_TIMEOUT_S)
    assert code == 1, demo.output_tail()
    assert f"demo stopped: Envoy (pid {envoy}) exited unexpectedly" in demo.output_tail()
    assert [name for name, pid in backends.items() if alive(pid)] == []


async def _said(demo: ChildProcess, line: str) -> bool:
    return line in demo.output_tail()


def address_of(settings: Settings, setting: str) -> SocketAddress:
    intent = settings.intent
    return {
        "listen_address": intent.listen,
        "envoy_admin_address": settings.envoy_admin_address,
        "admin_address": intent.admin,
        "xds_address": settings.xds_address,
    }[setting]


@pytest.mark.parametrize(
    ("setting", "server"),
    [
        ("listen_address", "Envoy"),
        ("envoy_admin_address", "Envoy admin"),
        ("admin_address", "admin API"),
        ("xds_address", "xDS server"),
    ],
)
async def test_demo_with_a_port_taken_exits_1_naming_the_address(
    tmp_path: Path, setting: str, server: str
) -> None:
    """Another program listens on one of the demo's addresses: the demo says so
    in one line and exits 1, and everything it started stops. For the router
    address Envoy only NACKs the listener and is LIVE all the same; the demo
    used to print its banner, whose address answered with the other program."""
    settings = local_settings()
    taken = address_of(settings, setting)
    with socket.socket() as holder:
        holder.bind((taken.host, taken.port))
        holder.listen()
        demo = await start_process(
            demo_argv(settings, tmp_path), ready_line_prefix=None, timeout_s=0
        )
        try:
            code = await demo.wait(DEMO_START_TIMEOUT_S)
        finally:
            await demo.stop()  # an old demo keeps running: never leave it behind
    output = demo.output_tail()
    assert code == 1, output
    assert "router (Envoy listener)" not in output
    last = output.splitlines()[-1]
    assert last.startswith(
        f"xds-server demo: {server} cannot listen on {taken} (router.{setting}): "
    )
    assert last.endswith("Address already in use"), last
    assert "Traceback" not in output
    ports = [settings.envoy_admin_address.port] + [b.port for b in settings.intent.backends()]
    assert [port for port in ports if port != taken.port and someone_listens(port)] == []


async def test_demo_with_tls_serves_https_with_the_certificate_it_made(tmp_path: Path) -> None:
    """`xds-server demo --tls` makes a CA and a certificate (openssl), prints the
    curl line with `--cacert` and an https listener, and that curl line works."""
    settings = local_settings()
    argv = [*demo_argv(settings, tmp_path), "--tls"]
    child = await start_process(
        argv,
        ready_line_prefix=BANNER_END,
        timeout_s=DEMO_START_TIMEOUT_S,
        log_path=tmp_path / "demo.log",
    )
    try:
        text = child.output_tail()
        assert f"https://{settings.intent.listen}" in text, text
        found = re.search(r"^try: curl -s --cacert (\S+) (https://\S+)$", text, re.M)
        assert found is not None, text
        process = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "10", "--cacert", found.group(1), found.group(2),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, output
        assert b'"status"' in output, output
    finally:
        await child.stop()
