"""deploy/kubernetes/, checked without a cluster.

Every manifest is validated in strict mode (an unknown field is an error)
against the Kubernetes schemas of two releases that kubernetes-validate ships,
the oldest and the newest. The rest are cross-checks a schema cannot make:
the ConfigMap's router_config.yaml loads with the real settings loader and the
environment each container gives it; the probes are routes of the admin API
on its configured port; Services and NetworkPolicies select pods that exist,
on ports those pods open; the backends are Services of the manifests; the
init container's command parses with the real command line and writes the
bootstrap where Envoy reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import re
import shlex
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from xds_server import cli
from xds_server.admin import ROUTE_SETS
from xds_server.pemfiles import TlsFiles, read_pem_set
from xds_server.proxy.envoy_process import find_envoy_binary
from xds_server.settings import Settings, load_settings
from xds_server.xds.identity import Peer

ROOT = Path(__file__).resolve().parent.parent.parent
MANIFESTS = ROOT / "deploy/kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
SCHEMA_VERSIONS = (VERSIONS[0], VERSIONS[-1])
# The downward API's and the Secrets' values, as a pod would see them.
POD_IP = "10.244.1.7"
SECRET_VALUE = "from-a-secret"
NODE_ID = "envoy-k8s"
# Envoy's xDS client files in its Secret, and the bootstrap options naming them.
ENVOY_SECRET_FILES = {"tls.crt": "envoy.crt", "tls.key": "envoy.key", "ca.crt": "ca.crt"}
ENVOY_SECRET_OPTIONS = ("--client-cert", "--client-key", "--ca")
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Resource = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p != KUSTOMIZATION)


@functools.cache
def resources() -> list[Resource]:
    """Parsed once: callers read, never change them (copy.deepcopy first)."""
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text())]


def named(kind: str, name: str) -> Resource:
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def of_kind(kind: str) -> list[Resource]:
    return [r for r in resources() if r["kind"] == kind]


def pod_spec(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = named("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def container(deployment: str, name: str, *, init: bool = False) -> dict[str, Any]:
    group = pod_spec(deployment)["initContainers" if init else "containers"]
    (found,) = [c for c in group if c["name"] == name]
    return found  # type: ignore[no-any-return]


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A container's env as the kubelet builds it: `$(NAME)` of an earlier variable
    expanded, the downward API's pod IP and each Secret's key stood in for."""
    env: dict[str, str] = {}
    for variable in spec.get("env", []):
        source = variable.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "status.podIP", variable
            value = POD_IP
        elif "secretKeyRef" in source:
            value = SECRET_VALUE
        else:
            value = ENV_REFERENCE.sub(lambda m: env.get(m[1], m[0]), variable["value"])
        env[variable["name"]] = value
    return env


def config_in(tmp_path: Path) -> Path:
    """router_config.yaml of the ConfigMap, as a file."""
    path = tmp_path / "router_config.yaml"
    path.write_text(named("ConfigMap", "router-config")["data"]["router_config.yaml"])
    return path


def controller_settings(tmp_path: Path) -> Settings:
    """The settings `xds-server run` gets in the controller's pod: its --config
    (the ConfigMap) and its env."""
    spec = container("xds-controller", "controller")
    assert spec["args"][spec["args"].index("--config") + 1] == mounted_config("xds-controller")
    return load_settings(config_in(tmp_path), environ=environment(spec))


def mounted_config(deployment: str) -> str:
    """Where the pod mounts the router-config ConfigMap, and so its file."""
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for spec in pod_spec(deployment).get("initContainers", []) + pod_spec(deployment)["containers"]:
        for mount in spec.get("volumeMounts", []):
            if volumes[mount["name"]].get("configMap", {}).get("name") == "router-config":
                return f"{mount['mountPath']}/router_config.yaml"
    raise AssertionError(f"{deployment} mounts no router-config")


def bootstrap_command() -> tuple[list[str], str]:
    """The init container's `xds-server bootstrap` arguments and the file its
    shell redirects them to."""
    spec = container("xds-envoy", "bootstrap", init=True)
    assert spec["command"] == ["/bin/sh", "-c"]
    (script,) = spec["args"]
    words = shlex.split(script)
    assert words[:2] == ["exec", "xds-server"] and words[-2] == ">", words
    return words[2:-2], words[-1]


def bootstrap_parser() -> argparse.ArgumentParser:
    (commands,) = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = commands.choices["bootstrap"]
    return found


def knows_xds_host() -> bool:
    return "--xds-host" in bootstrap_parser()._option_string_actions


def without_xds_host(argv: list[str]) -> list[str]:
    at = argv.index("--xds-host")
    return argv[:at] + argv[at + 2 :]


def container_ports(deployment: str) -> dict[str, int]:
    """name -> containerPort over every container of the pod."""
    return {
        port["name"]: port["containerPort"]
        for spec in pod_spec(deployment)["containers"]
        for port in spec.get("ports", [])
    }


def selected(selector: dict[str, str]) -> list[str]:
    """The Deployments whose pods carry every label of `selector`."""
    return [
        d["metadata"]["name"]
        for d in of_kind("Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


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
    """Everything but --xds-host, which the next test checks once the command
    line has it: the arguments parse, and name the files the pod mounts."""
    argv, _ = bootstrap_command()
    if not knows_xds_host():
        argv = without_xds_host(argv)
    args = cli.parse_args(argv)
    assert args.command == cli.cmd_bootstrap and args.node_id == NODE_ID
    assert str(args.config) == mounted_config("xds-envoy")
    envoy_mounts = {
        m["name"]: m["mountPath"] for m in container("xds-envoy", "envoy")["volumeMounts"]
    }
    for file in (args.client_cert, args.client_key, args.ca):
        assert Path(file).parent == Path(envoy_mounts["xds-tls"]), file


def host_and_port(value: object) -> tuple[str, int | None]:
    """--xds-host's parsed value, whichever shape the command line gives it
    (`NAME[:PORT]` text, a (host, port) pair, or an object with host and port)."""
    if isinstance(value, str):
        name, _, port = value.partition(":")
        return name, int(port) if port else None
    if isinstance(value, tuple):
        return str(value[0]), None if value[1] is None else int(value[1])
    port = getattr(value, "port", None)
    return str(getattr(value, "host", value)), None if port is None else int(port)


def test_the_init_container_points_envoy_at_the_controller_service() -> None:
    """--xds-host names the headless Service, on its xDS port."""
    argv, _ = bootstrap_command()
    if not knows_xds_host():
        pytest.skip(
            "xds-server bootstrap has no --xds-host yet (being added to xds_server/cli.py "
            "in parallel); this runs once it has"
        )
    dest = bootstrap_parser()._option_string_actions["--xds-host"].dest
    name, port = host_and_port(vars(cli.parse_args(argv))[dest])
    assert name == "xds-controller"
    (xds,) = [p for p in named("Service", "xds-controller")["spec"]["ports"] if p["port"] == 18000]
    assert port in (None, xds["port"])


def run_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path] | None = None
) -> str:
    """The bootstrap `xds-server bootstrap` prints when run as the init container
    runs it: its arguments (--xds-host only once the command line has it), its
    env, the ConfigMap; with `tls_files` ({"tls.crt": path, ...}) in place of
    the Secret's mount."""
    argv, _ = bootstrap_command()
    if not knows_xds_host():
        argv = without_xds_host(argv)
    argv[argv.index("--config") + 1] = str(config_in(tmp_path))
    for option in ("--client-cert", "--client-key", "--ca") if tls_files else ():
        at = argv.index(option) + 1
        argv[at] = str(tls_files[Path(argv[at]).name])  # type: ignore[index]
    for key, value in environment(container("xds-envoy", "bootstrap", init=True)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no ./.env of the checkout
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    return printed.getvalue()


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


@pytest.mark.envoy
def test_envoy_accepts_the_init_containers_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readme_certificates: Path
) -> None:
    """Envoy 1.40 in --mode validate, with the Envoy container's own arguments and
    the README's certificates where the Secret would be mounted (it reads them).
    Validation resolves no name (envoyproxy/envoy `source/server/config_validation/dns.cc`
    answers every query itself), so the xDS cluster's Service name sends no DNS query."""
    files = {key: readme_certificates / name for key, name in ENVOY_SECRET_FILES.items()}
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(run_bootstrap(tmp_path, monkeypatch, files))
    args = list(container("xds-envoy", "envoy")["args"])
    args[args.index("-c") + 1] = str(bootstrap)
    argv = [find_envoy_binary(), *args, "--mode", "validate", "--base-id", "7374"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Deploying on Kubernetes\n")
    return text[start : text.index("\n## ", start + 1)]


def readme_commands() -> list[list[str]]:
    """The README's certificate and Secret commands: the bash block with
    `openssl req`, continuation lines joined, each split as the shell would."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(), re.DOTALL)
    (block,) = [b for b in blocks if "openssl req" in b]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line]


@pytest.fixture(scope="module")
def readme_certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's openssl commands, run as given in a fresh folder."""
    folder = tmp_path_factory.mktemp("readme-certificates")
    for argv in readme_commands():
        if argv[0] == "openssl":
            subprocess.run(argv, cwd=folder, check=True, capture_output=True, timeout=60)
    return folder


def secret_files(argv: list[str]) -> tuple[str, dict[str, str]]:
    """`kubectl create secret generic NAME --from-file=KEY=FILE --from-literal=KEY=V`
    -> NAME, {KEY: FILE or the literal}."""
    assert argv[:4] == ["kubectl", "create", "secret", "generic"], argv
    keys = {}
    for word in argv[5:]:
        option, _, value = word.partition("=")
        assert option in ("--from-file", "--from-literal"), word
        key, _, source = value.partition("=")
        keys[key] = source
    return argv[4], keys


def secrets_read(tmp_path: Path) -> set[tuple[str, str]]:
    """(Secret, key) of every file and variable the manifests take from a Secret:
    the files the controller's config and Envoy's bootstrap name, the env refs."""
    settings = controller_settings(tmp_path)
    assert settings.xds_tls is not None
    argv, _ = bootstrap_command()
    files = {
        ("xds-controller", "controller"): [
            settings.xds_tls.cert_file,
            settings.xds_tls.key_file,
            str(settings.xds_tls.client_ca_file),
        ],
        ("xds-envoy", "envoy"): [argv[argv.index(o) + 1] for o in ENVOY_SECRET_OPTIONS],
    }
    read = set()
    for (deployment, name), paths in files.items():
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        mounts = {
            m["mountPath"]: volumes[m["name"]] for m in container(deployment, name)["volumeMounts"]
        }
        for path in map(Path, paths):
            read.add((mounts[str(path.parent)]["secret"]["secretName"], path.name))
    for deployment in of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for each in spec["containers"] + spec.get("initContainers", []):
            for variable in each.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    read.add((ref["name"], ref["key"]))
    return read


def test_the_readme_creates_exactly_the_secrets_the_manifests_read(tmp_path: Path) -> None:
    created = set()
    for argv in readme_commands():
        if argv[0] == "kubectl":
            name, keys = secret_files(argv)
            created |= {(name, key) for key in keys}
    assert created == secrets_read(tmp_path)


def test_the_readme_certificates_pass_the_xds_mutual_tls_checks(
    readme_certificates: Path,
) -> None:
    """The controllers' files load as the controller loads them; a handshake in
    which the client (Envoy's files) checks the name xds-controller completes,
    and the controller's node check accepts envoy-k8s for the client's
    certificate. A name the certificate does not carry fails."""
    secrets = {}
    for argv in readme_commands():
        if argv[0] == "kubectl":
            name, keys = secret_files(argv)
            secrets[name] = {key: readme_certificates / file for key, file in keys.items()}
    controller, envoy = secrets["xds-controller-tls"], secrets["envoy-xds-client"]
    read_pem_set(TlsFiles(controller["tls.crt"], controller["tls.key"], controller["ca.crt"]))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(controller["tls.crt"], controller["tls.key"])
    server.load_verify_locations(controller["ca.crt"])
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=envoy["ca.crt"])
    client.load_cert_chain(envoy["tls.crt"], envoy["tls.key"])
    peer = handshake(server, client, "xds-controller")
    dns = frozenset(v for k, v in peer.get("subjectAltName", ()) if k == "DNS")
    assert Peer(ip=POD_IP, dns_names=dns).vouches_for(NODE_ID), dns
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(server, client, "xds-controller.elsewhere")


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> dict[str, Any]:
    """A TLS handshake between the two contexts in memory, no socket; the server's
    view of the client's verified certificate."""
    wires = [ssl.MemoryBIO(), ssl.MemoryBIO()]  # client->server, server->client
    far = server.wrap_bio(wires[0], wires[1], server_side=True)
    near = client.wrap_bio(wires[1], wires[0], server_hostname=name)
    done = {id(far): False, id(near): False}
    for _ in range(10):
        for end in (near, far):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
                done[id(end)] = True
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not complete"
    seen = far.getpeercert()
    assert seen is not None
    return seen


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
