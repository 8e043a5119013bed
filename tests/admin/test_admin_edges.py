"""The admin API's edges: what a request must be before any handler reads it.

A real controller (tests/admin/test_admin_unit.py's fixtures) on free loopback
ports. Bytes no HTTP client library would send (a header that is not UTF-8)
go over a plain socket. Every refusal is a JSON error with its status, and
the store's revision is unchanged after it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.admin.conftest import TOKEN
from tests.admin.test_admin_unit import BODY_CALLS, QDRANT, STRATEGY
from xds_server.admin import ROUTE_SETS
from xds_server.admin.openapi import document, openapi_path
from xds_server.admin.requests import MAX_BODY_BYTES, MAX_DEPTH, MAX_NUMBER_DIGITS
from xds_server.app import Controller
from xds_server.model.intent import Strategy

NEW_BACKEND = {"name": "q3", "address": "127.0.0.3", "port": 9}
EVIL = "http://evil.example"


def mutating_calls() -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every mutating operation, on real names, with a body that would be valid."""
    bodies = {(method, path): body for method, path, body in BODY_CALLS}
    calls = []
    for route_set in ROUTE_SETS:
        for op in route_set.operations:
            if op.mutating:
                path = op.path.format(service="qdrant", backend="qdrant-secondary")
                calls.append((op.method, path, bodies.get((op.method, op.path))))
    return calls


MUTATING = mutating_calls()


async def raw_request(
    address: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 request written byte for byte; (status, headers, JSON body)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + address.encode()]
        head += [name + b": " + value for name, value in headers]
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(20):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, content = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    answer_headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), answer_headers, json.loads(content)


def unchanged(controller: Controller, revision: int, strategy: Strategy) -> bool:
    return (
        controller.store.revision == revision
        and controller.store.intent.default_strategy is strategy
    )


# ---- cross-site requests without a token ------------------------------------------------


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "not a url"])
@pytest.mark.parametrize(("method", "path", "body"), MUTATING)
async def test_a_cross_site_change_without_a_token_is_forbidden(
    controller: Controller,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    origin: str,
) -> None:
    """No token (the loopback default): a mutating call whose Origin is not the
    request's own host:port is a 403 and changes nothing."""
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    url = f"http://{controller.admin_address}{path}"
    async with http.request(method, url, json=body, headers={"Origin": origin}) as response:
        answer = await response.json()
        assert (response.status, answer["error"]) == (403, "forbidden"), answer
    assert "Origin" in answer["detail"]
    assert unchanged(controller, revision, strategy)


async def test_a_cross_site_text_plain_post_is_refused_and_changes_nothing(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """The browser's "simple" cross-site POST (text/plain, no preflight) with a JSON
    text: refused before anything is parsed, nothing added."""
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    url = f"http://{controller.admin_address}{QDRANT}"
    headers = {"Origin": EVIL, "Content-Type": "text/plain"}
    async with http.post(url, data=json.dumps(NEW_BACKEND), headers=headers) as response:
        answer = await response.json()
        assert response.status == 403, answer
    assert unchanged(controller, revision, strategy)
    qdrant = controller.store.intent.service("qdrant")
    assert qdrant is not None and qdrant.backend("q3") is None


@pytest.mark.parametrize("origin", ["same", "same-default-port", None])
async def test_a_same_origin_or_originless_change_is_served(
    controller: Controller, http: aiohttp.ClientSession, origin: str | None
) -> None:
    """An Origin naming the request's own host:port (a page served by the API's host),
    or none (curl, scripts), is served."""
    address = str(controller.admin_address)
    headers = {"Origin": f"http://{address}"} if origin == "same" else {}
    if origin == "same-default-port":  # Host without a port means the scheme's default
        headers = {"Origin": "http://router.example", "Host": "router.example"}
    url = f"http://{address}{STRATEGY}"
    async with http.put(url, json={"strategy": "random"}, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert controller.store.intent.default_strategy is Strategy.RANDOM


async def test_with_a_token_the_origin_is_not_checked(
    guarded: Controller, http: aiohttp.ClientSession
) -> None:
    """With ROUTER_ADMIN_TOKEN set the bearer token decides (a browser never adds it
    to a cross-site request by itself): any Origin with the right token is served,
    without it 401."""
    url = f"http://{guarded.admin_address}{STRATEGY}"
    good = {"Origin": EVIL, "Authorization": f"Bearer {TOKEN}"}
    async with http.put(url, json={"strategy": "random"}, headers={"Origin": EVIL}) as response:
        assert response.status == 401
    async with http.put(url, json={"strategy": "random"}, headers=good) as response:
        assert response.status == 200, await response.text()
    assert guarded.store.intent.default_strategy is Strategy.RANDOM


# ---- headers that are not UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize("with_token", [True, False])
@pytest.mark.parametrize(("method", "path", "body"), MUTATING)
async def test_a_header_that_is_not_utf8_is_a_400(
    controller: Controller,
    guarded: Controller,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    with_token: bool,
) -> None:
    """An Authorization header of bytes that are not UTF-8 is a 400 JSON error on every
    mutating route, with and without a token configured; nothing changes."""
    target = guarded if with_token else controller
    revision, strategy = target.store.revision, target.store.intent.default_strategy
    headers = [(b"Authorization", b"Bearer \xff\xfe"), (b"Content-Type", b"application/json")]
    data = json.dumps(body).encode() if body is not None else b""
    status, _, answer = await raw_request(str(target.admin_address), method, path, headers, data)
    assert (status, answer["error"]) == (400, "bad_request"), answer
    assert "Authorization" in answer["detail"] and "UTF-8" in answer["detail"]
    assert unchanged(target, revision, strategy)


@pytest.mark.parametrize("name", [b"Origin", b"Content-Type"])
async def test_other_headers_read_that_are_not_utf8_are_a_400(
    controller: Controller, name: bytes
) -> None:
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    headers = [(b"Content-Type", b"application/json"), (name, b"http://\xe9vil")]
    if name == b"Content-Type":
        headers = [(name, b"application/json; x=\xe9")]
    data = json.dumps({"strategy": "random"}).encode()
    status, _, answer = await raw_request(
        str(controller.admin_address), "PUT", STRATEGY, headers, data
    )
    assert (status, answer["error"]) == (400, "bad_request"), answer
    assert name.decode() in answer["detail"]
    assert unchanged(controller, revision, strategy)


# ---- bodies that do not decode ------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"strategy": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


BAD_BODIES: list[tuple[str, bytes, str]] = [
    # id, body, Content-Type
    ("nested-100000", ("[" * 100_000 + "]" * 100_000).encode(), "application/json"),
    ("nested-65", nested(MAX_DEPTH + 1).encode(), "application/json"),
    ("charset-bogus", b'{"strategy": "random"}', "application/json; charset=bogus"),
    ("charset-latin-1", b'{"strategy": "random"}', "application/json; charset=latin-1"),
    ("int-5000-digits", b'{"strategy": "random", "wait_s": ' + b"9" * 5000 + b"}", ""),
    ("int-101-digits", b'{"strategy": "random", "wait_s": ' + b"1" * 101 + b"}", ""),
    ("float-200-digits", b'{"strategy": "random", "wait_s": 0.' + b"1" * 200 + b"}", ""),
    ("not-utf8", b'{"strategy": "random\xff"}', "application/json; charset=utf-8"),
    ("bom", b'\xef\xbb\xbf{"strategy": "random"}', ""),
    ("truncated", b'{"strategy": "ran', ""),
    ("two-documents", b'{"strategy": "random"} {}', ""),
    ("lone-surrogate-escape", b'{"strategy": "random", "service": "\\ud800"}', ""),
]


@pytest.mark.parametrize(
    ("body", "content_type"), [(b, c) for _, b, c in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES]
)
async def test_a_body_that_does_not_decode_is_a_400(
    controller: Controller, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    """Nesting beyond MAX_DEPTH, a charset other than utf-8, numbers of more than
    MAX_NUMBER_DIGITS digits, bytes that are not UTF-8 and JSON that does not decode:
    400 bad_request, never 500, and nothing changes."""
    revision, strategy = controller.store.revision, controller.store.intent.default_strategy
    url = f"http://{controller.admin_address}{STRATEGY}"
    headers = {"Content-Type": content_type or "application/json"}
    async with http.put(url, data=body, headers=headers) as response:
        answer = await response.json()
        assert (response.status, answer["error"]) == (400, "bad_request"), answer
    assert answer["detail"]
    assert unchanged(controller, revision, strategy)


async def test_the_limits_themselves_are_served(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """At the limits a body decodes and goes on to validation: nesting of exactly
    MAX_DEPTH is judged by the model (422), a number of MAX_NUMBER_DIGITS digits is
    a number (422 out of range here), and a surrogate pair is one character."""
    url = f"http://{controller.admin_address}{STRATEGY}"
    headers = {"Content-Type": "application/json"}
    limit = ('{"strategy": "random", "wait_s": -' + "1" * MAX_NUMBER_DIGITS + "}").encode()
    for body in (nested(MAX_DEPTH).encode(), limit):
        async with http.put(url, data=body, headers=headers) as response:
            answer = await response.json()
            assert (response.status, answer["error"]) == (422, "invalid_value"), answer
    pair = b'{"strategy": "random", "service": "\\ud83d\\ude00"}'
    async with http.put(url, data=pair, headers=headers) as response:
        answer = await response.json()
        assert (response.status, answer["field"]) == (422, "service"), answer


async def test_an_oversized_body_is_a_413(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    revision = controller.store.revision
    url = f"http://{controller.admin_address}{QDRANT}"
    body = json.dumps(NEW_BACKEND | {"health_path": "/" + "h" * MAX_BODY_BYTES})
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
        assert answer.status == 413
        assert (await answer.json())["error"] == "request_entity_too_large"
    assert controller.store.revision == revision


async def test_a_delete_with_a_body_that_is_not_json_is_a_415(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """DELETE takes no body; one sent anyway must be declared JSON like every other."""
    revision = controller.store.revision
    url = f"http://{controller.admin_address}{QDRANT}/qdrant-secondary"
    async with http.delete(url, data=b"x=1", headers={"Content-Type": "text/plain"}) as answer:
        assert answer.status == 415, await answer.text()
    assert controller.store.revision == revision
    async with http.delete(url) as answer:  # without a body: no Content-Type needed
        assert answer.status == 200, await answer.text()


# ---- 405 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", STRATEGY, {"GET", "PUT"}),
        ("DELETE", QDRANT, {"GET", "POST"}),
        ("PUT", "/api/v1/router/openapi.json", {"GET"}),
    ],
)
async def test_a_405_says_what_is_allowed(
    controller: Controller,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    revision = controller.store.revision
    url = f"http://{controller.admin_address}{path}"
    async with http.request(method, url, json={}) as response:
        answer = await response.json()
        assert (response.status, answer["error"]) == (405, "method_not_allowed")
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == allowed
    assert controller.store.revision == revision


# ---- the document states every answer ----------------------------------------------------


@pytest.mark.parametrize("bearer", [True, False])
def test_every_status_a_route_can_answer_is_documented(bearer: bool) -> None:
    """Mutating: 400 (headers, body), 415, and 401 with a token configured or 403
    without (and then no security requirement); with a body also 413, 422; an intent
    change also 409 and 503; the experiments 404, 409, 503."""
    doc = document(ROUTE_SETS, bearer=bearer)
    assert ("securitySchemes" in doc["components"]) is bearer
    for route_set in ROUTE_SETS:
        for op in route_set.operations:
            path = doc["paths"][openapi_path(op.path)]
            documented = path[op.method.lower()]
            codes = set(documented["responses"])
            wanted: set[str] = set()
            if op.mutating:
                wanted |= {"400", "415", "401" if bearer else "403"}
                assert ("security" in documented) is bearer
                assert ("403" if bearer else "401") not in codes
            if op.request_schema is not None:
                wanted |= {"413", "422"}
            if op.edits_intent:
                wanted |= {"409", "503"}
            if route_set.tag == "experiments":
                wanted |= {"404", "409", "503"}
            assert wanted <= codes, (op.method, op.path, wanted - codes)
