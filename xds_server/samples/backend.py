"""One sample backend: an aiohttp app that answers like a qdrant, embedding or LLM service.

Contract (tests and the demo rely on it):
- every response, errors included, carries header `x-backend: <name>` and every JSON
  answer the field `"backend": <name>`, so a caller behind Envoy can see which host answered;
- answers are deterministic functions of the request (except timings and `created`);
- LLMs speak the OpenAI API (`POST /v1/chat/completions`, `POST /v1/completions`, and
  the spec's `/api/v1/models/<name>/...` chat route), with `stream: true` as server-sent
  events: one `data:` chunk per token every `token_interval_s`, then `data: [DONE]`
  (shapes in samples/generation.py); embeddings answer on `/api/v1/embeddings` and on
  OpenAI's `/v1/embeddings`;
- `/_control/fault` injects failures, `/_control/stats` counts traffic. Control and
  `/health` requests are neither faulted by `status`/`delay_ms` nor counted as traffic.

Test-only request headers, for the streaming tests (a real LLM server has none):
  x-sample-token-interval-ms: N     pace of this stream instead of the backend's default
  x-sample-stall-after-tokens: N    after N tokens, go silent for x-sample-stall-ms
  x-sample-stall-ms: M              (default 60000), then carry on
  x-sample-break-after-tokens: N    after N tokens, drop the connection mid-stream
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from xds_server.samples.generation import (
    SSE_DONE,
    Generation,
    InvalidRequest,
    parse_chat,
    parse_completion,
    sse_event,
)

KINDS = ("qdrant", "embedding", "llm")
EMBEDDING_DIM = 8
# Bounded so a typo in an experiment cannot park requests for hours.
MAX_DELAY_MS = 600_000
# A realistic decode pace: 50 tokens/s, what one GPU serving a 7B model streams to one client.
DEFAULT_TOKEN_INTERVAL_S = 0.020
_CONTROL_PREFIX = "/_control/"
_HEALTH_PATH = "/health"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FaultState:
    """What the backend is told to do wrong, and how much traffic it saw."""

    name: str
    status: int | None = None  # None: answer normally
    times: int | None = None  # status applies to this many more requests; None: until reset
    delay_ms: float = 0.0
    health_status: int | None = None  # None: /health answers 200
    requests: int = 0  # non-control, non-health requests
    health_requests: int = 0
    token_interval_s: float = DEFAULT_TOKEN_INTERVAL_S

    def fault_view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "times": self.times,
            "delay_ms": self.delay_ms,
            "health_status": self.health_status,
        }


STATE = web.AppKey("sample_backend_state", FaultState)


class _Invalid(ValueError):
    """A malformed request body; the middleware turns it into a 400 JSON answer."""


def make_app(
    name: str, kind: str, *, token_interval_s: float = DEFAULT_TOKEN_INTERVAL_S
) -> web.Application:
    """Build the app of one backend called `name` of kind `kind` (one of KINDS); an LLM
    streams one token every `token_interval_s` seconds."""
    if kind not in _ROUTES:
        raise ValueError(f"unknown backend kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not 0 <= token_interval_s <= MAX_DELAY_MS / 1000:
        raise ValueError(f"token_interval_s must be 0-{MAX_DELAY_MS / 1000}")
    app = web.Application(middlewares=[_backend_marker, _faults])
    app[STATE] = FaultState(name, token_interval_s=token_interval_s)
    app.router.add_get(_HEALTH_PATH, _health)
    app.router.add_get(_CONTROL_PREFIX + "fault", _get_fault)
    app.router.add_post(_CONTROL_PREFIX + "fault", _set_fault)
    app.router.add_get(_CONTROL_PREFIX + "stats", _stats)
    for path, handler in _ROUTES[kind]:
        app.router.add_post(path, handler)
    return app


# --- middlewares -------------------------------------------------------------


# Replicas of a real service return the same bytes for the same query; `ab`
# counts any change of body length as a failed request. Pad every answer to a
# fixed size (JSON allows trailing whitespace) so backend names and timings of
# different lengths do not look like failures.
FIXED_BODY_BYTES = 1024


def _answer(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    text = json.dumps({**body, "backend": request.app[STATE].name})
    return web.Response(
        text=text.ljust(FIXED_BODY_BYTES), status=status, content_type="application/json"
    )


@web.middleware
async def _backend_marker(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Make every answer, aiohttp's own 404/405 included, JSON naming this backend."""
    try:
        response = await handler(request)
    except (_Invalid, InvalidRequest) as exc:
        response = _answer(request, {"error": str(exc)}, status=400)
    except web.HTTPException as exc:
        response = _answer(request, {"error": exc.reason}, status=exc.status)
    if not response.prepared:  # a stream sent its headers already, the marker among them
        response.headers["x-backend"] = request.app[STATE].name
    return response


@web.middleware
async def _faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path.startswith(_CONTROL_PREFIX) or request.path == _HEALTH_PATH:
        return await handler(request)
    state.requests += 1
    if state.delay_ms > 0:
        await asyncio.sleep(state.delay_ms / 1000)
    if state.status is not None:
        status = state.status
        if state.times is not None:
            state.times -= 1
            if state.times <= 0:
                state.status, state.times = None, None
        return _answer(request, {"error": "injected fault"}, status=status)
    return await handler(request)


# --- health and control ------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.health_requests += 1
    status = state.health_status or 200
    return _answer(request, {"status": "ok" if status < 400 else "unhealthy"}, status=status)


async def _get_fault(request: web.Request) -> web.Response:
    return _answer(request, request.app[STATE].fault_view())


async def _set_fault(request: web.Request) -> web.Response:
    """Apply the keys present in the body; absent keys keep their value, except that
    setting `status` without `times` makes it last until reset."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"status", "times", "delay_ms", "health_status"})
    if unknown:
        raise _Invalid(f"unknown fault keys: {', '.join(unknown)}")
    if "times" in body and "status" not in body:
        raise _Invalid("times needs status")
    state = request.app[STATE]
    if "status" in body:
        state.status = _fault_status(body["status"], "status")
        state.times = _times(body.get("times")) if state.status is not None else None
    if "delay_ms" in body:
        state.delay_ms = _delay(body["delay_ms"])
    if "health_status" in body:
        state.health_status = _fault_status(body["health_status"], "health_status")
    return _answer(request, state.fault_view())


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _answer(request, {"requests": state.requests, "health_requests": state.health_requests})


def _fault_status(value: object, field: str) -> int | None:
    """200 or null mean healthy; otherwise an error status a client can see as one."""
    if value is None or value == 200:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    raise _Invalid(f"{field} must be null, 200 or an integer 400-599")


def _times(value: object) -> int | None:
    if value is None or (_is_int(value) and isinstance(value, int) and value >= 1):
        return value
    raise _Invalid("times must be null or an integer >= 1")


def _delay(value: object) -> float:
    if _is_number(value) and isinstance(value, int | float) and 0 <= value <= MAX_DELAY_MS:
        return float(value)
    raise _Invalid(f"delay_ms must be a number 0-{MAX_DELAY_MS}")


# --- the three kinds ---------------------------------------------------------


async def _vector_search(request: web.Request) -> web.Response:
    """Qdrant-style search hits, derived from the collection and the query vector."""
    started = time.perf_counter()
    body = await _json_object(request)
    vector = body.get("query_vector")
    if not isinstance(vector, list) or not vector or not all(map(_is_number, vector)):
        raise _Invalid("query_vector must be a non-empty list of numbers")
    collection = _optional_str(body, "collection", "default")
    limit = body.get("limit", 3)
    if not _is_int(limit) or not 1 <= limit <= 100:
        raise _Invalid("limit must be an integer 1-100")
    seed = _digest(collection, vector)
    hits = sorted((_hit(seed, i, collection) for i in range(limit)), key=lambda h: -h["score"])
    return _answer(request, {"result": hits, "status": "ok", "time": time.perf_counter() - started})


def _hit(seed: bytes, rank: int, collection: str) -> dict[str, Any]:
    h = hashlib.sha256(seed + rank.to_bytes(4, "big")).digest()
    point_id = int.from_bytes(h[:4], "big") % 100_000
    score = round(int.from_bytes(h[4:8], "big") / 2**32, 6)
    return {"id": point_id, "score": score, "payload": {"collection": collection, "doc": point_id}}


async def _embeddings(request: web.Request) -> web.Response:
    """OpenAI-style embeddings: one unit vector of EMBEDDING_DIM floats per text."""
    body = await _json_object(request)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _Invalid("input must be a string or a non-empty list of strings")
    model = _optional_str(body, "model", "sample-embedding")
    data = [
        {"object": "embedding", "index": i, "embedding": _embed(t)} for i, t in enumerate(texts)
    ]
    tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _answer(request, {"object": "list", "data": data, "model": model, "usage": usage})


def _embed(text: str) -> list[float]:
    raw = [b / 127.5 - 1.0 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


async def _chat_completion(request: web.Request) -> web.StreamResponse:
    """The spec's route: an OpenAI chat.completion whose model is this backend."""
    name = request.app[STATE].name
    body = {**(await _json_object(request)), "model": name}
    return await _generate(request, parse_chat(body, name))


async def _openai_chat(request: web.Request) -> web.StreamResponse:
    """OpenAI's POST /v1/chat/completions; `model` echoes the request."""
    name = request.app[STATE].name
    return await _generate(request, parse_chat(await _json_object(request), name))


async def _openai_completion(request: web.Request) -> web.StreamResponse:
    """OpenAI's (legacy) POST /v1/completions; `model` echoes the request."""
    name = request.app[STATE].name
    return await _generate(request, parse_completion(await _json_object(request), name))


async def _generate(request: web.Request, generation: Generation) -> web.StreamResponse:
    if not generation.stream:
        return _answer(request, generation.answer(request.app[STATE].name))
    return await _stream(request, generation, _StreamPace.of(request))


@dataclass(frozen=True)
class _StreamPace:
    """How one stream is paced, and how the tests make it misbehave (headers above)."""

    interval_s: float
    stall_after: int | None
    stall_s: float
    break_after: int | None

    @classmethod
    def of(cls, request: web.Request) -> _StreamPace:
        headers = request.headers
        interval_ms = _header_number(headers, "x-sample-token-interval-ms")
        stall_ms = _header_number(headers, "x-sample-stall-ms")
        stall_after = _header_number(headers, "x-sample-stall-after-tokens")
        break_after = _header_number(headers, "x-sample-break-after-tokens")
        return cls(
            interval_s=request.app[STATE].token_interval_s
            if interval_ms is None
            else interval_ms / 1000,
            stall_after=None if stall_after is None else int(stall_after),
            stall_s=60.0 if stall_ms is None else stall_ms / 1000,
            break_after=None if break_after is None else int(break_after),
        )


async def _stream(
    request: web.Request, generation: Generation, pace: _StreamPace
) -> web.StreamResponse:
    """Server-sent events, one per token as it is "generated"; a client that goes away
    ends the generation (as vLLM aborts the request)."""
    name = request.app[STATE].name
    response = web.StreamResponse(
        headers={
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-backend": name,
        }
    )
    await response.prepare(request)
    count = 0
    try:
        first = generation.first_chunk()
        if first is not None:
            await response.write(sse_event(first))
        for token in generation.tokens(name):
            if count == pace.break_after and request.transport is not None:
                request.transport.abort()  # mid-stream: no last chunk, no [DONE]
                return response
            if count == pace.stall_after:
                await asyncio.sleep(pace.stall_s)
            await asyncio.sleep(pace.interval_s)
            await response.write(sse_event(generation.token_chunk(token)))
            count += 1
        await response.write(sse_event(generation.last_chunk(count, name)))
        usage = generation.usage_chunk(count)
        if usage is not None:
            await response.write(sse_event(usage))
        await response.write(SSE_DONE)
        await response.write_eof()
    except ConnectionError:
        pass  # the client (or Envoy, on its idle timeout) went away
    return response


def _header_number(headers: Any, key: str) -> float | None:
    raw = headers.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _Invalid(f"{key} must be a number") from None
    if not 0 <= value <= MAX_DELAY_MS:
        raise _Invalid(f"{key} must be 0-{MAX_DELAY_MS}")
    return value


_ROUTES: dict[str, tuple[tuple[str, Handler], ...]] = {
    "qdrant": (("/api/v1/vectors/{tail:.*}", _vector_search),),
    "embedding": (("/api/v1/embeddings", _embeddings), ("/v1/embeddings", _embeddings)),
    "llm": (
        ("/api/v1/models/{tail:.+}", _chat_completion),
        ("/v1/chat/completions", _openai_chat),
        ("/v1/completions", _openai_completion),
    ),
}


# --- small helpers -----------------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text())
    except ValueError as exc:
        raise _Invalid(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _Invalid("body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise _Invalid(f"{key} must be a string")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _digest(*parts: object) -> bytes:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()
