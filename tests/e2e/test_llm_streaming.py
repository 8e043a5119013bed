"""LLM streams through a real Envoy 1.40: server-sent events pass through as the sample
backend sends them, a service without a whole-request limit streams past what that
limit would have cut, and a stream that goes silent is ended at its idle_timeout,
cleanly and without a retry (the backend saw one request)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.test_resilience import served, url
from tests.factories import local_settings
from xds_server.demo import Stack
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

WHOLE_REQUEST_LIMIT_S = 3.0  # the router's request_timeout in these tests
IDLE_S = 1.0  # mixtral's idle_timeout in these tests
STREAM_TOKENS, TOKEN_MS = 200, 20  # a 4 s generation, longer than the limit
CLIENT_TIMEOUT_S = 15  # a hang fails the test instead of blocking it


def llm_settings(**services: dict[str, Any]) -> Settings:
    """The shipped services (phi3, hermes, mixtral: request_timeout 0, idle_timeout 30,
    the LLM retry conditions) with quick retries, a router-wide 3 s limit, and the
    given per-service changes."""
    settings = local_settings(worker_threads=2)
    intent = settings.intent
    policies = dataclasses.replace(
        intent.policies, request_timeout_s=WHOLE_REQUEST_LIMIT_S, retry_delay_s=0.02
    )
    changed = tuple(dataclasses.replace(s, **services.get(s.name, {})) for s in intent.services)
    intent = dataclasses.replace(intent, policies=policies, services=changed)
    return dataclasses.replace(settings, intent=intent)


def generation(tokens: int, **extra: Any) -> dict[str, Any]:
    """A chat request that streams exactly `tokens` tokens (vLLM's ignore_eos)."""
    return {
        "messages": [{"role": "user", "content": "stream"}],
        "stream": True,
        "max_tokens": tokens,
        "ignore_eos": True,
        **extra,
    }


@dataclass
class Streamed:
    status: int
    arrivals: list[tuple[float, str]]  # (seconds since the request, data payload)
    ended_s: float  # when the body ended, cleanly or not
    cut: bool  # the body ended without its chunked end (a reset stream)

    @property
    def done(self) -> bool:
        return bool(self.arrivals) and self.arrivals[-1][1] == "[DONE]"

    @property
    def tokens(self) -> list[float]:
        """Arrival times of the chunks (the role chunk, tokens, the finish chunk)."""
        return [at for at, data in self.arrivals if data != "[DONE]"]


async def stream(
    http: aiohttp.ClientSession, stack: Stack, model: str, body: dict[str, Any], **headers: str
) -> Streamed:
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    cut = False
    path = f"/api/v1/models/{model}/chat/completions"
    async with http.post(url(stack, path), json=body, headers=headers) as response:
        try:
            async for line in response.content:
                if line.startswith(b"data: "):
                    arrivals.append((time.monotonic() - started, line[6:].strip().decode()))
        except aiohttp.ClientPayloadError:
            cut = True
        return Streamed(response.status, arrivals, time.monotonic() - started, cut)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def test_stream_passes_through_and_outlasts_the_whole_request_limit(
    make_stack: StackFactory, client: aiohttp.ClientSession
) -> None:
    """phi3 (request_timeout 0) streams 4 s of tokens past the router's 3 s limit, each
    chunk reaching the client as it is generated; hermes, given that 3 s limit, has the
    same stream cut at 3 s (what every LLM route did with one whole-request timeout)."""
    stack = await make_stack(llm_settings(hermes={"request_timeout_s": WHOLE_REQUEST_LIMIT_S}))
    body = generation(STREAM_TOKENS)
    pace = {"x-sample-token-interval-ms": str(TOKEN_MS)}
    unlimited = await stream(client, stack, "phi3", body, **pace)
    limited = await stream(client, stack, "hermes", body, **pace)

    assert (unlimited.status, unlimited.done, unlimited.cut) == (200, True, False)
    assert len(unlimited.tokens) == 1 + STREAM_TOKENS + 1  # role, tokens, finish
    assert unlimited.ended_s > WHOLE_REQUEST_LIMIT_S
    # Not buffered: the first chunk arrived long before the last was generated, and
    # the chunks arrived spread over the whole generation.
    first, last = unlimited.tokens[0], unlimited.tokens[-1]
    assert first < 1.0 and last - first > 0.75 * STREAM_TOKENS * TOKEN_MS / 1000

    assert (limited.status, limited.done, limited.cut) == (200, False, True)
    assert WHOLE_REQUEST_LIMIT_S <= limited.ended_s < WHOLE_REQUEST_LIMIT_S + 2
    assert 1 < len(limited.tokens) < STREAM_TOKENS


async def test_silent_stream_ends_at_idle_timeout_and_is_not_retried(
    make_stack: StackFactory, client: aiohttp.ClientSession
) -> None:
    """mixtral (idle_timeout 1 s) stalls after 3 tokens: Envoy ends the stream about 1 s
    later (the client sees its end, it does not hang), and does not run the generation
    again; a backend that drops the connection mid-stream is not retried either."""
    stack = await make_stack(llm_settings(mixtral={"idle_timeout_s": IDLE_S}))
    stalled = await stream(
        client,
        stack,
        "mixtral",
        generation(10),
        **{"x-sample-stall-after-tokens": "3", "x-sample-stall-ms": "4000"},
    )
    assert (stalled.status, stalled.done, stalled.cut) == (200, False, True)
    assert len(stalled.tokens) == 1 + 3
    silence = stalled.ended_s - stalled.tokens[-1]
    assert IDLE_S * 0.9 <= silence < IDLE_S + 2
    assert await served(client, stack, "mixtral") == 1

    broken = await stream(
        client, stack, "mixtral", generation(10), **{"x-sample-break-after-tokens": "2"}
    )
    assert (broken.status, broken.done, broken.cut) == (200, False, True)
    assert len(broken.tokens) == 1 + 2
    assert await served(client, stack, "mixtral") == 2
