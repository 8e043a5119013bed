"""The config file's YAML is read within limits: size, nesting depth, nodes as expanded.

Each fault is a ConfigError naming the file (and the line where the limit was
crossed), found before the fault costs much: never a RecursionError, never a
parse that runs away with the memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_server.errors import ConfigError
from xds_server.settings import load_settings

ONE_SERVICE = """\
services:
- name: a
  routes: [/a/]
  backends:
  - {name: a0, address: 10.0.0.1, port: 8080}
"""


def depth_bomb(levels: int) -> str:
    """A valid start, then a value nested `levels` deep: about 2 bytes a level."""
    return ONE_SERVICE + "router:\n  strategy: " + "[" * levels + "]" * levels + "\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """'Billion laughs': each anchor is `width` aliases of the one before, so
    `services` expands to width**levels items from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    lines.append(f"services: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def refused(path: Path) -> str:
    """The one problem load_settings reports, which must be the file's."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    (problem,) = caught.value.problems
    assert problem.path == str(path)
    return problem.message


def test_a_depth_bomb_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    bomb = tmp_path / "deep.yaml"
    bomb.write_text(depth_bomb(500))
    assert len(bomb.read_bytes()) < 1200
    message = refused(bomb)
    assert message.startswith("YAML error at line 7, column ")
    assert "nested deeper than" in message


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 600
    message = refused(bomb)
    assert message.startswith("YAML error at line ")
    assert "nodes" in message and "aliases" in message


def test_an_oversized_file_is_refused_unparsed(tmp_path: Path) -> None:
    """Valid YAML, but larger than the limit: refused by its size alone."""
    big = tmp_path / "big.yaml"
    with big.open("w") as out:
        out.write(ONE_SERVICE)
        for _ in range(9 * 1024):  # 9 MiB of comment
            out.write("#" * 1023 + "\n")
    message = refused(big)
    assert "larger than" in message and "bytes" in message
