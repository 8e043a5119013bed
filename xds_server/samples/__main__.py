"""Run one sample backend: `python -m xds_server.samples --name N --kind K --port P`.

Once listening it prints exactly one line, `READY <name> <host>:<port>`, to stdout
(the real port when 0 was asked for), which `processes.start_process` waits for.
SIGTERM or SIGINT stop it cleanly with exit code 0. With `--tls-cert/--tls-key` it
serves HTTPS (an "external" https model service on loopback); `--tls-client-ca`
also requires client certificates that CA signed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web

from xds_server.model.intent import SocketAddress
from xds_server.samples.backend import DEFAULT_TOKEN_INTERVAL_S, KINDS, make_app


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xds_server.samples", description=__doc__)
    parser.add_argument("--name", required=True, help="backend name, echoed in every answer")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--token-interval-ms",
        type=float,
        default=DEFAULT_TOKEN_INTERVAL_S * 1000,
        help="an LLM's streaming pace: milliseconds between tokens (default %(default)s)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return args


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with the given certificate; with `client_ca`, clients must present one."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(
    name: str,
    kind: str,
    host: str,
    port: int,
    token_interval_s: float = DEFAULT_TOKEN_INTERVAL_S,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; over TLS with `tls`."""
    app = make_app(name, kind, token_interval_s=token_interval_s)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        print(f"READY {name} {_bound_address(runner, host)}", flush=True)
        await _until_signalled()
    finally:
        await runner.cleanup()


def _bound_address(runner: web.AppRunner, host: str) -> SocketAddress:
    sockname = runner.addresses[0]
    # AF_INET6 socknames are 4-tuples, AF_INET 2-tuples; both start with (host, port).
    bound_host = host if host and host not in ("0.0.0.0", "::") else sockname[0]
    return SocketAddress(bound_host, int(sockname[1]))


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _tls_of(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        return None
    return server_context(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        interval_s = args.token_interval_ms / 1000
        tls = _tls_of(args)
        asyncio.run(serve(args.name, args.kind, args.host, args.port, interval_s, tls))
    except ssl.SSLError as exc:  # before OSError, its base: the files, not the port
        print(f"cannot serve {args.name}: TLS files: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. a negative token interval
        print(f"cannot serve {args.name}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken: say so in one line, not a traceback
        print(f"cannot serve {args.name} on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
