"""The bootstrap of an Envoy that runs the health checks the controller assigns
it (router.health_checker envoy): `make_bootstrap(hds=True)` and
`xds-server bootstrap --hds` carry hds_config; without them, nothing changes."""

from __future__ import annotations

import pytest
import yaml

from xds_server import cli
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import XDS_CLUSTER, make_bootstrap
from xds_server.proxy.envoy_process import validate_bootstrap

XDS = SocketAddress("127.0.0.1", 18000)
ADMIN = SocketAddress("127.0.0.1", 9901)


def test_hds_config_names_the_xds_cluster() -> None:
    bootstrap = make_bootstrap(node_id="n", xds=XDS, envoy_admin=ADMIN, hds=True)
    assert bootstrap["hds_config"] == {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
    }
    without = make_bootstrap(node_id="n", xds=XDS, envoy_admin=ADMIN)
    assert "hds_config" not in without
    assert {k: v for k, v in bootstrap.items() if k != "hds_config"} == without


@pytest.mark.envoy
async def test_envoy_accepts_the_hds_bootstrap() -> None:
    await validate_bootstrap(make_bootstrap(node_id="n", xds=XDS, envoy_admin=ADMIN, hds=True))


def test_cli_bootstrap_hds_flag(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--env-file", "/dev/null", "bootstrap", "--node-id", "n"]
    assert cli.main([*argv, "--hds"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hds_config"]["grpc_services"] == [
        {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    ]
    assert cli.main(argv) == 0
    assert "hds_config" not in yaml.safe_load(capsys.readouterr().out)
