"""The README's "Deploying on Kubernetes" commands, run: its openssl lines make
certificates that pass the xDS port's mutual TLS checks, its `kubectl create
secret` lines make exactly the Secrets and keys the manifests read, and Envoy
1.40 accepts the init container's bootstrap with those certificates.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes_support import (
    NODE_ID,
    POD_IP,
    ROOT,
    bootstrap_command,
    container,
    controller_settings,
    of_kind,
    pod_spec,
    run_bootstrap,
)
from xds_server.pemfiles import TlsFiles, read_pem_set
from xds_server.proxy.envoy_process import find_envoy_binary
from xds_server.xds.identity import Peer

# Envoy's xDS client files in its Secret, and the bootstrap options naming them.
ENVOY_SECRET_FILES = {"tls.crt": "envoy.crt", "tls.key": "envoy.key", "ca.crt": "ca.crt"}
ENVOY_SECRET_OPTIONS = ("--client-cert", "--client-key", "--ca")


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
