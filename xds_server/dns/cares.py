"""The Resolver on c-ares (aiodns): lookups run on the event loop without a
thread per query, so thousands of names never block it.

`getaddrinfo` rather than raw A/AAAA queries: with the system's configuration
it honours /etc/hosts and the search domains of /etc/resolv.conf (a Kubernetes
or compose short name resolves as it would for any program there); with
`router.dns_servers` set, c-ares asks those servers (pycares takes `ip:port`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import aiodns
import aiodns.error

from xds_server.errors import LookupFailed

# Two tries within the timeout (a lost UDP datagram is asked again); beyond it the
# refresher asks again next interval, and the last addresses stay meanwhile.
TRIES = 2


class CaresResolver:
    def __init__(self, servers: Sequence[str] = (), timeout_s: float = 2.0) -> None:
        self._servers = list(servers)  # pycares reads ip, ip:port and [v6]:port
        self._timeout_s = timeout_s
        self._resolver: aiodns.DNSResolver | None = None  # made on the running loop

    async def resolve(self, name: str) -> tuple[str, ...]:
        try:
            result = await self._channel().getaddrinfo(
                name, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as error:
            raise LookupFailed(f"DNS lookup of {name} failed: {_reason(error)}") from error
        addresses = sorted({_text(node.addr[0]) for node in result.nodes}, key=_ip_order)
        if not addresses:
            raise LookupFailed(f"DNS lookup of {name} failed: no A or AAAA record")
        return tuple(addresses)

    def _channel(self) -> aiodns.DNSResolver:
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(
                nameservers=self._servers or None, timeout=self._timeout_s / TRIES, tries=TRIES
            )
        return self._resolver

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


def _text(address: bytes | str) -> str:
    return address.decode() if isinstance(address, bytes) else address


def _ip_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _reason(error: aiodns.error.DNSError) -> str:
    args = error.args
    return str(args[1]) if len(args) > 1 else str(error)
