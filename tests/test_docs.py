"""Comments, docstrings and docs cite only what a reader of this repository has.

That is: files of this repository (above all `docs/`), rules that exist in
docs/xds-protocol.md, tests that exist, public repositories and URLs. Never a
sibling checkout, a style guide or notes kept outside the repository, or the
numbers of an internal tracker's issues or work sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("xds_server", "tests", "bench", "docs", "README.md")
TEXT_SUFFIXES = frozenset({".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt"})
PROTOCOL = ROOT / "docs/xds-protocol.md"

OUTSIDE = re.compile(r"\.\./shared|\bstyle\.md")
MARKDOWN_PATH = re.compile(r"[\w./-]*[\w-]\.md\b")
PYTHON_PATH = re.compile(r"[\w./-]*\w\.py\b")
TRACKER = re.compile(r"\b(?:[Ii]ssues?|[Ss]essions?)\s+#?\d+")
# `owner/name ` (optionally with a backtick) right before a citation: a public repository's.
PUBLIC_REPO = re.compile(r"\b[\w.-]+/[\w.-]+\s+`?$")
RULE_WORD = re.compile(r"\b[Rr]ules?\s+\d")
RULE_LIST = r"\d+(?:-\d+)?(?:(?:,\s+and\s+|,\s*|\s+and\s+)\d+(?:-\d+)?)*"
RULE_CITATION = re.compile(r"docs/xds-protocol\.md`?\s+rules?\s+(" + RULE_LIST + ")")
RULE_HEADING = re.compile(r"^### Rule (\d+):", re.MULTILINE)
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def scanned_files() -> Iterator[Path]:
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            if file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                yield file


FILES = [pytest.param(f, id=str(f.relative_to(ROOT))) for f in scanned_files()]


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def public(text: str, offset: int) -> bool:
    """The citation at `offset` names a public repository just before it."""
    return PUBLIC_REPO.search(text[max(0, offset - 120) : offset]) is not None


def rules_of(numbers: str) -> set[int]:
    """'6-8 and 10' -> {6, 7, 8, 10}."""
    found: set[int] = set()
    for first, last in re.findall(r"(\d+)(?:-(\d+))?", numbers):
        found.update(range(int(first), int(last or first) + 1))
    return found


def defined_rules() -> set[int]:
    return {int(n) for n in RULE_HEADING.findall(PROTOCOL.read_text())}


@pytest.mark.parametrize("path", FILES)
def test_nothing_outside_the_repository_is_cited(path: Path) -> None:
    """No sibling checkout and no style guide that is not in the repository."""
    text = path.read_text()
    found = [f"line {line_of(text, m.start())}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert found == []


@pytest.mark.parametrize("path", FILES)
def test_every_cited_markdown_file_exists(path: Path) -> None:
    """A `.md` path resolves from the repository root (`docs/replicas.md`) or,
    inside docs/, from docs/ itself (a relative link); or it is a file of a
    named public repository (grpc/grpc `doc/grpc_xds_features.md`) or a URL."""
    text = path.read_text()
    missing = []
    for match in MARKDOWN_PATH.finditer(text):
        cited, start = match.group(), match.start()
        if text[max(0, start - 1) : start] == ":" or public(text, start):
            continue
        bases = (ROOT, path.parent) if path.is_relative_to(ROOT / "docs") else (ROOT,)
        if not any((base / cited).is_file() for base in bases):
            missing.append(f"line {line_of(text, start)}: {cited}")
    assert missing == []


def python_files() -> set[str]:
    return {p.name for d in ("xds_server", "tests", "bench") for p in (ROOT / d).rglob("*.py")}


@pytest.mark.parametrize("path", FILES)
def test_every_cited_python_file_exists(path: Path) -> None:
    """A `.py` path resolves from the repository root, the citing file's folder
    or the package (`admin/metrics.py`); a bare module name (`status.py`) is a
    file somewhere in the repository. Modules that moved leave no stale names."""
    text, modules = path.read_text(), python_files()
    bases = (ROOT, path.parent, ROOT / "xds_server")
    missing = []
    for match in PYTHON_PATH.finditer(text):
        cited, start = match.group(), match.start()
        if text[max(0, start - 1) : start] in (":", ".") or public(text, start):
            continue
        found = any((b / cited).is_file() for b in bases) if "/" in cited else cited in modules
        if not found:
            missing.append(f"line {line_of(text, start)}: {cited}")
    assert missing == []


@pytest.mark.parametrize("path", FILES)
def test_no_internal_tracker_numbers(path: Path) -> None:
    """'issue N' and 'session N' of this project's tracker mean nothing to a
    reader; public issues are cited with their repository (owner/name issue #N)."""
    text = path.read_text()
    found = [
        f"line {line_of(text, m.start())}: {m.group()}"
        for m in TRACKER.finditer(text)
        if not public(text, m.start())
    ]
    assert found == []


@pytest.mark.parametrize("path", [p for p in FILES if p.values[0] != PROTOCOL])
def test_rule_citations_name_docs_xds_protocol_and_exist(path: Path) -> None:
    """Every rule is cited with its file, ranges and lists included
    (`docs/xds-protocol.md rules 6-8 and 10`), and every rule so cited has
    its heading in that file."""
    text = path.read_text()
    cited = [(m.span(), rules_of(m.group(1))) for m in RULE_CITATION.finditer(text)]
    bare = [
        f"line {line_of(text, m.start())}: {m.group()}"
        for m in RULE_WORD.finditer(text)
        if not any(start <= m.start() < end for (start, end), _ in cited)
    ]
    unknown = sorted(set().union(*(rules for _, rules in cited)) - defined_rules())
    assert (bare, unknown) == ([], [])


def test_protocol_rules_are_numbered_without_gaps() -> None:
    """Rule numbers are stable citations: 1..N, each once (a dropped rule keeps
    its heading, marked as not used)."""
    numbers = [int(n) for n in RULE_HEADING.findall(PROTOCOL.read_text())]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_tests_named_in_docs_exist(path: Path) -> None:
    """Each `tests/...py::test_name` (or `::test_name`, continuing the last
    file named) that a doc says pins a behaviour is a test of that file."""
    missing, current = [], None
    for file, name in TEST_REFERENCE.findall(path.read_text()):
        current = ROOT / file if file else current
        assert current is not None, f"::{name} before any test file"
        if not re.search(rf"^(?:async )?def {name}\(", current.read_text(), re.MULTILINE):
            missing.append(f"{current.relative_to(ROOT)}::{name}")
    assert missing == []
