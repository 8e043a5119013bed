"""The command line: flags and environment that shape how the controller runs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.factories import NO_DOT_ENV
from tests.tls_support import Pki
from xds_server import cli
from xds_server.model.intent import SocketAddress
from xds_server.proxy.processes import free_port
from xds_server.telemetry.logs import JsonFormatter

LOOPBACK = "127.0.0.1"


def test_log_format_flag_and_env(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-json installs the JSON formatter; a bad ROUTER_LOG_FORMAT exits 1, like
    every other configuration error, naming the variable."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert cli.main(["--log-json", "validate"]) == 0
        assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        monkeypatch.setenv("ROUTER_LOG_FORMAT", "xml")
        assert cli.main(["validate"]) == 1
        assert "env:ROUTER_LOG_FORMAT: must be one of text, json, got 'xml'" in (
            capsys.readouterr().err
        )
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


# ---- .env files ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory of its own, no ROUTER_* variable, logging put back after."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield tmp_path
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def xds_port_of_bootstrap(capsys: pytest.CaptureFixture[str], *options: str) -> int:
    assert cli.main(["bootstrap", "--node-id", "n", *options]) == 0
    bootstrap = yaml.safe_load(capsys.readouterr().out)
    (cluster,) = bootstrap["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    port: int = endpoint["address"]["socket_address"]["port_value"]
    return port


def test_dot_env_is_read_and_the_real_environment_wins(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert xds_port_of_bootstrap(capsys) == 18000  # no .env: the default
    (in_tmp / ".env").write_text("ROUTER_XDS_ADDRESS=127.0.0.1:18111\n")
    assert xds_port_of_bootstrap(capsys) == 18111
    (in_tmp / "other.env").write_text("ROUTER_XDS_ADDRESS=127.0.0.1:18333\n")
    assert xds_port_of_bootstrap(capsys, "--env-file", "other.env") == 18333  # not ./.env
    monkeypatch.setenv("ROUTER_XDS_ADDRESS", "127.0.0.1:18222")
    assert xds_port_of_bootstrap(capsys) == 18222


def test_a_missing_env_file_is_an_error(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "--env-file", "missing.env"]) == 1
    assert "missing.env: cannot read" in capsys.readouterr().err


def test_every_problem_with_its_file_and_line(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = in_tmp / "router_config.yaml"
    config.write_text((ROOT / "config/router_config.yaml").read_text() + "\nextra_key: 1\n")
    (in_tmp / ".env").write_text(
        "# the spec's variables\n"
        "ROUTER_STRATEGY=round_robin\n"
        "ROUTER_QUEUE_SIZE=lots\n"
        "ROUTER_MAX_RETRIE=3\n"
        "ROUTER_RETRY_DELAY=1\n"
    )
    monkeypatch.setenv("ROUTER_RETRY_DELAY", "0")  # the real environment's: its own name
    assert cli.main(["validate", "--config", str(config)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"invalid configuration ({config}, .env):"
    assert lines[1].startswith("extra_key: ")
    assert lines[2].startswith("env:ROUTER_RETRY_DELAY: ")
    assert lines[3] == ".env:3: ROUTER_QUEUE_SIZE: must be an integer, got 'lots'"
    assert (
        lines[4] == ".env:4: ROUTER_MAX_RETRIE: unknown setting; did you mean ROUTER_MAX_RETRIES?"
    )
    assert len(lines) == 5


def test_the_shipped_example_is_valid(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "config/router.env.example"
    config = ROOT / "config/router_config.yaml"
    assert cli.main(["validate", "--env-file", str(example), "--config", str(config)]) == 0
    spec = ["ROUTER_STRATEGY=round_robin", "ROUTER_QUEUE_SIZE=1000", "ROUTER_METRICS_ENABLED=true"]
    assert set(spec) <= set(example.read_text().splitlines())


def test_log_format_from_the_env_file(in_tmp: Path) -> None:
    (in_tmp / ".env").write_text("ROUTER_LOG_FORMAT=json\n")
    assert cli.main(["validate"]) == 0
    assert any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


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
        argv = [sys.executable, "-m", "xds_server.cli", "run", *NO_DOT_ENV]
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1, lines
    assert len(lines) == 1, lines
    assert f"cannot listen on {taken} (router.{setting}): Address already in use" in lines[0]


TLS_AT = "services[0].backends[0].tls"


def test_validate_lists_the_tls_problems_of_a_file(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xds-server validate` on a config file: exit 1, each TLS problem on its line
    with its path; the same file with the CA present and a name is valid."""
    pki = Pki(in_tmp)
    config = in_tmp / "router_config.yaml"
    missing = in_tmp / "missing-ca.pem"
    body = "services:\n  - name: llm\n    routes: [/v1]\n    backends:\n"
    backend = "      - {{name: llm-a, address: 127.0.0.1, port: 443, tls: {tls}}}\n"
    config.write_text(body + backend.format(tls=f"{{ca_file: {missing}}}"))
    assert cli.main(["validate", "--config", str(config)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[1:] == [
        f"{TLS_AT}.sni: required: the address 127.0.0.1 is an IP address, so the certificate "
        "has no host name to be checked against; set the name it carries (or "
        "insecure_skip_verify)",
        f"{TLS_AT}.ca_file: cannot read {str(missing)!r}: No such file or directory",
    ]
    config.write_text(body + backend.format(tls=f"{{ca_file: {pki.ca_file}, sni: llm.test}}"))
    assert cli.main(["validate", "--config", str(config)]) == 0
