"""TLS to backends end to end: a real Envoy 1.40 reaches HTTPS sample LLMs on
loopback ("external" model services on https endpoints), with certificates
from a CA the test makes (trustme). A verified backend serves, also through the
OpenAI front door; one whose certificate chains to another CA, and one whose
certificate names another host, are refused by Envoy itself (503, its TLS
verification counters) and unhealthy in /api/v1/router/health with the TLS
reason; insecure_skip_verify is served, with its warning logged; a backend that
requires a client certificate gets the configured one from Envoy and the
probes (and refuses both without); a backend addressed by name (`localhost`)
is asked for and verified by that name; a cluster with a plaintext and a TLS
backend uses each its own way.

Every backend is its own service, and the router's healthy_panic_threshold is
100, so Envoy keeps trying the unhealthy ones: a 503 is Envoy's own refusal of
the certificate, not only the controller's verdict.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.factories import local_settings
from tests.support import eventually
from tests.tls_support import Pki
from xds_server.demo import ServingTls, Stack, running_stack
from xds_server.proxy.processes import free_port
from xds_server.settings import Settings, parse_settings

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

NAME = "llm.internal.test"  # the name every verified backend is asked for
HELLO = {"messages": [{"role": "user", "content": "hello over tls"}]}


@dataclasses.dataclass
class TlsStack:
    stack: Stack
    warnings: list[str]

    @property
    def listen(self) -> str:
        return f"http://{self.stack.controller.store.intent.listen}"


def backend(name: str, tls: object) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "address": "127.0.0.1", "port": free_port()}
    return entry if tls is None else entry | {"tls": tls}


def one_backend_service(service: str, tls: object, **keys: Any) -> dict[str, Any]:
    routes = [f"/api/v1/models/{service}/"]
    return {"name": service, "routes": routes, "backends": [backend(service, tls)], **keys}


def document(pki: Pki, client: tuple[Path, Path]) -> dict[str, Any]:
    verified = {"ca_file": str(pki.ca_file), "sni": NAME}
    with_client = verified | {"client_cert_file": str(client[0]), "client_key_file": str(client[1])}
    # Addressed by name, no sni: the name is the SNI and the SAN required.
    by_name = one_backend_service("by-name", {"ca_file": str(pki.ca_file)})
    by_name["backends"][0]["address"] = "localhost"
    mixed = {
        "name": "mixed",
        "routes": ["/api/v1/models/mixed/"],
        "backends": [backend("mixed-plain", None), backend("mixed-tls", verified)],
    }
    return {
        "router": {"healthy_panic_threshold": 100},
        "services": [
            one_backend_service("verified", verified, models=["hosted-llm"]),
            one_backend_service("wrong-ca", verified),
            one_backend_service("other-name", verified),
            one_backend_service("unverified", {"insecure_skip_verify": True}),
            one_backend_service("client-cert", with_client),
            one_backend_service("no-client-cert", verified),
            by_name,
            mixed,
        ],
    }


def certificates(pki: Pki, stranger: Pki) -> dict[str, ServingTls]:
    """What each backend presents: NAME by the test's CA; NAME by another CA;
    another name by the test's CA; anything (another CA, another name). Two
    also require client certificates of the test's CA."""
    issued = {
        "verified": pki.backend_files(NAME),
        "mixed-tls": pki.backend_files(NAME),
        "wrong-ca": stranger.backend_files(NAME),
        "other-name": pki.backend_files("someone-else.test"),
        "unverified": stranger.backend_files("whatever.test"),
    }
    issued["by-name"] = pki.backend_files("localhost")
    serving = {name: ServingTls(cert, key) for name, (cert, key) in issued.items()}
    for name in ("client-cert", "no-client-cert"):
        cert, key = pki.backend_files(NAME)
        serving[name] = ServingTls(cert, key, client_ca_file=pki.ca_file)
    return serving


def tls_settings(pki: Pki, client: tuple[Path, Path], warnings: list[str]) -> Settings:
    """The document parsed as a config file is (CA read, warnings logged), on
    free loopback ports."""
    handler = _Collect(warnings)
    logger = logging.getLogger("xds_server.settings")
    logger.addHandler(handler)
    try:
        parsed = parse_settings(document(pki, client), {}, "upstream-tls e2e")
    finally:
        logger.removeHandler(handler)
    base = local_settings(worker_threads=1)
    intent = dataclasses.replace(parsed.intent, listen=base.intent.listen, admin=base.intent.admin)
    # Short probes: a refused client certificate (TLS 1.3) reads as a disconnect, an
    # ambiguous failure that needs health_check_unhealthy_threshold probes in a row.
    return dataclasses.replace(
        base, intent=intent, health_check_interval_s=1.0, health_check_timeout_s=0.5
    )


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsStack]:
    work = tmp_path_factory.mktemp("upstream-tls")
    (work / "stranger").mkdir()
    pki, stranger = Pki(work), Pki(work / "stranger", name="stranger")
    warnings: list[str] = []
    client = pki.backend_files("router.test")  # Envoy's and the probes' client certificate
    settings = tls_settings(pki, client, warnings)
    serving = certificates(pki, stranger)
    async with running_stack(settings, workdir=work, serving_tls=serving) as stack:
        yield TlsStack(stack, warnings)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def health_entries(tls: TlsStack, http: aiohttp.ClientSession) -> dict[str, Any]:
    url = f"http://{tls.stack.controller.admin_address}/api/v1/router/health"
    async with http.get(url) as response:
        report = await response.json()
    return {
        key: entry for group in report["health_status"].values() for key, entry in group.items()
    }


async def wait_for_verdicts(tls: TlsStack, http: aiohttp.ClientSession) -> dict[str, Any]:
    entries: dict[str, Any] = {}

    async def settled() -> bool:
        entries.update(await health_entries(tls, http))
        return all(e["status"] != "unknown" for e in entries.values())

    await eventually(settled, timeout_s=20.0)
    return entries


async def chat(tls: TlsStack, http: aiohttp.ClientSession, service: str) -> tuple[int, str, str]:
    url = f"{tls.listen}/api/v1/models/{service}/chat/completions"
    async with http.post(url, json=HELLO) as response:
        return response.status, response.headers.get("x-backend", ""), await response.text()


async def envoy_counter(tls: TlsStack, name: str) -> int:
    stats = await tls.stack.envoy.admin_json(f"/stats?format=json&filter=^{name}$")
    return sum(int(s.get("value", 0)) for s in stats["stats"])


async def test_a_verified_tls_backend_serves_and_is_healthy(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """Right CA, right name: 200 from the backend, healthy, Envoy counted the handshake."""
    entries = await wait_for_verdicts(tls_stack, http)
    assert entries["verified"]["status"] == "healthy", entries["verified"]
    status, answered_by, body = await chat(tls_stack, http, "verified")
    assert (status, answered_by) == (200, "verified"), body
    assert await envoy_counter(tls_stack, "cluster.verified.ssl.handshake") >= 1


async def test_the_openai_front_door_reaches_the_https_backend(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """POST /v1/chat/completions with model hosted-llm goes over TLS to it."""
    url = f"{tls_stack.listen}/v1/chat/completions"
    async with http.post(url, json={"model": "hosted-llm", **HELLO}) as response:
        body = await response.json()
        assert response.status == 200, body
        assert response.headers["x-backend"] == "verified"
    assert body["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("service", "counter"), [("wrong-ca", "fail_verify_error"), ("other-name", "fail_verify_san")]
)
async def test_a_certificate_that_does_not_verify_is_refused_and_unhealthy(
    tls_stack: TlsStack, http: aiohttp.ClientSession, service: str, counter: str
) -> None:
    """Another CA, or the right CA for another name: Envoy refuses the handshake
    (503, its verification counter moves), and the health report says why."""
    entries = await wait_for_verdicts(tls_stack, http)
    entry = entries[service]
    assert entry["status"] == "unhealthy", entry
    assert entry["error"].startswith("tls: certificate verify failed: "), entry
    before = await envoy_counter(tls_stack, f"cluster.{service}.ssl.{counter}")
    status, answered_by, body = await chat(tls_stack, http, service)
    assert status == 503 and answered_by == "", body
    assert await envoy_counter(tls_stack, f"cluster.{service}.ssl.{counter}") > before


async def test_insecure_skip_verify_is_served_and_was_logged(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """Another CA and another name, accepted on purpose: healthy, 200, and the
    load logged a warning naming the backend (only that one)."""
    entries = await wait_for_verdicts(tls_stack, http)
    assert entries["unverified"]["status"] == "healthy", entries["unverified"]
    status, answered_by, body = await chat(tls_stack, http, "unverified")
    assert (status, answered_by) == (200, "unverified"), body
    assert len(tls_stack.warnings) == 1
    assert "unverified" in tls_stack.warnings[0] and "NOT verified" in tls_stack.warnings[0]


async def test_a_cluster_mixes_plaintext_and_tls_backends(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """One cluster, one plaintext and one TLS backend: both answer (round robin),
    and only the TLS one's connections were TLS handshakes."""
    await wait_for_verdicts(tls_stack, http)
    answered = {(await chat(tls_stack, http, "mixed"))[1] for _ in range(6)}
    assert answered == {"mixed-plain", "mixed-tls"}
    assert await envoy_counter(tls_stack, "cluster.mixed.ssl.handshake") >= 1


async def test_a_client_certificate_is_presented_by_envoy_and_the_probes(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """A backend requiring client certificates: with client_cert_file/client_key_file
    healthy and served (Envoy read the files by name); without, refused and unhealthy
    (under TLS 1.3 the refusal comes after the handshake: an ambiguous disconnect)."""
    entries = await wait_for_verdicts(tls_stack, http)
    assert entries["client-cert"]["status"] == "healthy", entries["client-cert"]
    status, answered_by, body = await chat(tls_stack, http, "client-cert")
    assert (status, answered_by) == (200, "client-cert"), body
    assert entries["no-client-cert"]["status"] == "unhealthy", entries["no-client-cert"]
    status, _, body = await chat(tls_stack, http, "no-client-cert")
    assert status == 503, body


async def test_a_backend_named_by_dns_is_verified_by_its_name(
    tls_stack: TlsStack, http: aiohttp.ClientSession
) -> None:
    """`address: localhost` without sni: Envoy and the probes ask for and verify
    `localhost` (its certificate names nothing else), so it serves and is healthy."""
    entries = await wait_for_verdicts(tls_stack, http)
    assert entries["by-name"]["status"] == "healthy", entries["by-name"]
    status, answered_by, body = await chat(tls_stack, http, "by-name")
    assert (status, answered_by) == (200, "by-name"), body
