"""The most one xDS stream may make this server hold, and how client text enters logs.

A client is not trusted to be small: every request is bounded by gRPC's
receive limit, and what a stream keeps from its client (node strings,
subscribed names, Delta's initial versions, NACK messages) is bounded here
(docs/xds-protocol.md rules 36 and 37). Each cap is far above what Envoy or a
proxyless gRPC client sends: `tests/xds/test_real_clients_fit.py` measures
what they send and checks every figure stays below a tenth of its cap. Past a
cap the stream ends with RESOURCE_EXHAUSTED (`LimitExceeded`), saying which
cap and by how much; a closed stream keeps nothing (docs/xds-protocol.md rule 31).

Client text that reaches a log is clipped and escaped (`loggable`), so a
message can neither flood the log nor forge lines in it
(docs/xds-protocol.md rule 37).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xds_server.errors import ProtocolError

# gRPC's receive limit for one request. docs/xds-protocol.md rule 30: far above
# gRPC's 4 MiB default, for Delta reconnects of large fleets; a Delta reconnect
# of 5,000 services (bench/hostile_streams.py measures it) is 0.15 MB a type.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# A resource name, a Delta initial version, a node id, cluster or admin
# address. DNS names stop at 253 characters, Kubernetes names at 253 too;
# Envoy's node ids (`sidecar~ip~pod.ns~ns.svc.cluster.local`) are far shorter.
MAX_TEXT_CHARS = 4096
# Serialized node metadata. Envoy sends what its bootstrap says (ours: one
# admin address); Istio's sidecars send labels and annotations, which
# Kubernetes caps at 256 KiB in all.
MAX_METADATA_BYTES = 1024 * 1024
# Names one stream subscribes to, over all its types (Delta's initial versions
# included), and their characters in all. An Envoy of a 5,000-service config
# subscribes to about 5,000 names (its EDS); a gRPC client to four per target.
MAX_NAMES = 100_000
MAX_NAME_CHARS_TOTAL = 16 * 1024 * 1024
# A NACK's message as kept for /proxies and CSDS, and as written to the log.
# Envoy's longest are a few hundred characters (a proto validation error with
# its field path).
MAX_NACK_CHARS = 4096
LOG_TEXT_CHARS = 1024


class LimitExceeded(ProtocolError):
    """A client went past one of this module's caps; its stream ends with
    RESOURCE_EXHAUSTED (docs/xds-protocol.md rule 36)."""


def check_node(node: Any) -> None:
    """The node strings a stream keeps, and the metadata it reads, are bounded.
    Raises LimitExceeded."""
    for field in ("id", "cluster"):
        _check_text(f"node.{field}", getattr(node, field))
    admin = node.metadata.fields.get("admin_address")
    if admin is not None:
        _check_text("node.metadata admin_address", admin.string_value)
    size = node.metadata.ByteSize()
    if size > MAX_METADATA_BYTES:
        raise LimitExceeded(
            f"node.metadata is {size} bytes; at most {MAX_METADATA_BYTES} are accepted"
        )


def check_texts(what: str, texts: Iterable[str]) -> None:
    """Each of `texts` (resource names, versions) is at most MAX_TEXT_CHARS long."""
    longest = max(map(len, texts), default=0)
    if longest > MAX_TEXT_CHARS:
        raise LimitExceeded(
            f"a {what} is {longest} characters; at most {MAX_TEXT_CHARS} are accepted"
        )


def _check_text(what: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise LimitExceeded(
            f"{what} is {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted"
        )


class SubscriptionBudget:
    """What one stream's client made it hold, per slot (a type's names, a
    type's initial versions), against MAX_NAMES and MAX_NAME_CHARS_TOTAL for
    the whole stream. Charging a slot replaces its previous charge: O(1)."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[int, int]] = {}
        self.names = 0
        self.chars = 0

    def charge(self, slot: str, names: int, chars: int) -> None:
        """Set `slot` to `names` names of `chars` characters in all. Raises
        LimitExceeded (the charge stays: the stream ends anyway)."""
        old_names, old_chars = self._slots.get(slot, (0, 0))
        self._slots[slot] = (names, chars)
        self.names += names - old_names
        self.chars += chars - old_chars
        if self.names > MAX_NAMES:
            raise LimitExceeded(
                f"this stream would subscribe to {self.names} resource names;"
                f" at most {MAX_NAMES} are accepted"
            )
        if self.chars > MAX_NAME_CHARS_TOTAL:
            raise LimitExceeded(
                f"this stream's resource names would be {self.chars} characters in all;"
                f" at most {MAX_NAME_CHARS_TOTAL} are accepted"
            )


def total_chars(texts: Iterable[str]) -> int:
    return sum(map(len, texts))


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a note of how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def loggable(text: str, limit: int = LOG_TEXT_CHARS) -> str:
    """Client text fit for one log line: at most `limit` characters of it, and
    every character Python does not call printable (line breaks, other
    control and format characters) escaped, backslashes doubled, so no input
    ends a line or imitates another record."""
    clipped = text[:limit]
    if not (clipped.isprintable() and "\\" not in clipped):
        clipped = "".join(_escaped(c) for c in clipped)
    if len(text) > limit:
        clipped += f"... [{len(text) - limit} more characters]"
    return clipped


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
