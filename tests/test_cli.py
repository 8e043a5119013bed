"""The command line: flags and environment that shape how the controller runs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from xds_server import cli
from xds_server.model.intent import SocketAddress
from xds_server.proxy.processes import free_port
from xds_server.telemetry.logs import JsonFormatter

LOOPBACK = "127.0.0.1"


def test_log_format_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--log-json installs the JSON formatter; a bad ROUTER_LOG_FORMAT exits 2."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert cli.main(["--log-json", "validate"]) == 0
        assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        monkeypatch.setenv("ROUTER_LOG_FORMAT", "xml")
        assert cli.main(["validate"]) == 2
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


# ---- a taken port: one line, exit 1 -----------------------------------------------------


@contextlib.contextmanager
def taken_port() -> Iterator[SocketAddress]:
    """A free loopback port that another program (this socket) listens on."""
    with socket.socket() as holder:
        holder.bind((LOOPBACK, free_port()))
        holder.listen()
        yield SocketAddress(LOOPBACK, holder.getsockname()[1])


@pytest.mark.parametrize("setting", ["admin_address", "xds_address"])
def test_run_with_a_port_taken_says_so_in_one_line(setting: str) -> None:
    """`xds-server run` whose admin API or xDS port another program listens on
    exits 1 with one line naming the address and the setting, no traceback."""
    free = {"admin_address": free_port(), "xds_address": free_port()}
    with taken_port() as taken:
        env = {f"ROUTER_{k.upper()}": f"{LOOPBACK}:{port}" for k, port in free.items()}
        env[f"ROUTER_{setting.upper()}"] = str(taken)
        argv = [sys.executable, "-m", "xds_server.cli", "run"]
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1, lines
    assert len(lines) == 1, lines
    assert f"cannot listen on {taken} (router.{setting}): Address already in use" in lines[0]
