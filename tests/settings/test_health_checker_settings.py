"""router.health_checker and router.health_checkers_per_backend: defaults,
the file, ROUTER_* over the file, every bad value at its path, and start-only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.settings.test_settings import SHIPPED, minimal_document
from xds_server.errors import ConfigError
from xds_server.model.health_checker import HealthChecker
from xds_server.settings import Settings, load_settings, parse_settings
from xds_server.settings.environment import variables
from xds_server.settings.start_only import start_only_changes


def settings(
    router: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    document = minimal_document()
    if router is not None:
        document["router"] = router
    return parse_settings(document, environ or {}, "f")


def problems(router: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    document = minimal_document() | {"router": router}
    with pytest.raises(ConfigError) as caught:
        parse_settings(document, environ or {}, "f")
    return {p.path: p.message for p in caught.value.problems}


def test_defaults_are_the_controller_and_two_checkers() -> None:
    """Without the keys the controller probes, as before; K defaults to 2, also in the
    shipped file (which spells every default out)."""
    for loaded in (settings(), load_settings(SHIPPED, {}), load_settings(None, {})):
        assert loaded.health_checker is HealthChecker.CONTROLLER
        assert loaded.health_checkers_per_backend == 2


def test_file_values_are_read() -> None:
    loaded = settings({"health_checker": "envoy", "health_checkers_per_backend": 3})
    assert (loaded.health_checker, loaded.health_checkers_per_backend) == (HealthChecker.ENVOY, 3)


def test_environment_beats_the_file() -> None:
    """ROUTER_HEALTH_CHECKER and ROUTER_HEALTH_CHECKERS_PER_BACKEND over the file's values."""
    environ = {"ROUTER_HEALTH_CHECKER": "envoy", "ROUTER_HEALTH_CHECKERS_PER_BACKEND": "1"}
    loaded = settings({"health_checker": "controller", "health_checkers_per_backend": 4}, environ)
    assert (loaded.health_checker, loaded.health_checkers_per_backend) == (HealthChecker.ENVOY, 1)
    shipped = load_settings(SHIPPED, environ)
    assert (shipped.health_checker, shipped.health_checkers_per_backend) == (HealthChecker.ENVOY, 1)


def test_the_variables_are_known() -> None:
    """`xds-server validate --env-file` knows them (a misspelt one is reported)."""
    assert {"ROUTER_HEALTH_CHECKER", "ROUTER_HEALTH_CHECKERS_PER_BACKEND"} <= set(variables())


@pytest.mark.parametrize("value", ["proxy", "", 1, None, ["envoy"]])
def test_an_unknown_checker_is_a_problem_at_its_path(value: object) -> None:
    found = problems({"health_checker": value})
    assert list(found) == ["router.health_checker"]
    assert "controller" in found["router.health_checker"]


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True, None])
def test_a_bad_checker_count_is_a_problem_at_its_path(value: object) -> None:
    assert list(problems({"health_checkers_per_backend": value})) == [
        "router.health_checkers_per_backend"
    ]


def test_every_bad_value_is_listed_at_once_file_and_environment() -> None:
    """Both keys bad in the file and both bad in the environment: each problem is
    reported where the winning value came from."""
    assert set(problems({"health_checker": "x", "health_checkers_per_backend": 0})) == {
        "router.health_checker",
        "router.health_checkers_per_backend",
    }
    environ = {"ROUTER_HEALTH_CHECKER": "both", "ROUTER_HEALTH_CHECKERS_PER_BACKEND": "0"}
    assert set(problems({}, environ)) == {
        "env:ROUTER_HEALTH_CHECKER",
        "env:ROUTER_HEALTH_CHECKERS_PER_BACKEND",
    }


def test_both_keys_are_start_only() -> None:
    """The HDS servicer and Envoy's bootstrap are built at start: a reload that
    changes either names the key."""
    running = settings()
    changed = settings({"health_checker": "envoy", "health_checkers_per_backend": 3})
    assert start_only_changes(running, changed) == [
        "router.health_checker",
        "router.health_checkers_per_backend",
    ]
    assert start_only_changes(running, settings({"health_checker": "controller"})) == []
