"""The listener's certificate -> SDS Secrets, and the listener's TLS transport socket.

Envoy's listener names its certificate and client CA by SDS, over the same
ADS stream (`sds_config: {ads: {}}`), so a rotated certificate is a new Secret
version and nothing else: the Listener's bytes do not change, and Envoy swaps
the certificate for new handshakes without draining a connection
(https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret).
The transport socket depends only on whether TLS is on and whether client
certificates are demanded, never on the certificate's content.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.certificates import EdgeCertificate
from xds_server.resources import EDGE_CERTIFICATE_SECRET, EDGE_CLIENT_CA_SECRET
from xds_server.translate.common import ads_config_source, packed
from xds_server.translate.memo import Memo

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
# HTTP/2 first, as browsers and curl --http2 offer it; HTTP/1.1 for the rest (ab).
ALPN = ("h2", "http/1.1")


def secrets(
    certificate: EdgeCertificate | None, memo: Memo[secret_pb2.Secret]
) -> dict[str, secret_pb2.Secret]:
    if certificate is None:
        return {}
    found = {
        EDGE_CERTIFICATE_SECRET: memo.get(
            EDGE_CERTIFICATE_SECRET,
            (certificate.cert_chain, certificate.private_key),
            lambda: certificate_secret(certificate.cert_chain, certificate.private_key),
        )
    }
    if certificate.client_ca is not None:
        ca = certificate.client_ca
        found[EDGE_CLIENT_CA_SECRET] = memo.get(
            EDGE_CLIENT_CA_SECRET, (ca,), lambda: client_ca_secret(ca)
        )
    return found


def certificate_secret(cert_chain: bytes, private_key: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=EDGE_CERTIFICATE_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert_chain),
            private_key=base_pb2.DataSource(inline_bytes=private_key),
        ),
    )


def client_ca_secret(ca: bytes) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=EDGE_CLIENT_CA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=ca)
        ),
    )


def sds_names(mutual: bool) -> tuple[str, ...]:
    """The secrets a listener with TLS refers to."""
    return (
        (EDGE_CERTIFICATE_SECRET, EDGE_CLIENT_CA_SECRET) if mutual else (EDGE_CERTIFICATE_SECRET,)
    )


def tls_transport_socket(mutual: bool) -> base_pb2.TransportSocket:
    """Downstream TLS naming the secrets; with `mutual`, a client without a
    certificate the CA signed fails the handshake."""
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_by_sds(EDGE_CERTIFICATE_SECRET)],
        alpn_protocols=list(ALPN),
    )
    if mutual:
        common.validation_context_sds_secret_config.CopyFrom(_by_sds(EDGE_CLIENT_CA_SECRET))
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=wrappers_pb2.BoolValue(value=mutual),
    )
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=packed(context))


def _by_sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_config_source())
