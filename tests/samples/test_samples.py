"""Sample backends: routes of each kind, the backend marker, fault injection, their CLI."""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import xds_server
from tests.tls_support import Pki
from xds_server.proxy.processes import start_process
from xds_server.samples import make_app

REPO_ROOT = Path(xds_server.__file__).resolve().parents[1]


@pytest.fixture
async def client_of() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def make(name: str, kind: str) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(name, kind)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def _post(client: TestClient[Any, Any], path: str, body: object) -> tuple[int, Any, str]:
    response = await client.post(path, json=body)
    return response.status, await response.json(), response.headers.get("x-backend", "")


async def test_qdrant_search_is_deterministic_and_marked(client_of: Any) -> None:
    """A vector search returns qdrant-shaped hits, equal for equal input, naming the backend."""
    client = await client_of("qdrant-primary", "qdrant")
    body = {"query_vector": [0.1, 0.2, 0.3], "collection": "test"}
    status, first, header = await _post(client, "/api/v1/vectors/search", body)
    _, second, _ = await _post(client, "/api/v1/vectors/search", body)
    assert (status, header, first["backend"], first["status"]) == (
        200,
        "qdrant-primary",
        "qdrant-primary",
        "ok",
    )
    assert first["result"] == second["result"]
    scores = [hit["score"] for hit in first["result"]]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(hit["id"], int) and "payload" in hit for hit in first["result"])
    assert isinstance(first["time"], float)


async def test_qdrant_rejects_malformed_body_as_json(client_of: Any) -> None:
    """A body that is not JSON, or has no vector, gets a 400 JSON error naming the backend."""
    client = await client_of("qdrant-primary", "qdrant")
    response = await client.post("/api/v1/vectors/search", data=b"{not json")
    assert response.status == 400
    assert response.headers["x-backend"] == "qdrant-primary"
    assert (await response.json())["backend"] == "qdrant-primary"
    status, body, _ = await _post(client, "/api/v1/vectors/search", {"query_vector": []})
    assert status == 400 and "query_vector" in body["error"]


async def test_embeddings_are_openai_shaped_and_deterministic(client_of: Any) -> None:
    """Each input text gets one 8-float embedding, a hash of the text."""
    client = await client_of("embedding-gpu0", "embedding")
    status, body, header = await _post(
        client, "/api/v1/embeddings", {"input": ["hello", "world", "hello"], "model": "m"}
    )
    assert (status, header, body["backend"], body["object"], body["model"]) == (
        200,
        "embedding-gpu0",
        "embedding-gpu0",
        "list",
        "m",
    )
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    _, single, _ = await _post(client, "/api/v1/embeddings", {"input": "hello"})
    assert single["data"][0]["embedding"] == vectors[0]


async def test_llm_answers_a_chat_completion_as_itself(client_of: Any) -> None:
    """Any path under /api/v1/models/ answers a chat.completion whose model is the backend."""
    client = await client_of("phi3", "llm")
    chat = {"model": "x", "messages": [{"role": "user", "content": "hi there"}]}
    status, body, header = await _post(client, "/api/v1/models/phi3/chat/completions", chat)
    assert (status, header, body["backend"], body["model"]) == (200, "phi3", "phi3", "phi3")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert "hi there" in body["choices"][0]["message"]["content"]


async def test_health_and_unknown_routes_are_marked(client_of: Any) -> None:
    """/health answers ok; even aiohttp's own 404 carries the backend marker as JSON."""
    client = await client_of("hermes", "llm")
    health = await client.get("/health")
    assert health.status == 200
    assert await health.json() == {"status": "ok", "backend": "hermes"}
    missing = await client.get("/nope")
    assert (missing.status, missing.headers["x-backend"]) == (404, "hermes")
    assert (await missing.json())["backend"] == "hermes"


async def test_fault_injection_flips_status_and_back(client_of: Any) -> None:
    """An injected 503 hits traffic but not /health; status 200 heals; stats count traffic."""
    client = await client_of("embedding-gpu1", "embedding")
    request = {"input": "x"}
    status, fault, _ = await _post(client, "/_control/fault", {"status": 503})
    assert (status, fault["status"], fault["delay_ms"]) == (200, 503, 0.0)
    status, body, header = await _post(client, "/api/v1/embeddings", request)
    assert (status, header, body["backend"]) == (503, "embedding-gpu1", "embedding-gpu1")
    assert (await client.get("/health")).status == 200
    await _post(client, "/_control/fault", {"status": 200})
    assert (await _post(client, "/api/v1/embeddings", request))[0] == 200
    stats = await (await client.get("/_control/stats")).json()
    assert (stats["requests"], stats["health_requests"]) == (2, 1)


async def test_health_fault_and_delay(client_of: Any) -> None:
    """health_status fails /health only; delay_ms holds requests; bad settings are 400."""
    client = await client_of("mixtral", "llm")
    await _post(client, "/_control/fault", {"health_status": 503, "delay_ms": 50})
    health = await client.get("/health")
    assert (health.status, (await health.json())["status"]) == (503, "unhealthy")
    current = await (await client.get("/_control/fault")).json()
    assert current == {
        "status": None,
        "times": None,
        "delay_ms": 50.0,
        "health_status": 503,
        "backend": "mixtral",
    }
    bad_settings: list[object] = [{"status": 302}, {"delay_ms": -1}, {"colour": "red"}, [1]]
    bad_settings += [{"times": 1}, {"status": 503, "times": 0}]
    for bad in bad_settings:
        assert (await _post(client, "/_control/fault", bad))[0] == 400


async def test_fault_for_a_number_of_times_heals_itself(client_of: Any) -> None:
    """status with times answers that status to the next `times` requests only."""
    client = await client_of("phi3", "llm")
    status, fault, _ = await _post(client, "/_control/fault", {"status": 503, "times": 2})
    assert (status, fault["status"], fault["times"]) == (200, 503, 2)
    chat = {"model": "phi3", "messages": [{"role": "user", "content": "hi"}]}
    answers = [(await _post(client, "/v1/chat/completions", chat))[0] for _ in range(3)]
    assert answers == [503, 503, 200]
    current = await (await client.get("/_control/fault")).json()
    assert (current["status"], current["times"]) == (None, None)


async def test_unknown_kind_is_refused() -> None:
    """make_app names the valid kinds instead of building a backend that answers nothing."""
    with pytest.raises(ValueError, match="qdrant"):
        make_app("x", "redis")


async def test_cli_prints_ready_with_real_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m xds_server.samples --port 0` prints READY with the bound port and exits 0
    on SIGTERM."""
    argv = [sys.executable, "-m", "xds_server.samples", "--name", "qdrant-primary"]
    argv += ["--kind", "qdrant", "--host", "127.0.0.1", "--port", "0"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = await start_process(
        argv, ready_line_prefix="READY ", timeout_s=20, env=env, log_path=tmp_path / "out.log"
    )
    try:
        assert child.ready_line is not None
        _, name, address = child.ready_line.split()
        host, port = address.rsplit(":", 1)
        assert (name, host) == ("qdrant-primary", "127.0.0.1") and int(port) > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{address}/health", timeout=aiohttp.ClientTimeout(5)) as resp,
        ):
            assert resp.headers["x-backend"] == "qdrant-primary"
    finally:
        code = await child.stop(grace_s=5)
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)


def test_cli_refuses_a_negative_token_interval(capsys: pytest.CaptureFixture[str]) -> None:
    """--token-interval-ms sets the LLM pace; a negative one is a one-line error, exit 2."""
    from xds_server.samples.__main__ import main

    argv = ["--name", "phi3", "--kind", "llm", "--port", "0", "--token-interval-ms", "-1"]
    assert main(argv) == 2
    assert "token_interval_s" in capsys.readouterr().err


async def test_cli_serves_https_with_tls_cert_and_key(tmp_path: Path) -> None:
    """--tls-cert/--tls-key: the sample answers over HTTPS with that certificate
    (verified against the test's CA and name); plain HTTP gets no answer."""
    pki = Pki(tmp_path)
    cert, key = pki.backend_files("llm.test")
    argv = [sys.executable, "-m", "xds_server.samples", "--name", "llm-tls", "--kind", "llm"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = await start_process(
        argv, ready_line_prefix="READY ", timeout_s=20, env=env, log_path=tmp_path / "out.log"
    )
    try:
        assert child.ready_line is not None
        address = child.ready_line.split()[2]
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        timeout = aiohttp.ClientTimeout(5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = f"https://{address}/health"
            async with session.get(url, ssl=context, server_hostname="llm.test") as resp:
                assert resp.status == 200 and resp.headers["x-backend"] == "llm-tls"
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://{address}/health") as plain:
                    await plain.read()
    finally:
        assert await child.stop(grace_s=5) == 0


def test_cli_wants_tls_cert_and_key_together(capsys: pytest.CaptureFixture[str]) -> None:
    """One without the other is a usage error (exit 2) naming both."""
    from xds_server.samples.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--name", "x", "--kind", "llm", "--tls-cert", "c.pem"])
    assert exited.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
