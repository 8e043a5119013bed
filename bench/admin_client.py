"""The benchmark's admin client, in a process of its own (bench/admin_change.py).

    python -m bench.admin_client HOST PORT

Reads one call per line on stdin, `METHOD PATH JSON-BODY`, sends it over one
kept HTTP/1.1 connection, and answers one line on stdout: `STATUS SECONDS
APPLY_MS`, timed from sending the request until the whole answer was read;
APPLY_MS is the answer's own `apply_ms` (the controller's store -> every ACK),
-1 when it has none.

A process of its own keeps the client's CPU out of the controller's event
loop, as with an operator's curl. It speaks HTTP/1.1 on a plain socket, as
curl does, rather than through http.client, whose header parsing alone adds
about 0.12 ms to every call on this machine (0.19 vs 0.08 ms for a GET of the
strategy), which would be charged to the controller.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._socket = socket.create_connection((host, port), timeout=30)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def call(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._socket.sendall(request + body)
        head = self._read_until(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        length = next(
            int(f.split(":", 1)[1]) for f in fields if f.lower().startswith("content-length:")
        )
        return int(status_line.split()[1]), self._read_exactly(length)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._receive()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._receive()
        data, self._buffer = self._buffer[:length], self._buffer[length:]
        return data

    def _receive(self) -> None:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ConnectionError("the admin API closed the connection")
        self._buffer += chunk


def apply_ms(answer: bytes) -> float:
    try:
        document: dict[str, Any] = json.loads(answer)
    except ValueError:
        return -1.0
    outcome = document.get("strategy_change", document)
    return float(outcome.get("apply_ms", -1.0))


def main() -> None:
    connection = Connection(sys.argv[1], int(sys.argv[2]))
    for line in sys.stdin:
        method, path, body = line.rstrip("\n").split(" ", 2)
        started = time.perf_counter()
        status, answer = connection.call(method, path, body.encode())
        elapsed = time.perf_counter() - started
        if status != 200:
            sys.stderr.write(f"{method} {path} {body}: HTTP {status} {answer!r}\n")
        sys.stdout.write(f"{status} {elapsed!r} {apply_ms(answer)!r}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
