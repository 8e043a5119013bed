"""The controller's probes over TLS check what Envoy checks (translate/upstream_tls.py):
the same CA (the PEM text Envoy gets inline, or the system bundle), the same
name as SNI and as the certificate's required SAN, the same client certificate.
`insecure_skip_verify` is the only way not to verify.

A failed verification is a definitive probe failure with the TLS reason
("tls: certificate verify failed: ..."): waiting does not make a certificate valid.
"""

from __future__ import annotations

import functools
import ssl

import aiohttp

from xds_server.model.intent import Backend
from xds_server.model.upstream_tls import SYSTEM_CA_FILE, UpstreamTls, server_name


@functools.lru_cache(maxsize=1024)
def client_context(tls: UpstreamTls) -> ssl.SSLContext:
    """One context per distinct setting (a CA bundle is costly to load every probe).
    Raises OSError or ssl.SSLError when a file no longer loads."""
    context = ssl.create_default_context(cafile=_ca_file(tls), cadata=tls.ca_pem)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert_file is not None and tls.client_key_file is not None:
        context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    return context


def _ca_file(tls: UpstreamTls) -> str | None:
    if tls.ca_pem is not None:
        return None
    return tls.ca_file or SYSTEM_CA_FILE


def request_options(backend: Backend) -> tuple[ssl.SSLContext | bool, str | None]:
    """aiohttp's `ssl` and `server_hostname` for a probe of `backend` (plaintext:
    aiohttp's defaults, unused on an http URL)."""
    if backend.tls is None:
        return True, None
    return client_context(backend.tls), server_name(backend.tls, backend.address)


def tls_reason(error: aiohttp.ClientSSLError) -> str:
    """What the health report says about a handshake that failed."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        cause = error.certificate_error
        detail = getattr(cause, "verify_message", None) or str(cause)
        return f"tls: certificate verify failed: {detail}"
    return f"tls: handshake failed: {error.os_error}"
