"""The config file's YAML is read within limits: size, nesting depth, nodes as expanded.

Each fault is a ConfigError naming the file (and the line where the limit was
crossed), found before the fault costs much: never a RecursionError, never a
parse that runs away with the memory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from xds_server import cli
from xds_server.errors import ConfigError
from xds_server.settings import load_settings, yamlfile
from xds_server.settings.yamlfile import PythonLoader, YamlLimits, parse_yaml

# Both ways of reading, whichever the default is: libyaml's parser when PyYAML has it.
LOADERS = [PythonLoader, *([yamlfile.LibyamlLoader] if yaml.__with_libyaml__ else [])]

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


def test_merge_keys_work_and_the_own_key_wins(tmp_path: Path) -> None:
    """`<<: *base` is how YAML shares a block; PyYAML's SafeLoader reads it, and a
    key of the mapping itself overrides the merged one without being a duplicate."""
    config = tmp_path / "merged.yaml"
    config.write_text(
        "services:\n- name: a\n  routes: [/a/]\n  backends:\n"
        "  - &backend {name: a0, address: 10.0.0.1, port: 8080, weight: 3}\n"
        "  - {<<: *backend, name: a1, port: 8081}\n"
    )
    (service,) = load_settings(config, {}).intent.services
    assert [(b.name, b.address, b.port, b.weight) for b in service.backends] == [
        ("a0", "10.0.0.1", 8080, 3),
        ("a1", "10.0.0.1", 8081, 3),
    ]


def test_a_device_that_never_ends_is_refused_at_the_size_limit() -> None:
    """/dev/zero reads forever: only `max_bytes` + 1 of it are read."""
    message = refused(Path("/dev/zero"))
    assert "larger than the limit of" in message


def within(loader: type[PythonLoader], **limits: int) -> type[PythonLoader]:
    return type("Tight", (loader,), {"limits": YamlLimits(**limits)})


def parse_refused(text: str, loader: type[PythonLoader]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text.encode(), "f.yaml", loader)
    (problem,) = caught.value.problems
    assert problem.path == "f.yaml"
    return problem.message


@pytest.mark.parametrize("loader", LOADERS)
def test_the_depth_limit_is_exact(loader: type[PythonLoader]) -> None:
    tight = within(loader, max_depth=5)
    assert parse_yaml(b"[[[[[]]]]]", "f.yaml", tight) == [[[[[]]]]]
    message = parse_refused("[[[[[[]]]]]]", tight)
    assert message == "YAML error at line 1, column 6: nested deeper than 5 levels"


@pytest.mark.parametrize("loader", LOADERS)
def test_the_node_limit_counts_what_an_alias_stands_for(loader: type[PythonLoader]) -> None:
    """The mapping, key a, the list and its 3 items, key b, and *a for 4 more: 11."""
    text = "a: &a [1, 2, 3]\nb: *a\n"
    assert parse_yaml(text.encode(), "f.yaml", within(loader, max_nodes=11)) == {
        "a": [1, 2, 3],
        "b": [1, 2, 3],
    }
    message = parse_refused(text, within(loader, max_nodes=10))
    assert message.startswith("YAML error at line 2, column 4: the document expands to more")


@pytest.mark.parametrize("loader", LOADERS)
def test_the_default_limits_stop_both_bombs(loader: type[PythonLoader]) -> None:
    assert "nested deeper than 64 levels" in parse_refused(depth_bomb(500), loader)
    assert "more than 2000000 nodes" in parse_refused(alias_bomb(), loader)


@pytest.mark.parametrize("loader", LOADERS)
def test_an_alias_inside_its_own_anchor_is_refused(loader: type[PythonLoader]) -> None:
    message = parse_refused("services: &s [*s]\n", loader)
    assert message == "YAML error at line 1, column 15: alias *s is inside its own anchor"


@pytest.mark.parametrize("loader", LOADERS)
def test_keys_twice_and_keys_that_cannot_be_keys(loader: type[PythonLoader]) -> None:
    assert "duplicate key 'b'" in parse_refused("a: 1\nb: 2\nc: 3\nb: 4\n", loader)
    assert "found unhashable key" in parse_refused("? [a]\n: 1\n", loader)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(ONE_SERVICE.replace("name: a\n", "name: \xe9\n").encode("latin-1"))
    assert refused(latin).startswith("cannot read: 'utf-8' codec can't decode")


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("bomb", [depth_bomb(500), alias_bomb()], ids=["depth", "aliases"])
def test_the_command_line_reports_a_bomb_and_exits_1(
    tmp_path: Path, command: str, bomb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` and `run` read the file with the same limits: exit 1 with the
    problem, before anything is started."""
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert cli.main([command, "--config", str(config), "--env-file", "/dev/null"]) == 1
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert f"invalid configuration ({config}, /dev/null):\n{config}: YAML error at line" in err


@pytest.mark.parametrize("loader", LOADERS)
def test_no_tag_builds_an_object(loader: type[PythonLoader], tmp_path: Path) -> None:
    """Safe loading: a Python tag is an error, and what it names never runs."""
    ran = tmp_path / "ran"
    text = f"services: !!python/object/apply:os.system ['touch {ran}']\n"
    message = parse_refused(text, loader)
    assert "could not determine a constructor for the tag" in message
    assert not ran.exists()
