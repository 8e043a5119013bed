"""router.tls: the listener's certificate files, from the file or ROUTER_TLS, each
problem with its field path; the files themselves are checked when the settings
load, so `xds-server validate` refuses what `run` would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tls_support import Pki
from xds_server.errors import ConfigError
from xds_server.pemfiles import TlsFiles
from xds_server.settings import parse_settings

SERVICES = [
    {"name": "a", "routes": ["/a"], "backends": [{"name": "b", "address": "127.0.0.1", "port": 9}]}
]


def problems(router: dict[str, object], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_settings({"router": router, "services": SERVICES}, environ or {}, "f")
    return [str(p) for p in error.value.problems]


def as_config(files: TlsFiles) -> dict[str, str]:
    config = {"cert_file": str(files.cert_file), "key_file": str(files.key_file)}
    if files.client_ca_file is not None:
        config["client_ca_file"] = str(files.client_ca_file)
    return config


def test_default_is_plain_http() -> None:
    """No router.tls: the listener serves plain HTTP."""
    assert parse_settings({"services": SERVICES}, {}, "f").tls is None


def test_tls_from_the_file(tmp_path: Path) -> None:
    """All three files are read from router.tls."""
    files = Pki(tmp_path).server_files(clients=True)
    router = {"tls": as_config(files)}
    settings = parse_settings({"router": router, "services": SERVICES}, {}, "f")
    assert settings.tls is not None
    assert (settings.tls.cert_file, settings.tls.key_file) == (
        str(files.cert_file),
        str(files.key_file),
    )
    assert settings.tls.client_ca_file == str(files.client_ca_file)


def test_tls_from_the_environment_beats_the_file(tmp_path: Path) -> None:
    """ROUTER_TLS (a JSON object, as ROUTER_XDS_TLS) replaces the file's router.tls."""
    files = Pki(tmp_path).server_files(clients=False)
    environ = {"ROUTER_TLS": json.dumps(as_config(files))}
    router = {"tls": {"cert_file": "file.crt", "key_file": "file.key"}}
    settings = parse_settings({"router": router, "services": SERVICES}, environ, "f")
    assert settings.tls is not None
    assert (settings.tls.cert_file, settings.tls.client_ca_file) == (str(files.cert_file), None)


def test_every_tls_problem_is_listed_with_its_path() -> None:
    """A bad value, a misspelt key and a missing key, each named."""
    assert sorted(problems({"tls": {"cert_file": "", "key_fil": "k"}})) == [
        "router.tls.cert_file: must name a PEM file, got an empty string",
        "router.tls.key_fil: unknown key; did you mean 'key_file'?",
        "router.tls.key_file: required",
    ]
    assert problems({}, {"ROUTER_TLS": "[1]"})[0].startswith("env:ROUTER_TLS: ")


def test_unusable_files_are_refused_when_the_settings_load(tmp_path: Path) -> None:
    """What `run` would refuse, `validate` refuses: missing files (each one), a
    key of another certificate, a CA file that is no PEM; from the environment
    the problem names the variable."""
    pki = Pki(tmp_path)
    good, other = pki.server_files(clients=True), pki.server_files(clients=False)
    gone, not_pem = tmp_path / "gone.key", tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    missing = as_config(good) | {"key_file": str(gone), "client_ca_file": str(tmp_path / "x")}
    assert problems({"tls": missing}) == [
        f"router.tls.key_file: {gone}: no such file",
        f"router.tls.client_ca_file: {tmp_path / 'x'}: no such file",
    ]
    [mismatch] = problems({"tls": as_config(good) | {"key_file": str(other.key_file)}})
    assert mismatch.startswith(f"router.tls.cert_file: {good.cert_file} with {other.key_file}")
    [bad_ca] = problems({"tls": as_config(good) | {"client_ca_file": str(not_pem)}})
    assert bad_ca.startswith(f"router.tls.client_ca_file: {not_pem}: no PEM CA certificate")
    environ = {"ROUTER_TLS": json.dumps(as_config(good) | {"key_file": str(gone)})}
    assert problems({}, environ) == [f"env:ROUTER_TLS.key_file: {gone}: no such file"]
