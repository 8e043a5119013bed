"""admin/client.py: which address the admin API takes for the client.

The peer addresses are set on aiohttp's own test request (a loopback socket
cannot come from anywhere else); tests/e2e/test_edge.py checks the same rule
through a real Envoy."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from xds_server.admin.client import client_address, is_loopback
from xds_server.app import Controller
from xds_server.resources import CLIENT_ADDRESS_HEADER


class PeerTransport:
    """The one thing aiohttp asks a transport for here: the peer's address."""

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


def request_from(peer: str, **headers: str) -> web.Request:
    return make_mocked_request(
        "PUT", "/x", headers=CIMultiDict(headers), transport=PeerTransport(peer)
    )


@pytest.mark.parametrize(
    ("peer", "told", "client"),
    [
        ("127.0.0.1", None, "127.0.0.1"),  # on this host, straight to the API
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),  # Envoy on this host says who
        ("::1", "2001:db8::5", "2001:db8::5"),
        ("127.0.0.1", "not an address", "127.0.0.1"),
        ("192.0.2.9", "127.0.0.1", "192.0.2.9"),  # a remote peer's headers prove nothing
        ("192.0.2.9", None, "192.0.2.9"),
    ],
)
def test_the_client_is_envoys_word_only_from_a_loopback_peer(
    peer: str, told: str | None, client: str
) -> None:
    headers = {} if told is None else {CLIENT_ADDRESS_HEADER: told}
    assert client_address(request_from(peer, **headers)) == client


def test_loopback_includes_ipv6_and_mapped_ipv4_and_nothing_else() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["192.0.2.2", "0.0.0.0", "::", "localhost", ""]))


async def test_a_change_is_logged_on_one_line_whatever_its_path(
    controller: Controller, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The path is the client's text: an encoded line break in it cannot start a
    second, forged log record."""
    forged = "/api/v1/router/x%0aINFO xds_server.admin admin PUT /y from 203.0.113.1 -> 200"
    with caplog.at_level(logging.INFO, logger="xds_server.admin"):
        async with http.put(f"http://{controller.admin_address}{forged}", json={}) as response:
            assert response.status == 404
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("admin PUT")]
    assert len(lines) == 1 and "\n" not in lines[0] and "\\n" in lines[0]
