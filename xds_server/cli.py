"""`xds-server`: run, demo, validate, bootstrap, schema."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from xds_server.app import Controller
from xds_server.demo import demo_certificates, running_stack, with_demo_access_log
from xds_server.errors import (
    AddressUnavailable,
    ConfigError,
    DependencyUnavailable,
    XdsServerError,
)
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import SocketAddress
from xds_server.model.schema import config_json_schema
from xds_server.proxy.bootstrap import (
    ACCESS_LOG_FLUSH_FLAGS,
    XdsClientTls,
    XdsHost,
    make_bootstrap,
    parse_xds_host,
    render_bootstrap,
)
from xds_server.proxy.envoy_process import find_envoy_binary
from xds_server.sdnotify import Notifier
from xds_server.service import SystemdService
from xds_server.settings import Settings, format_problems, load_settings
from xds_server.settings.envfile import (
    EnvFile,
    in_file_order,
    known_keys,
    load_env_file,
    merged,
    relocate,
)
from xds_server.telemetry.logs import JSON, LOG_FORMATS, TEXT, configure_logging

log = logging.getLogger("xds_server")
LOG_FORMAT_ENV = "ROUTER_LOG_FORMAT"  # text (default) or json


# The options every command takes, before or after the command name.
COMMON_DEFAULTS: dict[str, object] = {
    "config": None,
    "env_file": None,
    "debug": False,
    "verbose": False,
    "log_json": False,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The common options are SUPPRESSed in the parsers: otherwise the command's
    parser would overwrite `xds-server --debug run` with its own default."""
    args = parser().parse_args(argv)
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # the schema describes any configuration, so it reads none
        env_file = None if args.command == cmd_schema else read_env_file(args.env_file)
    except ConfigError as error:
        print(f"xds-server: {format_problems(error)}", file=sys.stderr)
        return 1
    environ, origins = merged(os.environ, env_file) if env_file else (dict(os.environ), {})
    log_format = JSON if args.log_json else environ.get(LOG_FORMAT_ENV, TEXT) or TEXT
    if log_format not in LOG_FORMATS:  # a configuration error like any other: exit 1
        print("invalid configuration:", file=sys.stderr)
        allowed = ", ".join(LOG_FORMATS)
        print(
            f"env:{LOG_FORMAT_ENV}: must be one of {allowed}, got {log_format!r}", file=sys.stderr
        )
        return 1
    configure_logging(args.debug, args.verbose, log_format)
    if args.command == cmd_schema:
        return cmd_schema(args)
    settings = checked_settings(args, env_file, environ, origins)
    if settings is None:
        return 1
    if env_file is not None and args.command in (cmd_run, cmd_demo):
        adopt(env_file)
    command: int = args.command(settings, args)
    return command


def read_env_file(path: Path | None) -> EnvFile | None:
    """`--env-file PATH`, else `.env` in the working directory when there is one."""
    return load_env_file(path, known_keys([LOG_FORMAT_ENV]))


def checked_settings(
    args: argparse.Namespace,
    env_file: EnvFile | None,
    environ: dict[str, str],
    origins: dict[str, str],
) -> Settings | None:
    """The settings, or None after printing every problem of the env file and the config."""
    problems = list(env_file.problems) if env_file else []
    settings = None
    try:
        settings = load_settings(args.config, environ)
    except ConfigError as error:
        problems += relocate(error.problems, origins)
    if env_file is not None:
        problems = in_file_order(problems, env_file)
    if not problems:
        return settings
    sources = [os.fspath(args.config) if args.config else "embedded defaults"]
    sources += [env_file.label] if env_file else []
    print(f"invalid configuration ({', '.join(sources)}):", file=sys.stderr)
    print(format_problems(ConfigError(problems)), file=sys.stderr)
    return None


def adopt(env_file: EnvFile) -> None:
    """The file's values join the process environment (the real one still wins), so a
    config reload (SIGHUP, file change) reads the same `ROUTER_*` values as the start.
    The file itself is read once, at start, as systemd reads `EnvironmentFile=`."""
    for key, value in env_file.values.items():
        os.environ.setdefault(key, value)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", type=Path, help="router_config.yaml (default: embedded)")
    common.add_argument(
        "--env-file",
        type=Path,
        help="ROUTER_* variables, KEY=VALUE lines (default: ./.env when it exists);"
        " the real environment wins",
    )
    common.add_argument("--debug", action="store_true", help="debug logging")
    common.add_argument("--verbose", action="store_true", help="info logging")
    common.add_argument(
        "--log-json",
        action="store_true",
        help=f"one JSON object per log line (also: {LOG_FORMAT_ENV}=json)",
    )
    top = argparse.ArgumentParser(prog="xds-server", description=__doc__, parents=[common])
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    run = commands.add_parser("run", parents=[common], help="run the controller")
    run.set_defaults(command=cmd_run)
    demo = commands.add_parser(
        "demo", parents=[common], help="controller + Envoy + sample backends"
    )
    demo.add_argument("--delta", action="store_true", help="bootstrap Envoy with Delta xDS")
    demo.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS on the listener, with a CA and certificate made for the demo (openssl)",
    )
    demo.set_defaults(command=cmd_demo)
    validate = commands.add_parser("validate", parents=[common], help="check a config file")
    validate.set_defaults(command=cmd_validate)
    boot = commands.add_parser("bootstrap", parents=[common], help="print an Envoy bootstrap")
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--delta", action="store_true")
    boot.add_argument(
        "--xds-host",
        metavar="NAME[:PORT]",
        help="reach the controller by this DNS name (port: router.xds_address's);"
        " over TLS it is the SNI and the SAN its certificate must carry",
    )
    boot.add_argument(
        "--ca",
        metavar="FILE",
        help="the CA that signed the controller's cert: TLS to the xDS port"
        " (alone: one-way, no client certificate)",
    )
    boot.add_argument(
        "--client-cert", metavar="FILE", help="Envoy's certificate for mutual TLS (needs --ca)"
    )
    boot.add_argument("--client-key", metavar="FILE", help="the private key of --client-cert")
    boot.add_argument(
        "--output", metavar="FILE", type=Path, help="write the bootstrap to FILE, not stdout"
    )
    boot.add_argument(
        "--hds",
        action="store_true",
        help="Envoy runs the health checks the controller assigns it (HDS; implied by"
        " router.health_checker: envoy)",
    )
    boot.set_defaults(command=cmd_bootstrap)
    schema = commands.add_parser(
        "schema", parents=[common], help="print the JSON Schema of router_config.yaml"
    )
    schema.set_defaults(command=cmd_schema)
    return top


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    services = settings.intent.services
    backends = sum(len(s.backends) for s in services)
    print(f"{settings.source}: valid ({len(services)} services, {backends} backends)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """config/router_config.schema.json is this output (`make schema` rewrites it)."""
    print(json.dumps(config_json_schema(), indent=2))
    return 0


class BootstrapUsage(Exception):
    """A flag combination `xds-server bootstrap` refuses; its one-line message."""


def cmd_bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    try:
        xds = bootstrap_xds(settings, args)
        tls = bootstrap_tls(settings, args)
    except BootstrapUsage as error:
        print(f"xds-server bootstrap: {error}", file=sys.stderr)
        return 2
    bootstrap = make_bootstrap(
        node_id=args.node_id,
        xds=xds,
        envoy_admin=settings.envoy_admin_address,
        delta=args.delta,
        tls=tls,
        edge=settings.intent.edge,
        hds=args.hds or settings.health_checker is HealthChecker.ENVOY,
    )
    text = render_bootstrap(bootstrap) + (
        f"# run: envoy -c bootstrap.yaml --concurrency {settings.worker_threads}"
        f" --disable-hot-restart {' '.join(ACCESS_LOG_FLUSH_FLAGS)}\n"
    )
    if args.output is None:
        print(text, end="")
    else:  # by rename: an Envoy starting meanwhile reads the old file or the new one
        staged = args.output.with_name(args.output.name + ".new")
        staged.write_text(text)
        staged.replace(args.output)
        print(f"xds-server bootstrap: wrote {args.output}", file=sys.stderr)
    return 0


def bootstrap_xds(settings: Settings, args: argparse.Namespace) -> SocketAddress | XdsHost:
    if args.xds_host is None:
        return settings.xds_address
    try:
        return parse_xds_host(args.xds_host, settings.xds_address.port)
    except ValueError as error:
        raise BootstrapUsage(str(error)) from None


def bootstrap_tls(settings: Settings, args: argparse.Namespace) -> XdsClientTls | None:
    """--ca alone: one-way TLS; with --client-cert and --client-key: mutual."""
    cert, key, ca = args.client_cert, args.client_key, args.ca
    if bool(cert) != bool(key):
        raise BootstrapUsage("--client-cert and --client-key go together")
    if cert and not ca:
        raise BootstrapUsage("--client-cert and --client-key need --ca (the controller's CA)")
    controller = settings.xds_tls
    if controller is not None and not ca:
        raise BootstrapUsage("router.xds_tls is set, so Envoy needs --ca (and a client cert)")
    if controller is not None and controller.client_ca_file and not cert:
        raise BootstrapUsage(
            "router.xds_tls.client_ca_file is set: the controller wants a client"
            " certificate, so Envoy needs --client-cert and --client-key"
        )
    if not ca:
        return None
    return XdsClientTls(cert, key, ca) if cert else XdsClientTls.one_way(ca)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        controller = Controller(settings, config_path=args.config)
        service = SystemdService(controller, Notifier())
        stop = service.handle_signals()
        try:
            await controller.start()
        except (DependencyUnavailable, AddressUnavailable) as error:  # Redis down, port taken
            await controller.stop()
            print(f"xds-server: cannot start: {error}", file=sys.stderr)
            return 1
        except ConfigError as error:  # TLS files that cannot be used
            await controller.stop()
            print(f"xds-server: cannot start: {format_problems(error)}", file=sys.stderr)
            return 1
        print(
            f"xds-server: xDS on {controller.xds_address}, admin API on "
            f"http://{controller.admin_address}",
            flush=True,
        )
        service.ready()
        async with service.watchdog():
            await controller.run(stop)
        return 0

    return asyncio.run(run())


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    if settings.xds_tls is not None:  # its Envoy is bootstrapped plaintext, on loopback
        print(
            "xds-server demo: the demo's xDS is plaintext on loopback; unset router.xds_tls",
            file=sys.stderr,
        )
        return 1
    find_envoy_binary()  # fail before starting anything when there is no Envoy

    async def demo(settings: Settings, curl: str, work: Path) -> str | None:
        running = running_stack(settings, config_path=args.config, workdir=work, delta=args.delta)
        async with running as stack:
            stop = stop_on_signals(stack.controller)
            print(stack.describe(), flush=True)
            print(f"try: {curl}/api/v1/router/health", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            return await stack.until_stopped(stop)

    try:
        with (
            tempfile.TemporaryDirectory(prefix="xds-demo-") as work,
            tempfile.TemporaryDirectory(prefix="xds-demo-tls-") as certificates,
        ):
            settings = with_demo_access_log(settings, Path(work), os.environ)
            curl = f"curl -s http://{settings.intent.listen}"
            if getattr(args, "tls", False):
                tls, ca = demo_certificates(Path(certificates))
                settings = dataclasses.replace(settings, tls=tls)
                curl = f"curl -s --cacert {ca} https://{settings.intent.listen}"
            failure = asyncio.run(demo(settings, curl, Path(work)))
    except XdsServerError as error:  # a taken port, a part that would not start
        print(f"xds-server demo: {error}", file=sys.stderr)
        return 1
    if failure is not None:
        print(f"demo stopped: {failure}; every process it started has exited.", file=sys.stderr)
        return 1
    print("demo stopped; every process it started has exited.", flush=True)
    return 0


def stop_on_signals(controller: Controller) -> asyncio.Event:
    """Ctrl-C and SIGTERM stop; SIGHUP reloads the config file."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, controller.request_reload)
    return stop


if __name__ == "__main__":
    sys.exit(main())
