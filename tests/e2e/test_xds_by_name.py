"""A real Envoy 1.40 reaches the controller by DNS name (`xds-server bootstrap
--xds-host localhost:PORT`), over mutual TLS and over one-way TLS (`--ca`
alone), and routes a request to a sample backend. The name is the SNI and the
SAN checked: a controller whose certificate names only its IP is refused by
Envoy's SAN check and hands out nothing. Certificates are made by the test
(trustme), or by compose.yaml's own deploy/compose/make-certs.sh (openssl);
the bootstrap is what the real CLI writes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.factories import SEARCH_BODY, local_settings, qdrant_only, running_controller
from tests.support import envoy_running, eventually
from tests.tls_support import Pki
from xds_server import cli
from xds_server.app import Controller
from xds_server.demo import start_backend
from xds_server.model.intent import SocketAddress
from xds_server.model.schema import XdsTlsConfig
from xds_server.pemfiles import TlsFiles
from xds_server.proxy.envoy_process import EnvoyProcess, wait_listening
from xds_server.proxy.processes import free_port
from xds_server.resources import LISTENER_NAME

pytestmark = pytest.mark.envoy

NODE = "envoy-by-name"
NAME = "localhost"  # in /etc/hosts everywhere; Envoy resolves it, V4_PREFERRED: 127.0.0.1


@contextlib.asynccontextmanager
async def controller_with(server: TlsFiles, tmp_path: Path) -> AsyncIterator[Controller]:
    """The qdrant service's sample backends and a controller on 127.0.0.1 serving
    xDS with `server`'s certificate (client certificates required when it names
    a client CA)."""
    tls = XdsTlsConfig(
        cert_file=str(server.cert_file),
        key_file=str(server.key_file),
        client_ca_file=str(server.client_ca_file) if server.client_ca_file else None,
    )
    settings = dataclasses.replace(qdrant_only(local_settings(worker_threads=1)), xds_tls=tls)
    async with contextlib.AsyncExitStack() as stack:
        for backend in settings.intent.backends():
            child = await start_backend(backend, "qdrant", tmp_path)
            stack.push_async_callback(child.stop)
        yield await stack.enter_async_context(running_controller(settings))


def cli_bootstrap(
    controller: Controller,
    admin: SocketAddress,
    tls_flags: Sequence[str],
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """`xds-server bootstrap --xds-host localhost:PORT ...` with the controller's
    settings in the environment, as an operator would run it."""
    settings = controller.settings
    tls = settings.xds_tls
    assert tls is not None
    monkeypatch.setenv("ROUTER_XDS_ADDRESS", str(settings.xds_address))
    monkeypatch.setenv("ROUTER_ENVOY_ADMIN_ADDRESS", str(admin))
    monkeypatch.setenv("ROUTER_XDS_TLS", json.dumps(tls.model_dump()))
    work.mkdir(parents=True, exist_ok=True)
    target = work / "bootstrap.yaml"
    argv = ["--env-file", "/dev/null", "bootstrap", "--node-id", NODE]
    argv += ["--xds-host", f"{NAME}:{controller.xds_address.port}", *tls_flags]
    assert cli.main([*argv, "--output", str(target)]) == 0
    bootstrap: dict[str, Any] = yaml.safe_load(target.read_text())
    return bootstrap


@contextlib.asynccontextmanager
async def envoy_on(
    bootstrap: dict[str, Any], admin: SocketAddress, work: Path, *, wait_ready: bool = True
) -> AsyncIterator[EnvoyProcess]:
    async with envoy_running(bootstrap, admin, work, wait_ready=wait_ready) as envoy:
        yield envoy


async def routes_a_search(controller: Controller, http: aiohttp.ClientSession) -> None:
    url = f"http://{controller.settings.intent.listen}/api/v1/vectors/search"
    async with http.post(url, json=SEARCH_BODY) as response:
        assert response.status == 200, await response.text()
        backend = response.headers.get("x-backend")
    assert backend in {b.name for b in controller.settings.intent.backends()}


async def envoy_counter(envoy: EnvoyProcess, name: str) -> int:
    stats = await envoy.admin_json(f"/stats?format=json&filter=^{name}$")
    return sum(int(s.get("value", 0)) for s in stats["stats"])


async def test_envoy_reaches_the_controller_by_name_over_mutual_tls(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's certificate carries DNS:localhost; Envoy dials the name,
    sends it as SNI, checks it as SAN, presents its node's certificate."""
    pki = Pki(tmp_path)
    client = pki.client_files(NODE)
    async with controller_with(pki.server_files(NAME), tmp_path) as controller:
        admin = controller.settings.envoy_admin_address
        flags = ["--ca", str(client.ca_file)]
        flags += ["--client-cert", str(client.cert_file), "--client-key", str(client.key_file)]
        bootstrap = cli_bootstrap(controller, admin, flags, tmp_path / "envoy", monkeypatch)
        [cluster] = bootstrap["static_resources"]["clusters"]
        assert cluster["cluster_type"]["name"] == "envoy.cluster.dns"
        async with envoy_on(bootstrap, admin, tmp_path / "envoy") as envoy:
            await wait_listening(envoy, LISTENER_NAME, controller.settings.intent.listen)
            await routes_a_search(controller, http)
            assert await envoy_counter(envoy, "cluster.xds_cluster.ssl.handshake") >= 1
            hosts = await envoy.admin_get("/clusters")
            xds_host = f"xds_cluster::127.0.0.1:{controller.xds_address.port}::hostname::"
            assert xds_host + NAME in hosts  # the name resolved, kept as the hostname
            # Its admin is on its own IP: believed (docs/xds-protocol.md rule 34).
            assert controller.proxies.proxies[NODE].envoy_admin == str(admin)


async def test_envoy_reaches_the_controller_by_name_over_one_way_tls(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client CA on the controller, `--ca` alone for Envoy: the controller's
    certificate is checked, none is presented."""
    pki = Pki(tmp_path)
    server = pki.server_files(NAME, clients=False)
    async with controller_with(server, tmp_path) as controller:
        admin = controller.settings.envoy_admin_address
        flags = ["--ca", str(pki.ca_file)]
        bootstrap = cli_bootstrap(controller, admin, flags, tmp_path / "envoy", monkeypatch)
        async with envoy_on(bootstrap, admin, tmp_path / "envoy") as envoy:
            await wait_listening(envoy, LISTENER_NAME, controller.settings.intent.listen)
            await routes_a_search(controller, http)
            assert await envoy_counter(envoy, "cluster.xds_cluster.ssl.handshake") >= 1
            [cluster] = bootstrap["static_resources"]["clusters"]
            common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            assert "tls_certificates" not in common


async def test_a_controller_certificate_without_the_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate names only 127.0.0.1 (the address Envoy connects to), not
    `localhost`: Envoy's SAN check fails every handshake, so the controller never
    sees the node and Envoy never hears of a listener."""
    pki = Pki(tmp_path)
    client = pki.client_files(NODE)
    async with controller_with(pki.server_files("127.0.0.1"), tmp_path) as controller:
        admin = SocketAddress("127.0.0.1", free_port())
        flags = ["--ca", str(client.ca_file)]
        flags += ["--client-cert", str(client.cert_file), "--client-key", str(client.key_file)]
        bootstrap = cli_bootstrap(controller, admin, flags, tmp_path / "envoy", monkeypatch)
        async with envoy_on(bootstrap, admin, tmp_path / "envoy", wait_ready=False) as envoy:

            async def san_refused() -> bool:
                try:  # the admin listens a moment after the process starts
                    failed = await envoy_counter(envoy, "cluster.xds_cluster.ssl.fail_verify_san")
                except aiohttp.ClientError:
                    return False
                return failed >= 2  # and again after the retry back-off

            await eventually(san_refused, timeout_s=20.0)
            listeners = await envoy.admin_json("/listeners?format=json")
            assert listeners.get("listener_statuses", []) == []
            assert await envoy_counter(envoy, "cluster.xds_cluster.ssl.handshake") == 0
        assert NODE not in controller.proxies.proxies


def compose_certificates(directory: Path, controller_name: str) -> tuple[TlsFiles, Path]:
    """What compose.yaml's `certs` service makes (deploy/compose/make-certs.sh),
    with the controller named `controller_name`: the controller's files and
    Envoy's directory (envoy.crt, envoy.key, ca.pem)."""
    dirs = {key: directory / key.lower() for key in ("CA_DIR", "CONTROLLER_DIR", "ENVOY_DIR")}
    env = {key: str(path) for key, path in dirs.items()}
    env |= {
        "CONTROLLER_NAME": controller_name,
        "ENVOY_NODE_ID": NODE,
        "ENVOY_UID": str(os.getuid()),
    }
    script = Path(__file__).resolve().parents[2] / "deploy/compose/make-certs.sh"
    subprocess.run(
        ["sh", str(script)], env={**os.environ, **env}, check=True, capture_output=True, timeout=60
    )
    controller = dirs["CONTROLLER_DIR"]
    server = TlsFiles(
        controller / "controller.crt", controller / "controller.key", controller / "ca.pem"
    )
    return server, dirs["ENVOY_DIR"]


async def test_the_certificates_compose_makes_work_between_envoy_and_the_controller(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose.yaml's certificates (openssl, not trustme), the controller named
    `localhost` in place of `controller`: mutual TLS by name, and a routed request."""
    server, envoy_dir = compose_certificates(tmp_path / "certs", NAME)
    async with controller_with(server, tmp_path) as controller:
        admin = controller.settings.envoy_admin_address
        flags = ["--ca", str(envoy_dir / "ca.pem")]
        flags += ["--client-cert", str(envoy_dir / "envoy.crt")]
        flags += ["--client-key", str(envoy_dir / "envoy.key")]
        bootstrap = cli_bootstrap(controller, admin, flags, tmp_path / "envoy", monkeypatch)
        async with envoy_on(bootstrap, admin, tmp_path / "envoy") as envoy:
            await wait_listening(envoy, LISTENER_NAME, controller.settings.intent.listen)
            await routes_a_search(controller, http)
            assert NODE in controller.proxies.proxies  # its certificate named it
