"""LLM retries through a real Envoy 1.40: a failure before any response byte (a 503
the backend answers once) is retried and the client gets its generation; anything
that may have done work (a 500) is not; a started generation is never run twice
(tests/e2e/test_llm_streaming.py shows the stalled and the broken stream)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.test_llm_streaming import client, generation, llm_settings, stream
from tests.e2e.test_resilience import envoy_counter, served, set_fault

pytestmark = pytest.mark.envoy
__all__ = ["client"]  # the fixture, shared


async def test_a_503_before_any_byte_is_retried_a_500_is_not(
    make_stack: StackFactory, client: aiohttp.ClientSession
) -> None:
    """phi3's retry_on (connect-failure, refused-stream, reset-before-request, 503): one
    503 costs the client nothing (the backend counts 2 requests, the client gets the
    whole stream); one 500 reaches the client as it is (the backend counts 1)."""
    stack = await make_stack(llm_settings())
    await set_fault(client, stack, "phi3", status=503, times=1)
    retried = await stream(client, stack, "phi3", generation(5))
    assert (retried.status, retried.done) == (200, True)
    assert await served(client, stack, "phi3") == 2
    assert await envoy_counter(stack, "cluster.phi3.upstream_rq_retry") == 1

    await set_fault(client, stack, "phi3", status=500, times=1)
    failed = await stream(client, stack, "phi3", generation(5))
    assert failed.status == 500
    assert await served(client, stack, "phi3") == 3
    assert await envoy_counter(stack, "cluster.phi3.upstream_rq_retry") == 1
