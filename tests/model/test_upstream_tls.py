"""model/upstream_tls.py: which name a TLS backend is asked for and verified by,
and the digest that tells two tls settings apart."""

from __future__ import annotations

from xds_server.model.upstream_tls import UpstreamTls, server_name


def test_the_name_is_sni_else_a_host_name_address() -> None:
    """`sni` wins; a host name address is its own name; an IP address has none."""
    assert server_name(UpstreamTls(sni="api.example.com"), "10.0.0.1") == "api.example.com"
    assert server_name(UpstreamTls(), "api.example.com") == "api.example.com"
    assert server_name(UpstreamTls(), "10.0.0.1") is None
    assert server_name(UpstreamTls(), "::1") is None


def test_the_key_differs_with_any_setting_and_is_stable() -> None:
    """Equal settings, equal key (every replica computes the same); any change, another."""
    base = UpstreamTls(sni="a.test")
    assert base.key == UpstreamTls(sni="a.test").key
    changed = [
        UpstreamTls(sni="b.test"),
        UpstreamTls(sni="a.test", ca_pem="x"),
        UpstreamTls(sni="a.test", client_cert_file="c", client_key_file="k"),
        UpstreamTls(sni="a.test", insecure_skip_verify=True),
    ]
    assert len({base.key, *(c.key for c in changed)}) == 5
