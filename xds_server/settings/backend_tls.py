"""The files a backend's `tls` names, read and checked when the settings load.

Every problem has its field path (`services[0].backends[1].tls.ca_file`) and
is reported in the same pass as the others. The CA's PEM text is kept (it goes
into the intent, and from there inline into CDS); client certificate and key
are only checked to load as a pair: Envoy reads them itself, by file name.

Rules:
- a CA file must be readable PEM that holds at least one certificate (an
  empty one is refused: it would trust nobody);
- client_cert_file and client_key_file go together: each must be readable PEM
  of its kind (every bad one is reported), and then load as a pair;
- a verified backend needs a name to verify: `sni`, or a host name as address
  (an IP address alone has none; `insecure_skip_verify` verifies nothing);
- a gRPC service's backends have no `tls`: its cluster is also served to
  proxyless gRPC clients, which would ignore it and connect in plaintext.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from xds_server.model.intent import Backend, Intent, Protocol
from xds_server.model.rules import GRPC_TLS
from xds_server.model.tls_schema import BackendTlsConfig, tls_shorthand
from xds_server.model.upstream_tls import server_name
from xds_server.model.validation import MISSING, Loc, Located
from xds_server.pemfiles import ca_problem, certificate_problem, private_key_problem

log = logging.getLogger("xds_server.settings")

ReadFile = Callable[[str], bytes]


def read_file(path: str) -> bytes:
    return Path(path).read_bytes()


@dataclass
class TlsFiles:
    """What the pass found: problems, and the PEM text of each CA file read."""

    problems: list[Located] = field(default_factory=list)
    ca_pems: dict[str, str] = field(default_factory=dict)


def backend_tls_files(document: object, read: ReadFile = read_file) -> TlsFiles:
    """Check the `tls` of every backend of `document` whose `tls` is valid on its own."""
    found = TlsFiles()
    for at, tls, address, grpc in _tls_backends(document):
        if grpc:
            found.problems.append(Located(at, GRPC_TLS))
            continue
        found.problems += _name_problems(at, tls, address)
        found.problems += _client_pair_problems(at, tls, read)
        if tls.ca_file is not None and tls.ca_file not in found.ca_pems:
            pem, problem = _read_ca(tls.ca_file, read)
            if problem is not None:
                found.problems.append(Located((*at, "ca_file"), problem))
            else:
                found.ca_pems[tls.ca_file] = pem
    return found


def _tls_backends(document: object) -> Iterator[tuple[Loc, BackendTlsConfig, object, bool]]:
    """(path of `tls`, the valid tls, the raw address, on a grpc service?)"""
    services = document.get("services") if isinstance(document, dict) else None
    for i, service in enumerate(services if isinstance(services, list) else []):
        if not isinstance(service, dict) or not isinstance(service.get("backends"), list):
            continue
        grpc = service.get("protocol") == Protocol.GRPC.value
        for j, backend in enumerate(service["backends"]):
            tls = _valid_tls(backend.get("tls")) if isinstance(backend, dict) else None
            if tls is not None:
                yield ("services", i, "backends", j, "tls"), tls, backend.get("address"), grpc


def _valid_tls(raw: object) -> BackendTlsConfig | None:
    try:
        shorthand = tls_shorthand(raw)
        return None if shorthand is None else BackendTlsConfig.model_validate(shorthand)
    except (ValidationError, ValueError):
        return None  # its own problem, from the schema


def _name_problems(at: Loc, tls: BackendTlsConfig, address: object) -> list[Located]:
    if tls.insecure_skip_verify or not isinstance(address, str):
        return []
    if server_name(tls.to_upstream_tls(), address) is not None:
        return []
    message = (
        f"required: the address {address} is an IP address, so the certificate has no "
        "host name to be checked against; set the name it carries (or insecure_skip_verify)"
    )
    return [Located((*at, "sni"), message, MISSING)]


def _client_pair_problems(at: Loc, tls: BackendTlsConfig, read: ReadFile) -> list[Located]:
    """Each file on its own (readable, PEM of its kind), every problem listed;
    then, when both load, the two as a pair."""
    cert, key = tls.client_cert_file, tls.client_key_file
    if cert is None and key is None:
        return []
    if cert is None:
        return [Located((*at, "client_cert_file"), "required with client_key_file", MISSING)]
    if key is None:
        return [Located((*at, "client_key_file"), "required with client_cert_file", MISSING)]
    checks = (
        ("client_cert_file", cert, certificate_problem),
        ("client_key_file", key, private_key_problem),
    )
    found = [
        Located((*at, name), problem)
        for name, path, check in checks
        if (problem := _file_problem(path, read, check)) is not None
    ]
    if found:
        return found
    problem = _pair_problem(cert, key)
    return [] if problem is None else [Located((*at, "client_cert_file"), problem)]


def _file_problem(path: str, read: ReadFile, check: Callable[[bytes], str | None]) -> str | None:
    try:
        text = read(path)
    except OSError as error:
        return f"cannot read {path!r}: {error.strerror or error}"
    problem = check(text)
    return None if problem is None else f"{path!r}: {problem}"


def _pair_problem(cert: str, key: str) -> str | None:
    """ssl reads the files itself (the only way to check that they form a pair)."""
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        return f"{cert!r} and {key!r} do not load as a PEM certificate and its key: {error}"
    return None


def _read_ca(path: str, read: ReadFile) -> tuple[str, str | None]:
    """The file's PEM text, or why it cannot be trusted as a CA bundle (an empty
    file among them: it would trust nobody, and Envoy refuses it)."""
    try:
        raw = read(path)
    except OSError as error:
        return "", f"cannot read {path!r}: {error.strerror or error}"
    problem = ca_problem(raw)
    if problem is not None:
        return "", f"{path!r} holds {problem}"
    return raw.decode("ascii"), None


def with_ca_pems(intent: Intent, ca_pems: Mapping[str, str]) -> Intent:
    """The intent with each backend's CA text filled in from what was read."""
    services = tuple(
        replace(s, backends=tuple(_filled(b, ca_pems) for b in s.backends)) for s in intent.services
    )
    return replace(intent, services=services)


def _filled(backend: Backend, ca_pems: Mapping[str, str]) -> Backend:
    tls = backend.tls
    if tls is None or tls.ca_file is None:
        return backend
    return replace(backend, tls=replace(tls, ca_pem=ca_pems.get(tls.ca_file)))


def warn_insecure(intent: Intent, source: str) -> None:
    """Loudly, once per backend and load: this backend's certificate is not checked."""
    for backend in intent.backends():
        if backend.tls is not None and backend.tls.insecure_skip_verify:
            log.warning(
                "backend %s: tls.insecure_skip_verify is true (%s): its certificate is NOT "
                "verified; anyone on the path can impersonate it",
                backend.name,
                source,
                extra={"backend": backend.name, "insecure_skip_verify": True},
            )
