"""`.env` files: python-dotenv's parse, with lines, typos, and what systemd reads otherwise."""

from __future__ import annotations

from xds_server.errors import Problem
from xds_server.settings.envfile import (
    EnvFile,
    in_file_order,
    known_keys,
    merged,
    parse_env_file,
    relocate,
)

KNOWN = known_keys(["ROUTER_LOG_FORMAT"])


def test_values_and_their_lines() -> None:
    text = "# spec\n\nROUTER_STRATEGY=weighted\n  ROUTER_QUEUE_SIZE = '50'\nOTHER=x\n"
    env = parse_env_file(text, ".env", KNOWN)
    assert env.values == {"ROUTER_STRATEGY": "weighted", "ROUTER_QUEUE_SIZE": "50"}
    assert env.lines == {"ROUTER_STRATEGY": 3, "ROUTER_QUEUE_SIZE": 4}
    assert env.problems == ()


def test_every_problem_with_its_line() -> None:
    text = (
        "ROUTER_QUEU_SIZE=3\n"  # 1: typo
        "ROUTER_STRATEGY\n"  # 2: no value
        "=x\n"  # 3: not KEY=VALUE
        "ROUTER_MAX_RETRIES=2 # two\n"  # 4: systemd would read "2 # two"
        "export ROUTER_RETRY_DELAY=1\n"  # 5: systemd would skip the line
        "ROUTER_XYZZY=1\n"  # 6: nothing close
        "ROUTER_METRICS=1\n"  # 7: the start of a name
        "ROUTER_ADMIN_TOKEN='a # b'\n"  # 8: quoted: the same for both readers
    )
    env = parse_env_file(text, "router.env", KNOWN)
    found = [str(p) for p in env.problems]
    assert (
        found[0]
        == "router.env:1: ROUTER_QUEU_SIZE: unknown setting; did you mean ROUTER_QUEUE_SIZE?"
    )
    assert found[1] == "router.env:2: ROUTER_STRATEGY: no value (expected ROUTER_STRATEGY=VALUE)"
    assert found[2] == "router.env:3: cannot parse (expected KEY=VALUE)"
    assert found[3].startswith("router.env:4: ROUTER_MAX_RETRIES: comment after the value")
    assert found[4].startswith("router.env:5: ROUTER_RETRY_DELAY: `export`")
    assert found[5] == "router.env:6: ROUTER_XYZZY: unknown setting"
    assert found[6] == (
        "router.env:7: ROUTER_METRICS: unknown setting; did you mean ROUTER_METRICS_ENABLED?"
    )
    assert len(found) == 7
    assert env.values == {"ROUTER_ADMIN_TOKEN": "a # b"}


def test_values_are_literal() -> None:
    env = parse_env_file("ROUTER_REDIS_URL=redis://:pa$word@127.0.0.1:6379/0\n", ".env", KNOWN)
    assert env.values["ROUTER_REDIS_URL"] == "redis://:pa$word@127.0.0.1:6379/0"


def test_the_real_environment_wins() -> None:
    file = EnvFile(".env", {"ROUTER_A": "1", "ROUTER_B": "2"}, {"ROUTER_A": 3, "ROUTER_B": 4})
    environ, origins = merged({"ROUTER_A": "9", "PATH": "/bin"}, file)
    assert environ == {"ROUTER_A": "9", "ROUTER_B": "2", "PATH": "/bin"}
    assert origins == {"ROUTER_B": ".env:4"}
    # the same value in both (systemd's EnvironmentFile= put it there): the file's line
    _, origins = merged({"ROUTER_A": "1"}, file)
    assert origins == {"ROUTER_A": ".env:3", "ROUTER_B": ".env:4"}


def test_problems_of_file_values_name_the_line() -> None:
    problems = [Problem("env:ROUTER_B", "bad"), Problem("env:ROUTER_A", "worse")]
    moved = relocate(problems, {"ROUTER_B": ".env:4"})
    assert [str(p) for p in moved] == [".env:4: ROUTER_B: bad", "env:ROUTER_A: worse"]


def test_file_order() -> None:
    file = EnvFile(".env")
    problems = [Problem(".env:7: ROUTER_B", "b"), Problem("router.x", "y"), Problem(".env:2", "a")]
    ordered = [p.path for p in in_file_order(problems, file)]
    assert ordered == ["router.x", ".env:2", ".env:7: ROUTER_B"]
