"""The supervisor of a running stack: a part that ends on its own is logged at
once; a vital one is the stack's failure; a stopped one is nothing to report."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from xds_server.proxy.processes import ChildProcess, exit_status, start_process
from xds_server.proxy.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(60)"]


@pytest.fixture
async def sleeper() -> AsyncIterator[ChildProcess]:
    child = await start_process(SLEEPER, ready_line_prefix="READY", timeout_s=10)
    try:
        yield child
    finally:
        await child.stop(grace_s=1)


def test_exit_status_says_how_a_child_ended() -> None:
    assert exit_status(0) == "exit code 0"
    assert exit_status(3) == "exit code 3"
    assert exit_status(-signal.SIGKILL) == "killed by SIGKILL"


async def test_a_killed_child_is_logged_at_once_and_a_vital_one_fails_the_stack(
    sleeper: ChildProcess, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    supervisor.child("Envoy", sleeper, vital=True)
    os.kill(sleeper.pid, signal.SIGKILL)
    failure = await asyncio.wait_for(supervisor.failure(), 5)
    assert failure == f"Envoy (pid {sleeper.pid}) exited unexpectedly: killed by SIGKILL"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [failure]
    await supervisor.close()


async def test_a_dead_backend_is_logged_but_is_no_failure(
    sleeper: ChildProcess, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    supervisor.child("backend b1", sleeper, vital=False)
    failure = asyncio.create_task(supervisor.failure())
    os.kill(sleeper.pid, signal.SIGKILL)
    await sleeper.wait(5)
    await asyncio.sleep(0.1)  # the watcher runs right after the exit
    assert "backend b1 (pid" in caplog.text and "killed by SIGKILL" in caplog.text
    assert not failure.done()
    failure.cancel()
    await supervisor.close()


async def test_a_stopped_child_or_a_closed_supervisor_reports_nothing(
    sleeper: ChildProcess, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor()
    supervisor.child("Envoy", sleeper, vital=True)
    await sleeper.stop(grace_s=1)  # stop() means the exit is expected
    other = await start_process(SLEEPER, ready_line_prefix="READY", timeout_s=10)
    supervisor.child("backend b2", other, vital=True)
    await supervisor.close()
    other.kill()
    await other.stop()
    await asyncio.sleep(0.1)
    assert caplog.records == []


async def test_a_task_that_fails_or_returns_is_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    supervisor = Supervisor()
    supervisor.task("controller", asyncio.create_task(crash()))
    failure = await asyncio.wait_for(supervisor.failure(), 5)
    assert failure == "controller failed: RuntimeError('boom')"
    assert "Traceback" in caplog.text  # the error is logged with where it happened

    returned = Supervisor()
    returned.task("controller", asyncio.create_task(asyncio.sleep(0)))
    assert await asyncio.wait_for(returned.failure(), 5) == "controller stopped unexpectedly"
