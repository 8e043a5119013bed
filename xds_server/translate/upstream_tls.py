"""A backend's `tls` -> Envoy's upstream TLS, per backend within its cluster.

A cluster holds plaintext and TLS backends side by side, so TLS is not the
cluster's `transport_socket` (that stays plaintext) but one entry of its
`transport_socket_matches` per TLS backend, named `tls:<backend>`. Each of that
backend's endpoints carries `envoy.transport_socket_match: {tls: <backend>}` in
its metadata (translate/endpoints.py), and Envoy picks the first entry whose
`match` is a subset of it; an endpoint without it matches none and connects
in plaintext.

The UpstreamTlsContext:
- SNI: `tls.sni`, else the backend's host name (model/upstream_tls.py);
- verified (unless `insecure_skip_verify`): against the CA's PEM text inline
  (read by the controller: public), or for `tls: true` the system bundle by
  file name on Envoy's host; the certificate must carry the SNI name as a DNS
  SAN (`match_typed_subject_alt_names`), so a certificate of the right CA for
  another host is refused too;
- a client certificate and key only by file name: the private key is never
  part of CDS (Envoy reads both files at cluster creation).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from xds_server.model.intent import Backend, Service
from xds_server.model.upstream_tls import SYSTEM_CA_FILE, UpstreamTls, server_name
from xds_server.translate.common import packed

TLS_SOCKET = "envoy.transport_sockets.tls"
MATCH_METADATA = "envoy.transport_socket_match"  # the filter_metadata key Envoy reads
MATCH_KEY = "tls"


def transport_socket_matches(service: Service) -> list[cluster_pb2.Cluster.TransportSocketMatch]:
    """One entry per TLS backend of `service`, in backend order; none without TLS."""
    return [transport_socket_match(b, b.tls) for b in service.backends if b.tls is not None]


def transport_socket_match(
    backend: Backend, tls: UpstreamTls
) -> cluster_pb2.Cluster.TransportSocketMatch:
    """The backend's entry (also of its HDS ClusterHealthCheck, translate/hds.py)."""
    return cluster_pb2.Cluster.TransportSocketMatch(
        name=f"{MATCH_KEY}:{backend.name}",
        match=match_struct(backend),
        transport_socket=base_pb2.TransportSocket(
            name=TLS_SOCKET, typed_config=packed(upstream_tls_context(tls, backend.address))
        ),
    )


def endpoint_metadata(backend: Backend) -> base_pb2.Metadata | None:
    """What selects the backend's entry of transport_socket_matches; None: plaintext."""
    if backend.tls is None:
        return None
    return base_pb2.Metadata(filter_metadata={MATCH_METADATA: match_struct(backend)})


def match_struct(backend: Backend) -> struct_pb2.Struct:
    """What an endpoint's metadata (or a health check's transport_socket_match_criteria)
    must hold to pick the backend's entry."""
    match = struct_pb2.Struct()
    match.update({MATCH_KEY: backend.name})
    return match


def upstream_tls_context(tls: UpstreamTls, address: str) -> tls_pb2.UpstreamTlsContext:
    name = server_name(tls, address)
    common = tls_pb2.CommonTlsContext()
    if not tls.insecure_skip_verify:
        common.validation_context.CopyFrom(_validation(tls, name))
    if tls.client_cert_file is not None and tls.client_key_file is not None:
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=tls.client_cert_file),
                private_key=base_pb2.DataSource(filename=tls.client_key_file),
            )
        )
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=name or "")


def _validation(tls: UpstreamTls, name: str | None) -> common_pb2.CertificateValidationContext:
    """The settings refuse a verified backend without a name (settings/backend_tls.py);
    should one get here, an empty exact matcher matches no SAN: refused, not open."""
    if tls.ca_pem is not None:
        trusted = base_pb2.DataSource(inline_string=tls.ca_pem)
    else:  # not read by the controller: Envoy reads the file on its own host
        trusted = base_pb2.DataSource(filename=tls.ca_file or SYSTEM_CA_FILE)
    san = common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.DNS,
        matcher=string_pb2.StringMatcher(exact=name or ""),
    )
    return common_pb2.CertificateValidationContext(
        trusted_ca=trusted, match_typed_subject_alt_names=[san]
    )
