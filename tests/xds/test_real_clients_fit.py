"""docs/xds-protocol.md rules 35 and 36 against the real clients: a real Envoy
1.40 on our bootstraps (SotW and Delta ADS) and a proxyless gRPC client
subscribe only to the types this server serves, and every request they send
stays below a tenth of each cap of xds/limits.py. If a client changes, this
fails before a cap refuses it."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.factories import intent_of
from tests.xds.conftest import Harness, poll
from tests.xds.test_grpc_proxyless import greeter, run_client
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import start_envoy
from xds_server.proxy.processes import free_port
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.xds import limits
from xds_server.xds.delta import DeltaStream
from xds_server.xds.sotw import SotwStream
from xds_server.xds.stream import SERVED_TYPES

LOOPBACK = "127.0.0.1"
# What every request must stay under: a tenth of each cap.
MARGIN = 10


@dataclass
class Seen:
    """The largest of everything the clients sent, per figure."""

    types: set[str] = field(default_factory=set)
    largest: dict[str, int] = field(default_factory=dict)

    def note(self, figure: str, value: int) -> None:
        self.largest[figure] = max(self.largest.get(figure, 0), value)

    def record(self, request: Any) -> None:
        self.types.add(request.type_url)
        self.note("request bytes", request.ByteSize())
        if request.HasField("node"):
            node = request.node
            self.note("node.id chars", len(node.id))
            self.note("node.cluster chars", len(node.cluster))
            self.note("node.metadata bytes", node.metadata.ByteSize())
            self.note("node bytes", node.ByteSize())
        names = list(getattr(request, "resource_names", ()))
        names += list(getattr(request, "resource_names_subscribe", ()))
        names += list(getattr(request, "initial_resource_versions", {}))
        self.note("names per request", len(names))
        self.note("name chars", max(map(len, names), default=0))
        if request.HasField("error_detail"):
            self.note("NACK chars", len(request.error_detail.message))

    def assert_far_below_the_caps(self) -> None:
        assert self.types <= SERVED_TYPES, self.types - SERVED_TYPES
        caps = {
            "request bytes": limits.MAX_REQUEST_BYTES,
            "node.id chars": limits.MAX_TEXT_CHARS,
            "node.cluster chars": limits.MAX_TEXT_CHARS,
            "node.metadata bytes": limits.MAX_METADATA_BYTES,
            "names per request": limits.MAX_NAMES,
            "name chars": limits.MAX_TEXT_CHARS,
            "NACK chars": limits.MAX_NACK_CHARS,
        }
        over = {
            k: (v, caps[k]) for k, v in self.largest.items() if k in caps and v * MARGIN > caps[k]
        }
        assert not over, over


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Every request any stream handles is measured first (then handled as ever)."""
    seen = Seen()
    for stream_class in (SotwStream, DeltaStream):
        handle: Callable[..., None] = stream_class.handle_request

        def measured(self: Any, request: Any, handle: Callable[..., None] = handle) -> None:
            seen.record(request)
            handle(self, request)

        monkeypatch.setattr(stream_class, "handle_request", measured)
    return seen


@pytest.fixture
async def envoy_ready_harness(make_harness: Callable[..., Any]) -> AsyncIterator[Harness]:
    xds: Harness = await make_harness()
    listen = SocketAddress(LOOPBACK, free_port(LOOPBACK))
    await xds.publish(intent_of(2, listen=listen, admin=SocketAddress(LOOPBACK, free_port())))
    yield xds


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_subscribes_only_to_served_types_far_below_the_caps(
    envoy_ready_harness: Harness, seen: Seen, tmp_path: Path, delta: bool
) -> None:
    """A real Envoy on our ADS bootstrap gets LIVE (CDS, EDS, LDS, RDS all
    ACKed) having asked for nothing else, every request far below every cap."""
    xds = envoy_ready_harness
    admin = SocketAddress(LOOPBACK, free_port(LOOPBACK))
    bootstrap = make_bootstrap(
        node_id="envoy-1", xds=SocketAddress(LOOPBACK, xds.port), envoy_admin=admin, delta=delta
    )
    envoy = await start_envoy(bootstrap, admin=admin, workdir=tmp_path / "envoy")
    try:
        await poll(lambda: xds.recorder.count("acked") >= 4, timeout=10.0)
    finally:
        await envoy.stop()
    assert seen.types == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    _report(f"envoy {'delta' if delta else 'sotw'}", seen)
    seen.assert_far_below_the_caps()


async def test_proxyless_grpc_subscribes_only_to_served_types_far_below_the_caps(
    make_harness: Callable[..., Any], backends: dict[str, int], seen: Seen
) -> None:
    """The proxyless gRPC client (xds:/// target) likewise."""
    xds: Harness = await make_harness()
    await xds.publish(greeter(backends))
    await run_client(xds, "xds:///greeter", "greeter-a,greeter-b", calls=2)
    assert seen.types == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    _report("proxyless grpc", seen)
    seen.assert_far_below_the_caps()


def _report(client: str, seen: Seen) -> None:
    """The figures, for the record (pytest -s shows them)."""
    print(f"{client}: {json.dumps(seen.largest, sort_keys=True)}", file=sys.stderr)
