"""The listener's TLS certificate by content: what the controller serves by SDS.

A plain frozen value, read from router.tls's files by pipeline/certificates.py
and handed to the pure translator (translate/secrets.py) beside the intent.
It is not part of the intent: the intent is shared through Redis and shown by
the admin API, and a private key belongs in neither. Its repr shows no bytes,
so a log line that prints it leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EdgeCertificate:
    """PEM bytes: the chain the listener presents, its key, and the CA that signs
    the client certificates it demands (None: no client certificate asked for)."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None
