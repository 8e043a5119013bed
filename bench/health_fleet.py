"""Health at fleet scale: probes per second arriving at the backends, and the time
from a backend's death to its health flip, for 1, 10 and 50 Envoys, in three modes
(who probes), in one run.

    python -m bench.health_fleet [--fleets 1,10,50] [--real-envoys 1,10] [--kills 5]

Eight sample backends (xds_server.samples, 4 services x 2) on loopback, each its own
process; a death is a SIGKILL by PID, `--kills` distinct backends per row, each
0.3-1 interval after the previous one and timed on its own; they are started
again on their ports before the next row. Probes are counted by the backends themselves
(`/_control/stats` health_requests) over a window with nothing dead. Interval 1 s,
timeout 0.5 s, healthy threshold 2, unhealthy threshold 3, in every mode:

(a) controller probes: today's main. The controller (`xds-server run`, its own
    process) probes every backend; the Envoys are ADS streams only (bench/clients.py).
    Flip: the backend's EDS health_status turns UNHEALTHY on an observer's ADS stream.
(b) every Envoy probes everything: Envoy's active health checks in CDS, which the
    controller does not ship. Each Envoy is an Envoy-like checker of every backend
    (bench/envoy_like.py: Envoy's own counting rules), no controller. Flip: each
    Envoy's own verdict, the median over the Envoys.
    The same mode with real Envoys 1.40 (bench/real_envoys.py: `--concurrency 1`,
    static clusters with active health checks, verdicts from admin `/clusters`) for
    1 and 10 Envoys (`--real-envoys`), the calibration of the model.
(c) HDS, K=2: the controller with `router.health_checker: envoy` and
    `health_checkers_per_backend: 2`; each Envoy is an ADS stream plus an Envoy-like
    HDS client (bench/envoy_like.py). Probes are counted once the health report
    names only Envoys as every backend's checkers. Flip: as in (a). Skipped,
    saying so, when the controller does not serve HDS.
    The same mode with real Envoys 1.40 on the controller's bootstrap with
    `hds_config` (bench/real_envoys.py), for the `--real-envoys` sizes.

The Envoy-like clients run in one process of their own (bench/envoy_fleet.py, so their probes do not
delay the observer); times cross processes on CLOCK_MONOTONIC. Ratios are taken
against (a) with the same number of Envoys, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from bench.clients import BenchClient, channels_for
from bench.envoy_fleet import start_fleet
from bench.envoy_like import CheckConfig
from bench.real_envoys import POLL_S, running_envoys, running_hds_envoys
from xds_server.demo import start_backend
from xds_server.model.intent import Backend, SocketAddress
from xds_server.proxy.envoy_process import EnvoyNotFound, find_envoy_binary
from xds_server.proxy.processes import ChildProcess, ProcessFailed, free_port, start_process
from xds_server.resources import ENDPOINT

LOOPBACK = "127.0.0.1"
SERVICES, PER_SERVICE = 4, 2
INTERVAL_S, TIMEOUT_S, HEALTHY_THRESHOLD, UNHEALTHY_THRESHOLD = 1.0, 0.5, 2, 3
CHECK = CheckConfig(
    "/health", INTERVAL_S, TIMEOUT_S, HEALTHY_THRESHOLD, UNHEALTHY_THRESHOLD
)  # what the Envoys of (b) check; the controller is told the same
CHECKERS_PER_BACKEND = 2  # K in mode (c)
RATE_WINDOW_S = 3.0
SETTLE_S = 2 * INTERVAL_S  # after all healthy: assignments and phases settle
FLIP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 30.0
MODES = {
    "a": "(a) controller probes",
    "b": "(b) every Envoy probes all",
    "c": f"(c) HDS, K={CHECKERS_PER_BACKEND}",
    "e": "(b) real Envoys 1.40",
    "h": f"(c) real Envoys 1.40, K={CHECKERS_PER_BACKEND}",
}


# ---- backends ---------------------------------------------------------------------------


class SampleBackends:
    """The sample backends, by name; killed by PID, started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.backends = [
            Backend(name=f"svc-{s}-b{b}", address=LOOPBACK, port=free_port())
            for s in range(SERVICES)
            for b in range(PER_SERVICE)
        ]
        self.children: dict[str, ChildProcess] = {}

    @property
    def services(self) -> list[str]:
        return [f"svc-{s}" for s in range(SERVICES)]

    def by_service(self) -> dict[str, list[Backend]]:
        return {s: [b for b in self.backends if b.name.startswith(f"{s}-")] for s in self.services}

    async def start(self, names: Sequence[str] | None = None) -> None:
        wanted = [b for b in self.backends if names is None or b.name in names]
        started = await asyncio.gather(*(start_backend(b, "qdrant", self.workdir) for b in wanted))
        self.children.update({b.name: child for b, child in zip(wanted, started, strict=True)})

    def kill(self, name: str) -> float:
        """SIGKILL by PID; the time.monotonic() just before it."""
        at = time.monotonic()
        self.children[name].kill()
        return at

    async def reap(self, name: str) -> None:
        await self.children.pop(name).stop()

    async def health_requests(self, http: aiohttp.ClientSession) -> int:
        async def one(backend: Backend) -> int:
            url = f"http://{LOOPBACK}:{backend.port}/_control/stats"
            async with http.get(url) as response:
                return int((await response.json())["health_requests"])

        return sum(await asyncio.gather(*(one(b) for b in self.backends)))

    async def stop(self) -> None:
        for child in self.children.values():
            await child.stop()
        self.children.clear()


# ---- the controller ---------------------------------------------------------------------


def controller_config(backends: SampleBackends, hds: bool) -> dict[str, Any]:
    router: dict[str, Any] = {
        "listen_address": f"{LOOPBACK}:{free_port()}",
        "admin_address": f"{LOOPBACK}:{free_port()}",
        "xds_address": f"{LOOPBACK}:{free_port()}",
        "envoy_admin_address": f"{LOOPBACK}:{free_port()}",
        "health_check_interval": INTERVAL_S,
        "health_check_timeout": TIMEOUT_S,
        "health_check_healthy_threshold": HEALTHY_THRESHOLD,
        "health_check_unhealthy_threshold": UNHEALTHY_THRESHOLD,
        "metrics_enabled": False,  # no real Envoy's admin to read
        "access_log": "off",
    }
    if hds:
        router["health_checker"] = "envoy"
        router["health_checkers_per_backend"] = CHECKERS_PER_BACKEND
    services = [
        {
            "name": name,
            "routes": [f"/{name}/"],
            "backends": [
                {"name": b.name, "address": b.address, "port": b.port}
                for b in backends.backends
                if b.name.startswith(f"{name}-")
            ],
        }
        for name in backends.services
    ]
    return {"router": router, "services": services}


@contextlib.asynccontextmanager
async def running_controller(
    config: dict[str, Any], workdir: Path
) -> AsyncIterator[tuple[str, str]]:
    """`xds-server run` in its own process, stopped by PID; yields its xDS and admin
    addresses."""
    path = workdir / f"controller-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "xds_server.cli", "--env-file", "/dev/null"]
    argv += ["run", "--config", str(path)]
    child = await start_process(
        argv,
        ready_line_prefix="xds-server:",
        timeout_s=START_TIMEOUT_S,
        log_path=path.with_suffix(".log"),
    )
    try:
        yield str(config["router"]["xds_address"]), str(config["router"]["admin_address"])
    finally:
        await child.stop()


class EdsWatch(BenchClient):
    """An ADS stream that keeps every endpoint's last EDS health_status and when it changed."""

    def __init__(self, xds: str, services: Sequence[str]) -> None:
        self.channel = channels_for(xds, 1)[0]
        self.status: dict[str, int] = {}
        self.changed_at: dict[str, float] = {}
        self.changed = asyncio.Event()
        super().__init__(self.channel, "bench-observer", {ENDPOINT: list(services)})

    def _received(self, response: Any) -> None:
        at = time.monotonic()
        super()._received(response)
        if response.type_url != ENDPOINT:
            return
        for packed in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            for group in assignment.endpoints:
                for lb in group.lb_endpoints:
                    name = lb.endpoint.hostname
                    if self.status.get(name) != lb.health_status:
                        self.status[name] = lb.health_status
                        self.changed_at[name] = at
        self.changed.set()

    async def until(self, names: Sequence[str], status: int, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while any(self.status.get(n) != status for n in names):
                self.changed.clear()
                await self.changed.wait()

    async def flip_after(self, name: str, killed_at: float) -> float | None:
        try:
            await self.until([name], health_check_pb2.UNHEALTHY, FLIP_TIMEOUT_S)
        except TimeoutError:
            return None
        return self.changed_at[name] - killed_at

    async def flip_after_backend(self, backend: Backend, killed_at: float) -> float | None:
        return await self.flip_after(backend.name, killed_at)

    async def aclose(self) -> None:
        await self.close()
        await self.channel.close()


# ---- one row: a mode with N Envoys ------------------------------------------------------


@dataclass
class Row:
    mode: str
    envoys: int
    probes_per_s: float = 0.0
    flips_s: list[float] = field(default_factory=list)
    missed: int = 0
    took_s: float = 0.0
    skipped: str | None = None


async def delegated(http: aiohttp.ClientSession, admin: str, checkers: int) -> bool:
    """Until every backend's `checked_by` in the health report names `checkers` Envoys
    and not the controller: the hand-over from the last row's fleet is over, so the
    probe rate is the new fleet's own. False after START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        async with http.get(f"http://{admin}/api/v1/router/health") as response:
            groups = (await response.json())["health_status"]
        seen = [e["checked_by"] for group in groups.values() for e in group.values()]
        if all(len(by) == checkers and "controller" not in by for by in seen):
            return True
        await asyncio.sleep(0.1)
    return False


async def probe_rate(backends: SampleBackends, http: aiohttp.ClientSession) -> float:
    before, started = await backends.health_requests(http), time.monotonic()
    await asyncio.sleep(RATE_WINDOW_S)
    after, ended = await backends.health_requests(http), time.monotonic()
    return (after - before) / (ended - started)


async def kill_and_time(
    backends: SampleBackends, kills: int, flip_of: Any, rng: random.Random
) -> tuple[list[float], int, list[str]]:
    """Kill `kills` distinct backends, each 0.3-1 interval (random) after the previous
    one, so no death is in lockstep with a probe phase; time each death's flip on its
    own. Every mode probes each backend independently of the others, so a death does
    not wait for the previous one's flip (a row takes seconds, not kills x threshold)."""
    chosen = backends.backends[:kills]
    delays = itertools.accumulate(rng.uniform(0.3, 1.0) * INTERVAL_S for _ in chosen)

    async def one(backend: Backend, delay: float) -> float | None:
        await asyncio.sleep(delay)
        flip: float | None = await flip_of(backend, backends.kill(backend.name))
        return flip

    results = await asyncio.gather(*(one(b, d) for b, d in zip(chosen, delays, strict=True)))
    flips = [r for r in results if r is not None]
    return flips, len(results) - len(flips), [b.name for b in chosen]


async def measure_row(
    mode: str,
    envoys: int,
    backends: SampleBackends,
    xds: str,
    watch: EdsWatch | None,
    kills: int,
    http: aiohttp.ClientSession,
    *,
    admin: str = "",
) -> Row:
    row = Row(mode, envoys)
    started = time.monotonic()
    fleet = await start_fleet(
        {"a": "ads", "b": "static", "c": "hds"}[mode],
        envoys,
        CHECK,
        xds=xds,
        services=backends.services,
        targets=[(b.address, b.port) for b in backends.backends],
    )
    killed: list[str] = []
    try:
        answer = await asyncio.wait_for(fleet.ready, START_TIMEOUT_S)
        if answer.startswith("SKIPPED"):
            row.skipped = "controller does not serve HDS" + (
                "" if "UNIMPLEMENTED" in answer else f" ({answer.removeprefix('SKIPPED ')})"
            )
            return row
        if watch is not None:
            try:
                await watch.until(
                    [b.name for b in backends.backends], health_check_pb2.HEALTHY, START_TIMEOUT_S
                )
            except TimeoutError:  # a half-working checker must not end the whole run
                row.skipped = f"EDS did not show every backend HEALTHY within {START_TIMEOUT_S:g} s"
                return row
        else:
            settled = await fleet.until(
                lambda: all(fleet.healthy(b.port) == envoys for b in backends.backends),
                START_TIMEOUT_S,
            )
            assert settled, "the Envoy-like checkers never saw every backend healthy"
        if mode == "c" and not await delegated(http, admin, min(envoys, CHECKERS_PER_BACKEND)):
            row.skipped = f"the checks were not all delegated within {START_TIMEOUT_S:g} s"
            return row
        await asyncio.sleep(SETTLE_S)
        row.probes_per_s = await probe_rate(backends, http)

        async def flip_of(backend: Backend, killed_at: float) -> float | None:
            if watch is not None:
                return await watch.flip_after(backend.name, killed_at)
            seen = await fleet.until(
                lambda: len(fleet.unhealthy_since(backend.port, killed_at)) == envoys,
                FLIP_TIMEOUT_S,
            )
            times = fleet.unhealthy_since(backend.port, killed_at)
            return statistics.median(times) - killed_at if seen else None

        row.flips_s, row.missed, killed = await kill_and_time(
            backends, kills, flip_of, random.Random(envoys)
        )
    finally:
        await fleet.stop()
    await revive(backends, killed, watch)
    row.took_s = time.monotonic() - started
    return row


async def revive(backends: SampleBackends, killed: Sequence[str], watch: EdsWatch | None) -> None:
    """The killed backends started again on their ports; with a controller, until its
    EDS says every backend is healthy again."""
    for name in killed:
        await backends.reap(name)
    await backends.start(killed)
    if watch is not None:  # if not in time, the next row says so
        with contextlib.suppress(TimeoutError):
            await watch.until(
                [b.name for b in backends.backends], health_check_pb2.HEALTHY, START_TIMEOUT_S
            )


async def measure_real_row(
    envoys: int, backends: SampleBackends, workdir: Path, kills: int, http: aiohttp.ClientSession
) -> Row:
    """Mode (b) with real Envoys (bench/real_envoys.py): each Envoy's own verdict."""
    row, started = Row("e", envoys), time.monotonic()
    ports = [b.port for b in backends.backends]
    killed: list[str] = []

    async def until(done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async with running_envoys(envoys, backends.by_service(), CHECK, workdir) as real:
        poller = asyncio.create_task(real.poll(http))
        try:
            settled = await until(lambda: real.all_healthy(ports), START_TIMEOUT_S)
            assert settled, "the real Envoys never saw every backend healthy"
            await asyncio.sleep(SETTLE_S)
            row.probes_per_s = await probe_rate(backends, http)

            async def flip_of(backend: Backend, killed_at: float) -> float | None:
                def seen() -> list[float]:
                    return real.unhealthy_since(backend.port, killed_at)

                if not await until(lambda: len(seen()) == envoys, FLIP_TIMEOUT_S):
                    return None
                return statistics.median(seen()) - killed_at

            row.flips_s, row.missed, killed = await kill_and_time(
                backends, kills, flip_of, random.Random(envoys)
            )
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    await revive(backends, killed, None)
    row.took_s = time.monotonic() - started
    return row


async def measure_real_hds_row(
    envoys: int,
    backends: SampleBackends,
    addresses: tuple[str, str],  # the controller's xDS and admin
    watch: EdsWatch,
    workdir: Path,
    kills: int,
    http: aiohttp.ClientSession,
) -> Row:
    """Mode (c) with real Envoys over HDS (bench/real_envoys.py); flips seen in EDS."""
    row, started = Row("h", envoys), time.monotonic()
    xds, admin = addresses
    host, _, port = xds.rpartition(":")
    killed: list[str] = []
    async with running_hds_envoys(envoys, SocketAddress(host, int(port)), workdir):
        try:
            names = [b.name for b in backends.backends]
            await watch.until(names, health_check_pb2.HEALTHY, START_TIMEOUT_S)
        except TimeoutError:
            row.skipped = f"EDS did not show every backend HEALTHY within {START_TIMEOUT_S:g} s"
            return row
        if not await delegated(http, admin, min(envoys, CHECKERS_PER_BACKEND)):
            row.skipped = f"the checks were not all delegated within {START_TIMEOUT_S:g} s"
            return row
        await asyncio.sleep(SETTLE_S)
        row.probes_per_s = await probe_rate(backends, http)
        row.flips_s, row.missed, killed = await kill_and_time(
            backends, kills, watch.flip_after_backend, random.Random(envoys)
        )
    await revive(backends, killed, watch)
    row.took_s = time.monotonic() - started
    return row


async def measure_mode(
    mode: str,
    fleets: Sequence[int],
    backends: SampleBackends,
    workdir: Path,
    kills: int,
    http: aiohttp.ClientSession,
) -> list[Row]:
    if mode in "eh":
        try:
            find_envoy_binary()
        except EnvoyNotFound as error:
            return [Row(mode, n, skipped=f"no Envoy binary ({error})") for n in fleets]
    if mode == "b":  # no controller: the Envoys' own checkers are the whole story
        return [await measure_row(mode, n, backends, "", None, kills, http) for n in fleets]
    if mode == "e":
        return [await measure_real_row(n, backends, workdir, kills, http) for n in fleets]
    config = controller_config(backends, hds=mode in "ch")
    try:
        async with running_controller(config, workdir) as (xds, admin):
            watch = EdsWatch(xds, backends.services)
            try:
                rows: list[Row] = []
                for n in fleets:
                    if mode == "h":
                        row = await measure_real_hds_row(
                            n, backends, (xds, admin), watch, workdir, kills, http
                        )
                    else:
                        row = await measure_row(
                            mode, n, backends, xds, watch, kills, http, admin=admin
                        )
                    rows.append(row)
                    if (row.skipped or "").startswith("controller does not serve HDS"):
                        rows += [Row(mode, m, skipped=row.skipped) for m in fleets[len(rows) :]]
                        break
                return rows
            finally:
                await watch.aclose()
    except ProcessFailed as error:
        if mode not in "ch":
            raise
        first = next((line for line in error.tail.splitlines() if "health_checker" in line), "")
        reason = f"controller does not serve HDS (refused its config: {first.strip()})"
        return [Row(mode, n, skipped=reason) for n in fleets]


# ---- the report -------------------------------------------------------------------------


def flip_text(row: Row) -> str:
    if not row.flips_s:
        return f"no flip seen ({row.missed} missed)"
    text = (
        f"median {statistics.median(row.flips_s):5.2f} s   min {min(row.flips_s):5.2f}"
        f"   max {max(row.flips_s):5.2f}   (n={len(row.flips_s)})"
    )
    return text + (f", {row.missed} not seen in {FLIP_TIMEOUT_S:g} s" if row.missed else "")


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:5.2f}x" if baseline > 0 else "  n/a"


def report(rows: Sequence[Row], kills: int, took_s: float) -> None:
    print(
        f"health at fleet scale: {SERVICES * PER_SERVICE} sample backends on loopback, "
        f"interval {INTERVAL_S:g} s, timeout {TIMEOUT_S:g} s, thresholds healthy "
        f"{HEALTHY_THRESHOLD} / unhealthy {UNHEALTHY_THRESHOLD}, {kills} kills (SIGKILL) per row"
    )
    print(f"  {'mode':<28} {'envoys':>6}   {'probes/s':>8}   death -> health flip")
    for row in rows:
        head = f"  {MODES[row.mode]:<28} {row.envoys:>6}   "
        if row.skipped is not None:
            print(f"{head}skipped: {row.skipped}")
        else:
            print(f"{head}{row.probes_per_s:8.1f}   {flip_text(row)}   [{row.took_s:.0f} s]")
    baseline = {r.envoys: r for r in rows if r.mode == "a" and r.skipped is None}
    compared = [
        r
        for r in rows
        if r.mode != "a" and r.envoys in baseline and r.skipped is None and r.flips_s
    ]
    if compared:
        print("  ratios vs (a) with the same number of Envoys (probes/s, median flip):")
    for row in compared:
        base = baseline[row.envoys]
        probes = ratio(row.probes_per_s, base.probes_per_s)
        flips = ratio(statistics.median(row.flips_s), statistics.median(base.flips_s or [0]))
        print(f"    {MODES[row.mode]:<28} {row.envoys:>4} Envoys   probes {probes}   flip {flips}")
    for model_mode, real_mode in (("b", "e"), ("c", "h")):
        real = {r.envoys: r for r in rows if r.mode == real_mode and r.flips_s}
        model = [r for r in rows if r.mode == model_mode and r.envoys in real and r.flips_s]
        if model:
            print(f"  {MODES[model_mode]}: the Envoy-like model vs real Envoys (probes/s, flip):")
        for row in model:
            base = real[row.envoys]
            probes = ratio(row.probes_per_s, base.probes_per_s)
            flips = ratio(statistics.median(row.flips_s), statistics.median(base.flips_s))
            print(f"    {row.envoys:>4} Envoys   probes {probes}   flip {flips}")
    print(f"  the whole run took {took_s:.0f} s")


async def benchmark(fleets: Sequence[int], real: Sequence[int], kills: int, modes: str) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        workdir = Path(tmp)
        backends = SampleBackends(workdir)
        await backends.start()
        rows: list[Row] = []
        try:
            async with aiohttp.ClientSession() as http:
                for mode in modes:
                    sizes = real if mode in "eh" else fleets
                    rows += await measure_mode(mode, sizes, backends, workdir, kills, http)
        finally:
            await backends.stop()
    report(rows, kills, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fleets", default="1,10,50", help="numbers of Envoys, comma separated")
    parser.add_argument("--kills", type=int, default=5, help="deaths timed per row (<= 8)")
    parser.add_argument(
        "--real-envoys",
        default="1,10",
        help="numbers of real Envoys for (b) and (c), comma separated",
    )
    parser.add_argument(
        "--modes",
        default="abech",
        help="which of a, b, c to run; e: (b) with real Envoys, h: (c) with real Envoys",
    )
    args = parser.parse_args()
    fleets = [int(n) for n in args.fleets.split(",")]
    real = [int(n) for n in args.real_envoys.split(",")]
    kills = min(args.kills, SERVICES * PER_SERVICE)
    asyncio.run(benchmark(fleets, real, kills, args.modes))


if __name__ == "__main__":
    main()
