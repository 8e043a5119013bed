"""The benchmark's admin client, in a process of its own (bench/admin_change.py).

    python -m bench.admin_client HOST PORT

Reads one call per line on stdin, `METHOD PATH JSON-BODY`, sends it over one
kept HTTP/1.1 connection, and answers one line on stdout: `STATUS SECONDS`,
timed from sending the request until the whole answer was read. A client of
its own keeps the client's CPU out of the controller's event loop, as with a
real operator's curl.
"""

from __future__ import annotations

import http.client
import sys
import time


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for line in sys.stdin:
        method, path, body = line.rstrip("\n").split(" ", 2)
        started = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            sys.stderr.write(f"{method} {path} {body}: HTTP {response.status} {answer!r}\n")
        sys.stdout.write(f"{response.status} {elapsed!r}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
