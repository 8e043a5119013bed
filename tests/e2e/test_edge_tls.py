"""HTTPS at the edge with a real Envoy 1.40: the controller serves the listener's
certificate by SDS (docs/xds-protocol.md rule 39). curl reaches the listener
over HTTP/1.1 and HTTP/2 (by ALPN), client certificates are demanded when
router.tls names a client CA, and replacing the certificate files twice under
load fails no request while new handshakes present the new certificate. The CA
and every certificate are made by the test (trustme)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.test_observability import run_script
from tests.factories import SEARCH_BODY, local_settings, qdrant_only
from tests.support import eventually
from tests.tls_support import Pki, edge_certificate, leaf_fingerprint, replace_pair
from xds_server.demo import Stack
from xds_server.model.intent import SocketAddress
from xds_server.model.schema import EdgeTlsConfig
from xds_server.pemfiles import TlsFiles
from xds_server.resources import LISTENER, SECRET
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

SEARCH_PATH = "/api/v1/vectors/search"


def tls_settings(files: TlsFiles) -> Settings:
    ca = None if files.client_ca_file is None else str(files.client_ca_file)
    tls = EdgeTlsConfig(
        cert_file=str(files.cert_file), key_file=str(files.key_file), client_ca_file=ca
    )
    return dataclasses.replace(qdrant_only(local_settings(worker_threads=2)), tls=tls)


async def curl(*args: str) -> tuple[int, str]:
    """curl's exit status and its output (the body, then -w's line)."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, output.decode()


def search_args(listen: SocketAddress, ca: Path) -> list[str]:
    return [
        "--cacert", str(ca), "-H", "content-type: application/json",
        "-d", json.dumps(SEARCH_BODY), "-w", "\nhttp_version=%{http_version} status=%{http_code}",
        f"https://{listen}{SEARCH_PATH}",
    ]  # fmt: skip


def presented(listen: SocketAddress, ca: Path) -> tuple[str, str | None]:
    """A new handshake's certificate (SHA-256 of its DER), verified against `ca`,
    and the protocol ALPN chose when offered h2 and http/1.1."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((listen.host, listen.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=listen.host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest(), tls.selected_alpn_protocol()


@pytest.mark.parametrize("ads", ["sotw", "delta"])
async def test_curl_reaches_the_listener_over_https_by_http1_and_http2(
    tmp_path: Path, make_stack: StackFactory, ads: str
) -> None:
    """curl --cacert gets the search answer over HTTPS, as HTTP/1.1 and, with
    --http2, as HTTP/2 (ALPN h2); a handshake offering both picks h2 and shows the
    certificate of router.tls.cert_file; plain HTTP on the port gets no answer.
    Envoy on SotW and on Delta ADS."""
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    stack = await make_stack(tls_settings(files), delta=ads == "delta")
    listen = stack.controller.settings.intent.listen
    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        code, output = await curl(flag, *search_args(listen, pki.ca_file))
        assert code == 0, output
        assert f"http_version={version} status=200" in output, output
    fingerprint, alpn = await asyncio.to_thread(presented, listen, pki.ca_file)
    assert fingerprint == leaf_fingerprint(files.cert_file.read_bytes())
    assert alpn == "h2"
    code, output = await curl(f"http://{listen}{SEARCH_PATH}")
    assert code != 0, output  # a TLS listener does not speak plain HTTP


ADMIN_READS = (
    "/api/v1/router/proxies",
    "/api/v1/router/health",
    "/api/v1/router/services",
    "/api/v1/router/strategy",
    "/api/v1/router/metrics",
)


async def test_the_private_key_is_in_no_dump_and_no_admin_answer(
    tmp_path: Path,
    make_stack: StackFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/security.md: the key reaches Envoy (HTTPS works) but no byte of it is
    in the controller's admin API answers, in Envoy's config dump (Envoy shows
    "[redacted]") or in Envoy's LDS, and the controller's log never holds it."""
    caplog.set_level(logging.DEBUG, logger="xds_server")
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    stack = await make_stack(tls_settings(files))
    listen = stack.controller.settings.intent.listen
    code, output = await curl(*search_args(listen, pki.ca_file))
    assert code == 0 and "status=200" in output, output
    key_lines = [line for line in files.key_file.read_text().splitlines() if "-----" not in line]
    admin = stack.controller.admin_address
    for path in ADMIN_READS:
        async with http.get(f"http://{admin}{path}") as response:
            text = await response.text()
        assert not any(line in text for line in key_lines), path
    dump = await stack.envoy.admin_get("/config_dump?include_eds")
    # the dump shows bytes base64-encoded: Envoy's redaction marker, never the key
    assert base64.b64encode(b"[redacted]").decode() in dump, dump
    assert "router-edge-certificate" in dump
    assert base64.b64encode(files.key_file.read_bytes())[:40].decode() not in dump
    assert not any(line in dump for line in key_lines)
    assert caplog.records and not any(line in caplog.text for line in key_lines)


async def test_client_certificates_required_with_a_client_ca(
    tmp_path: Path, make_stack: StackFactory
) -> None:
    """With router.tls.client_ca_file, a client without a certificate is refused
    in the handshake and one with a certificate the CA signed gets its answer."""
    pki = Pki(tmp_path)
    stack = await make_stack(tls_settings(pki.server_files(clients=True)))
    listen = stack.controller.settings.intent.listen
    code, output = await curl(*search_args(listen, pki.ca_file))
    assert code != 0 and "status=200" not in output, output
    client = pki.client_files("some-client")
    with_cert = ["--cert", str(client.cert_file), "--key", str(client.key_file)]
    code, output = await curl(*with_cert, *search_args(listen, pki.ca_file))
    assert code == 0 and "status=200" in output, output


@pytest.mark.parametrize("ads", ["sotw", "delta"])
async def test_rotation_under_load_fails_no_request(
    tmp_path: Path, make_stack: StackFactory, ads: str
) -> None:
    """`ab` over HTTPS (a new TLS handshake per request) runs for the whole time
    while the certificate files are replaced twice, each by rename (for a moment
    the new certificate beside the old key): no request fails, new handshakes
    present each new certificate in turn, and only the Secret changes: the
    Listener's version stays, and Envoy modifies no listener (nothing drains).
    Envoy on SotW and on Delta ADS."""
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    stack = await make_stack(tls_settings(files), delta=ads == "delta")
    listen = stack.controller.settings.intent.listen
    listener_version = stack.controller.cache.snapshot.versions()[LISTENER]  # type: ignore[union-attr]
    secret_version = stack.controller.cache.snapshot.versions()[SECRET]  # type: ignore[union-attr]
    modified_before = await listener_stat(stack, "listener_modified")
    body = tmp_path / "search.json"
    body.write_text(json.dumps(SEARCH_BODY))
    load = asyncio.create_task(run_ab(f"https://{listen}{SEARCH_PATH}", body, seconds=10))
    seen = []
    for _ in range(2):
        await asyncio.sleep(2.0)
        new = edge_certificate(pki.ca)
        replace_pair(files, new)
        wanted = leaf_fingerprint(new.cert_chain)
        await eventually(served(listen, pki.ca_file, wanted), timeout_s=10.0)
        seen.append(wanted)
    assert not load.done(), "ab ended before both replacements were served"
    output = await load
    assert complete(output) > 0, output
    assert failed(output) == (0, 0), output
    assert len(set(seen)) == 2
    versions = stack.controller.cache.snapshot.versions()  # type: ignore[union-attr]
    assert versions[LISTENER] == listener_version
    assert versions[SECRET] != secret_version
    assert await listener_stat(stack, "listener_modified") == modified_before


def served(listen: SocketAddress, ca: Path, fingerprint: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got, _ = await asyncio.to_thread(presented, listen, ca)
        return got == fingerprint

    return check


async def listener_stat(stack: Stack, name: str) -> int:
    text = await stack.envoy.admin_get(f"/stats?filter=^listener_manager.{name}$")
    found = re.search(rf"listener_manager\.{name}: (\d+)", text)
    assert found is not None, text
    return int(found.group(1))


async def run_ab(url: str, body: Path, seconds: int) -> str:
    """ab for `seconds`, 4 at a time, without keep-alive: every request a new
    TLS handshake. Its PID is ours; it ends on its own (-t) or is killed here."""
    process = await asyncio.create_subprocess_exec(
        "ab", "-q", "-t", str(seconds), "-n", "1000000", "-c", "4", "-s", "10",
        "-p", str(body), "-T", "application/json", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return output.decode()


def complete(output: str) -> int:
    found = re.search(r"Complete requests:\s+(\d+)", output)
    return int(found.group(1)) if found else 0


def failed(output: str) -> tuple[int, int]:
    """(failed requests, non-2xx responses) as ab reports them."""
    failures = re.search(r"Failed requests:\s+(\d+)", output)
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    assert failures is not None, output
    return int(failures.group(1)), int(non_2xx.group(1)) if non_2xx else 0


async def test_routing_script_passes_over_https(tmp_path: Path, make_stack: StackFactory) -> None:
    """scripts/test_routing.sh --cacert CA https://... runs every validation
    command of the spec through the HTTPS listener and passes them all; without
    the CA, curl refuses the certificate and the script says so."""
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    tls = EdgeTlsConfig(cert_file=str(files.cert_file), key_file=str(files.key_file))
    settings = dataclasses.replace(local_settings(worker_threads=2), tls=tls)
    stack = await make_stack(settings)
    url = f"https://{stack.controller.settings.intent.listen}"
    code, output = await run_script("--cacert", str(pki.ca_file), url)
    assert code == 0, output
    assert "9 passed, 0 failed" in output, output
    code, output = await run_script(url)
    assert code == 1 and "FAIL  router reachable" in output, output
