"""The OpenAPI document against the live admin API, by schemathesis.

Schemathesis generates requests from the document (admin/openapi.py) and sends
them to a real controller whose admin API listens on a free loopback port (a
thread runs its event loop: schemathesis calls synchronously), against the
document that controller serves (no token: no security, the Origin checked).
Each answer must be no server error (503 is one only by design here: no Envoy
is connected, and no backend is up for the health summary), a status the
operation documents, with the documented content type and schema; a request
the document calls valid must not be refused, except 404 and 409 (the state
decides: an unknown name, a name taken) and 503; one it calls invalid must be
refused (schemathesis' negative cases). After any 4xx the store's revision is
what it was: a refused request changed nothing.

Path parameters are drawn mostly from the configured services and backends (a
name schemathesis makes up is a 404 before the body is even read), so the
bodies are judged too.

Bounded: a fixed seed and a few examples per operation (`MAX_EXAMPLES`), so
the run is the same every time and short on a loaded machine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import local_settings, running_controller
from xds_server.admin import ROUTE_SETS
from xds_server.admin.openapi import document
from xds_server.app import Controller
from xds_server.settings import load_settings

MAX_EXAMPLES = 30
# What a valid request may still get: 2xx, or what the state decides.
ACCEPTED = ["2xx", "404", "409", "503"]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261203,
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": {
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
        },
    }
)
# The document the tokenless controller below serves (no security, Origin checked).
schema = schemathesis.openapi.from_dict(document(ROUTE_SETS, bearer=False), config=CONFIG)
# (service, backend) of the shipped configuration, which local_settings() serves.
KNOWN = [(s.name, b.name) for s in load_settings(None).intent.services for b in s.backends]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly a configured service and one of its backends; sometimes the made-up names."""
    if not path_parameters:
        return st.just(path_parameters)

    def named(pair: tuple[str, str]) -> dict[str, Any]:
        given = {"service": pair[0], "backend": pair[1]}
        return {key: value for key, value in given.items() if key in path_parameters}

    known = st.sampled_from(KNOWN).map(named)
    return st.one_of(known, known, known, st.just(path_parameters))


class LiveController:
    """A started controller on its own event loop in a thread, stopped (bounded) at exit."""

    def __init__(self) -> None:
        self.controller: Controller | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-admin", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with running_controller(local_settings()) as controller:
            self.controller = controller
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Controller:
        self._thread.start()
        if not self._ready.wait(30) or self.controller is None:
            raise AssertionError(f"the controller did not start: {self._error!r}")
        return self.controller

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the controller did not stop within 20 s"


@pytest.fixture(scope="module")
def live() -> Iterator[Controller]:
    with LiveController() as controller:
        yield controller


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


@schema.parametrize()
def test_the_live_api_answers_as_documented(
    case: schemathesis.Case, live: Controller, session: requests.Session
) -> None:
    revision = live.store.revision
    response = case.call(base_url=f"http://{live.admin_address}", session=session, timeout=30)
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        assert live.store.revision == revision, f"a {response.status_code} changed the intent"
