"""The local stack: sample backends + controller + a real Envoy, as one unit.

`xds-server demo` runs it until Ctrl-C; the end-to-end tests and the benchmarks
run the very same stack on free ports (local_settings). Start order: backends,
controller, Envoy; stop order is the reverse, and every child process is
stopped by its PID. The stack is up once Envoy's listener is bound to the
router address (AddressUnavailable otherwise); from then on a supervisor
logs any part that ends on its own, and `Stack.until_stopped` returns when
Envoy or the controller did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from xds_server.app import Controller
from xds_server.errors import AddressUnavailable
from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Backend, Protocol, Service, SocketAddress
from xds_server.model.schema import EdgeTlsConfig
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyFailed, EnvoyProcess, start_envoy, wait_listening
from xds_server.proxy.processes import (
    ChildProcess,
    ProcessFailed,
    bind_error,
    free_port,
    start_process,
)
from xds_server.proxy.supervisor import Supervisor
from xds_server.resources import LISTENER_NAME
from xds_server.settings import ENV_PREFIX, Settings, load_settings

BACKEND_START_TIMEOUT_S = 15.0
DEMO_NODE_ID = "envoy-demo"
LOOPBACK = "127.0.0.1"
# A request the qdrant sample backends answer (the README's curl example).
SEARCH_BODY = {"query_vector": [0.1, 0.2, 0.3], "collection": "test"}


def local_settings(**router: object) -> Settings:
    """The shipped defaults with every address moved to a free loopback port,
    so a stack runs beside a running demo and beside other stacks.
    `router` overrides Settings fields (e.g. worker_threads=2)."""
    base = load_settings(None)
    services = tuple(
        dataclasses.replace(s, backends=tuple(_on_free_port(b) for b in s.backends))
        for s in base.intent.services
    )
    intent = dataclasses.replace(
        base.intent, services=services, listen=_free_address(), admin=_free_address()
    )
    return dataclasses.replace(
        base,
        intent=intent,
        xds_address=_free_address(),
        envoy_admin_address=_free_address(),
        **router,  # type: ignore[arg-type]
    )


# The demo's access log, in its work directory (`xds-server demo` prints where).
DEMO_ACCESS_LOG = "access.log"
ACCESS_LOG_VARIABLE = f"{ENV_PREFIX}ACCESS_LOG"


def with_demo_access_log(
    settings: Settings, workdir: Path, environ: MutableMapping[str, str]
) -> Settings:
    """The demo's Envoy writes its stdout to a file in the work directory that
    nobody reads, mixed with its stderr: so in place of stdout, the demo's
    access log is `<workdir>/access.log`. `ROUTER_ACCESS_LOG` is set to it in
    `environ` too, so a config reload (SIGHUP, a changed file) keeps logging
    there. `off`, a path of the operator's, or ROUTER_ACCESS_LOG=stdout stay."""
    if settings.intent.access_log.sink is not AccessLogSink.STDOUT:
        return settings
    if ACCESS_LOG_VARIABLE in environ:
        return settings
    log = AccessLog(AccessLogSink.FILE, str(workdir / DEMO_ACCESS_LOG))
    environ[ACCESS_LOG_VARIABLE] = log.path
    return dataclasses.replace(
        settings, intent=dataclasses.replace(settings.intent, access_log=log)
    )


def _free_address() -> SocketAddress:
    return SocketAddress(LOOPBACK, free_port())


def _on_free_port(backend: Backend) -> Backend:
    return dataclasses.replace(backend, address=LOOPBACK, port=free_port())


# `xds-server demo --tls`: a CA and a listener certificate made by `openssl`,
# which every system with curl has; the runtime needs no cryptography package.
_OPENSSL_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_SERVER_EXTENSIONS = (
    "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
    "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
)


def demo_certificates(directory: Path) -> tuple[EdgeTlsConfig, Path]:
    """router.tls for a certificate of 127.0.0.1, ::1 and localhost, valid for a
    week, signed by a CA made here; returns it and the CA file (`curl --cacert`)."""
    ca, ca_key = directory / "demo-ca.pem", directory / "demo-ca.key"
    cert, key = directory / "router.crt", directory / "router.key"
    csr, extensions = directory / "router.csr", directory / "router.ext"
    extensions.write_text(_SERVER_EXTENSIONS)
    _openssl("req", "-x509", *_OPENSSL_EC, "-keyout", ca_key, "-out", ca, "-days", "7",
             "-subj", "/CN=xds-server demo CA")  # fmt: skip
    _openssl("req", *_OPENSSL_EC, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "7", "-extfile", extensions)  # fmt: skip
    return EdgeTlsConfig(cert_file=str(cert), key_file=str(key)), ca


def _openssl(*args: str | Path) -> None:
    try:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    except FileNotFoundError as error:
        raise ProcessFailed("xds-server demo --tls needs the openssl command", "") from error
    except subprocess.CalledProcessError as error:
        raise ProcessFailed("openssl failed", error.stderr.decode(errors="replace")) from error


@dataclass
class Stack:
    controller: Controller
    envoy: EnvoyProcess
    backends: dict[str, ChildProcess]
    supervisor: Supervisor

    async def until_stopped(self, stop: asyncio.Event) -> str | None:
        """Wait for `stop` (None), or for Envoy or the controller to end on its own
        (what ended, and how; the supervisor has logged it)."""
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self.supervisor.failure())
        done, pending = await asyncio.wait({stopped, failed}, return_when=FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return failed.result() if failed in done else None

    def describe(self) -> str:
        settings = self.controller.settings
        intent = self.controller.store.intent
        scheme = "https" if settings.tls is not None else "http"
        lines = [
            f"router (Envoy listener)  {scheme}://{intent.listen}",
            f"Envoy admin              http://{self.envoy.admin}",
            f"controller xDS (gRPC)    {self.controller.xds_address}",
            f"controller admin API     http://{self.controller.admin_address}",
            f"Envoy worker threads     {settings.worker_threads} (pid {self.envoy.pid})",
            f"Envoy access log         {self.access_log_place()}",
        ]
        for service in intent.services:
            for backend in service.backends:
                pid = self.backends[backend.name].pid
                lines.append(
                    f"backend {backend.name:<17}{'http' if backend.tls is None else 'https'}"
                    f"://{backend.address}:{backend.port}"
                    f"  ({service.name}, pid {pid})"
                )
        return "\n".join(lines)

    def access_log_place(self) -> str:
        """Where the JSON lines of the listener's requests go."""
        log = self.controller.store.intent.access_log
        if log.sink is AccessLogSink.STDOUT:  # start_envoy keeps Envoy's stdout there
            return f"stdout ({self.envoy.workdir / 'envoy.out'})"
        return str(log)


GRPC_SAMPLE = "grpc"


def sample_kind(service: Service) -> str:
    """Which sample imitates a service: the gRPC sample for a gRPC service (an HTTP
    sample would fail its gRPC health check), else qdrant, embedding, or an LLM."""
    if service.protocol is Protocol.GRPC:
        return GRPC_SAMPLE
    return service.name if service.name in ("qdrant", "embedding") else "llm"


@dataclass(frozen=True)
class ServingTls:
    """A sample backend's own certificate (it serves HTTPS), and the CA of the
    client certificates it then requires (None: any client)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def argv(self) -> list[str]:
        args = ["--tls-cert", str(self.cert_file), "--tls-key", str(self.key_file)]
        if self.client_ca_file is not None:
            args += ["--tls-client-ca", str(self.client_ca_file)]
        return args


async def start_backend(
    backend: Backend, kind: str, log_dir: Path, tls: ServingTls | None = None
) -> ChildProcess:
    if kind == GRPC_SAMPLE:
        argv = [sys.executable, "-m", "xds_server.samples.grpc_sample", "serve"]
        argv += ["--name", backend.name]
    else:
        argv = [sys.executable, "-m", "xds_server.samples", "--name", backend.name]
        argv += ["--kind", kind]
    argv += ["--host", backend.address, "--port", str(backend.port)]
    argv += [] if tls is None else tls.argv()
    return await start_process(
        argv,
        ready_line_prefix="READY",
        timeout_s=BACKEND_START_TIMEOUT_S,
        log_path=log_dir / f"{backend.name}.log",
    )


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    *,
    config_path: Path | None = None,
    workdir: Path | None = None,
    envoy_concurrency: int | None = None,
    delta: bool = False,
    serving_tls: Mapping[str, ServingTls] | None = None,
    hds: bool | None = None,
) -> AsyncIterator[Stack]:
    """Start the whole stack; stops every part on exit, whatever happened.
    `serving_tls`: the sample backends (by name) that serve HTTPS, and with what.
    `hds`: Envoy's bootstrap carries hds_config (default: with router.health_checker envoy)."""
    if hds is None:
        hds = settings.health_checker is HealthChecker.ENVOY
    with contextlib.ExitStack() as dirs:
        work = workdir or Path(dirs.enter_context(tempfile.TemporaryDirectory(prefix="xds-demo-")))
        async with contextlib.AsyncExitStack() as stack:
            backends: dict[str, ChildProcess] = {}
            for service in settings.intent.services:
                for backend in service.backends:
                    tls = (serving_tls or {}).get(backend.name)
                    child = await start_backend(backend, sample_kind(service), work, tls)
                    stack.push_async_callback(child.stop)
                    backends[backend.name] = child
            controller = Controller(settings, config_path=config_path)
            stack.push_async_callback(controller.stop)
            await controller.start()
            stop, serving = _run_in_background(controller)
            stack.push_async_callback(_stop_task, stop, serving)
            bootstrap = make_bootstrap(
                node_id=DEMO_NODE_ID,
                xds=controller.xds_address,
                envoy_admin=settings.envoy_admin_address,
                delta=delta,
                edge=settings.intent.edge,
                hds=hds,
            )
            _check_free(settings.envoy_admin_address, "Envoy admin", "router.envoy_admin_address")
            envoy = await start_envoy(
                bootstrap,
                admin=settings.envoy_admin_address,
                workdir=work,
                concurrency=envoy_concurrency or settings.worker_threads,
            )
            stack.push_async_callback(envoy.stop)
            await _confirm_listening(envoy, settings.intent.listen)
            supervisor = _supervise(backends, envoy, serving)
            stack.push_async_callback(supervisor.close)  # first: what follows is stopping
            yield Stack(controller, envoy, backends, supervisor)


def _run_in_background(controller: Controller) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(controller.run(stop))


async def _stop_task(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait([task])  # how it ended, the supervisor reports


def _check_free(address: SocketAddress, server: str, setting: str) -> None:
    """Envoy with its admin port taken exits with a log line; say it in one."""
    error = bind_error(address)
    if error is not None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise AddressUnavailable(server, address, reason, setting)


async def _confirm_listening(envoy: EnvoyProcess, listen: SocketAddress) -> None:
    """Envoy LIVE is not Envoy listening: a taken port is only a NACK."""
    try:
        await wait_listening(envoy, LISTENER_NAME, listen)
    except EnvoyFailed as error:
        raise AddressUnavailable("Envoy", listen, str(error), "router.listen_address") from None


def _supervise(
    backends: dict[str, ChildProcess], envoy: EnvoyProcess, serving: asyncio.Task[None]
) -> Supervisor:
    supervisor = Supervisor()
    for name, child in backends.items():
        supervisor.child(f"backend {name}", child, vital=False)
    supervisor.child("Envoy", envoy.child, vital=True)
    supervisor.task("controller", serving)
    return supervisor
