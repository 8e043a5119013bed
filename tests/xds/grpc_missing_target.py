"""A proxyless grpcio client that makes one call to an `xds:///` target and
reports how long it took to fail, for tests/xds/test_grpc_proxyless.py.

    python tests/xds/grpc_missing_target.py xds:///does-not-exist

The bootstrap comes from GRPC_XDS_BOOTSTRAP_CONFIG. The call does not wait for
ready, so it fails as soon as the channel's xDS resolver gives up on the target
(the listener does not exist) rather than at its own deadline. Prints
`FAILED <seconds> <status code> <details>` (or `ANSWERED <seconds>`), where
the seconds run from the channel's creation, so Python's start-up is not
counted.
"""

from __future__ import annotations

import sys
import time

import grpc

METHOD = "/xds_server.sample.Who/Name"  # any method: the call never reaches a backend
CALL_DEADLINE_S = 40.0  # far beyond the clients' 15 s does-not-exist timer


def main(target: str) -> int:
    start = time.monotonic()
    # The xDS server is on loopback: never through an HTTP proxy from the env.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            channel.unary_unary(METHOD)(b"", timeout=CALL_DEADLINE_S)
        except grpc.RpcError as error:
            elapsed = time.monotonic() - start
            print(f"FAILED {elapsed:.3f} {error.code().name} {error.details()}", flush=True)
            return 0
    print(f"ANSWERED {time.monotonic() - start:.3f}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
