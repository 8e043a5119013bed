"""Reloading the config file: a fault never stops the watcher, the parse runs off
the event loop, and a file is applied only once it has settled (docs in README,
"Configuration reload")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import config_file, intent_of, local_settings, running_controller
from tests.settings.test_yaml_limits import alias_bomb, depth_bomb
from tests.support import eventually
from tests.systemd_support import ROOT
from xds_server.app import Controller
from xds_server.settings import Settings, load_settings
from xds_server.settings import reload as reload_module
from xds_server.settings.reload import ConfigWatcher

SETTLE_S = reload_module.SETTLE_S
POLL_S = reload_module.CONFIG_POLL_S


def test_the_times_are_the_documented_ones() -> None:
    """README, "Configuration reload", states them."""
    assert (SETTLE_S, POLL_S, reload_module.SETTLE_GIVE_UP_S) == (0.5, 1.0, 10.0)


def five_then_six(tmp_path: Path) -> tuple[Settings, Path, str, str]:
    """Settings of 5 services, their file, and the text of the next file (6 services)
    with the valid first part of it that a writer in the middle leaves: svc-0 only."""
    base = local_settings()
    # The free ports of local_settings, not the defaults (18080 may be taken).
    ports = {"listen": base.intent.listen, "admin": base.intent.admin}
    settings = dataclasses.replace(base, intent=intent_of(5, **ports))
    path = config_file(settings, tmp_path / "router_config.yaml")
    whole = config_file(
        dataclasses.replace(settings, intent=intent_of(6, **ports)), tmp_path / "next.yaml"
    ).read_text()
    second_service = whole.index("- backends:", whole.index("- backends:") + 1)
    half = whole[:second_service]
    (tmp_path / "half.yaml").write_text(half)
    assert len(load_settings(tmp_path / "half.yaml", {}).intent.services) == 1  # valid
    return settings, path, whole, half


def replace_file(path: Path, text: str) -> None:
    """Write as the README says writers should: a temporary file, then rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclasses.dataclass
class ServiceCounts:
    """Every service count the store held, read every few milliseconds."""

    controller: Controller
    seen: set[int] = dataclasses.field(default_factory=set)

    async def watch(self) -> None:
        while True:
            self.seen.add(len(self.controller.store.intent.services))
            await asyncio.sleep(0.005)

    def now(self, count: int) -> Callable[[], Any]:
        async def check() -> bool:
            return len(self.controller.store.intent.services) == count

        return check


@pytest.fixture
async def often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher looks at the file every 50 ms: it would see any half-written state."""
    monkeypatch.setattr(reload_module, "CONFIG_POLL_S", 0.05)


@contextlib.asynccontextmanager
async def counted(settings: Settings, path: Path) -> AsyncIterator[ServiceCounts]:
    async with running_controller(settings, config_path=path) as controller:
        counts = ServiceCounts(controller)
        watching = asyncio.create_task(counts.watch())
        try:
            yield counts
        finally:
            watching.cancel()
            counts.seen.add(len(controller.store.intent.services))  # the last word too


async def test_a_file_written_in_place_in_two_halves_is_never_applied_half(
    tmp_path: Path, often: None
) -> None:
    settings, path, whole, half = five_then_six(tmp_path)
    async with counted(settings, path) as counts:
        with path.open("w") as out:  # in place: truncated, then written in two parts
            out.write(half)
            out.flush()
            await asyncio.sleep(SETTLE_S * 0.6)
            out.write(whole[len(half) :])
        await eventually(counts.now(6), timeout_s=10)
        await asyncio.sleep(SETTLE_S)
    assert counts.seen == {5, 6}


async def test_a_reload_request_applies_the_settled_file_not_the_half(tmp_path: Path) -> None:
    """SIGHUP while the file is being written: the reload waits for it to settle."""
    settings, path, whole, half = five_then_six(tmp_path)
    async with counted(settings, path) as counts:
        with path.open("w") as out:
            out.write(half)
            out.flush()
            reload = asyncio.create_task(counts.controller.reload())
            await asyncio.sleep(SETTLE_S * 0.6)
            out.write(whole[len(half) :])
        assert await reload is True
        assert len(counts.controller.store.intent.services) == 6
    assert counts.seen == {5, 6}


async def test_a_renamed_file_is_applied_within_the_settle_time_and_a_poll(tmp_path: Path) -> None:
    settings, path, whole, _ = five_then_six(tmp_path)
    async with counted(settings, path) as counts:
        replace_file(path, whole)
        # The parse and the store's put take some time too (more on a busy machine).
        took = await eventually(counts.now(6), timeout_s=SETTLE_S + POLL_S + 2.0)
        print(f"renamed file applied after {took:.2f} s")
    assert counts.seen == {5, 6}


async def test_the_parse_does_not_hold_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the YAML is parsed, the loop runs other tasks: the parse waits until
    a task on the loop has seen it start (on the loop itself it would wait in vain)."""
    _, path, whole, _ = five_then_six(tmp_path)
    loop = asyncio.get_running_loop()
    started, loop_ran, waits = asyncio.Event(), threading.Event(), []
    real_load = yaml.load

    def load_once_the_loop_ran(stream: Any, Loader: Any) -> Any:
        loop.call_soon_threadsafe(started.set)  # runs only when the loop gets control
        waits.append(loop_ran.wait(timeout=5))
        return real_load(stream, Loader=Loader)

    async def answer_when_the_parse_starts() -> None:
        await started.wait()
        loop_ran.set()

    applied: list[Settings] = []

    async def apply(new: Settings) -> None:
        applied.append(new)

    watcher = ConfigWatcher(path, apply)
    path.write_text(whole)
    monkeypatch.setattr(yaml, "load", load_once_the_loop_ran)
    answer = asyncio.create_task(answer_when_the_parse_starts())
    assert await watcher.reload() is True
    await answer
    assert waits == [True]
    assert len(applied[0].intent.services) == 6


@pytest.mark.parametrize("bomb", [depth_bomb(500), alias_bomb()], ids=["depth", "aliases"])
async def test_the_watcher_outlives_a_bomb_and_applies_the_next_good_file(
    tmp_path: Path, often: None, bomb: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, path, whole, _ = five_then_six(tmp_path)
    applied: list[Settings] = []

    async def apply(new: Settings) -> None:
        applied.append(new)

    watcher = ConfigWatcher(path, apply)
    running = asyncio.create_task(watcher.run())
    try:
        with caplog.at_level(logging.ERROR, logger="xds_server.settings"):
            replace_file(path, bomb)

            async def refused() -> bool:
                assert not running.done(), running
                return "config reload refused" in caplog.text

            await eventually(refused, timeout_s=10)
        assert f"{path}: YAML error at line " in caplog.text
        assert applied == []
        replace_file(path, whole)

        async def applied_next() -> bool:
            return len(applied) == 1

        await eventually(applied_next, timeout_s=10)
        assert len(applied[0].intent.services) == 6
    finally:
        running.cancel()
        await asyncio.wait({running}, timeout=5)


async def test_a_change_before_the_watcher_first_looks_is_not_missed(
    tmp_path: Path, often: None
) -> None:
    """The file changes between the start's read and the watcher's first poll (the
    controller starts its store, health and ports in between): still applied."""
    _, path, whole, _ = five_then_six(tmp_path)
    applied: list[Settings] = []

    async def apply(new: Settings) -> None:
        applied.append(new)

    watcher = ConfigWatcher(path, apply)
    replace_file(path, whole)
    running = asyncio.create_task(watcher.run())
    try:

        async def applied_once() -> bool:
            return len(applied) == 1

        await eventually(applied_once, timeout_s=10)
    finally:
        running.cancel()
        await asyncio.wait({running}, timeout=5)


async def test_a_file_that_keeps_changing_is_refused_for_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that never pauses for the settle time: the reload gives up, and
    says how to write the file instead."""
    monkeypatch.setattr(reload_module, "SETTLE_S", 0.05)
    monkeypatch.setattr(reload_module, "SETTLE_GIVE_UP_S", 0.3)
    _, path, whole, _ = five_then_six(tmp_path)
    applied: list[Settings] = []

    async def apply(new: Settings) -> None:
        applied.append(new)

    async def keep_writing() -> None:
        for count in itertools.count():  # until cancelled
            path.write_text(whole + f"# {count}\n")
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(keep_writing())
    try:
        with caplog.at_level(logging.ERROR, logger="xds_server.settings"):
            assert await ConfigWatcher(path, apply).reload() is False
    finally:
        writer.cancel()
    assert applied == []
    assert f"{path}: the file is still changing after 0.3 s; write it to a temporary" in (
        caplog.text
    )


async def test_the_watcher_outlives_a_fault_of_its_own(
    tmp_path: Path,
    often: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in a reload (here: the parse raises what it never should) is logged
    with its traceback; the next change is applied."""
    _, path, whole, _ = five_then_six(tmp_path)
    applied: list[Settings] = []
    real = reload_module.settings_from
    faults = iter([RuntimeError("a bug")])

    def faulty(*args: Any) -> Settings:
        for fault in faults:
            raise fault
        return real(*args)

    async def apply(new: Settings) -> None:
        applied.append(new)

    monkeypatch.setattr(reload_module, "settings_from", faulty)
    watcher = ConfigWatcher(path, apply)
    running = asyncio.create_task(watcher.run())
    try:
        with caplog.at_level(logging.ERROR, logger="xds_server.settings"):
            replace_file(path, whole.replace("svc-5", "svc-five"))

            async def logged() -> bool:
                return "config reload failed, keeping the running config" in caplog.text

            await eventually(logged, timeout_s=10)
        assert "RuntimeError: a bug" in caplog.text
        replace_file(path, whole)

        async def applied_once() -> bool:
            assert not running.done(), running
            return len(applied) == 1

        await eventually(applied_once, timeout_s=10)
    finally:
        running.cancel()
        await asyncio.wait({running}, timeout=5)


def test_a_stop_does_not_wait_for_a_read_in_progress(tmp_path: Path) -> None:
    """The controller's loop ends while a read hangs (a FIFO nobody writes, a parse
    that takes long): the process exits all the same. With asyncio.to_thread it
    would wait for the thread at exit."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = textwrap.dedent("""
        import asyncio, pathlib, sys
        from xds_server.settings import reload

        async def main():
            hanging = pathlib.Path(sys.argv[1]).read_bytes
            read = asyncio.ensure_future(reload._in_daemon_thread(hanging))
            await asyncio.sleep(0.2)
            read.cancel()

        asyncio.run(main())
        print("exited")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, os.fspath(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.fspath(ROOT)},
    )
    assert (done.returncode, done.stdout) == (0, "exited\n"), done.stderr
