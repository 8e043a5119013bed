"""The command line: flags and environment that shape how the controller runs."""

from __future__ import annotations

import logging

import pytest

from xds_server import cli
from xds_server.telemetry.logs import JsonFormatter


def test_log_format_flag_and_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
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
