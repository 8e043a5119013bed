"""Who is on the other end of an xDS stream, and which of its claims are believed.

Anyone who reaches the xDS port can open a stream and say anything in its
node. This module decides what of it the controller acts on
(docs/xds-protocol.md rule 34):

- The Envoy admin address a node names (`metadata.admin_address`), which the
  controller reads stats from, is believed only as a plain `ip:port` whose IP
  is the stream's own peer IP or lies in the operator's allowlist
  (`router.envoy_admin_allowlist`). Anything else is no address plus the
  reason, so nothing downstream can dial a host or a path a client chose.
- With client certificates required (`router.xds_tls.client_ca_file`), a
  stream's node id must be one of the names its certificate was issued for: a
  DNS SAN equal to the node id, or a URI SAN ending in `/<node id>` (SPIFFE
  style). Otherwise the stream is refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import grpc

from xds_server.errors import InvalidValue, XdsServerError
from xds_server.model.values import to_ip_socket_address

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# gRPC core's auth-context properties of a verified peer certificate: its DNS
# and URI subject alternative names (grpc_security_constants.h, peer_dns /
# peer_uri), each as its own type, which x509_subject_alternative_name is not.
_DNS_SANS = "peer_dns"
_URI_SANS = "peer_uri"
_PEER_CERT = "x509_pem_cert"


class NodeNotAuthorized(XdsServerError):
    """A stream names a node its client certificate does not vouch for; PERMISSION_DENIED."""


@dataclass(frozen=True)
class Peer:
    """The far end of one stream, as the transport knows it (not as the client says)."""

    ip: str | None  # None: not an IP transport (a Unix socket, a test double)
    # The verified certificate's names; None when the transport checked none.
    dns_names: frozenset[str] | None = None
    uris: frozenset[str] = frozenset()

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext) -> Peer:
        auth = context.auth_context() or {}
        verified = _PEER_CERT in auth  # only a certificate the server verified is there
        return cls(
            ip=peer_ip(context.peer()),
            dns_names=frozenset(_texts(auth.get(_DNS_SANS, ()))) if verified else None,
            uris=frozenset(_texts(auth.get(_URI_SANS, ()))),
        )

    def vouches_for(self, node_id: str) -> bool:
        if not node_id or self.dns_names is None:
            return False
        return node_id in self.dns_names or any(uri.endswith(f"/{node_id}") for uri in self.uris)

    def names(self) -> list[str]:
        return sorted((self.dns_names or set()) | self.uris)


def peer_ip(peer: str | None) -> str | None:
    """The IP of a gRPC peer string: `ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`
    (the brackets may come percent-encoded)."""
    if not peer:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host = unquote(rest).rpartition(":")[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@dataclass(frozen=True)
class EnvoyAdminClaim:
    """The admin address the controller may read, or why it may read none."""

    address: str | None  # canonical ip:port
    problem: str | None = None


class Admission:
    """The checks every stream passes when its first request names its node."""

    def __init__(
        self, *, admin_allowlist: Iterable[IpNetwork] = (), require_certificate: bool = False
    ) -> None:
        self.admin_allowlist = tuple(admin_allowlist)
        self.require_certificate = require_certificate

    def check_node(self, node_id: str, peer: Peer) -> None:
        """Raise NodeNotAuthorized when certificates are required and `peer`'s does
        not name `node_id`."""
        if not self.require_certificate or peer.vouches_for(node_id):
            return
        if peer.dns_names is None:
            raise NodeNotAuthorized(f"node {node_id!r}: no verified client certificate")
        names = ", ".join(peer.names()) or "none"
        raise NodeNotAuthorized(
            f"node {node_id!r} is not a name of this client's certificate (its names: {names}); "
            "it needs a DNS SAN equal to the node id or a URI SAN ending in /<node id>"
        )

    def envoy_admin(self, claimed: object, peer: Peer) -> EnvoyAdminClaim:
        """`claimed` is the node's `metadata.admin_address` (None when absent)."""
        if claimed is None:
            return EnvoyAdminClaim(None, "no admin_address in node metadata")
        if not isinstance(claimed, str):
            return EnvoyAdminClaim(None, "admin_address in node metadata is not a string")
        try:
            address = to_ip_socket_address(claimed)
        except InvalidValue as error:
            return EnvoyAdminClaim(None, f"admin_address refused: {error}")
        ip = _plain(ipaddress.ip_address(address.host))
        if peer.ip is not None and ip == _plain(ipaddress.ip_address(peer.ip)):
            return EnvoyAdminClaim(str(address))
        if any(ip in network for network in self.admin_allowlist):
            return EnvoyAdminClaim(str(address))
        return EnvoyAdminClaim(
            None,
            f"admin_address {address} refused: neither the stream's own peer IP "
            f"({peer.ip or 'unknown'}) nor in router.envoy_admin_allowlist",
        )


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> object:
    """An IPv4 client of a dual-stack listener appears as ::ffff:a.b.c.d."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


def _texts(values: Iterable[bytes | str]) -> Iterable[str]:
    for value in values:
        yield value.decode("utf-8", "replace") if isinstance(value, bytes) else value
