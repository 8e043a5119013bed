"""The sample LLM and embedding backends speak the OpenAI API: the official `openai`
client parses every answer, streams included, straight from a sample backend."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from xds_server.samples import make_app

FAST_S = 0.001


@pytest.fixture
async def llm() -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(make_app("phi3", "llm", token_interval_s=FAST_S), host="127.0.0.1")
    )
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def embedding() -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(make_app("embedding-gpu0", "embedding"), host="127.0.0.1")
    )
    await client.start_server()
    yield client
    await client.close()


def _openai(client: TestClient[Any, Any]) -> openai.AsyncOpenAI:
    base_url = str(client.server.make_url("/v1"))
    return openai.AsyncOpenAI(base_url=base_url, api_key="sample", max_retries=0, timeout=10)


async def _sse_events(
    client: TestClient[Any, Any], body: dict[str, Any], **headers: str
) -> list[str]:
    """The raw `data:` payloads of one stream, in order."""
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = (await response.read()).decode()
    events = [event for event in raw.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


async def test_chat_completion_parses_with_openai_client(llm: TestClient[Any, Any]) -> None:
    """A non-streaming chat answer is a chat.completion echoing the requested model."""
    async with _openai(llm) as client:
        answer = await client.chat.completions.create(
            model="phi3:mini", messages=[{"role": "user", "content": "hello there"}]
        )
    assert answer.object == "chat.completion" and answer.model == "phi3:mini"
    assert answer.choices[0].message.content == "[phi3] hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)


async def test_chat_stream_parses_token_by_token(llm: TestClient[Any, Any]) -> None:
    """stream=true: a role chunk, one chunk per token, the finish reason, the usage chunk."""
    async with _openai(llm) as client:
        stream = await client.chat.completions.create(
            model="hermes",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {"hermes"}
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert tokens == ["[phi3]", " one", " two", " three"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_stream_without_include_usage_has_no_usage_and_ends_with_done(
    llm: TestClient[Any, Any],
) -> None:
    """As OpenAI: no usage unless asked; the last event is the literal [DONE]."""
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "stream": True}
    events = await _sse_events(llm, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" not in chunk and len(chunk["choices"]) == 1 for chunk in chunks)


async def test_max_tokens_cuts_and_ignore_eos_runs_to_it(llm: TestClient[Any, Any]) -> None:
    """max_tokens cuts the echo (finish_reason length); ignore_eos generates exactly max_tokens."""
    async with _openai(llm) as client:
        cut = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2
        )
        long = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a"}],
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [chunk async for chunk in long]
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("[phi3] a", "length")
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 50
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 50


async def test_completions_parse_streaming_and_not(llm: TestClient[Any, Any]) -> None:
    """/v1/completions: text_completion objects; 16 tokens by default, as OpenAI."""
    async with _openai(llm) as client:
        whole = await client.completions.create(model="mixtral-8x7b", prompt="say hi")
        stream = await client.completions.create(
            model="mixtral-8x7b", prompt=" ".join(["w"] * 40), stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert (whole.object, whole.model, whole.choices[0].text) == (
        "text_completion",
        "mixtral-8x7b",
        "[phi3] say hi",
    )
    texts = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert len(texts) == 16
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_embeddings_parse_with_openai_client(embedding: TestClient[Any, Any]) -> None:
    """/v1/embeddings serves the same OpenAI list as the spec's /api/v1/embeddings."""
    async with _openai(embedding) as client:
        answer = await client.embeddings.create(model="bge-small", input=["a", "b"])
    assert (answer.object, answer.model, len(answer.data)) == ("list", "bge-small", 2)
    assert [len(item.embedding) for item in answer.data] == [8, 8]
    spec = await embedding.post(
        "/api/v1/embeddings", json={"model": "bge-small", "input": ["a", "b"]}
    )
    assert [item["embedding"] for item in (await spec.json())["data"]] == [
        item.embedding for item in answer.data
    ]


async def test_the_spec_route_streams_too_and_keeps_its_shape(llm: TestClient[Any, Any]) -> None:
    """/api/v1/models/<name>/...: model is the backend (as before); stream=true streams."""
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await llm.post("/api/v1/models/phi3/chat/completions", json=body)
    raw = (await response.read()).decode()
    assert response.headers["x-backend"] == "phi3"
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["model"] for chunk in chunks} == {"phi3"}


async def test_stream_is_paced_and_the_pace_is_adjustable(llm: TestClient[Any, Any]) -> None:
    """The per-request header overrides the backend's pace: 10 tokens at 30 ms take >= 0.3 s."""
    body = {"model": "m", "messages": [{"role": "user", "content": "1 2 3 4 5 6 7 8 9"}]}
    started = time.monotonic()
    events = await _sse_events(
        llm, {**body, "stream": True}, **{"x-sample-token-interval-ms": "30"}
    )
    assert time.monotonic() - started >= 10 * 0.030
    assert len(events) == 1 + 10 + 1 + 1  # role, tokens, finish, [DONE]


async def test_break_after_tokens_drops_the_stream_unfinished(llm: TestClient[Any, Any]) -> None:
    """x-sample-break-after-tokens: the client gets those tokens, then the connection ends
    without the last chunk or [DONE]."""
    body = {"model": "m", "messages": [{"role": "user", "content": "1 2 3 4 5"}], "stream": True}
    response = await llm.post(
        "/v1/chat/completions", json=body, headers={"x-sample-break-after-tokens": "2"}
    )
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):  # ended before its chunked end
        async for piece in response.content.iter_any():
            received += piece
    events = [e for e in received.decode().split("\n\n") if e]
    assert len(events) == 3 and "[DONE]" not in received.decode()


async def test_bad_openai_requests_are_400(llm: TestClient[Any, Any]) -> None:
    """The openai client sees a BadRequestError for a malformed body, named by the sample."""
    async with _openai(llm) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], max_tokens=0
            )
    assert "max_tokens" in str(refused.value.body)
    for headers in ({"x-sample-stall-ms": "soon"}, {"x-sample-token-interval-ms": "-1"}):
        response = await llm.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers=headers,
        )
        assert response.status == 400 and response.headers["x-backend"] == "phi3"
