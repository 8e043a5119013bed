"""translate/secrets.py: the listener's certificate as SDS Secrets, and the
listener's downstream TLS that names them (docs/xds-protocol.md rule 39)."""

from __future__ import annotations

import pytest
import trustme
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from tests.factories import intent_of
from tests.tls_support import edge_certificate
from xds_server.model.intent import SocketAddress
from xds_server.proxy.envoy_process import validate_bootstrap
from xds_server.proxy.static_config import static_bootstrap
from xds_server.resources import (
    EDGE_CERTIFICATE_SECRET,
    EDGE_CLIENT_CA_SECRET,
    LISTENER,
    LISTENER_NAME,
    SECRET,
)
from xds_server.translate import translate
from xds_server.translate.memo import Memory


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_context(listener: listener_pb2.Listener) -> tls_pb2.DownstreamTlsContext:
    [chain] = listener.filter_chains
    assert chain.transport_socket.name == "envoy.transport_sockets.tls"
    context = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(context)
    return context


def test_the_listener_names_its_certificate_by_sds_over_ads(ca: trustme.CA) -> None:
    """The filter chain's DownstreamTlsContext names the certificate secret with
    `sds_config: {ads: {}, resource_api_version: V3}`, offers h2 and http/1.1,
    asks for no client certificate, and holds no byte of the key."""
    certificate = edge_certificate(ca)
    resources = translate(intent_of(1), certificate=certificate)
    listener = resources[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    common = _tls_context(listener).common_tls_context
    [sds] = common.tls_certificate_sds_secret_configs
    assert sds.name == EDGE_CERTIFICATE_SECRET
    assert sds.sds_config.HasField("ads") and sds.sds_config.resource_api_version == 2  # V3
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    assert not _tls_context(listener).require_client_certificate.value
    assert not common.HasField("validation_context_sds_secret_config")
    key_body = certificate.private_key.split(b"\n")[1]
    assert key_body not in listener.SerializeToString()
    secret = resources[SECRET][EDGE_CERTIFICATE_SECRET]
    assert isinstance(secret, secret_pb2.Secret)
    assert secret.tls_certificate.private_key.inline_bytes == certificate.private_key
    assert secret.tls_certificate.certificate_chain.inline_bytes == certificate.cert_chain


def test_with_a_client_ca_client_certificates_are_required(ca: trustme.CA) -> None:
    """A client CA adds the validation context secret and
    require_client_certificate: true."""
    certificate = edge_certificate(ca, client_ca=ca.cert_pem.bytes())
    resources = translate(intent_of(1), certificate=certificate)
    context = _tls_context(resources[LISTENER][LISTENER_NAME])  # type: ignore[arg-type]
    assert context.require_client_certificate.value
    assert context.common_tls_context.validation_context_sds_secret_config.name == (
        EDGE_CLIENT_CA_SECRET
    )
    ca_secret = resources[SECRET][EDGE_CLIENT_CA_SECRET]
    assert ca_secret.validation_context.trusted_ca.inline_bytes == ca.cert_pem.bytes()  # type: ignore[attr-defined]


def test_without_tls_there_is_no_secret_and_no_transport_socket() -> None:
    """No router.tls: no Secret type in the output, the listener plain HTTP."""
    resources = translate(intent_of(1))
    assert SECRET not in resources
    [chain] = resources[LISTENER][LISTENER_NAME].filter_chains  # type: ignore[attr-defined]
    assert not chain.HasField("transport_socket")


def test_a_new_certificate_rebuilds_the_secret_only(ca: trustme.CA) -> None:
    """With the publisher's memory, another certificate returns the very same
    Listener object (so it is not even serialized again) and a new Secret."""
    memory = Memory()
    first = translate(intent_of(1), memory=memory, certificate=edge_certificate(ca))
    second = translate(intent_of(1), memory=memory, certificate=edge_certificate(ca))
    assert second[LISTENER][LISTENER_NAME] is first[LISTENER][LISTENER_NAME]
    assert second[SECRET][EDGE_CERTIFICATE_SECRET] != first[SECRET][EDGE_CERTIFICATE_SECRET]


@pytest.mark.envoy
@pytest.mark.parametrize("mutual", [False, True])
async def test_envoy_accepts_the_tls_listener_and_its_secrets(ca: trustme.CA, mutual: bool) -> None:
    """Envoy 1.40 (`--mode validate`) accepts the listener's TLS context and the
    Secrets, as the static bootstrap of the benchmark's baseline loads them."""
    client_ca = ca.cert_pem.bytes() if mutual else None
    resources = translate(intent_of(1), certificate=edge_certificate(ca, client_ca=client_ca))
    await validate_bootstrap(static_bootstrap(resources, SocketAddress("127.0.0.1", 0)))
