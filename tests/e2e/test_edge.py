"""The router listener as a front door, against a real Envoy 1.40 (router.edge,
router.admin_via_listener, the listener token rule; model/edge.py has the why).

Requests are written by hand on raw sockets where an HTTP client would fix them
up first: a dot segment, an encoded dot, a double slash, a header that never
ends."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests.e2e.conftest import StackFactory
from tests.factories import NO_DOT_ENV, config_file, local_settings
from tests.support import eventually
from xds_server.demo import SEARCH_BODY, Stack
from xds_server.model.edge import Edge
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import start_envoy
from xds_server.proxy.processes import free_port
from xds_server.resources import CLIENT_ADDRESS_HEADER
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

STRATEGY = "/api/v1/router/strategy"
JSON = {"Content-Type": "application/json"}
UNLIMITED_WARNING = "no configured limit to the number of allowed active downstream connections"
READ_S = 10.0  # every read below is bounded: a hang fails the test instead


def edge_settings(admin_via_listener: bool = True, **edge: Any) -> Settings:
    """Local settings (two workers) with some edge settings changed."""
    settings = local_settings(worker_threads=2)
    intent = dataclasses.replace(
        settings.intent,
        admin_via_listener=admin_via_listener,
        edge=dataclasses.replace(Edge(), **edge),
    )
    return dataclasses.replace(settings, intent=intent)


# ---- HTTP/1.1 by hand ----------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One client connection to Envoy's listener, requests written byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: SocketAddress) -> Connection:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer)

    async def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Answer:
        lines = [f"{method} {target} HTTP/1.1", "Host: router"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        return await asyncio.wait_for(self._answer(), READ_S)

    async def _answer(self) -> Answer:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        return Answer(int(status_line.split()[1]), headers, await self.reader.readexactly(length))

    async def closed_by_peer(self) -> bool:
        """True once the other side closed (EOF or reset) without answering."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), READ_S)
        except ConnectionResetError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.close()


async def send(stack: Stack, method: str, target: str, **options: Any) -> Answer:
    connection = await Connection.open(stack.controller.store.intent.listen)
    try:
        return await connection.request(method, target, **options)
    finally:
        connection.close()


async def send_to(address: SocketAddress, method: str, target: str, body: bytes = b"") -> Answer:
    """A request straight to `address` (a backend, the admin API), not through Envoy."""
    connection = await Connection.open(address)
    try:
        headers = JSON if body else None
        return await connection.request(method, target, headers=headers, body=body)
    finally:
        connection.close()


async def envoy_counter(stack: Stack, name: str) -> int:
    """The sum of Envoy's counters whose name ends in `name`."""
    document = await stack.envoy.admin_json(f"/stats?format=json&filter={name}$")
    return sum(int(s.get("value", 0)) for s in document["stats"] if "value" in s)


def strategy_body(strategy: str) -> bytes:
    return json.dumps({"strategy": strategy}).encode()


# ---- the tests -----------------------------------------------------------------------


async def test_a_slow_request_head_is_cut_within_request_headers_timeout(
    make_stack: StackFactory,
) -> None:
    """A client that never finishes its headers (slowloris) is cut after
    request_headers_timeout, set to 1 s here; a prompt client on the same listener
    is served."""
    stack = await make_stack(edge_settings(request_headers_timeout_s=1.0))
    slow = await Connection.open(stack.controller.store.intent.listen)
    try:
        slow.writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: router\r\nX-Slow: 1")
        await slow.writer.drain()
        started = asyncio.get_running_loop().time()
        data = await asyncio.wait_for(slow.reader.read(), READ_S)  # until Envoy closes
        waited = asyncio.get_running_loop().time() - started
    finally:
        slow.close()
    assert 0.5 <= waited < 5.0, waited
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]
    assert await envoy_counter(stack, "downstream_rq_header_timeout") >= 1
    assert (await send(stack, "GET", "/api/v1/health")).status == 200


async def test_dot_segments_encoded_dots_and_double_slashes_route_as_the_normalized_path(
    make_stack: StackFactory,
) -> None:
    """A path is routed as its normalized form, so a prefix a path seems to start
    with cannot choose the route: `/api/v1/vectors/%2e%2e/router/strategy` is the
    admin API's /api/v1/router/strategy (not the qdrant backend), `//api//v1/...`
    merges into /api/v1/..., and an encoded slash is refused (400)."""
    stack = await make_stack(edge_settings())
    direct = await send(stack, "GET", STRATEGY)
    assert direct.status == 200 and "x-backend" not in direct.headers
    for disguised in (
        "/api/v1/vectors/%2e%2e/router/strategy",
        "/api/v1/vectors/%2E%2E/router/strategy",
        "/api/v1/vectors/../router/strategy",
        "/api/v1/vectors/./../router/./strategy",
        "//api//v1//router//strategy",
    ):
        answer = await send(stack, "GET", disguised)
        assert (answer.status, answer.json()) == (200, direct.json()), disguised
        assert "x-backend" not in answer.headers, disguised
    # The other way round: a path that seems to be the admin API's, normalized into
    # the qdrant service's prefix, is the qdrant service's.
    body = json.dumps(SEARCH_BODY).encode()
    for disguised in ("/api/v1/router/../vectors/search", "//api/v1//vectors/search"):
        answer = await send(stack, "POST", disguised, headers=JSON, body=body)
        assert answer.status == 200, disguised
        assert answer.headers["x-backend"].startswith("qdrant"), disguised
    escaped = await send(stack, "GET", "/api/v1/vectors%2F..%2Frouter/strategy")
    assert escaped.status == 400


async def test_headers_with_underscores_and_oversized_heads_are_refused(
    make_stack: StackFactory,
) -> None:
    """`x_session_id` gets 400 (a backend that reads it as x-session-id would see a
    header the front door never checked); a request head above max_request_headers_kb
    gets 431; the same requests without them pass."""
    stack = await make_stack(edge_settings(max_request_headers_kb=8))
    body = json.dumps(SEARCH_BODY).encode()
    search = "/api/v1/vectors/search"
    underscore = await send(stack, "POST", search, headers={**JSON, "x_session_id": "a"}, body=body)
    assert underscore.status == 400
    dashed = await send(stack, "POST", search, headers={**JSON, "x-session-id": "a"}, body=body)
    assert dashed.status == 200
    huge = await send(stack, "GET", "/api/v1/health", headers={"x-padding": "p" * 9 * 1024})
    assert huge.status == 431
    assert (await send(stack, "GET", "/api/v1/health", headers={"x-padding": "p"})).status == 200


async def test_bodies_larger_than_the_buffer_limit_pass_and_are_retried(
    make_stack: StackFactory,
) -> None:
    """The 32 KiB per-connection buffer is a buffer, not a body limit: a 600 KiB
    vector search reaches a backend and its answer comes back (flow control). And
    a failed request with a 200 KiB body is still retried on the other backend
    (router.edge.request_body_buffer_limit_bytes): with a 503-answering backend
    no request fails, and Envoy abandoned no retry."""
    stack = await make_stack(edge_settings())
    search = "/api/v1/vectors/search"
    vector = [0.123456789] * 50_000  # ~600 KiB of JSON
    body = json.dumps({"query_vector": vector, "collection": "big"}).encode()
    assert len(body) > 16 * Edge().per_connection_buffer_limit_bytes
    answer = await send(stack, "POST", search, headers=JSON, body=body)
    assert answer.status == 200, answer.body[:200]
    assert answer.headers["x-backend"].startswith("qdrant")
    qdrant = stack.controller.store.intent.service("qdrant")
    assert qdrant is not None
    failing = qdrant.backends[0]
    fault = json.dumps({"status": 503}).encode()
    faulted = await send_to(
        SocketAddress(failing.address, failing.port), "POST", "/_control/fault", fault
    )
    assert faulted.status == 200
    body = json.dumps({"query_vector": vector[:16_000], "collection": "big"}).encode()
    assert len(body) > 6 * Edge().per_connection_buffer_limit_bytes
    answers = [await send(stack, "POST", search, headers=JSON, body=body) for _ in range(6)]
    assert [(a.status, a.headers["x-backend"]) for a in answers] == [
        (200, qdrant.backends[1].name)
    ] * 6
    assert await envoy_counter(stack, "upstream_rq_retry") >= 3  # round robin: every other
    assert await envoy_counter(stack, "retry_or_shadow_abandoned") == 0


async def test_past_the_connection_limit_new_connections_are_refused(
    make_stack: StackFactory,
) -> None:
    """With router.edge.max_connections 3, a fourth connection is closed unanswered
    while the three established ones keep working, and Envoy's admin still answers
    (it is exempt); once one closes, a new one is served again."""
    stack = await make_stack(edge_settings(max_connections=3))
    listen = stack.controller.store.intent.listen
    held = [await Connection.open(listen) for _ in range(3)]
    try:
        for connection in held:
            assert (await connection.request("GET", "/api/v1/health")).status == 200
        refused = await Connection.open(listen)  # the kernel accepts; Envoy closes it
        try:
            refused.writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: router\r\n\r\n")
            with_error = False
            try:
                await refused.writer.drain()
            except ConnectionResetError:
                with_error = True
            assert with_error or await refused.closed_by_peer()
        finally:
            refused.close()
        for connection in held:  # the established ones are untouched
            assert (await connection.request("GET", "/api/v1/health")).status == 200
        assert await envoy_counter(stack, "downstream_global_cx_overflow") >= 1
    finally:
        held.pop().close()
        for connection in held:
            connection.close()

    async def served() -> bool:
        try:
            return (await send(stack, "GET", "/api/v1/health")).status == 200
        except (ConnectionError, asyncio.IncompleteReadError):
            return False

    await eventually(served, timeout_s=10)


async def test_envoy_no_longer_warns_of_unlimited_connections(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """Envoy's start-up warning that nothing limits downstream connections is gone:
    the overload manager is in the bootstrap. The control: the same Envoy on a
    bootstrap without it logs the warning."""
    stack = await make_stack(edge_settings())
    assert (await send(stack, "GET", "/api/v1/health")).status == 200
    assert UNLIMITED_WARNING not in stack.envoy.log_text()
    admin = SocketAddress("127.0.0.1", free_port())
    bare = make_bootstrap(node_id="control", xds=stack.controller.xds_address, envoy_admin=admin)
    del bare["overload_manager"], bare["dynamic_resources"]  # no ADS: LIVE at once
    control = await start_envoy(bare, admin=admin, workdir=tmp_path / "control")
    try:
        assert UNLIMITED_WARNING in control.log_text()
    finally:
        await control.stop()


async def test_the_heap_monitor_reads_envoys_heap(make_stack: StackFactory) -> None:
    """The fixed heap monitor is live: with router.edge.max_heap_bytes at its
    minimum, 64 MiB, Envoy reports a heap pressure above zero and neither heap
    action active, and serves. (Driving the heap to 95 % is not attempted.)"""
    stack = await make_stack(edge_settings(max_heap_bytes=64 * 1024 * 1024))

    async def overload(name: str) -> int:
        document = await stack.envoy.admin_json(f"/stats?format=json&filter=^overload.{name}$")
        return sum(int(s["value"]) for s in document["stats"] if "value" in s)

    async def measured() -> bool:
        return await overload("envoy.resource_monitors.fixed_heap.pressure") > 0

    await eventually(measured, timeout_s=10)
    for action in ("shrink_heap", "stop_accepting_requests"):
        assert await overload(f"envoy.overload_actions.{action}.active") == 0
    assert (await send(stack, "GET", "/api/v1/health")).status == 200


async def test_http2_clients_get_the_edge_stream_and_window_limits(
    make_stack: StackFactory,
) -> None:
    """An HTTP/2 client (prior knowledge, plain text) is told at most 100
    concurrent streams, a 64 KiB stream window and a 1 MiB connection window."""
    stack = await make_stack(edge_settings())
    listen = stack.controller.store.intent.listen
    reader, writer = await asyncio.open_connection(listen.host, listen.port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", "/api/v1/health"),
            (":scheme", "http"),
            (":authority", "router"),
        ],
        end_stream=True,
    )
    writer.write(client.data_to_send())
    settings: dict[int, int] = {}
    connection_window = 0
    status = None
    try:
        while status is None:
            data = await asyncio.wait_for(reader.read(65536), READ_S)
            assert data, "Envoy closed the HTTP/2 connection"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings.update({k: v.new_value for k, v in event.changed_settings.items()})
                elif isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
                    connection_window += event.delta
                elif isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
            writer.write(client.data_to_send())
    finally:
        writer.close()
    assert status == b"200"
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
    assert settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 64 * 1024
    assert 65_535 + connection_window == 1024 * 1024  # the protocol's start + Envoy's update


async def test_a_forged_x_forwarded_for_does_not_change_the_client(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Envoy tells the controller the address it saw: whatever a client wrote in
    X-Forwarded-For (or the headers that name a client, ours included), the
    controller logs (and decides on) the real one, 127.0.0.1. A token-less API
    accepts the change because the real client is local."""
    caplog.set_level(logging.INFO, logger="xds_server.admin")
    stack = await make_stack(edge_settings())
    forged = {
        **JSON,
        "X-Forwarded-For": "203.0.113.7",
        "X-Envoy-External-Address": "203.0.113.7",
        "X-Real-IP": "203.0.113.7",
        CLIENT_ADDRESS_HEADER: "203.0.113.7",
    }
    answer = await send(stack, "PUT", STRATEGY, headers=forged, body=strategy_body("random"))
    assert answer.status == 200, answer.body
    lines = [r.getMessage() for r in caplog.records if r.name == "xds_server.admin"]
    assert f"admin PUT {STRATEGY} from 127.0.0.1 -> 200" in lines, lines
    assert not any("203.0.113.7" in line for line in lines), lines


async def test_a_proxy_trusted_in_front_passes_the_client_on(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With one trusted hop in front of Envoy (xff_num_trusted_hops 1, the test
    plays that proxy) the client is the address the proxy appended: a remote one
    may not change the routing without an admin token (403); a request that came
    through no proxy is Envoy's peer's, 127.0.0.1, and may."""
    caplog.set_level(logging.INFO, logger="xds_server.admin")
    stack = await make_stack(edge_settings(xff_num_trusted_hops=1))
    remote = {**JSON, "X-Forwarded-For": "127.0.0.9, 203.0.113.7"}
    refused = await send(stack, "PUT", STRATEGY, headers=remote, body=strategy_body("random"))
    assert refused.status == 403, refused.body
    assert refused.json()["error"] == "forbidden"
    assert stack.controller.store.intent.default_strategy.value != "random"
    local = await send(stack, "PUT", STRATEGY, headers=JSON, body=strategy_body("random"))
    assert local.status == 200, local.body
    lines = [r.getMessage() for r in caplog.records if r.name == "xds_server.admin"]
    assert any(f"PUT {STRATEGY} from 203.0.113.7 refused" in line for line in lines), lines
    assert f"admin PUT {STRATEGY} from 127.0.0.1 -> 200" in lines, lines


async def test_admin_via_listener_false_routes_no_admin_path(make_stack: StackFactory) -> None:
    """router.admin_via_listener: false: /api/v1/router/... answers 404 on the
    listener, however the path is spelled; the overall health summary (what a load
    balancer in front probes) still answers; the admin API itself is untouched."""
    stack = await make_stack(edge_settings(admin_via_listener=False))
    for path in (
        STRATEGY,
        "/api/v1/router/proxies",
        "/api/v1/vectors/%2e%2e/router/strategy",
        "//api/v1/router/strategy",
        "/api/v1/health/../router/strategy",
    ):
        answer = await send(stack, "GET", path)
        assert answer.status == 404, path
        assert "x-backend" not in answer.headers, path
    put = await send(stack, "PUT", STRATEGY, headers=JSON, body=strategy_body("random"))
    assert put.status == 404
    assert (await send(stack, "GET", "/api/v1/health")).status == 200
    direct = stack.controller.admin_address
    answer = await send_to(direct, "GET", STRATEGY)
    assert answer.status == 200


# ---- the start refusal ----------------------------------------------------------------


def xds_server(command: str, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "xds_server.cli", *NO_DOT_ENV, command, "--config", str(config)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_public_listener_routing_the_admin_api_needs_a_token(
    command: str, tmp_path: Path
) -> None:
    """`validate` and `run` refuse listen_address 0.0.0.0 while the listener routes
    the admin API and there is no token, in one line naming both settings; nothing
    is bound. A token, or admin_via_listener false, is accepted by `validate`."""
    config = config_file(local_settings(), tmp_path / "router_config.yaml")
    refused = xds_server(command, config, ROUTER_LISTEN_ADDRESS="0.0.0.0:8000")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    problem = (
        "router.admin_token: required when listen_address is not loopback (0.0.0.0:8000, "
        "from env:ROUTER_LISTEN_ADDRESS) and the admin API is routed through the listener "
        "(router.admin_via_listener: true; false keeps it off the listener)"
    )
    assert problem in refused.stderr.splitlines(), refused.stderr
    assert "xDS on" not in refused.stdout
    if command == "validate":
        for fix in ({"ROUTER_ADMIN_TOKEN": "s3cret"}, {"ROUTER_ADMIN_VIA_LISTENER": "false"}):
            accepted = xds_server(command, config, ROUTER_LISTEN_ADDRESS="0.0.0.0:8000", **fix)
            assert accepted.returncode == 0, accepted.stderr
