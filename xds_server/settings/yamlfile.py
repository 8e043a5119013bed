"""The config file's bytes and YAML, read within limits.

Promises:
- `read_config_bytes` reads at most `max_bytes` (one more, to know there is
  more): a huge file or /dev/zero cannot make it read without end (a FIFO
  nobody writes still blocks the thread that reads it, never the event loop:
  settings/reload.py).
- `parse_yaml` is PyYAML's SafeLoader (plain data, no arbitrary objects) plus:
  a key given twice is an error; merge keys (`<<: *defaults`) work; nesting
  deeper than `max_depth`, more than `max_nodes` nodes as expanded (an alias
  counts every node it stands for) and an alias inside its own anchor are
  errors. They are found while the document is composed, before anything is
  built from it, so a "billion laughs" stops at the alias that crosses the
  limit and a deep document never reaches Python's recursion limit (PyYAML
  composes recursively, three frames a level: about 300 levels would).
- Every fault is a ConfigError with one problem named after the file, with the
  line and column where the limit was crossed (`YAML error at line 6, ...`).

The defaults fit a 5,000-service config with 10 backends per service
(bench/large_config.py's shape: 3.3 MB, 390,000 nodes; README, "Configuration
reload") two and a half times over. The node limit is twice what 8 MiB of that
shape holds (about 1,000,000): whatever its aliases, a document costs at most
about twice the largest config allowed without them.

libyaml (PyYAML's C scanner and parser, about three times faster) is used
when PyYAML was built with it; composing, where the limits are enforced, and
building the values are PyYAML's Python code either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node

from xds_server.errors import ConfigError, Problem

__all__ = ["DEFAULT_LIMITS", "BoundedLoader", "PythonLoader", "YamlLimits", "parse_yaml"]

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_depth: int = 64  # the shipped config nests 4 deep; PyYAML itself fails near 300
    max_nodes: int = 2_000_000


DEFAULT_LIMITS = YamlLimits()


def read_config_bytes(file: Path, source: str, max_bytes: int) -> bytes:
    """The file's bytes, or ConfigError when it cannot be read or is larger than
    `max_bytes`."""
    try:
        with file.open("rb") as opened:
            content = opened.read(max_bytes + 1)
            size = os.fstat(opened.fileno()).st_size
    except OSError as error:
        raise ConfigError([Problem(source, f"cannot read: {error}")]) from error
    if len(content) > max_bytes:
        shown = f"{size} bytes" if size > max_bytes else "more"  # a FIFO has no size
        raise ConfigError(
            [Problem(source, f"the file is larger than the limit of {max_bytes} bytes ({shown})")]
        )
    return content


def parse_yaml(
    content: bytes,
    source: str,
    loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] | None = None,
) -> object:
    """The document in `content` (UTF-8 YAML), or ConfigError with one problem at `source`."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([Problem(source, f"cannot read: {error}")]) from error
    try:
        return yaml.load(text, Loader=loader or BoundedLoader)
    except yaml.YAMLError as error:
        raise ConfigError([Problem(source, yaml_message(error))]) from error


def yaml_message(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"YAML error at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    return f"YAML error: {error}"


class _Bounded(Composer, SafeConstructor):
    """The limits, enforced in compose_node (every node passes through it once, an
    alias included), and duplicate keys refused in construct_mapping.

    Mixed in front of a SafeLoader or CSafeLoader: its compose_node and the
    Composer methods around it take the place of the C composer's."""

    limits: ClassVar[YamlLimits] = DEFAULT_LIMITS

    def _start(self) -> None:
        self._depth = 0
        self._nodes = 0  # nodes so far, as expanded
        self._weights: dict[Node, int] = {}  # anchored node -> nodes it expands to
        self._open: set[str] = set()  # anchors being composed: an alias to one is a cycle

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]  # the parser's, mixed in
        assert isinstance(event, NodeEvent)
        # libyaml's marks are another class with the same line and column.
        mark = cast("Mark | None", event.start_mark)
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise ComposerError(
                    None, None, f"alias *{event.anchor} is inside its own anchor", mark
                )
            node = super().compose_node(parent, index)  # refuses an undefined alias
            assert node is not None
            self._count(self._weights[node], mark)
            return node
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise ComposerError(
                None, None, f"nested deeper than {self.limits.max_depth} levels", mark
            )
        before = self._nodes
        self._count(1, mark)  # before its children: the error points where the limit is crossed
        if event.anchor is not None:
            self._open.add(event.anchor)
        node = super().compose_node(parent, index)
        assert node is not None
        if event.anchor is not None:
            self._open.discard(event.anchor)
            self._weights[node] = self._nodes - before
        self._depth -= 1
        return node

    def _count(self, nodes: int, mark: Mark | None) -> None:
        self._nodes += nodes
        if self._nodes > self.limits.max_nodes:
            raise ComposerError(
                None,
                None,
                f"the document expands to more than {self.limits.max_nodes} nodes"
                " (aliases count every node they stand for)",
                mark,
            )

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Plain YAML keeps the last of a key given twice; a config must not. A merged
        key (`<<: *defaults`) is no duplicate: the mapping's own key overrides it."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: SafeConstructor refuses it with its own message
                continue
            if duplicate:
                mark = key_node.start_mark
                raise ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class PythonLoader(_Bounded, yaml.SafeLoader):
    """Pure Python: PyYAML's scanner and parser."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._start()


BoundedLoader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = PythonLoader

if yaml.__with_libyaml__:

    class LibyamlLoader(_Bounded, yaml.CSafeLoader):
        """libyaml scans and parses; the Python composer above composes."""

        def __init__(self, stream: str) -> None:
            yaml.CSafeLoader.__init__(self, stream)
            Composer.__init__(self)
            self._start()

    BoundedLoader = LibyamlLoader
