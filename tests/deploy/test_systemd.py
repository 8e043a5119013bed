"""deploy/systemd/: the units systemd would load, their hardening, and their commands.

Without systemd as PID 1 (a container) `systemd-analyze` still checks unit
files offline, but `verify` insists that each command exists: the copies it
checks name this virtualenv's `xds-server` and `envoy` in place of
/opt/xds-server/bin (the README's install location), and nothing else changes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.systemd_support import UNITS, directives, systemd_analyze

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALLED_BIN = "/opt/xds-server/bin/"
LEVELS_AT_MOST_OK = ("PERFECT", "SAFE", "OK")  # systemd-analyze's words, best first


def here(unit: str, tmp_path: Path) -> Path:
    """A copy of `unit` whose commands are this virtualenv's."""
    venv_bin = Path(sys.executable).parent
    for tool in ("xds-server", "envoy"):
        assert (venv_bin / tool).exists(), f"{tool} is not installed in {venv_bin}"
    copy = tmp_path / unit
    copy.write_text((UNITS / unit).read_text().replace(INSTALLED_BIN, f"{venv_bin}/"))
    return copy


def test_systemd_verifies_both_units(tmp_path: Path) -> None:
    units = [here(name, tmp_path) for name in ("request-router.service", "xds-envoy.service")]
    done = subprocess.run(
        [systemd_analyze(), "verify", *map(str, units)], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    unit = here("request-router.service", tmp_path)
    unit.write_text(unit.read_text().replace("Type=notify", "Typ=notify"))
    done = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True)
    assert "Typ" in done.stderr


@pytest.mark.parametrize("unit", ["request-router.service", "xds-envoy.service"])
def test_security_exposure_is_at_most_ok(unit: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(here(unit, tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    print(f"{unit}: exposure {match[1]} {match[2]}")
    assert match[2] in LEVELS_AT_MOST_OK and float(match[1]) < 5.0


def test_the_controller_unit_is_what_the_spec_operates() -> None:
    """`journalctl -u request-router` matches the unit's own name, not an alias:
    the spec's name is the file's."""
    unit = directives("request-router.service")
    assert unit["Type"] == ["notify"]
    assert unit["Alias"] == ["xds-server.service"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["WatchdogSec"] and unit["EnvironmentFile"] == ["/etc/xds-server/router.env"]
    assert unit["DynamicUser"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]
    envoy = directives("xds-envoy.service")
    assert "request-router.service" in envoy["After"][0].split()
    assert envoy["Requires"] == envoy["PartOf"] == ["request-router.service"]


def test_the_envoy_unit_commands_make_a_bootstrap_envoy_accepts(tmp_path: Path) -> None:
    """ExecStartPre and ExecStart as systemd would run them (specifiers filled in),
    Envoy in --mode validate."""
    etc, credentials, runtime = tmp_path / "etc", tmp_path / "credentials", tmp_path / "run"
    for folder in (etc, credentials, runtime / "xds-envoy"):
        folder.mkdir(parents=True)
    (etc / "router_config.yaml").write_text((ROOT / "config/router_config.yaml").read_text())
    (credentials / "router.env").write_text((ROOT / "config/router.env.example").read_text())
    specifiers = {"%H": "test-host", "%d": str(credentials), "%t": str(runtime), "%%": "%"}
    unit = directives("xds-envoy.service")

    def command(line: str) -> list[str]:
        line = line.replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/")
        line = line.replace("/etc/xds-server/", f"{etc}/").replace("${ROUTER_WORKER_THREADS}", "2")
        line = re.sub("|".join(specifiers), lambda m: specifiers[m[0]], line)
        return shlex.split(line)

    (pre,) = unit["ExecStartPre"]
    subprocess.run(command(pre), check=True, cwd=tmp_path, timeout=60)
    bootstrap = (runtime / "xds-envoy/bootstrap.yaml").read_text()
    assert "test-host" in bootstrap
    (start,) = unit["ExecStart"]
    argv = [*command(start), "--mode", "validate", "--base-id", "7373"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
