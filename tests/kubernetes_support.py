"""Reading deploy/kubernetes/ as the kubelet would, for tests/deploy/test_kubernetes*.py:
the resources, each container's environment (the downward API and Secrets
stood in for), the settings and the bootstrap a container would get."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import all_versions

from xds_server import cli
from xds_server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy/kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
SCHEMA_VERSIONS = (VERSIONS[0], VERSIONS[-1])
# The downward API's and the Secrets' values, as a pod would see them.
POD_IP = "10.244.1.7"
SECRET_VALUE = "from-a-secret"
NODE_ID = "envoy-k8s"
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


def run_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, Path] | None = None
) -> str:
    """The bootstrap `xds-server bootstrap` prints when run as the init container
    runs it: its arguments, its env, the ConfigMap; with `tls_files`
    ({"tls.crt": path, ...}) in place of the Secret's mount."""
    argv, _ = bootstrap_command()
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
