"""`.env` files: `ROUTER_*` variables written in a file, the spec's way to configure the router.

The file is parsed by python-dotenv (its parser keeps each binding's line, so a
problem names `.env:3`). It is meant for us and for systemd's
`EnvironmentFile=` (deploy/systemd/), so:

- every `ROUTER_*` key in it must be one we know: a typo is a problem, with the
  closest known key (unknown `ROUTER_*` variables of the real environment stay
  ignored, since other tools may share the prefix);
- what the two readers would read differently is a problem: a comment after a
  value (python-dotenv drops it, systemd keeps it in the value) and `export`
  (systemd ignores the line);
- keys without the prefix are left alone;
- values are taken literally (no `${VAR}` expansion: a Redis password may hold a `$`).

The real environment beats the file: `merged` returns the environment the
settings read and where each value came from, so `relocate` can turn the
settings' `env:ROUTER_X` problems into `.env:3: ROUTER_X`. A variable set to the
same value in both is the file's: under systemd, `EnvironmentFile=` put it there.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv.parser import Binding, parse_stream

from xds_server.errors import ConfigError, Problem
from xds_server.settings.environment import ENV_PREFIX, variables

DEFAULT_ENV_FILE = Path(".env")
ENV_PROBLEM = "env:"  # the settings' path for a variable: env:ROUTER_X
_INLINE_COMMENT = re.compile(r"\s#")


@dataclass(frozen=True)
class EnvFile:
    label: str  # the path as given: problems start with it
    values: dict[str, str] = field(default_factory=dict)  # ROUTER_* keys, the last one wins
    lines: dict[str, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()


def known_keys(extra: Iterable[str] = ()) -> frozenset[str]:
    """The variables the router section reads (settings/environment.py), plus `extra`."""
    return frozenset(variables()) | set(extra)


def load_env_file(path: Path | None, known: Collection[str]) -> EnvFile | None:
    """`path` (must exist), or `.env` in the working directory when there is one.

    Raises ConfigError when the file cannot be read."""
    file = DEFAULT_ENV_FILE if path is None else path
    if path is None and not file.exists():
        return None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([Problem(os.fspath(file), f"cannot read: {error}")]) from error
    return parse_env_file(text, os.fspath(file), known)


def parse_env_file(text: str, label: str, known: Collection[str]) -> EnvFile:
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    for binding in parse_stream(io.StringIO(text)):
        line = _first_line(binding)
        if binding.error:
            problems.append(Problem(f"{label}:{line}", "cannot parse (expected KEY=VALUE)"))
        elif binding.key is not None and binding.key.startswith(ENV_PREFIX):
            where = f"{label}:{line}: {binding.key}"
            message = _problem(binding, known)
            if message is not None:
                problems.append(Problem(where, message))
            elif binding.value is not None:
                values[binding.key], lines[binding.key] = binding.value, line
    return EnvFile(label, values, lines, tuple(problems))


def _first_line(binding: Binding) -> int:
    """python-dotenv counts the blank lines before a binding as part of it."""
    text = binding.original.string
    return binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")


def _problem(binding: Binding, known: Collection[str]) -> str | None:
    key = binding.key or ""
    if key not in known:
        close = _closest(key, known)
        return f"unknown setting; did you mean {close}?" if close else "unknown setting"
    if binding.value is None:
        return f"no value (expected {key}=VALUE)"
    return _systemd_disagrees(binding.original.string.strip())


def _closest(key: str, known: Collection[str]) -> str | None:
    """A known key that begins with `key`'s name (ROUTER_METRICS), else the most
    similar one; compared without the prefix, which every candidate shares."""
    names = {k.removeprefix(ENV_PREFIX): k for k in sorted(known)}
    typed = key.removeprefix(ENV_PREFIX)
    longer = [name for name in names if name.startswith(typed)]
    close = longer or difflib.get_close_matches(typed, names, n=1, cutoff=0.6)
    return names[close[0]] if close else None


def _systemd_disagrees(original: str) -> str | None:
    if original.startswith("export"):
        return "`export` is not understood by systemd's EnvironmentFile=: drop it"
    raw = original.partition("=")[2].lstrip()
    if raw[:1] not in ("'", '"') and _INLINE_COMMENT.search(raw):
        return (
            "comment after the value: systemd's EnvironmentFile= keeps it as part of the value;"
            " put it on a line of its own"
        )
    return None


def merged(environ: Mapping[str, str], file: EnvFile) -> tuple[dict[str, str], dict[str, str]]:
    """The environment the settings read (the real one wins) and, for each
    variable taken from the file, where: `.env:3`."""
    result = dict(environ)
    origins: dict[str, str] = {}
    for key, value in file.values.items():
        result.setdefault(key, value)
        if result[key] == value:
            origins[key] = f"{file.label}:{file.lines[key]}"
    return result, origins


def relocate(problems: Iterable[Problem], origins: Mapping[str, str]) -> list[Problem]:
    """`env:ROUTER_X: ...` becomes `.env:3: ROUTER_X: ...` for a value from the file."""
    moved = []
    for problem in problems:
        name = problem.path.removeprefix(ENV_PROBLEM)
        if problem.path.startswith(ENV_PROBLEM) and name in origins:
            problem = Problem(f"{origins[name]}: {name}", problem.message)
        moved.append(problem)
    return moved


def in_file_order(problems: Iterable[Problem], file: EnvFile) -> list[Problem]:
    """The file's problems by line, after the others (kept in their order)."""
    prefix = f"{file.label}:"

    def line(problem: Problem) -> int:
        if not problem.path.startswith(prefix):
            return 0
        number = problem.path.removeprefix(prefix).partition(":")[0]
        return int(number) if number.isdigit() else 0

    return sorted(problems, key=line)
