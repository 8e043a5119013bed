"""The controller's HTTP probes of a TLS backend (health/tls.py) check what Envoy
checks: the CA, the SNI name among the certificate's SANs, the client
certificate. A real HTTPS sample backend on loopback, certificates by a CA the
test makes (trustme)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.tls_support import Pki
from xds_server.health.checker import probed_backends
from xds_server.health.probe import HttpProber, new_session
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend, Intent, Service
from xds_server.model.upstream_tls import UpstreamTls
from xds_server.samples.__main__ import server_context
from xds_server.samples.backend import make_app

NAME = "llm.internal.test"


@dataclasses.dataclass
class TlsBackend:
    pki: Pki
    port: int

    def backend(self, **tls: object) -> Backend:
        defaults: dict[str, object] = {"sni": NAME, "ca_pem": self.pki.ca_file.read_text()}
        return Backend("llm-a", "127.0.0.1", self.port, tls=UpstreamTls(**(defaults | tls)))


async def serving(pki: Pki, client_ca: Path | None = None) -> web.AppRunner:
    cert, key = pki.backend_files(NAME)
    context = server_context(str(cert), str(key), None if client_ca is None else str(client_ca))
    runner = web.AppRunner(make_app("llm-a", "llm"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner


@pytest.fixture
async def https_backend(tmp_path: Path) -> AsyncIterator[TlsBackend]:
    """An HTTPS sample LLM whose certificate names NAME, signed by the test's CA."""
    pki = Pki(tmp_path)
    runner = await serving(pki)
    yield TlsBackend(pki, runner.addresses[0][1])
    await runner.cleanup()


async def probe(backend: Backend) -> ProbeResult:
    async with new_session() as session:
        return await HttpProber(session, 5.0)(backend)


async def test_a_verified_backend_passes(https_backend: TlsBackend) -> None:
    """Right CA, right name: the health path answers over TLS."""
    result = await probe(https_backend.backend())
    assert result.ok, result.error


async def test_another_ca_fails_definitively_with_the_tls_reason(
    https_backend: TlsBackend, tmp_path: Path
) -> None:
    """A certificate that does not chain to the configured CA: unhealthy at once
    (definitive), and the report says why."""
    stranger = Pki(tmp_path, name="other")
    result = await probe(https_backend.backend(ca_pem=stranger.ca_file.read_text()))
    assert not result.ok and result.definitive
    assert result.error is not None
    assert result.error.startswith("tls: certificate verify failed: "), result.error


async def test_a_san_mismatch_fails_definitively(https_backend: TlsBackend) -> None:
    """The CA is right but the certificate is for another name."""
    result = await probe(https_backend.backend(sni="someone-else.test"))
    assert not result.ok and result.definitive
    assert result.error is not None
    assert result.error.startswith("tls: certificate verify failed: "), result.error
    assert "someone-else.test" in result.error


async def test_system_cas_do_not_trust_a_private_ca(https_backend: TlsBackend) -> None:
    """`tls: true` (no ca_file) trusts only the system's CAs."""
    result = await probe(https_backend.backend(ca_pem=None))
    assert not result.ok and result.definitive
    assert result.error is not None and result.error.startswith("tls: certificate verify failed")


async def test_insecure_skip_verify_accepts_any_certificate(
    https_backend: TlsBackend, tmp_path: Path
) -> None:
    """The one way to skip verification: the wrong CA and the wrong name pass."""
    stranger = Pki(tmp_path, name="other")
    backend = https_backend.backend(
        ca_pem=stranger.ca_file.read_text(), sni=None, insecure_skip_verify=True
    )
    result = await probe(backend)
    assert result.ok, result.error


async def test_a_backend_requiring_client_certificates_gets_the_configured_one(
    tmp_path: Path,
) -> None:
    """With client_cert_file/client_key_file the probe presents them; without, the
    backend refuses the probe."""
    pki = Pki(tmp_path)
    runner = await serving(pki, client_ca=pki.ca_file)
    try:
        target = TlsBackend(pki, runner.addresses[0][1])
        cert, key = pki.backend_files("controller.test")
        with_cert = target.backend(client_cert_file=str(cert), client_key_file=str(key))
        assert (await probe(with_cert)).ok
        assert not (await probe(target.backend())).ok
    finally:
        await runner.cleanup()


def test_a_changed_tls_setting_is_another_probe_target() -> None:
    """The checker starts a backend over (and probes it with the new settings)
    when its tls changes, as when its address does."""

    def target(tls: UpstreamTls | None) -> object:
        intent = Intent(services=(Service("s", ("/",), (Backend("b", "10.0.0.1", 1, tls=tls),)),))
        return probed_backends(intent)["b"].target

    targets = [target(None), target(UpstreamTls(sni="a.test")), target(UpstreamTls(sni="b.test"))]
    assert len(set(targets)) == 3
    assert target(UpstreamTls(sni="a.test")) == targets[1]


async def test_a_plaintext_backend_configured_as_tls_fails_definitively(tmp_path: Path) -> None:
    """`tls` on a backend that speaks plain HTTP: the handshake fails, unhealthy at
    once with the TLS reason (a mismatch of config, not a passing fault)."""
    runner = web.AppRunner(make_app("llm-a", "llm"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        backend = TlsBackend(Pki(tmp_path), runner.addresses[0][1]).backend()
        result = await probe(backend)
    finally:
        await runner.cleanup()
    assert not result.ok and result.definitive
    assert result.error is not None and result.error.startswith("tls: handshake failed: ")
