"""Backends named by DNS in the translator: resolved addresses are an input, like
the verdicts; a changed record set rebuilds only its own service's assignment."""

from __future__ import annotations

from xds_server.model.intent import Backend, Intent, Protocol, Service
from xds_server.resources import ENDPOINT
from xds_server.translate import translate
from xds_server.translate.memo import Memory


def two_services() -> Intent:
    return Intent(
        services=(
            Service("a", ("/a/",), (Backend("a-pool", "a.test", 9000),)),
            Service("b", ("/b/",), (Backend("b-pool", "b.test", 9000),)),
            # A gRPC service: proxyless clients get the same addresses.
            Service("g", (), (Backend("g-pool", "a.test", 9001),), protocol=Protocol.GRPC),
        )
    )


def endpoints_of(resources: dict[str, object], cluster: str) -> list[tuple[str, str]]:
    assignment = resources[ENDPOINT][cluster]  # type: ignore[index]
    return [
        (e.endpoint.hostname, e.endpoint.address.socket_address.address)
        for group in assignment.endpoints
        for e in group.lb_endpoints
    ]


def test_changed_records_rebuild_only_their_service() -> None:
    """With one memory kept across passes, new addresses for a.test rebuild the
    assignments that use a.test (its HTTP service and the gRPC one) and reuse b's
    very message; the output equals a fresh translation."""
    intent, memory = two_services(), Memory()
    first = translate(intent, {}, memory, {"a.test": ("127.0.0.1",), "b.test": ("127.0.0.2",)})
    moved = {"a.test": ("127.0.0.3", "127.0.0.4"), "b.test": ("127.0.0.2",)}
    second = translate(intent, {}, memory, moved)
    assert second[ENDPOINT]["b"] is first[ENDPOINT]["b"]
    assert endpoints_of(second, "a") == [("a-pool", "127.0.0.3"), ("a-pool", "127.0.0.4")]
    assert endpoints_of(second, "g") == [("g-pool", "127.0.0.3"), ("g-pool", "127.0.0.4")]
    assert second == translate(intent, {}, Memory(), moved)


def test_a_name_without_addresses_has_no_endpoint() -> None:
    """Before a name first resolves (or if it never does) its backend is no endpoint:
    nothing with a host name reaches EDS, which Envoy would refuse."""
    resources = translate(two_services(), {}, Memory(), {"b.test": ("127.0.0.2",)})
    assert endpoints_of(resources, "a") == []
    assert endpoints_of(resources, "b") == [("b-pool", "127.0.0.2")]
