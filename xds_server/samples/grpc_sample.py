"""A sample gRPC backend and a proxyless gRPC client, with no generated code.

The backend answers the unary method `/xds_server.sample.Who/Name` with its
own name: a generic handler with identity (de)serializers, so raw bytes and no
protoc step. It also serves the standard health service
(`grpc.health.v1.Health`, grpcio-health-checking) for the server as a whole ("")
and for `xds_server.sample.Who`; the unary method `/xds_server.sample.Control/SetServing`
(raw bytes `SERVING` or `NOT_SERVING`) flips both, as the HTTP samples' fault
controls do for /health. The client dials `xds:///<service>` through grpcio's built-in xDS
resolver, which reads its bootstrap from GRPC_XDS_BOOTSTRAP (a file) or
GRPC_XDS_BOOTSTRAP_CONFIG (the JSON itself); `bootstrap_config` writes one for
our controller.

    python -m xds_server.samples.grpc_sample serve --name greeter-a --port 0 [--not-serving]
        prints `READY <name> <host>:<port>`; SIGTERM or SIGINT stop it.
    python -m xds_server.samples.grpc_sample set-serving --target 127.0.0.1:PORT NOT_SERVING
        flips a running backend's health answer.
    python -m xds_server.samples.grpc_sample call --target xds:///greeter \\
            --expect greeter-a,greeter-b --calls 10
        calls until every expected backend has answered (all subchannels
        ready), then makes --calls calls and prints `ANSWERS <name> ...`, one
        name per call, in order; on failure `ERROR <reason>` and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from xds_server.errors import ListenFailed
from xds_server.model.intent import SocketAddress

METHOD = "/xds_server.sample.Who/Name"
SET_SERVING = "/xds_server.sample.Control/SetServing"
CALL_TIMEOUT_S = 5.0
SERVICE = "xds_server.sample.Who"
HEALTH_SERVICES = ("", SERVICE)  # the whole server, and the one service it has
SERVING_STATUSES = {
    "SERVING": health_pb2.HealthCheckResponse.SERVING,
    "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING,
}


# ---- the backend -----------------------------------------------------------------------


def _who_handler(name: str) -> grpc.GenericRpcHandler:
    answer = name.encode()

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(who)  # no (de)serializers: raw bytes
    return grpc.method_handlers_generic_handler("xds_server.sample.Who", {"Name": handler})


async def set_health(health: HealthServicer, status: str) -> None:
    """Every health service of the sample answers `status` from now on."""
    for service in HEALTH_SERVICES:
        await health.set(service, SERVING_STATUSES[status])


def _control_handler(health: HealthServicer) -> grpc.GenericRpcHandler:
    async def set_serving(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        status = request.decode(errors="replace")
        if status not in SERVING_STATUSES:
            known = ", ".join(SERVING_STATUSES)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected one of {known}")
        await set_health(health, status)
        return request

    handler = grpc.unary_unary_rpc_method_handler(set_serving)
    return grpc.method_handlers_generic_handler(
        "xds_server.sample.Control", {"SetServing": handler}
    )


async def start_backend(
    name: str, host: str = "127.0.0.1", port: int = 0, *, serving: bool = True
) -> tuple[Any, int]:
    """A started grpc.aio server answering with `name`, its health service
    answering SERVING (or NOT_SERVING); returns it and its port."""
    server = grpc.aio.server()
    health = HealthServicer()
    await set_health(health, "SERVING" if serving else "NOT_SERVING")
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_generic_rpc_handlers((_who_handler(name), _control_handler(health)))
    bound = server.add_insecure_port(str(SocketAddress(host, port)))
    if bound == 0:
        raise ListenFailed(f"cannot listen on {SocketAddress(host, port)}")
    await server.start()
    return server, bound


async def serve(name: str, host: str, port: int, *, serving: bool = True) -> None:
    """Serve until SIGTERM or SIGINT."""
    server, bound = await start_backend(name, host, port, serving=serving)
    try:
        print(f"READY {name} {SocketAddress(host, bound)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await server.stop(1.0)


# ---- the proxyless client --------------------------------------------------------------


def bootstrap_config(
    xds: SocketAddress,
    node_id: str,
    node_cluster: str = "proxyless",
    *,
    tls_files: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """A gRPC xDS bootstrap for our controller: ADS, xDS v3; plaintext, or mutual
    TLS with `tls_files` = (certificate, private key, CA certificate), gRPC's
    `tls` channel creds (gRFC A65: the file-watcher certificate provider's
    config, re-read every refresh_interval)."""
    creds: dict[str, Any] = {"type": "insecure"}
    if tls_files is not None:
        cert, key, ca = tls_files
        config = {"certificate_file": cert, "private_key_file": key, "ca_certificate_file": ca}
        creds = {"type": "tls", "config": config | {"refresh_interval": "60s"}}
    return {
        "xds_servers": [
            {
                "server_uri": str(xds),
                "channel_creds": [creds],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "cluster": node_cluster, "locality": {}},
    }


async def set_serving(address: str, status: str) -> None:
    """Tell the sample backend at `address` to answer health checks with `status`."""
    options = [("grpc.enable_http_proxy", 0)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        await channel.unary_unary(SET_SERVING)(status.encode(), timeout=CALL_TIMEOUT_S)


def who(channel: grpc.Channel) -> str:
    """One call: the name of the backend that answered it."""
    call = channel.unary_unary(METHOD)  # no (de)serializers: raw bytes
    answer: bytes = call(b"", timeout=CALL_TIMEOUT_S, wait_for_ready=True)
    return answer.decode()


def warm_up(channel: grpc.Channel, expect: set[str], deadline: float) -> None:
    """Call until every expected backend answered: round robin then cycles
    over all of them (it starts with whichever subchannel is ready first)."""
    seen: set[str] = set()
    while not expect <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(seen)} answered, expected {sorted(expect)}")
        seen.add(who(channel))


def call(target: str, expect: set[str], calls: int, timeout_s: float) -> list[str]:
    # The xDS server is on loopback: never through an HTTP proxy from the env.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        warm_up(channel, expect, time.monotonic() + timeout_s)
        return [who(channel) for _ in range(calls)]


# ---- the command line ------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xds_server.samples.grpc_sample")
    commands = parser.add_subparsers(dest="command", required=True)
    backend = commands.add_parser("serve", help="run a backend that answers with its name")
    backend.add_argument("--name", required=True)
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, default=0, help="0 picks a free port")
    backend.add_argument(
        "--not-serving", action="store_true", help="health checks answer NOT_SERVING"
    )
    control = commands.add_parser("set-serving", help="flip a backend's health answer")
    control.add_argument("--target", required=True, help="the backend, host:port")
    control.add_argument("status", choices=sorted(SERVING_STATUSES))
    client = commands.add_parser("call", help="call a service through xDS")
    client.add_argument("--target", required=True, help="e.g. xds:///greeter")
    client.add_argument("--expect", default="", help="backend names, comma separated")
    client.add_argument("--calls", type=int, default=10)
    client.add_argument("--timeout", type=float, default=20.0, help="for the warm-up, seconds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.command == "serve":
        asyncio.run(serve(args.name, args.host, args.port, serving=not args.not_serving))
        return 0
    if args.command == "set-serving":
        asyncio.run(set_serving(args.target, args.status))
        return 0
    expect = {name for name in args.expect.split(",") if name}
    try:
        answers = call(args.target, expect, args.calls, args.timeout)
    except (grpc.RpcError, TimeoutError) as error:
        print(f"ERROR {error}", flush=True)
        return 1
    print("ANSWERS " + " ".join(answers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
