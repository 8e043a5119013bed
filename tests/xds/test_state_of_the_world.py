"""docs/xds-protocol.md rules 14-16: complete sets for CDS/LDS, deltas for EDS/RDS,
no duplicate names."""

from __future__ import annotations

import dataclasses

from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import intent_of, service
from tests.xds.conftest import Harness, XdsClient, eds_names_of, names_of, rds_names_of, unpack
from xds_server.model.edits import update_backend, with_service, without_service
from xds_server.model.intent import Backend, Intent, Policies, Service, Strategy
from xds_server.resources import CLUSTER, ENDPOINT, FULL_STATE_TYPES, LISTENER, ROUTE


async def test_cds_responses_carry_the_complete_set(xds: Harness) -> None:
    """docs/xds-protocol.md rule 14: updating b of {a, b} sends a and b;
    deleting a sends only b (absence means deletion)."""
    client = xds.client("cds")
    client.send()
    first = await client.recv_type(CLUSTER)
    assert names_of(first) == ["svc-0", "svc-1", "xds-server-admin"]
    client.ack(first)
    await xds.settled(client)
    assert xds.intent is not None
    updated = with_service(xds.intent, "svc-1", strategy=Strategy.MAGLEV)
    await xds.publish(updated)
    second = await client.recv_type(CLUSTER)
    assert names_of(second) == ["svc-0", "svc-1", "xds-server-admin"]
    assert unpack(second)["svc-0"] == unpack(first)["svc-0"]
    client.ack(second)
    await xds.settled(client)
    await xds.publish(without_service(updated, "svc-0"))
    third = await client.recv_type(CLUSTER)
    assert names_of(third) == ["svc-1", "xds-server-admin"]


async def test_lds_responses_carry_the_complete_set(xds: Harness) -> None:
    """docs/xds-protocol.md rule 14: a listener update re-sends every listener
    (here: the one)."""
    client = xds.client("lds")
    client.send()
    first = await client.recv_type(LISTENER)
    client.ack(first)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(dataclasses.replace(xds.intent, listen=xds.intent.admin))
    second = await client.recv_type(LISTENER)
    assert names_of(second) == ["router"]
    assert second.version_info != first.version_info


async def test_eds_responses_carry_only_what_changed(xds: Harness) -> None:
    """docs/xds-protocol.md rule 15: changing 1 of 100 load assignments sends
    exactly that one."""
    intent = intent_of(100)
    await xds.publish(intent)
    client = xds.client("eds")
    client.send(ENDPOINT, [f"svc-{i}" for i in range(100)])
    first = await client.recv_type(ENDPOINT)
    assert len(first.resources) == 100
    client.ack(first)
    await xds.settled(client)
    await xds.publish(update_backend(intent, "svc-42", "svc-42-b1", weight=9, port=9))
    second = await client.recv_type(ENDPOINT)
    assert names_of(second) == ["svc-42"]
    assert second.version_info == xds.version(ENDPOINT) != first.version_info
    client.ack(second)
    await client.expect_silence(0.3)


async def test_rds_responses_carry_only_what_changed(xds: Harness) -> None:
    """docs/xds-protocol.md rule 15: an RDS response names only the changed
    route configuration, and nothing is sent for RDS when only clusters
    change."""
    client = xds.client("rds")
    client.send(ROUTE, ["router"])
    first = await client.recv_type(ROUTE)
    client.ack(first)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(with_service(xds.intent, "svc-0", strategy=Strategy.RANDOM))
    await client.expect_silence(0.3)
    await xds.publish(with_service(xds.intent, "svc-0", routes=("/zero/",)))
    second = await client.recv_type(ROUTE)
    assert names_of(second) == ["router"]


# ---- docs/xds-protocol.md rule 16: a property over random intents --------------

_backends = st.lists(
    st.tuples(st.integers(1, 65_535), st.integers(1, 5), st.integers(0, 1), st.booleans()),
    max_size=3,
)


@st.composite
def intents(draw: st.DrawFn) -> Intent:
    indices = draw(st.lists(st.integers(0, 5), unique=True, max_size=4))
    services = []
    for index in sorted(indices):
        name = service(index).name
        backends = tuple(
            Backend(f"{name}-b{i}", "127.0.0.1", port, weight=w, priority=p, draining=d)
            for i, (port, w, p, d) in enumerate(draw(_backends))
        )
        strategy = draw(st.none() | st.sampled_from(Strategy))
        extra = draw(st.booleans())
        routes = (f"/{name}/", f"/{name}/v2/") if extra else (f"/{name}/",)
        services.append(Service(name, routes, backends, strategy=strategy))
    policies = Policies(
        max_retries=draw(st.integers(0, 3)),
        circuit_breaker_threshold=draw(st.integers(1, 20)),
    )
    return Intent(services=tuple(services), policies=policies)


class MiniEnvoy:
    """Holds what an Envoy would hold and checks every response on arrival."""

    def __init__(self, xds: Harness, client: XdsClient) -> None:
        self.xds = xds
        self.client = client
        self.held: dict[str, dict[str, bytes]] = {
            t: {} for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
        }

    def take(self, response: discovery_pb2.DiscoveryResponse) -> None:
        assert isinstance(response, discovery_pb2.DiscoveryResponse)
        type_url = response.type_url
        names = names_of(response)
        assert len(names) == len(set(names)), f"duplicate names in {type_url}: {names}"
        current = self.xds.snapshot.of(type_url)
        assert current is not None
        content = {n: r.value for n, r in zip(names, response.resources, strict=True)}
        if type_url in FULL_STATE_TYPES:
            # The complete set; during make-before-break also the clusters
            # about to go (docs/xds-protocol.md rule 24), never anything else.
            assert (
                set(current.resources)
                <= set(names)
                <= set(current.resources) | set(self.held[type_url])
            ), (names, sorted(current.resources))
            self.held[type_url] = content
        else:
            self.held[type_url].update(content)
        self.client.ack(response)
        unpacked = unpack(response).values()
        if type_url == CLUSTER:
            self._subscribe(ENDPOINT, eds_names_of(unpacked))
        elif type_url == LISTENER:
            self._subscribe(ROUTE, rds_names_of(unpacked))
        self._check_routes_resolve()

    def _check_routes_resolve(self) -> None:
        """Make-before-break (docs/xds-protocol.md rule 24): no held route names
        a missing cluster."""
        for data in self.held[ROUTE].values():
            config = route_pb2.RouteConfiguration.FromString(data)
            named = {r.route.cluster for vh in config.virtual_hosts for r in vh.routes}
            assert named <= set(self.held[CLUSTER]), (named, sorted(self.held[CLUSTER]))

    def _subscribe(self, type_url: str, names: set[str]) -> None:
        """Follow the held clusters (listeners) with the EDS (RDS) subscription."""
        if tuple(sorted(names)) == self.client.names.get(type_url):
            return
        last = [r for r in self.client.received if r.type_url == type_url]
        nonce, version = (last[-1].nonce, last[-1].version_info) if last else ("", "")
        self.client.send(type_url, sorted(names), nonce=nonce, version=version)

    def in_sync(self) -> bool:
        for type_url, held in self.held.items():
            current = self.xds.snapshot.of(type_url)
            assert current is not None
            wanted = (
                set(current.resources)
                if type_url in FULL_STATE_TYPES
                else set(self.client.names.get(type_url, ())) & set(current.resources)
            )
            if type_url in FULL_STATE_TYPES and set(held) != wanted:
                return False
            if any(held.get(n) != current.resources[n].packed.value for n in wanted):
                return False
        return True

    async def converge(self) -> None:
        while not self.in_sync():
            self.take(await self.client.recv(timeout=2.0))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(intents(), min_size=1, max_size=4))
async def test_no_duplicate_names_and_complete_sets(sequence: list[Intent]) -> None:
    """docs/xds-protocol.md rules 16, 14 and 24: over random intent sequences,
    an Envoy-like ADS client never sees one name twice in a response, every
    CDS/LDS response carries the complete set, no route it holds ever names a
    cluster it does not hold, and it converges to exactly the published
    snapshot."""
    xds = await Harness().start()
    try:
        await xds.publish(sequence[0])
        client = xds.client()
        envoy = MiniEnvoy(xds, client)
        client.send(CLUSTER)
        client.send(LISTENER)
        await envoy.converge()
        for intent in sequence[1:]:
            await xds.publish(intent)
            await envoy.converge()
    finally:
        await xds.stop()
