"""deploy/kubernetes/, checked without a cluster.

Every manifest is validated in strict mode (an unknown field is an error)
against the Kubernetes schemas of two releases that kubernetes-validate ships,
the oldest and the newest. The rest are cross-checks a schema cannot make:
the ConfigMap's router_config.yaml loads with the real settings loader and the
environment each container gives it; the probes are routes of the admin API
on its configured port; Services and NetworkPolicies select pods that exist,
on ports those pods open; the backends are Services of the manifests; the
init container's command parses with the real command line and writes the
bootstrap where Envoy reads it. The README's certificates and Secrets:
tests/deploy/test_kubernetes_secrets.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.kubernetes_support import (
    KUSTOMIZATION,
    NODE_ID,
    POD_IP,
    SCHEMA_VERSIONS,
    SECRET_VALUE,
    bootstrap_command,
    config_in,
    container,
    container_ports,
    controller_settings,
    environment,
    manifest_files,
    mounted_config,
    named,
    of_kind,
    pod_spec,
    run_bootstrap,
    selected,
)
from xds_server import cli
from xds_server.admin import ROUTE_SETS
from xds_server.proxy.bootstrap import parse_xds_host
from xds_server.settings import load_settings


def probes(deployment: str, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = container(deployment, name)
    for kind in ("readinessProbe", "livenessProbe"):
        yield kind, spec[kind]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_in_strict_mode(path: Path, version: str) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) for d in documents)
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_strict_validation_would_catch_a_mistake() -> None:
    """The check above can fail: a misspelt field, which a cluster would drop in
    silence (a probe that never runs), is refused."""
    deployment = copy.deepcopy(named("Deployment", "xds-controller"))
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    spec["readynessProbe"] = spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    images = {i["name"] for i in kustomization["images"]}
    used = {
        spec["image"].split(":")[0]
        for d in of_kind("Deployment")
        for key in ("containers", "initContainers")
        for spec in d["spec"]["template"]["spec"].get(key, [])
    }
    assert images == {"xds-server"} and images <= used


def test_the_controllers_config_loads_as_their_pods_see_it(tmp_path: Path) -> None:
    """ROUTER_REDIS_URL names the redis Service; the token comes from a Secret;
    the xDS port is mutual TLS with the files the pod mounts from its Secret."""
    settings = controller_settings(tmp_path)
    assert settings.admin_token == SECRET_VALUE
    assert settings.redis_url is not None
    redis = urlsplit(settings.redis_url)
    (redis_port,) = named("Service", "redis")["spec"]["ports"]
    assert (redis.hostname, redis.port) == ("redis", redis_port["port"])
    assert container_ports("redis")[redis_port["targetPort"]] == redis_port["port"]
    assert settings.xds_tls is not None and settings.xds_tls.client_ca_file is not None
    mounts = {
        m["name"]: m["mountPath"] for m in container("xds-controller", "controller")["volumeMounts"]
    }
    tls_files = (settings.xds_tls.cert_file, settings.xds_tls.key_file)
    for file in (*tls_files, settings.xds_tls.client_ca_file):
        assert Path(file).parent == Path(mounts["xds-tls"]), file
    assert named("Deployment", "xds-controller")["spec"]["replicas"] == 2


def test_the_controller_ports_are_the_configured_ones(tmp_path: Path) -> None:
    settings = controller_settings(tmp_path)
    ports = container_ports("xds-controller")
    assert ports == {"xds": settings.xds_address.port, "admin": settings.intent.admin.port}
    assert settings.xds_address.host == settings.intent.admin.host == "0.0.0.0"
    service = named("Service", "xds-controller")["spec"]
    assert service["clusterIP"] == "None"
    assert {p["port"]: ports[p["targetPort"]] for p in service["ports"]} == {
        settings.xds_address.port: settings.xds_address.port,
        settings.intent.admin.port: settings.intent.admin.port,
    }


def test_the_controller_probes_are_admin_routes_on_the_admin_port(tmp_path: Path) -> None:
    """/readyz for readiness (the first snapshot, a usable store), /healthz for
    liveness: GET routes of the admin API, on the port admin_address binds."""
    routes = {(op.method, op.path) for rs in ROUTE_SETS for op in rs.operations}
    settings = controller_settings(tmp_path)
    found = {}
    for kind, probe in probes("xds-controller", "controller"):
        port = container_ports("xds-controller")[probe["httpGet"]["port"]]
        assert port == settings.intent.admin.port, kind
        assert ("GET", probe["httpGet"]["path"]) in routes, probe
        found[kind] = probe["httpGet"]["path"]
    assert found == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}


def test_every_service_selects_pods_that_open_its_ports() -> None:
    for service in of_kind("Service"):
        name = service["metadata"]["name"]
        (deployment,) = selected(service["spec"]["selector"])
        ports = container_ports(deployment)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    assert selected(named("Service", "xds-envoy")["spec"]["selector"]) == ["xds-envoy"]
    budget = named("PodDisruptionBudget", "xds-controller")["spec"]
    assert selected(budget["selector"]["matchLabels"]) == ["xds-controller"]
    assert budget["minAvailable"] < named("Deployment", "xds-controller")["spec"]["replicas"]


def test_the_network_policies_select_pods_and_ports_that_exist() -> None:
    """Each policy's pods, its peers and its ports are real, and each says what
    the task asks: the xDS port from Envoy only, Redis from the controllers only."""
    allowed: dict[tuple[str, int], set[str]] = {}
    for policy in of_kind("NetworkPolicy"):
        (target,) = selected(policy["spec"]["podSelector"]["matchLabels"])
        opened = set(container_ports(target).values())
        for rule in policy["spec"]["ingress"]:
            peers = {
                peer
                for source in rule.get("from", [{"podSelector": {}}])
                for peer in (
                    selected(source["podSelector"].get("matchLabels", {}))
                    if source["podSelector"].get("matchLabels")
                    else ["*"]
                )
            }
            assert peers, rule
            for port in rule["ports"]:
                assert port["port"] in opened, (target, port)
                allowed.setdefault((target, port["port"]), set()).update(peers)
    assert allowed[("xds-controller", 18000)] == {"xds-envoy"}
    assert allowed[("redis", 6379)] == {"xds-controller"}
    assert allowed[("xds-envoy", 9901)] == {"xds-controller"}


def test_every_backend_is_a_service_of_the_manifests(tmp_path: Path) -> None:
    settings = controller_settings(tmp_path)
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    backends = [b for service in settings.intent.services for b in service.backends]
    assert backends
    for backend in backends:
        assert backend.address in services, backend
        (port,) = services[backend.address]["spec"]["ports"]
        assert port["port"] == backend.port, backend


def test_the_init_container_runs_a_bootstrap_command_the_cli_parses() -> None:
    """The arguments parse, and name the files the pod mounts (--xds-host: the
    next test)."""
    argv, _ = bootstrap_command()
    args = cli.parse_args(argv)
    assert args.command == cli.cmd_bootstrap and args.node_id == NODE_ID
    assert str(args.config) == mounted_config("xds-envoy")
    envoy_mounts = {
        m["name"]: m["mountPath"] for m in container("xds-envoy", "envoy")["volumeMounts"]
    }
    for file in (args.client_cert, args.client_key, args.ca):
        assert Path(file).parent == Path(envoy_mounts["xds-tls"]), file


def test_the_init_container_points_envoy_at_the_controller_service() -> None:
    """--xds-host names the headless Service, on its xDS port, spelled out (no
    default port to depend on)."""
    argv, _ = bootstrap_command()
    target = parse_xds_host(cli.parse_args(argv).xds_host, default_port=0)
    (xds,) = [p for p in named("Service", "xds-controller")["spec"]["ports"] if p["port"] == 18000]
    assert (target.name, target.port) == ("xds-controller", xds["port"])


def test_the_bootstrap_lands_where_envoy_reads_it_with_its_admin_on_the_pod_ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envoy's admin, which the controller reads stats from, is the pod IP's port
    9901, where the probes and the NetworkPolicy look; the file is Envoy's -c in
    the shared emptyDir; its concurrency is router.worker_threads."""
    bootstrap = yaml.safe_load(run_bootstrap(tmp_path, monkeypatch))
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == (POD_IP, 9901)
    assert bootstrap["node"]["id"] == NODE_ID
    assert bootstrap["node"]["metadata"] == {"admin_address": f"{POD_IP}:9901"}
    assert container_ports("xds-envoy")["envoy-admin"] == admin["port_value"]
    _, target = bootstrap_command()
    envoy = container("xds-envoy", "envoy")
    assert envoy["args"][envoy["args"].index("-c") + 1] == target
    volumes = {v["name"]: v for v in pod_spec("xds-envoy")["volumes"]}
    shared = [m for m in envoy["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    assert Path(target).parent in {Path(m["mountPath"]) for m in shared}
    env = environment(container("xds-envoy", "bootstrap", init=True))
    settings = load_settings(config_in(tmp_path), environ=env)
    concurrency = envoy["args"][envoy["args"].index("--concurrency") + 1]
    assert concurrency == str(settings.worker_threads)
    assert container_ports("xds-envoy")["listener"] == settings.intent.listen.port


def test_every_container_runs_unprivileged_on_a_read_only_root() -> None:
    for deployment in of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        for each in spec["containers"] + spec.get("initContainers", []):
            context = each["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, each["name"]
            assert context["allowPrivilegeEscalation"] is False, each["name"]
            assert context["capabilities"]["drop"] == ["ALL"], each["name"]
            assert {"cpu", "memory"} <= each["resources"]["requests"].keys(), each["name"]
            assert {"cpu", "memory"} <= each["resources"]["limits"].keys(), each["name"]
    # The controller checks its TLS files through a temporary directory
    # (xds_server/pemfiles.py): /tmp must be writable on its read-only root.
    volumes = {v["name"]: v for v in pod_spec("xds-controller")["volumes"]}
    mounts = {
        m["mountPath"]: m["name"] for m in container("xds-controller", "controller")["volumeMounts"]
    }
    assert "emptyDir" in volumes[mounts["/tmp"]]
