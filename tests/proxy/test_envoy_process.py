"""A real Envoy 1.40: the shipped bootstraps, validation, and start/route/stop by PID."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import xds_server
from xds_server.errors import ConfigError
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import SAMPLE_FILES, sample_file_text
from xds_server.proxy.envoy_process import EnvoyFailed, start_envoy, validate_bootstrap
from xds_server.proxy.processes import ChildProcess, free_port, start_process

pytestmark = pytest.mark.envoy

REPO_ROOT = Path(xds_server.__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


@pytest.mark.parametrize("name", sorted(SAMPLE_FILES))
def test_shipped_bootstrap_file_equals_make_bootstrap(name: str) -> None:
    """envoy/<name> is exactly what make_bootstrap renders now (regenerate with
    `python -m xds_server.bootstrap --write`)."""
    assert (REPO_ROOT / "envoy" / name).read_text() == sample_file_text(SAMPLE_FILES[name])


@pytest.mark.parametrize("name", sorted(SAMPLE_FILES))
async def test_shipped_bootstrap_passes_envoy_validate(name: str) -> None:
    """`envoy --mode validate` accepts each shipped ADS bootstrap."""
    await validate_bootstrap(yaml.safe_load((REPO_ROOT / "envoy" / name).read_text()))


async def test_validate_reports_envoys_message() -> None:
    """A bootstrap Envoy rejects raises EnvoyFailed carrying Envoy's own reason."""
    bad = {"static_resources": {"clusters": [{"name": "c", "type": "NO_SUCH_TYPE"}]}}
    with pytest.raises(EnvoyFailed, match="NO_SUCH_TYPE"):
        await validate_bootstrap(bad)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[tuple[ChildProcess, SocketAddress]]:
    """A qdrant sample backend subprocess on a free loopback port, stopped by PID."""
    port = free_port(LOOPBACK)
    argv = [sys.executable, "-m", "xds_server.samples", "--name", "qdrant-primary"]
    argv += ["--kind", "qdrant", "--host", LOOPBACK, "--port", str(port)]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = await start_process(
        argv, ready_line_prefix="READY ", timeout_s=20, env=env, log_path=tmp_path / "qdrant.log"
    )
    try:
        yield child, SocketAddress(LOOPBACK, port)
    finally:
        await child.stop()


def _static_bootstrap(listen: SocketAddress, upstream: SocketAddress) -> dict[str, Any]:
    address = {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
    cluster = {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    return {
        "static_resources": {"listeners": [_listener(listen)], "clusters": [cluster]},
    }


def _listener(listen: SocketAddress) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        # Without it HTTP/1.0 clients (ab) get 426 (docs/envoy-notes.md).
        "http_protocol_options": {"accept_http_10": True},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": "ingress",
        "address": {"socket_address": {"address": listen.host, "port_value": listen.port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


async def test_static_envoy_routes_to_backend_and_stops(
    backend: tuple[ChildProcess, SocketAddress], tmp_path: Path
) -> None:
    """A real Envoy on a static bootstrap becomes LIVE, proxies to the sample backend
    (its x-backend header comes through), and is gone by PID after stop()."""
    _, upstream = backend
    listen = SocketAddress(LOOPBACK, free_port(LOOPBACK))
    admin = SocketAddress(LOOPBACK, free_port(LOOPBACK))
    envoy = await start_envoy(
        _static_bootstrap(listen, upstream), admin=admin, workdir=tmp_path / "envoy"
    )
    try:
        assert (await envoy.admin_get("/ready")).strip() == "LIVE"
        body = {"query_vector": [1.0, 2.0], "collection": "test"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"http://{listen}/api/v1/vectors/search", json=body) as response,
        ):
            assert response.status == 200
            assert response.headers["x-backend"] == "qdrant-primary"
            assert (await response.json())["backend"] == "qdrant-primary"
        stats = await envoy.admin_json(
            "/stats?format=json&filter=^cluster.backend.upstream_rq_200$"
        )
        assert stats["stats"] == [{"name": "cluster.backend.upstream_rq_200", "value": 1}]
    finally:
        await envoy.stop()
    assert envoy.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(envoy.pid, 0)


async def test_start_envoy_failure_carries_log_tail(tmp_path: Path) -> None:
    """An Envoy that cannot start raises EnvoyFailed quoting the reason from its log."""
    admin = SocketAddress(LOOPBACK, free_port(LOOPBACK))
    bad = {"static_resources": {"clusters": [{"name": "c", "type": "NO_SUCH_TYPE"}]}}
    with pytest.raises(EnvoyFailed, match="NO_SUCH_TYPE"):
        await start_envoy(bad, admin=admin, workdir=tmp_path, timeout_s=20)


async def test_start_envoy_refuses_a_different_admin_address(tmp_path: Path) -> None:
    """The admin address polled must be the one in the bootstrap, or start_envoy refuses."""
    bootstrap = {"admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 1}}}}
    with pytest.raises(ConfigError, match="admin address"):
        await start_envoy(bootstrap, admin=SocketAddress(LOOPBACK, 2), workdir=tmp_path)
