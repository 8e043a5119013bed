"""gRPC probes of a backend with the standard health protocol
(`grpc.health.v1.Health/Check`, https://github.com/grpc/grpc/blob/master/doc/health-checking.md):
SERVING within the timeout passes. Any other answer (NOT_SERVING, UNKNOWN,
SERVICE_UNKNOWN, a NOT_FOUND or UNIMPLEMENTED status) and a refused connection
are definitive failures; a timeout or any other transport error is ambiguous,
as for HTTP probes (health/probe.py)."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xds_server.health.probe import failed_probe
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend, SocketAddress
from xds_server.model.values import is_ip

_SERVING = health_pb2.HealthCheckResponse.SERVING
# The server answered: it knows its state (or that it has no health service), and
# asking again within the threshold would not change it.
_ANSWERED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


class GrpcProber:
    """Check `service` ("" = the server as a whole) over a fresh channel each time.

    A fresh channel for the same reasons HttpProber uses a fresh connection: a
    killed backend is a refusal, not a broken pooled connection, and the
    elapsed time includes connecting, as a client's would.
    """

    def __init__(self, service: str, timeout_s: float) -> None:
        self._request = health_pb2.HealthCheckRequest(service=service)
        self._timeout_s = timeout_s

    async def __call__(self, backend: Backend) -> ProbeResult:
        return await self.at(backend, backend.address)

    async def at(self, backend: Backend, ip: str) -> ProbeResult:
        """Check `backend` at one of its addresses; a backend named by DNS is asked
        for by its name (the :authority), as health/probe.py sends its Host."""
        started = time.perf_counter()
        target = str(SocketAddress(ip, backend.port))
        # Loopback or cluster addresses: never through an HTTP proxy from the env.
        options: list[tuple[str, str | int]] = [("grpc.enable_http_proxy", 0)]
        if not is_ip(backend.address):
            options.append(("grpc.default_authority", f"{backend.address}:{backend.port}"))
        try:
            async with grpc.aio.insecure_channel(target, options=options) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answer = await stub.Check(self._request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            return _failed_call(started, error)
        if answer.status == _SERVING:
            return ProbeResult(True, False, time.perf_counter() - started, time.time())
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return failed_probe(started, f"gRPC health {status}", definitive=True)


def _failed_call(started: float, error: grpc.aio.AioRpcError) -> ProbeResult:
    code = error.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return failed_probe(started, "timeout", definitive=False)
    details = error.details() or ""
    reason = f"gRPC {code.name}: {details}" if details else f"gRPC {code.name}"
    if code is grpc.StatusCode.NOT_FOUND:  # how Check says SERVICE_UNKNOWN
        return failed_probe(started, f"gRPC health SERVICE_UNKNOWN ({reason})", definitive=True)
    if code in _ANSWERED:
        return failed_probe(started, reason, definitive=True)
    # UNAVAILABLE covers a refused connect (nothing listens: definitive, as for
    # HTTP) and transient transport trouble (ambiguous); only the text tells.
    refused = code is grpc.StatusCode.UNAVAILABLE and "refused" in details.lower()
    return failed_probe(started, reason, definitive=refused)
