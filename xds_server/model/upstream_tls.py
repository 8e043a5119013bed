"""TLS from Envoy (and the controller's probes) to one backend: what to trust, which
name to ask for and verify, and which client certificate to present.

A backend's `tls: true` is `UpstreamTls()`: the system's CAs, the backend's host
name as SNI and as the name its certificate must carry. The CA's PEM text is
read when the settings are loaded (settings/backend_tls.py), so the translator
stays pure and Envoy need not have the CA file; a client key is only ever
referenced by its file name, never carried in the intent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass

# `tls: true` trusts the system's CAs: Debian's bundle (also in Envoy's image), by
# file name on Envoy's host; the controller's probes read the same file.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class UpstreamTls:
    """How to reach a backend over TLS. None fields fall back as documented."""

    # The name sent as SNI and matched against the certificate's DNS SANs;
    # None: the backend's address (when it is a host name).
    sni: str | None = None
    # PEM CA bundle trusted for this backend; None: the system's CAs.
    ca_file: str | None = None
    # ca_file's content as read at load (public: it is inlined into CDS).
    ca_pem: str | None = None
    # A client certificate and its key, by file name on Envoy's and the
    # controller's host (both or neither).
    client_cert_file: str | None = None
    client_key_file: str | None = None
    # True: any certificate is accepted (logged as a warning at every load).
    insecure_skip_verify: bool = False

    @property
    def key(self) -> str:
        """A short, stable digest of everything here: equal settings, equal key,
        on every replica (a probe target, a match name)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def server_name(tls: UpstreamTls, address: str) -> str | None:
    """The name to send as SNI and to verify: `sni`, else the address when it is
    a host name; None for an IP address without `sni` (nothing to verify by name)."""
    if tls.sni is not None:
        return tls.sni
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return address
    return None
