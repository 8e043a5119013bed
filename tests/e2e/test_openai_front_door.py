"""The OpenAI-compatible front door end to end, through the official `openai` client.

One stack for the module (sample backends, controller, real Envoy 1.40): the
client is pointed at the router's `/v1` base URL, as a user would, and names
the model in the body; Envoy alone picks the service (translate/openai.py).
Which backend answered is visible twice: the sample's `x-backend` header and
its answer, which starts with `[<backend>]`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.e2e.backends import control, served
from tests.factories import local_settings
from tests.support import eventually
from xds_server.demo import Stack, running_stack

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

LLMS = ("phi3", "hermes", "mixtral")  # each also the name of its one sample backend
EMBEDDING_MODEL = "sample-embedding"
HELLO = [{"role": "user", "content": "hello router"}]
# Envoy's default route timeout, the router's request_timeout until per-service
# timeouts: a generation that streams longer than this was cut off before.
OLD_TIMEOUT_S = 15.0
LONG_TOKENS = 1000
CLIENT_TIMEOUT_S = 120.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("openai-stack")
    async with running_stack(local_settings(worker_threads=2), workdir=workdir) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client on the router's base URL; no client retries, so every
    retry seen is Envoy's."""
    base_url = f"http://{stack.controller.store.intent.listen}/v1"
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def total_served(http: aiohttp.ClientSession, stack: Stack) -> int:
    names = [b.name for b in stack.controller.store.intent.backends()]
    return sum([await served(http, stack, name) for name in names])


async def test_models_list_shows_the_declared_models(client: openai.AsyncOpenAI) -> None:
    """models.list() is Envoy's direct response, built from the shipped config."""
    page = await client.models.list()
    listed = {(m.id, m.owned_by, m.object) for m in page.data}
    assert listed == {
        (EMBEDDING_MODEL, "embedding", "model"),
        *((llm, llm, "model") for llm in LLMS),
    }


@pytest.mark.parametrize("model", LLMS)
async def test_chat_completion_reaches_the_models_backend(
    client: openai.AsyncOpenAI, model: str
) -> None:
    """The body's model alone picks the backend: same URL, three answers."""
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    answer = raw.parse()
    assert raw.headers["x-backend"] == model
    assert answer.model == model
    content = answer.choices[0].message.content
    assert content == f"[{model}] hello router"


async def test_legacy_completion_is_routed_by_model(client: openai.AsyncOpenAI) -> None:
    raw = await client.completions.with_raw_response.create(
        model="hermes", prompt="say hi", max_tokens=5
    )
    assert raw.headers["x-backend"] == "hermes"
    assert raw.parse().choices[0].text.startswith("[hermes]")


async def test_embeddings_are_routed_by_model(client: openai.AsyncOpenAI) -> None:
    raw = await client.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=["one", "two"]
    )
    answer = raw.parse()
    assert raw.headers["x-backend"] in {"embedding-gpu0", "embedding-gpu1"}
    assert [d.index for d in answer.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in answer.data)


async def test_stream_arrives_incrementally(client: openai.AsyncOpenAI) -> None:
    """stream=True through Envoy: chunks arrive as generated, not buffered to the
    end. 100 tokens at the sample's 20 ms pace take ~2 s; the first chunk comes
    long before the last (the body filter buffers the request, never the response)."""
    started = time.monotonic()
    arrivals: list[float] = []
    text = []
    stream = await client.chat.completions.create(
        model="mixtral",
        messages=HELLO,
        stream=True,
        max_tokens=100,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    first, last = arrivals[0], arrivals[-1]
    print(f"stream: first chunk {first * 1000:.0f} ms, last {last * 1000:.0f} ms")
    assert len(text) == 100 and text[0] == "[mixtral]"
    assert first < last / 4, arrivals


async def test_long_generation_outlasts_the_old_timeout(client: openai.AsyncOpenAI) -> None:
    """A 1,000-token stream at 50 tokens/s lasts ~20 s, longer than the 15 s that
    used to cut every request off. Needs the per-service request and idle
    timeouts (branch llmstream): with a 15 s route timeout Envoy resets the
    stream and the client sees fewer tokens or an error."""
    started = time.monotonic()
    tokens = 0
    stream = await client.chat.completions.create(
        model="phi3",
        messages=HELLO,
        stream=True,
        max_tokens=LONG_TOKENS,
        extra_body={"ignore_eos": True},
    )
    finish = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    took = time.monotonic() - started
    assert took > OLD_TIMEOUT_S
    assert (tokens, finish) == (LONG_TOKENS, "length")


async def test_unknown_model_is_not_found_and_reaches_no_backend(
    client: openai.AsyncOpenAI, stack: Stack, http: aiohttp.ClientSession
) -> None:
    before = await total_served(http, stack)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-9", messages=HELLO)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and "`gpt-9`" in body["message"]
    assert caught.value.response.headers["content-type"] == "application/json"
    assert await total_served(http, stack) == before


async def test_missing_model_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    """The client's own create() insists on a model, so the raw POST sends none."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", cast_to=object, body={"messages": HELLO})
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert "model" in body["message"]


async def test_a_body_that_is_not_json_is_a_bad_request(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """curl -d 'oops' (form content type and all): 400, OpenAI's error shape."""
    url = f"http://{stack.controller.store.intent.listen}/v1/embeddings"
    async with http.post(url, data="oops") as response:
        assert response.status == 400
        assert response.headers["content-type"] == "application/json"
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


async def test_front_door_requests_get_the_services_retries(
    client: openai.AsyncOpenAI, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """embedding-gpu0 answering 503: every embeddings call still succeeds, from
    gpu1, and gpu0 counted the attempts Envoy retried away from it: the model
    route carries the service's retry policy."""
    before = await served(http, stack, "embedding-gpu0")
    async with http.post(control(stack, "embedding-gpu0", "fault"), json={"status": 503}) as r:
        assert r.status == 200
    try:
        answered = []
        for _ in range(4):
            raw = await client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="x")
            answered.append(raw.headers["x-backend"])
    finally:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(
                control(stack, "embedding-gpu0", "fault"), json={"status": None}
            ) as r:
                assert r.status == 200
    assert set(answered) == {"embedding-gpu1"}
    assert await served(http, stack, "embedding-gpu0") > before


async def test_metrics_split_by_model_and_time_whole_streams(
    client: openai.AsyncOpenAI, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """/api/v1/router/metrics and /metrics count hermes's front door requests, its
    streamed answer apart, and time that stream to its end: 50 tokens at the
    sample's 20 ms pace cannot take under a second, and Envoy's figure says so."""
    admin = f"http://{stack.controller.admin_address}"

    async def hermes() -> dict[str, Any]:
        async with http.get(f"{admin}/api/v1/router/metrics") as response:
            assert response.status == 200
            figures: dict[str, Any] = (await response.json())["models"]["by_model"]["hermes"]
            return figures

    before = await hermes()
    for _ in range(2):
        await client.chat.completions.create(model="hermes", messages=HELLO)
    started = time.monotonic()
    stream = await client.chat.completions.create(
        model="hermes", messages=HELLO, stream=True, max_tokens=50, extra_body={"ignore_eos": True}
    )
    async for _ in stream:
        pass
    took_ms = (time.monotonic() - started) * 1000

    async def counted() -> bool:
        # Envoy publishes histograms at its stats flush (1 s in our bootstraps).
        now = await hermes()
        return (
            now["requests"] - before["requests"] == 3
            and now["streamed_responses"] - before["streamed_responses"] == 1
            and now["avg_stream_duration_ms"] is not None
        )

    await eventually(counted, timeout_s=10, interval_s=0.5)
    after = await hermes()
    print(f"hermes stream: client {took_ms:.0f} ms, Envoy {after['avg_stream_duration_ms']} ms")
    assert before["streamed_responses"] == 0  # so the average is this one stream's
    assert 50 * 20 <= after["avg_stream_duration_ms"] <= took_ms + 50
    assert after["service"] == "hermes" and after["failed_requests"] == before["failed_requests"]
    async with http.get(f"{admin}/metrics") as response:
        lines = set((await response.text()).splitlines())
    streamed = 'xds_server_model_streamed_responses_total{model="hermes",service="hermes"} 1.0'
    assert streamed in lines, sorted(x for x in lines if "model_" in x)


async def test_a_body_over_the_buffer_limit_is_refused_and_reaches_no_backend(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """The filter buffers the body to read `model`, within the front door routes'
    body buffer (router.edge.request_body_buffer_limit_bytes, 1 MiB): a larger
    body is Envoy's 413, never a guess at a route. (The sample backends refuse
    bodies over 1 MiB too: aiohttp's client_max_size.)"""
    before = await total_served(http, stack)
    url = f"http://{stack.controller.store.intent.listen}/v1/chat/completions"
    big = {"model": "phi3", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    async with http.post(url, json=big) as response:
        assert response.status == 413
        assert "x-backend" not in response.headers
    assert await total_served(http, stack) == before


async def test_a_body_over_the_limit_is_an_openai_error_for_the_client(
    client: openai.AsyncOpenAI, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Envoy's own 413 on an OpenAI path is reshaped (the listener's
    local_reply_config): the official client gets an APIStatusError whose body
    is OpenAI's error object, not Envoy's plain "Payload Too Large"."""
    before = await total_served(http, stack)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="phi3", messages=[{"role": "user", "content": "x" * 2_000_000}]
        )
    assert caught.value.status_code == 413
    assert caught.value.response.headers["content-type"] == "application/json"
    body = caught.value.body
    assert isinstance(body, dict), body
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["code"], body["param"]) == (
        "invalid_request_error",
        "request_too_large",
        None,
    )
    assert "1048576 bytes" in body["message"]
    assert await total_served(http, stack) == before


@pytest.mark.parametrize("model", [5, True, 1.5])
async def test_a_model_that_is_not_a_string_is_a_bad_request(
    client: openai.AsyncOpenAI, stack: Stack, http: aiohttp.ClientSession, model: object
) -> None:
    """`"model": 5` names no model: 400 invalid_type on param `model`, OpenAI's
    own answer to a wrong type, not a 404 for a model called "5"."""
    before = await total_served(http, stack)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post(
            "/chat/completions", cast_to=object, body={"model": model, "messages": HELLO}
        )
    body = caught.value.body
    assert isinstance(body, dict), body
    assert (body["type"], body["param"], body["code"]) == (
        "invalid_request_error",
        "model",
        "invalid_type",
    )
    assert "string" in body["message"]
    assert caught.value.response.headers["content-type"] == "application/json"
    assert await total_served(http, stack) == before


async def test_a_long_prompt_past_the_connection_buffer_is_routed_by_model(
    client: openai.AsyncOpenAI,
) -> None:
    """A 200 KB prompt is far past the listener's 32 KiB connection buffer
    (router.edge.per_connection_buffer_limit_bytes): the front door's routes
    raise the limit to the body buffer, so the filter can read `model`."""
    answer = await client.chat.completions.create(
        model="hermes", messages=[{"role": "user", "content": "y" * 200_000}], max_tokens=3
    )
    assert answer.model == "hermes"
