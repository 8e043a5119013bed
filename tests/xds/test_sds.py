"""docs/xds-protocol.md rule 39: the listener's certificate by SDS over ADS.

The Secret goes out before the listener that names it, a new certificate is a
new Secret and nothing else, a Secret is sent only to a client that names it,
a listener naming a missing secret is never published, and CSDS never shows
the private key."""

from __future__ import annotations

import dataclasses

import pytest
import trustme
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.factories import intent_of
from tests.tls_support import edge_certificate
from tests.xds.conftest import DeltaClient, Harness, XdsClient, names_of
from xds_server.cache import build_snapshot
from xds_server.errors import InconsistentSnapshot
from xds_server.model.intent import SocketAddress
from xds_server.resources import (
    CLUSTER,
    EDGE_CERTIFICATE_SECRET,
    EDGE_CLIENT_CA_SECRET,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
)
from xds_server.translate import translate


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def _subscribed_with_tls(xds: Harness, ca: trustme.CA) -> XdsClient:
    """A client holding every type, the certificate secret included (as Envoy
    asks for it once the listener names it)."""
    client = xds.client(node_id="envoy-tls")
    await xds.publish(intent_of(2), edge_certificate(ca))
    await client.subscribe_all()
    client.send(SECRET, [EDGE_CERTIFICATE_SECRET])
    secrets = await client.recv_type(SECRET)
    assert names_of(secrets) == [EDGE_CERTIFICATE_SECRET]
    client.ack(secrets)
    await xds.settled(client)
    return client


async def test_secret_goes_out_before_the_listener_that_names_it(
    xds: Harness, ca: trustme.CA
) -> None:
    """docs/xds-protocol.md rule 39: a change that adds a secret and a listener naming it (client
    certificates turned on, with a new listen port) sends the SDS response
    before the LDS response on the ADS stream."""
    client = await _subscribed_with_tls(xds, ca)
    client.send(SECRET, [EDGE_CERTIFICATE_SECRET, EDGE_CLIENT_CA_SECRET])
    await client.expect_silence(0.3)  # the CA secret does not exist yet
    before = len(xds.recorder.sent())
    moved = dataclasses.replace(intent_of(2), listen=SocketAddress("127.0.0.1", 8443))
    await xds.publish(moved, edge_certificate(ca, client_ca=ca.cert_pem.bytes()))
    secrets = await client.recv_type(SECRET)
    assert names_of(secrets) == [EDGE_CERTIFICATE_SECRET, EDGE_CLIENT_CA_SECRET]
    await client.recv_type(LISTENER)
    order = [t for _, t, _ in xds.recorder.sent()[before:] if t in (SECRET, LISTENER)]
    assert order == [SECRET, LISTENER]


async def test_a_new_certificate_is_a_new_secret_and_nothing_else(
    xds: Harness, ca: trustme.CA
) -> None:
    """docs/xds-protocol.md rule 39: the same intent with another certificate changes the Secret's
    version only: the client gets one SDS response, no LDS (so Envoy drains
    nothing)."""
    client = await _subscribed_with_tls(xds, ca)
    old = xds.snapshot.versions()
    await xds.publish(intent_of(2), edge_certificate(ca))
    new = xds.snapshot.versions()
    assert {t for t in new if new[t] != old[t]} == {SECRET}
    rotated = await client.recv_type(SECRET)
    assert names_of(rotated) == [EDGE_CERTIFICATE_SECRET]
    client.ack(rotated)
    await client.expect_silence(0.5)


async def test_a_secret_is_sent_only_to_a_client_that_names_it(
    xds: Harness, ca: trustme.CA
) -> None:
    """docs/xds-protocol.md rule 39: on SotW and Delta, a Secret subscription by `*` (or an empty
    first request) gets nothing; a client that subscribes to the other types
    (a proxyless gRPC client) never sees a Secret."""
    await xds.publish(intent_of(2), edge_certificate(ca))
    sotw = xds.client(node_id="wildcard-sotw")
    await sotw.subscribe_all()
    sotw.send(SECRET, [])
    await sotw.expect_silence(0.3)
    sotw.send(SECRET, ["*"])
    await sotw.expect_silence(0.3)
    delta = DeltaClient(xds, node_id="wildcard-delta")
    delta.send(SECRET, subscribe=["*"])
    await delta.expect_silence(0.3)
    sent_types = {t for _, t, _ in xds.recorder.sent()}
    assert SECRET not in sent_types
    await delta.close()


def test_a_listener_naming_a_missing_secret_is_refused(ca: trustme.CA) -> None:
    """docs/xds-protocol.md rules 25 and 39: a snapshot whose listener names a secret the snapshot
    does not hold is refused, naming the secret."""
    resources = dict(translate(intent_of(1), certificate=edge_certificate(ca)))
    resources[SECRET] = {}
    with pytest.raises(InconsistentSnapshot, match=f"Secret '{EDGE_CERTIFICATE_SECRET}'"):
        build_snapshot(resources, 1)


async def test_csds_shows_the_secret_without_its_private_key(xds: Harness, ca: trustme.CA) -> None:
    """docs/security.md: CSDS reports the Secret a client holds with the
    certificate chain but the private key replaced by "[redacted]"; the key's
    bytes are nowhere in the answer."""
    certificate = edge_certificate(ca)
    client = xds.client(node_id="envoy-tls")
    await xds.publish(intent_of(2), certificate)
    await client.subscribe_all()
    client.send(SECRET, [EDGE_CERTIFICATE_SECRET])
    client.ack(await client.recv_type(SECRET))
    await xds.settled(client)
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(xds.channel())
    answer = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    [row] = [c for c in answer.config[0].generic_xds_configs if c.type_url == SECRET]
    shown = secret_pb2.Secret()
    assert row.xds_config.Unpack(shown)
    assert shown.tls_certificate.private_key.inline_string == "[redacted]"
    assert shown.tls_certificate.certificate_chain.inline_bytes == certificate.cert_chain
    key_body = certificate.private_key.split(b"\n")[1]
    assert key_body not in answer.SerializeToString()
    assert {CLUSTER, ENDPOINT, LISTENER, ROUTE} <= {
        c.type_url for c in answer.config[0].generic_xds_configs
    }


async def test_delta_ads_carries_the_secret_and_its_rotation(xds: Harness, ca: trustme.CA) -> None:
    """docs/xds-protocol.md rule 39 on Delta: a named Secret subscription gets the
    certificate; a new certificate sends that one Secret again and nothing else
    to the client that holds the listener too."""
    await xds.publish(intent_of(2), edge_certificate(ca))
    client = DeltaClient(xds, node_id="delta-tls")
    client.send(LISTENER, subscribe=["*"])
    client.ack(await client.recv())
    client.send(SECRET, subscribe=[EDGE_CERTIFICATE_SECRET])
    first = await client.recv()
    assert first.type_url == SECRET
    assert [r.name for r in first.resources] == [EDGE_CERTIFICATE_SECRET]
    client.ack(first)
    rotated = edge_certificate(ca)
    await xds.publish(intent_of(2), rotated)
    again = await client.recv()
    assert again.type_url == SECRET and [r.name for r in again.resources] == [
        EDGE_CERTIFICATE_SECRET
    ]
    secret = secret_pb2.Secret()
    assert again.resources[0].resource.Unpack(secret)
    assert secret.tls_certificate.certificate_chain.inline_bytes == rotated.cert_chain
    client.ack(again)
    await client.expect_silence(0.5)  # no listener update
    await client.close()


async def test_delta_removes_a_secret_after_the_listener_that_stopped_naming_it(
    xds: Harness, ca: trustme.CA
) -> None:
    """docs/xds-protocol.md rule 39 on Delta: when client certificates are turned
    off, the listener without the CA secret goes out first, and the CA secret's
    removal after it."""
    await xds.publish(intent_of(2), edge_certificate(ca, client_ca=ca.cert_pem.bytes()))
    client = DeltaClient(xds, node_id="delta-removal")
    client.send(LISTENER, subscribe=["*"])
    client.ack(await client.recv())
    client.send(SECRET, subscribe=[EDGE_CERTIFICATE_SECRET, EDGE_CLIENT_CA_SECRET])
    client.ack(await client.recv())
    await xds.publish(intent_of(2), edge_certificate(ca))
    order = []
    for _ in range(3):  # the listener, the new certificate, the CA's removal
        response = await client.recv()
        order.append((response.type_url, list(response.removed_resources)))
        client.ack(response)
        if response.removed_resources:
            break
    assert order.index((LISTENER, [])) < order.index((SECRET, [EDGE_CLIENT_CA_SECRET]))
    await client.close()
