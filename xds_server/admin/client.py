"""Who calls the admin API: the client address it logs and decides on.

A call through the router listener reaches the controller from Envoy, so the
TCP peer is Envoy (on this host: loopback) whoever the client is. Envoy knows
better: it uses the address it saw (use_remote_address, translate/listeners.py;
with `router.edge.xff_num_trusted_hops` proxies in front, the address the
nearest untrusted one appended to X-Forwarded-For) and writes it into
CLIENT_ADDRESS_HEADER on every admin route, replacing whatever the client sent
under that name (translate/routes.py). So, when the peer is loopback (Envoy, or
someone on this host), the client is that header; a peer elsewhere is taken as
it is: its headers prove nothing. `client_address` is the one place that
decides this; every decision on the client's address uses it:

- every call that may change something (any method but GET and HEAD,
  admin/api.py) is logged with its client and status;
- without an admin token, such calls are accepted from loopback clients only
  (403 otherwise). The configuration rules already demand a token wherever a
  remote client could reach the API (settings/rules.py); this also covers a
  proxy in front of a loopback listener, whose clients arrive as trusted hops.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from aiohttp import web

from xds_server.admin.context import context_of
from xds_server.admin.errors import error_response
from xds_server.resources import CLIENT_ADDRESS_HEADER
from xds_server.xds.limits import loggable

log = logging.getLogger("xds_server.admin")

_READS = frozenset({"GET", "HEAD"})  # admin/api.py: every other method is mutating


def client_address(request: web.Request) -> str:
    """The client's IP address as Envoy determined it, or the TCP peer's."""
    peer = request.remote or ""
    if not is_loopback(peer):
        return peer
    told = request.headers.get(CLIENT_ADDRESS_HEADER, "").strip()
    # Absent: a call from this host straight to the admin API.
    return told if _is_ip(told) else peer


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@web.middleware
async def client_rules(request: web.Request, handler: Any) -> web.StreamResponse:
    """Log each mutating call with its client; refuse a remote one without a token."""
    if request.method in _READS:
        response: web.StreamResponse = await handler(request)
        return response
    client = client_address(request)
    if context_of(request).admin_token is None and not is_loopback(client):
        log.warning(
            "admin %s %s from %s refused: no admin token",
            request.method,
            loggable(request.path),  # the client's text: one escaped line
            client,
        )
        return error_response(
            403,
            "forbidden",
            f"changes from {client} need an admin token (router.admin_token); without one "
            "only clients on the controller's host may make them",
        )
    answered: web.StreamResponse = await handler(request)  # errors are JSON answers by now
    path = loggable(request.path)
    log.info("admin %s %s from %s -> %s", request.method, path, client, answered.status)
    return answered
