"""The experiments' compare-and-swap edits: they touch only what an experiment
changed, and only while it still holds the experiment's value."""

from __future__ import annotations

import dataclasses

from tests.factories import spec_intent
from xds_server.model.edits import find_backend, swap_address, swap_ejection_time, update_backend
from xds_server.model.intent import SocketAddress

ORIGINAL = SocketAddress("127.0.0.1", 1)  # every backend of spec_intent()
REFUSING = SocketAddress("127.0.0.1", 40123)


def test_swap_address_moves_only_the_address_and_keeps_other_changes() -> None:
    """Moved to the refusing port, then weighted and drained by someone else: the
    way back restores the address and port only, the weight and drain stay."""
    intent = spec_intent()
    primary = find_backend(intent, "qdrant-primary")
    assert primary is not None and (primary.address, primary.port) == (ORIGINAL.host, 1)
    moved = swap_address(intent, "qdrant-primary", ORIGINAL, REFUSING)
    # Only the named backend moves, though the others share its address.
    assert find_backend(moved, "qdrant-secondary") == find_backend(intent, "qdrant-secondary")
    changed = update_backend(moved, "qdrant", "qdrant-primary", weight=7, draining=True)
    back = find_backend(
        swap_address(changed, "qdrant-primary", REFUSING, ORIGINAL), "qdrant-primary"
    )
    assert back == dataclasses.replace(primary, weight=7, draining=True)


def test_swap_address_leaves_an_address_someone_else_set() -> None:
    """A backend no longer at the experiment's address is left where it is."""
    intent = spec_intent()
    elsewhere = update_backend(intent, "qdrant", "qdrant-primary", port=7000)
    assert swap_address(elsewhere, "qdrant-primary", REFUSING, ORIGINAL) == elsewhere


def test_swap_ejection_time_only_from_the_expected_value() -> None:
    intent = spec_intent()
    configured = intent.policies.circuit_breaker_timeout_s
    temporary = swap_ejection_time(intent, configured, 2.0)
    assert temporary.policies.circuit_breaker_timeout_s == 2.0
    assert swap_ejection_time(temporary, 2.0, configured) == intent
    assert swap_ejection_time(intent, 2.0, 5.0) == intent  # not at 2.0: left alone
