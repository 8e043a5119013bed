"""Port allocation for tests and benchmarks."""

from __future__ import annotations

import socket

from xds_server.proxy.processes import _ephemeral_range, free_port


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    """The kernel never hands these to outgoing connections (it did, under load,
    with port-0 picks), no port is handed out twice, and each can be bound."""
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))
