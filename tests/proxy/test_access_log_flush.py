"""Every Envoy this project starts or documents writes its access log every
second, not every 10 s (proxy/bootstrap.py ACCESS_LOG_FLUSH_FLAGS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_server import cli
from xds_server.proxy.bootstrap import ACCESS_LOG_FLUSH_FLAGS

ROOT = Path(__file__).resolve().parents[2]
FLAGS = " ".join(ACCESS_LOG_FLUSH_FLAGS)


def test_the_flags_say_one_second() -> None:
    assert ACCESS_LOG_FLUSH_FLAGS == ("--file-flush-interval-msec", "1000")


def test_the_printed_bootstrap_command_and_the_systemd_unit_pass_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["bootstrap", "--env-file", "/dev/null", "--node-id", "n"]) == 0
    [run] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# run:")]
    assert run.endswith(FLAGS), run
    unit = (ROOT / "deploy/systemd/xds-envoy.service").read_text()
    start = unit[unit.index("ExecStart=") :].split("\n\n")[0]
    assert FLAGS in start.replace("\\\n", " ").replace("    ", " "), start
