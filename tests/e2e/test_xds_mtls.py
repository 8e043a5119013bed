"""A real Envoy 1.40 takes its configuration over mutual TLS, named by its
certificate (docs/xds-protocol.md rule 34), and routes a request to a sample
backend; an Envoy holding another node's certificate gets nothing. The CA, the
controller's and Envoy's certificates are made by the test (trustme)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.factories import SEARCH_BODY, local_settings, qdrant_only, running_controller
from tests.support import envoy_running, eventually
from tests.tls_support import ClientFiles, Pki
from xds_server.app import Controller
from xds_server.demo import start_backend
from xds_server.model.intent import SocketAddress
from xds_server.model.schema import XdsTlsConfig
from xds_server.proxy.bootstrap import XdsClientTls, make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess, wait_listening
from xds_server.proxy.processes import free_port
from xds_server.resources import LISTENER_NAME
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

NODE = "envoy-mtls"


@pytest.fixture
async def mtls_controller(tmp_path: Path) -> AsyncIterator[tuple[Controller, Pki]]:
    """The qdrant service's sample backends and a controller demanding client
    certificates of the test's CA on its xDS port."""
    pki = Pki(tmp_path)
    server = pki.server_files()
    tls = XdsTlsConfig(
        cert_file=str(server.cert_file),
        key_file=str(server.key_file),
        client_ca_file=str(server.client_ca_file),
    )
    settings = dataclasses.replace(qdrant_only(local_settings(worker_threads=1)), xds_tls=tls)
    async with contextlib.AsyncExitStack() as stack:
        for backend in settings.intent.backends():
            child = await start_backend(backend, "qdrant", tmp_path)
            stack.push_async_callback(child.stop)
        controller = await stack.enter_async_context(running_controller(settings))
        yield controller, pki


@contextlib.asynccontextmanager
async def envoy_with(
    controller: Controller,
    client: ClientFiles,
    node_id: str,
    admin: SocketAddress,
    work: Path,
    *,
    wait_ready: bool = True,
) -> AsyncIterator[EnvoyProcess]:
    bootstrap = make_bootstrap(
        node_id=node_id,
        xds=controller.xds_address,
        envoy_admin=admin,
        tls=XdsClientTls(str(client.cert_file), str(client.key_file), str(client.ca_file)),
    )
    async with envoy_running(bootstrap, admin, work, wait_ready=wait_ready) as envoy:
        yield envoy


async def test_envoy_over_mutual_tls_routes_to_a_backend(
    mtls_controller: tuple[Controller, Pki], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    controller, pki = mtls_controller
    settings: Settings = controller.settings
    admin = settings.envoy_admin_address
    client = pki.client_files(NODE)
    async with envoy_with(controller, client, NODE, admin, tmp_path / "envoy") as envoy:
        await wait_listening(envoy, LISTENER_NAME, settings.intent.listen)  # LDS arrived
        url = f"http://{settings.intent.listen}/api/v1/vectors/search"
        async with http.post(url, json=SEARCH_BODY) as response:
            assert response.status == 200, await response.text()
            backend = response.headers.get("x-backend")
        assert backend in {b.name for b in settings.intent.backends()}
        proxy = controller.proxies.proxies[NODE]
        assert proxy.envoy_admin == str(
            admin
        )  # its own IP: believed (docs/xds-protocol.md rule 34)


async def test_envoy_with_another_nodes_certificate_gets_no_configuration(
    mtls_controller: tuple[Controller, Pki], tmp_path: Path
) -> None:
    """Its certificate names `someone-else`: every stream it opens is refused
    (PERMISSION_DENIED), so it never hears of a listener."""
    controller, pki = mtls_controller
    admin = SocketAddress("127.0.0.1", free_port())
    client = pki.client_files("someone-else")
    work = tmp_path / "envoy"
    async with envoy_with(controller, client, NODE, admin, work, wait_ready=False) as envoy:

        async def refused() -> bool:  # gRPC status 7: PERMISSION_DENIED
            return "config stream to xds_cluster closed: 7, node 'envoy-mtls'" in envoy.log_text()

        await eventually(refused, timeout_s=20.0)
        listeners = await envoy.admin_json("/listeners?format=json")
        assert listeners.get("listener_statuses", []) == []
        assert NODE not in controller.proxies.proxies
