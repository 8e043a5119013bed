"""xDS over TLS, mutual with a client CA: proxies are named by their certificates
(docs/xds-protocol.md rule 34). Real TLS on loopback, with a CA the test makes."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.factories import NO_DOT_ENV, intent_of
from tests.tls_support import ClientFiles, Pki
from tests.xds.conftest import Harness, StreamEnded
from xds_server.proxy.processes import free_port
from xds_server.resources import CLUSTER
from xds_server.xds.identity import Admission
from xds_server.xds.tls import ReloadingCredentials, TlsFiles, TlsFilesUnusable


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def mtls(pki: Pki) -> AsyncIterator[Harness]:
    """A server that demands client certificates of `pki` naming the node."""
    harness = Harness(
        tls=ReloadingCredentials(pki.server_files()),
        admission=Admission(require_certificate=True),
    )
    await harness.start()
    await harness.publish(intent_of(1))
    try:
        yield harness
    finally:
        await harness.stop()


def credentials(files: ClientFiles | None, ca: Path) -> grpc.ChannelCredentials:
    if files is None:
        return grpc.ssl_channel_credentials(ca.read_bytes())
    return grpc.ssl_channel_credentials(
        ca.read_bytes(), files.key_file.read_bytes(), files.cert_file.read_bytes()
    )


async def first_answer(xds: Harness, node_id: str, creds: grpc.ChannelCredentials) -> Any:
    """The first CDS response, or how the stream ended."""
    client = xds.client(node_id=node_id, channel=xds.channel(creds))
    client.send(CLUSTER)
    try:
        return await client.recv(timeout=5.0)
    except StreamEnded as ended:
        return ended


async def test_a_client_whose_certificate_names_the_node_is_served(mtls: Harness, pki: Pki) -> None:
    answer = await first_answer(
        mtls, "node-1", credentials(pki.client_files("node-1"), pki.ca_file)
    )
    assert not isinstance(answer, StreamEnded), answer
    assert answer.type_url == CLUSTER


async def test_a_client_without_a_certificate_is_refused(mtls: Harness, pki: Pki) -> None:
    """No client certificate: the TLS handshake fails, nothing is served."""
    answer = await first_answer(mtls, "node-1", credentials(None, pki.ca_file))
    assert isinstance(answer, StreamEnded) and answer.code == grpc.StatusCode.UNAVAILABLE
    assert mtls.registry.proxies == {}


async def test_a_certificate_of_another_ca_is_refused(
    mtls: Harness, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    stranger = Pki(tmp_path / "other", "other-ca")
    files = stranger.client_files("node-1")
    answer = await first_answer(mtls, "node-1", credentials(files, pki.ca_file))
    assert isinstance(answer, StreamEnded) and answer.code == grpc.StatusCode.UNAVAILABLE
    assert mtls.registry.proxies == {}


async def test_a_certificate_for_another_node_is_refused(mtls: Harness, pki: Pki) -> None:
    """A valid certificate issued for node-2 cannot speak for node-1."""
    answer = await first_answer(
        mtls, "node-1", credentials(pki.client_files("node-2"), pki.ca_file)
    )
    assert isinstance(answer, StreamEnded)
    assert answer.code == grpc.StatusCode.PERMISSION_DENIED
    assert answer.details is not None
    assert "'node-1' is not a name of this client's certificate" in answer.details
    assert "node-2" in answer.details
    assert mtls.registry.proxies == {}


@pytest.mark.parametrize(
    ("uri", "served"),
    [
        ("spiffe://mesh.example/ns/prod/sa/node-1", True),
        ("spiffe://mesh.example/ns/prod/sa/node-10", False),
        ("spiffe://mesh.example/node-1/other", False),
    ],
)
async def test_a_uri_san_names_the_node_by_its_last_segment(
    mtls: Harness, pki: Pki, uri: str, served: bool
) -> None:
    files = pki.client_files(uris=(uri,))
    answer = await first_answer(mtls, "node-1", credentials(files, pki.ca_file))
    if served:
        assert not isinstance(answer, StreamEnded), answer
    else:
        assert isinstance(answer, StreamEnded)
        assert answer.code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_twin_needs_the_nodes_certificate_too(mtls: Harness, pki: Pki) -> None:
    """docs/xds-protocol.md rule 33 with identities: a client with another
    node's certificate cannot replace the node's stream."""
    owner = mtls.client(
        node_id="node-1", channel=mtls.channel(credentials(pki.client_files("node-1"), pki.ca_file))
    )
    owner.send(CLUSTER)
    await owner.recv()
    answer = await first_answer(
        mtls, "node-1", credentials(pki.client_files("node-2"), pki.ca_file)
    )
    assert isinstance(answer, StreamEnded)
    assert answer.code == grpc.StatusCode.PERMISSION_DENIED
    await owner.expect_silence(0.2)  # still open, still the node's


async def test_tls_without_a_client_ca_serves_clients_without_certificates(
    make_harness: Callable[..., Any], pki: Pki
) -> None:
    xds: Harness = await make_harness(tls=ReloadingCredentials(pki.server_files(clients=False)))
    await xds.publish(intent_of(1))
    answer = await first_answer(xds, "node-1", credentials(None, pki.ca_file))
    assert not isinstance(answer, StreamEnded), answer


def _served_certificate(port: int, ca: Path, client: ClientFiles) -> bytes:
    """The DER certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(client.cert_file, client.key_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(cert_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_file.read_text())


async def test_replaced_certificate_files_are_served_to_the_next_connection(
    pki: Pki, tmp_path: Path
) -> None:
    """Overwrite the server's certificate and key in place: the next connection
    gets the new certificate, without a restart."""
    first = pki.server_files()
    live = TlsFiles(tmp_path / "live.crt", tmp_path / "live.key", first.client_ca_file)
    shutil.copy(first.cert_file, live.cert_file)
    shutil.copy(first.key_file, live.key_file)
    xds = await Harness(tls=ReloadingCredentials(live)).start()
    try:
        client = pki.client_files("node-1")
        served = await asyncio.to_thread(_served_certificate, xds.port, pki.ca_file, client)
        assert served == _der(first.cert_file)
        second = pki.server_files()
        # Written whole and renamed into place, as certificate tools do.
        for source, target in (
            (second.key_file, live.key_file),
            (second.cert_file, live.cert_file),
        ):
            shutil.copy(source, target.with_suffix(".new"))
            target.with_suffix(".new").replace(target)
        served = await asyncio.to_thread(_served_certificate, xds.port, pki.ca_file, client)
        assert served == _der(second.cert_file) != _der(first.cert_file)
    finally:
        await xds.stop()


async def test_a_half_replaced_pair_keeps_the_previous_certificate(
    pki: Pki, tmp_path: Path
) -> None:
    """A new certificate whose key has not arrived yet does not load: the
    previous pair keeps being served (and the next good pair is taken)."""
    first = pki.server_files()
    live = TlsFiles(tmp_path / "live.crt", tmp_path / "live.key", first.client_ca_file)
    shutil.copy(first.cert_file, live.cert_file)
    shutil.copy(first.key_file, live.key_file)
    xds = await Harness(tls=ReloadingCredentials(live)).start()
    try:
        client = pki.client_files("node-1")
        second = pki.server_files()
        shutil.copy(second.cert_file, live.cert_file)  # the key is still the first one's
        served = await asyncio.to_thread(_served_certificate, xds.port, pki.ca_file, client)
        assert served == _der(first.cert_file)
        shutil.copy(second.key_file, live.key_file)
        served = await asyncio.to_thread(_served_certificate, xds.port, pki.ca_file, client)
        assert served == _der(second.cert_file)
    finally:
        await xds.stop()


def test_unusable_files_are_refused_before_the_port_opens(pki: Pki, tmp_path: Path) -> None:
    good = pki.server_files()
    other = pki.server_files()
    with pytest.raises(TlsFilesUnusable, match="no such file") as missing:
        ReloadingCredentials(TlsFiles(tmp_path / "absent.crt", good.key_file))
    assert missing.value.key == "cert_file"
    with pytest.raises(TlsFilesUnusable, match="not a PEM certificate chain and its private key"):
        ReloadingCredentials(TlsFiles(good.cert_file, other.key_file))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsFilesUnusable, match="no PEM CA certificate") as bad_ca:
        ReloadingCredentials(TlsFiles(good.cert_file, good.key_file, junk))
    assert bad_ca.value.key == "client_ca_file"


def test_run_refuses_a_non_loopback_xds_address_without_tls(tmp_path: Path) -> None:
    """`xds-server run` with xds_address on every interface and no xds_tls stops
    before anything starts, naming both settings."""
    config = tmp_path / "router_config.yaml"
    config.write_text(
        "router:\n  xds_address: 0.0.0.0:18000\nservices:\n"
        "  - name: a\n    routes: [/a]\n    backends: [{name: b, address: 127.0.0.1, port: 9}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", *NO_DOT_ENV, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        "router.xds_tls: required when xds_address is not loopback "
        "(0.0.0.0:18000, from router.xds_address)"
    ) in done.stderr.splitlines()


def test_run_names_the_tls_file_it_cannot_use(tmp_path: Path, pki: Pki) -> None:
    good = pki.server_files()
    config = tmp_path / "router_config.yaml"
    config.write_text(
        f"router:\n  xds_address: 127.0.0.1:{free_port()}\n"
        f"  admin_address: 127.0.0.1:{free_port()}\n"
        f"  xds_tls: {{cert_file: {good.cert_file}, key_file: {tmp_path / 'gone.key'}}}\n"
        "services:\n"
        "  - name: a\n    routes: [/a]\n    backends: [{name: b, address: 127.0.0.1, port: 9}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", *NO_DOT_ENV, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"xds-server: cannot start: router.xds_tls.key_file: {tmp_path / 'gone.key'}: no such file"
    )
