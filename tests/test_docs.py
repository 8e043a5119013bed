"""Comments, docstrings and docs cite only what a reader of this repository has.

That is: files of this repository (above all `docs/`), rules that exist in
docs/xds-protocol.md, tests that exist, public repositories and URLs. Never a
sibling checkout, a style guide or notes kept outside the repository, the
numbers of an internal tracker's issues or work sessions, or a module by a
name it no longer has. Each test lists every offence as `file:line: text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

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

Check = Callable[[Path, str], Iterator[re.Match[str]]]


def scanned_files() -> Iterator[Path]:
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            if file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                yield file


def offences(check: Check) -> list[str]:
    """`file:line: text` for every match `check` reports, over every scanned file."""
    found = []
    for path in scanned_files():
        text = path.read_text()
        for match in check(path, text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(ROOT)}:{line}: {match.group()}")
    return found


def assert_none(found: list[str]) -> None:
    assert not found, "\n" + "\n".join(found)


def public(text: str, offset: int) -> bool:
    """The citation at `offset` names a public repository just before it."""
    return PUBLIC_REPO.search(text[max(0, offset - 120) : offset]) is not None


def url_or_dotted(text: str, offset: int) -> bool:
    return text[max(0, offset - 1) : offset] in (":", ".")


def rules_of(numbers: str) -> set[int]:
    """'6-8 and 10' -> {6, 7, 8, 10}."""
    found: set[int] = set()
    for first, last in re.findall(r"(\d+)(?:-(\d+))?", numbers):
        found.update(range(int(first), int(last or first) + 1))
    return found


def defined_rules() -> list[int]:
    return [int(n) for n in RULE_HEADING.findall(PROTOCOL.read_text())]


def test_nothing_outside_the_repository_is_cited() -> None:
    """No sibling checkout and no style guide that is not in the repository."""
    assert_none(offences(lambda _path, text: OUTSIDE.finditer(text)))


def missing_markdown(path: Path, text: str) -> Iterator[re.Match[str]]:
    in_docs = path.is_relative_to(ROOT / "docs")
    bases = (ROOT, path.parent) if in_docs else (ROOT,)
    for match in MARKDOWN_PATH.finditer(text):
        if url_or_dotted(text, match.start()) or public(text, match.start()):
            continue
        if not any((base / match.group()).is_file() for base in bases):
            yield match


def test_every_cited_markdown_file_exists() -> None:
    """A `.md` path resolves from the repository root (`docs/replicas.md`) or,
    inside docs/, from docs/ itself (a relative link); or it is a file of a
    named public repository (grpc/grpc `doc/grpc_xds_features.md`) or a URL."""
    assert_none(offences(missing_markdown))


def missing_python(path: Path, text: str) -> Iterator[re.Match[str]]:
    modules = {p.name for d in ("xds_server", "tests", "bench") for p in (ROOT / d).rglob("*.py")}
    bases = (ROOT, path.parent, ROOT / "xds_server")
    for match in PYTHON_PATH.finditer(text):
        cited = match.group()
        if url_or_dotted(text, match.start()) or public(text, match.start()):
            continue
        if not (any((b / cited).is_file() for b in bases) if "/" in cited else cited in modules):
            yield match


def test_every_cited_python_file_exists() -> None:
    """A `.py` path resolves from the repository root, the citing file's folder
    or the package (`admin/metrics.py`); a bare module name (`status.py`) is a
    file somewhere in the repository. Modules that moved leave no stale names."""
    assert_none(offences(missing_python))


def test_no_internal_tracker_numbers() -> None:
    """'issue N' and 'session N' of this project's tracker mean nothing to a
    reader; public issues are cited with their repository (owner/name issue #N)."""

    def tracker(_path: Path, text: str) -> Iterator[re.Match[str]]:
        return (m for m in TRACKER.finditer(text) if not public(text, m.start()))

    assert_none(offences(tracker))


def bare_rules(path: Path, text: str) -> Iterator[re.Match[str]]:
    if path == PROTOCOL:
        return
    cited = [m.span() for m in RULE_CITATION.finditer(text)]
    for match in RULE_WORD.finditer(text):
        if not any(start <= match.start() < end for start, end in cited):
            yield match


def test_rules_are_cited_with_their_file() -> None:
    """Every rule is cited with its file, ranges and lists included
    (`docs/xds-protocol.md rules 6-8 and 10`)."""
    assert_none(offences(bare_rules))


def test_every_cited_rule_exists() -> None:
    """Each rule number so cited has its heading in docs/xds-protocol.md."""
    defined = set(defined_rules())

    def unknown(_path: Path, text: str) -> Iterator[re.Match[str]]:
        return (m for m in RULE_CITATION.finditer(text) if rules_of(m.group(1)) - defined)

    assert_none(offences(unknown))


def test_protocol_rules_are_numbered_without_gaps() -> None:
    """Rule numbers are stable citations: 1..N, each once (a dropped rule keeps
    its heading, marked as not used)."""
    numbers = defined_rules()
    assert numbers == list(range(1, len(numbers) + 1))


def test_tests_named_in_docs_exist() -> None:
    """Each `tests/...py::test_name` (or `::test_name`, continuing the last
    file named) that a doc says pins a behaviour is a test of that file."""
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        current: Path | None = None
        for file, name in TEST_REFERENCE.findall(doc.read_text()):
            current = ROOT / file if file else current
            assert current is not None, f"{doc.name}: ::{name} before any test file"
            if not re.search(rf"^(?:async )?def {name}\(", current.read_text(), re.MULTILINE):
                missing.append(f"{doc.name}: {current.relative_to(ROOT)}::{name}")
    assert_none(missing)
