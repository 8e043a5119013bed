"""How the admin API shows a TLS backend: `tls` as the config file spells it,
the CA's PEM text (read from ca_file) left out, in the documented shape."""

from __future__ import annotations

from xds_server.admin.backends import backend_json
from xds_server.admin.bodies import BackendView
from xds_server.model.intent import Backend
from xds_server.model.upstream_tls import UpstreamTls


def test_a_tls_backend_is_shown_without_the_ca_text() -> None:
    """Paths and flags are shown; the PEM text is not (long, and not a setting)."""
    tls = UpstreamTls(sni="llm.test", ca_file="/etc/ca.pem", ca_pem="-----BEGIN CERT...")
    shown = backend_json(Backend("llm-a", "127.0.0.1", 443, tls=tls), {})
    assert shown["tls"] == {
        "sni": "llm.test",
        "ca_file": "/etc/ca.pem",
        "client_cert_file": None,
        "client_key_file": None,
        "insecure_skip_verify": False,
    }
    BackendView.model_validate(shown)  # the documented shape, no more, no less


def test_a_plaintext_backend_shows_tls_null() -> None:
    """null: plaintext, in the documented shape too."""
    shown = backend_json(Backend("b", "127.0.0.1", 80), {})
    assert shown["tls"] is None
    BackendView.model_validate(shown)
