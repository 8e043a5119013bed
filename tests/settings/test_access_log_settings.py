"""router.access_log: stdout, off or an absolute file path; ROUTER_ACCESS_LOG;
every bad value at its field path, the file's directory checked when the
settings load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xds_server.errors import ConfigError
from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.settings import format_problems, load_settings, parse_settings
from xds_server.settings.envfile import known_keys


def document(**router: Any) -> dict[str, Any]:
    return {
        "router": router,
        "services": [
            {
                "name": "svc",
                "routes": ["/svc/"],
                "backends": [{"name": "svc-0", "address": "127.0.0.1", "port": 9000}],
            }
        ],
    }


def access_log(document: object, environ: dict[str, str] | None = None) -> AccessLog:
    return parse_settings(document, environ or {}, "test.yaml").intent.access_log


def problems(document: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, environ or {}, "test.yaml")
    return format_problems(caught.value).splitlines()


def test_stdout_by_default_in_the_model_and_the_shipped_file() -> None:
    assert access_log(document()) == AccessLog(AccessLogSink.STDOUT)
    assert load_settings(None, {}).intent.access_log == AccessLog()
    assert str(AccessLog()) == "stdout"


def test_stdout_off_and_a_file(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    assert access_log(document(access_log="stdout")).sink is AccessLogSink.STDOUT
    assert access_log(document(access_log="off")) == AccessLog(AccessLogSink.OFF)
    # YAML 1.1 reads an unquoted `access_log: off` as false.
    assert access_log(document(access_log=False)) == AccessLog(AccessLogSink.OFF)
    assert access_log(document(access_log=path)) == AccessLog(AccessLogSink.FILE, path)
    assert str(AccessLog(AccessLogSink.FILE, path)) == path


def test_the_environment_beats_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    assert access_log(document(access_log="stdout"), {"ROUTER_ACCESS_LOG": "off"}).sink == "off"
    from_env = access_log(document(access_log="off"), {"ROUTER_ACCESS_LOG": f" {path} "})
    assert from_env == AccessLog(AccessLogSink.FILE, path)
    assert "ROUTER_ACCESS_LOG" in known_keys()


def test_values_that_are_no_destination_are_named_at_their_path() -> None:
    expected = "must be stdout, off or an absolute file path"
    for value, shown in [
        (3, "got 3 (int)"),
        (True, "got true (boolean)"),
        (None, "got null"),
        ("", "got '' (str)"),
        (["/a.log"], "got ['/a.log'] (list)"),
        ("Stdout", "'Stdout' is a relative path"),
        ("logs/access.log", "'logs/access.log' is a relative path"),
        ("/var/log/", "'/var/log/' names a directory, not a file"),
        ("/var/log/..", "'/var/log/..' names a directory, not a file"),
        ("/tmp/a\nb.log", "holds a NUL or line break"),
        ("/" + "a" * 4096, "is longer than 4096 characters"),
    ]:
        [found] = problems(document(access_log=value))
        assert found.startswith(f"router.access_log: {expected}"), (value, found)
        assert shown in found, (value, found)


def test_the_file_must_be_creatable_where_it_is_named(tmp_path: Path) -> None:
    """Envoy refuses a listener whose log file it cannot open: the settings say so first."""
    missing = tmp_path / "missing" / "access.log"
    assert problems(document(access_log=str(missing))) == [
        f"router.access_log: the directory '{missing.parent}' does not exist"
    ]
    assert problems(document(), {"ROUTER_ACCESS_LOG": str(tmp_path)}) == [
        f"env:ROUTER_ACCESS_LOG: '{tmp_path}' is a directory; name a file in it"
    ]
    a_file = tmp_path / "plain"
    a_file.write_text("")
    assert problems(document(access_log=str(a_file / "access.log"))) == [
        f"router.access_log: '{a_file}' is not a directory"
    ]


def test_every_problem_in_one_pass(tmp_path: Path) -> None:
    found = problems(
        document(access_log=str(tmp_path / "no" / "a.log"), queue_size=0),
        {"ROUTER_STRATEGY": "fastest"},
    )
    # In the file's order, then the environment's.
    assert [line.split(":")[0] for line in found] == [
        "router.access_log",
        "router.queue_size",
        "env",
    ], found


def test_a_bad_variable_is_the_variable_s_problem_not_the_file_s(tmp_path: Path) -> None:
    good = str(tmp_path / "access.log")
    assert problems(document(access_log=good), {"ROUTER_ACCESS_LOG": "nowhere"}) == [
        "env:ROUTER_ACCESS_LOG: must be stdout, off or an absolute file path; 'nowhere' is a "
        "relative path (Envoy's working directory would decide where it lands)"
    ]
