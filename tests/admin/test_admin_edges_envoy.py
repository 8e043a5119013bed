"""The admin API's edges on its second port: through a real Envoy 1.40's listener,
which routes /api/v1/router/* to the controller (translate/routes.py), the same
bytes get the same answers as on the admin port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.admin.conftest import TOKEN
from tests.admin.test_admin_edges import EVIL, MUTATING, raw_request, unchanged
from tests.admin.test_admin_unit import STRATEGY
from tests.factories import local_settings
from xds_server.demo import Stack, running_stack
from xds_server.model.intent import Strategy

pytestmark = pytest.mark.envoy


@pytest.fixture
async def guarded_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = local_settings(worker_threads=2, admin_token=TOKEN)
    async with running_stack(settings, workdir=tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
async def open_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = local_settings(worker_threads=2)
    async with running_stack(settings, workdir=tmp_path_factory.mktemp("stack")) as stack:
        yield stack


async def test_a_header_that_is_not_utf8_is_a_400_through_envoy(guarded_stack: Stack) -> None:
    """Every mutating route, through the listener, with a token configured (where the
    old code compared the header and answered 500): 400, nothing changes."""
    controller = guarded_stack.controller
    listener = str(controller.store.intent.listen)
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    headers = [(b"Authorization", b"Bearer \xff\xfe"), (b"Content-Type", b"application/json")]
    for method, path, body in MUTATING:
        data = json.dumps(body).encode() if body is not None else b""
        status, _, answer = await raw_request(listener, method, path, headers, data)
        assert (status, answer["error"]) == (400, "bad_request"), (method, path, answer)
    assert unchanged(controller, revision, strategy)


async def test_the_origin_is_checked_through_envoy(open_stack: Stack) -> None:
    """Without a token: a cross-site change through the listener is a 403; one from a
    page of the listener's own origin (Envoy passes Host on) is served."""
    controller = open_stack.controller
    listener = str(controller.store.intent.listen)
    url = f"http://{listener}{STRATEGY}"
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    change = {"strategy": "random"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with http.put(url, json=change, headers={"Origin": EVIL}) as response:
            answer = await response.json()
            assert (response.status, answer["error"]) == (403, "forbidden"), answer
        assert unchanged(controller, revision, strategy)
        own = {"Origin": f"http://{listener}"}
        async with http.put(url, json=change, headers=own) as response:
            assert response.status == 200, await response.text()
    assert controller.store.intent.default_strategy is Strategy.RANDOM
