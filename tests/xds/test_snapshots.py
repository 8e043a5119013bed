"""docs/xds-protocol.md rules 25 and 27: only consistent snapshots, versions that
are content hashes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import intent_of
from tests.xds.conftest import Harness, names_of
from xds_server.cache import build_snapshot
from xds_server.errors import InconsistentSnapshot
from xds_server.model.edits import update_backend, without_service
from xds_server.model.intent import Protocol
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.translate import translate


def _without(type_url: str, *names: str) -> dict[str, dict[str, Any]]:
    resources = {t: dict(r) for t, r in translate(intent_of(2)).items()}
    for name in names:
        del resources[type_url][name]
    return resources


@pytest.mark.parametrize(
    ("resources", "missing"),
    [
        (_without(ENDPOINT, "svc-0"), "ClusterLoadAssignment 'svc-0'"),
        (_without(ROUTE, "router"), "RouteConfiguration 'router'"),
        (_without(CLUSTER, "svc-1"), "Cluster 'svc-1'"),
    ],
)
def test_inconsistent_snapshot_is_refused(resources: dict[str, Any], missing: str) -> None:
    """docs/xds-protocol.md rule 25: a cluster without its EDS resource, a
    listener without its route configuration, or a route naming a missing
    cluster is refused."""
    with pytest.raises(InconsistentSnapshot) as refused:
        build_snapshot(resources, 2)
    assert missing in str(refused.value)


def test_every_missing_reference_is_reported() -> None:
    """docs/xds-protocol.md rule 25: the refusal names every missing resource,
    not only the first."""
    resources = _without(ENDPOINT, "svc-0", "svc-1")
    resources[ROUTE] = {}
    with pytest.raises(InconsistentSnapshot) as refused:
        build_snapshot(resources, 2)
    message = str(refused.value)
    for missing in ("'svc-0'", "'svc-1'", "RouteConfiguration 'router'"):
        assert missing in message


async def test_refused_snapshot_leaves_cache_and_clients_alone(xds: Harness) -> None:
    """docs/xds-protocol.md rule 25: when a snapshot is refused the cache keeps
    serving the old one and connected clients see nothing."""
    client = xds.client()
    await client.subscribe_all()
    old = xds.cache.snapshot
    with pytest.raises(InconsistentSnapshot):
        await xds.cache.publish(build_snapshot(_without(CLUSTER, "svc-0", "svc-1"), 2))
    assert xds.cache.snapshot is old
    assert xds.cache.generation == 1
    await client.expect_silence(0.3)
    late = xds.client(node_id="late")
    late.send(CLUSTER)
    assert names_of(await late.recv_type(CLUSTER)) == ["svc-0", "svc-1", "xds-server-admin"]


_VERSIONS_SCRIPT = """
import json
from xds_server.cache import build_snapshot
from xds_server.translate import translate
from tests.factories import intent_of
snapshot = build_snapshot(translate(intent_of(3)), 7)
print(json.dumps(snapshot.versions()))
"""


def test_equal_intent_gives_equal_versions_and_bytes() -> None:
    """docs/xds-protocol.md rule 27: two snapshots built separately from equal
    intent (even with services listed in another order) have identical versions
    and bytes, and so does one built by another process with another hash seed
    (a replica)."""
    intent = intent_of(3)
    first = build_snapshot(translate(intent), 1)
    reordered = dataclasses.replace(intent, services=tuple(reversed(intent.services)))
    second = build_snapshot(translate(reordered), 2)
    assert first.versions() == second.versions()
    for type_url, types in first.types.items():
        other = second.types[type_url]
        assert list(types.resources) == list(other.resources)
        for name, resource in types.resources.items():
            assert (
                resource.packed.SerializeToString()
                == other.resources[name].packed.SerializeToString()
            )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    replica = subprocess.run(
        [sys.executable, "-c", _VERSIONS_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert json.loads(replica.stdout) == first.versions()


def test_different_content_gives_different_versions() -> None:
    """docs/xds-protocol.md rule 27: a version string is never reused for other
    content: a changed endpoint changes the EDS version and only it."""
    base = build_snapshot(translate(intent_of(2)), 1)
    other = build_snapshot(translate(update_backend(intent_of(2), "svc-0", "svc-0-b0", port=1)), 1)
    assert base.versions()[ENDPOINT] != other.versions()[ENDPOINT]
    assert {t: v for t, v in base.versions().items() if t != ENDPOINT} == {
        t: v for t, v in other.versions().items() if t != ENDPOINT
    }


async def test_client_reporting_old_version_gets_new_content_after_restart(
    make_harness: Callable[..., Any],
) -> None:
    """docs/xds-protocol.md rule 27: after a restart with other content, a
    reconnecting client that reports the version (and nonce) it held gets the
    new content under a new version; after a restart with equal content the
    version is the same."""
    before: Harness = await make_harness()
    await before.publish(intent_of(2))
    client = before.client()
    held = await client.subscribe_all()
    await before.stop()

    after: Harness = await make_harness()
    await after.publish(without_service(intent_of(2), "svc-0"))
    again = after.client()
    for type_url in (CLUSTER, LISTENER):
        again.send(type_url, nonce=held[type_url].nonce, version=held[type_url].version_info)
        response = await again.recv_type(type_url)
        assert response.version_info == after.version(type_url)
        if type_url == CLUSTER:
            assert response.version_info != held[CLUSTER].version_info
            assert names_of(response) == ["svc-1", "xds-server-admin"]
    again.send(ENDPOINT, ["svc-0", "svc-1"], nonce=held[ENDPOINT].nonce, version="x")
    assert names_of(await again.recv_type(ENDPOINT)) == ["svc-1"]

    same: Harness = await make_harness()
    await same.publish(intent_of(2))
    assert same.snapshot.versions() == {t: r.version_info for t, r in held.items()}


def test_api_listener_without_its_route_config_is_refused() -> None:
    """docs/xds-protocol.md rule 25 for proxyless gRPC: an API listener's RDS
    name is checked too."""
    intent = intent_of(2)
    grpc_service = dataclasses.replace(intent.services[0], protocol=Protocol.GRPC)
    resources = {
        t: dict(m)
        for t, m in translate(dataclasses.replace(intent, services=(grpc_service,))).items()
    }
    assert "svc-0" in resources[ROUTE]
    del resources[ROUTE]["svc-0"]
    with pytest.raises(InconsistentSnapshot) as refused:
        build_snapshot(resources, 2)
    assert "RouteConfiguration 'svc-0'" in str(refused.value)
