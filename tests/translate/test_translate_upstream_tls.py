"""translate/upstream_tls.py: TLS per backend inside one cluster, through
transport_socket_matches selected by endpoint metadata; what is verified and
how; and that a private key never travels in CDS."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from xds_server.errors import ConfigError
from xds_server.model.intent import Backend, Intent, Protocol, Service
from xds_server.model.upstream_tls import SYSTEM_CA_FILE, UpstreamTls
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.translate import translate
from xds_server.translate.upstream_tls import MATCH_METADATA

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def service(*backends: Backend, protocol: Protocol = Protocol.HTTP) -> Intent:
    return Intent(services=(Service("llm", ("/v1",), backends, protocol=protocol),))


def cluster_and_endpoints(
    intent: Intent,
) -> tuple[cluster_pb2.Cluster, endpoint_pb2.ClusterLoadAssignment]:
    resources = translate(intent)
    cluster = resources[CLUSTER]["llm"]
    assignment = resources[ENDPOINT]["llm"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    return cluster, assignment


def context_of(cluster: cluster_pb2.Cluster, name: str) -> tls_pb2.UpstreamTlsContext:
    match = next(m for m in cluster.transport_socket_matches if m.name == f"tls:{name}")
    context = tls_pb2.UpstreamTlsContext()
    assert match.transport_socket.typed_config.Unpack(context)
    return context


def test_only_tls_backends_get_a_socket_match_and_metadata() -> None:
    """A plaintext backend's endpoint carries no metadata (it matches no entry and
    keeps the cluster's plaintext socket); each TLS endpoint selects its own entry."""
    tls = UpstreamTls(sni="a.test")
    cluster, assignment = cluster_and_endpoints(
        service(Backend("plain", "127.0.0.1", 80), Backend("secure", "127.0.0.1", 443, tls=tls))
    )
    assert not cluster.HasField("transport_socket")
    assert [m.name for m in cluster.transport_socket_matches] == ["tls:secure"]
    endpoints = {e.endpoint.hostname: e for g in assignment.endpoints for e in g.lb_endpoints}
    assert not endpoints["plain"].HasField("metadata")
    selector = dict(endpoints["secure"].metadata.filter_metadata[MATCH_METADATA])
    assert selector == dict(cluster.transport_socket_matches[0].match)


def test_a_plaintext_cluster_is_unchanged() -> None:
    """No TLS backend: no transport_socket_matches at all."""
    cluster, _ = cluster_and_endpoints(service(Backend("plain", "127.0.0.1", 80)))
    assert len(cluster.transport_socket_matches) == 0


def test_a_ca_file_is_inlined_and_the_san_must_be_the_sni() -> None:
    """The CA text the settings read goes inline; the certificate must carry the
    SNI name as a DNS SAN."""
    tls = UpstreamTls(sni="llm.test", ca_file="/etc/ca.pem", ca_pem=CA_PEM)
    cluster, _ = cluster_and_endpoints(service(Backend("b", "127.0.0.1", 443, tls=tls)))
    context = context_of(cluster, "b")
    assert context.sni == "llm.test"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == CA_PEM
    [san] = validation.match_typed_subject_alt_names
    assert (san.san_type, san.matcher.exact) == (san.DNS, "llm.test")


def test_tls_true_on_a_host_name_trusts_the_system_bundle_by_file_name() -> None:
    """`tls: true`: SNI and SAN are the address's host name; the CAs are the
    system's, read by Envoy from its own host."""
    backend = Backend("b", "api.models.example.com", 443, tls=UpstreamTls())
    cluster, _ = cluster_and_endpoints(service(backend))
    context = context_of(cluster, "b")
    validation = context.common_tls_context.validation_context
    assert context.sni == "api.models.example.com"
    assert validation.trusted_ca.filename == SYSTEM_CA_FILE
    assert validation.match_typed_subject_alt_names[0].matcher.exact == "api.models.example.com"


def test_insecure_skip_verify_has_no_validation_context() -> None:
    """The only way to skip verification: no CA, no SAN check."""
    tls = UpstreamTls(insecure_skip_verify=True)
    cluster, _ = cluster_and_endpoints(service(Backend("b", "127.0.0.1", 443, tls=tls)))
    context = context_of(cluster, "b")
    assert not context.common_tls_context.HasField("validation_context")
    assert context.sni == ""


def test_client_certificate_and_key_are_referenced_by_file_name_only() -> None:
    """Envoy reads the files; the key's bytes never appear in the serialized cluster."""
    tls = UpstreamTls(sni="b.test", client_cert_file="/etc/c.crt", client_key_file="/etc/c.key")
    cluster, _ = cluster_and_endpoints(service(Backend("b", "127.0.0.1", 443, tls=tls)))
    [certificate] = context_of(cluster, "b").common_tls_context.tls_certificates
    assert certificate.certificate_chain.filename == "/etc/c.crt"
    assert certificate.private_key.filename == "/etc/c.key"
    assert certificate.private_key.WhichOneof("specifier") == "filename"
    assert b"PRIVATE KEY" not in cluster.SerializeToString()


def test_a_grpc_service_with_a_tls_backend_is_refused() -> None:
    """Nothing is published: proxyless gRPC clients would connect in plaintext."""
    tls = UpstreamTls(sni="g.test")
    intent = service(Backend("g", "127.0.0.1", 50051, tls=tls), protocol=Protocol.GRPC)
    with pytest.raises(ConfigError) as error:
        translate(intent)
    assert [p.path for p in error.value.problems] == ["services[0].backends[0].tls"]
