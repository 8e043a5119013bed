"""Redis plumbing shared by every Redis-backed part (intent store, shared health,
shared telemetry): connecting, the one place Redis errors become
`DependencyUnavailable`, reconnect back-off, and pub/sub draining.

Every call is bounded by `asyncio.timeout(COMMAND_TIMEOUT_S)` inside
`redis_errors`, not by redis-py's socket timeout: with a socket timeout
redis-py waits through `asyncio.wait_for`, which on Python 3.11 can lose a
cancellation (https://github.com/python/cpython/issues/86296), and a task
asked to stop would keep running."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from xds_server.errors import DependencyUnavailable, OutcomeUnknown

log = logging.getLogger("xds_server.redis_store")


CONNECT_TIMEOUT_S = 1.0


COMMAND_TIMEOUT_S = 2.0


PING_TIMEOUT_S = 1.0  # a Redis that does not answer a heartbeat within this is "unavailable"


HEARTBEAT_S = 1.0  # how often a follower checks that Redis answers (and holds what it did)


BACKOFF_START_S = 0.05


BACKOFF_MAX_S = 1.0  # reconnect attempts at least once a second: recovery is quick


LISTEN_TIMEOUT_S = 0.5  # how often a listener looks up from pub/sub (its health, expiries)


DRAIN_MAX = 1000  # notifications coalesced into one read


def backoff_s(
    attempt: int, start_s: float = BACKOFF_START_S, cap_s: float = BACKOFF_MAX_S
) -> float:
    """Exponential, capped, jittered (so replicas do not retry in lockstep)."""
    return min(cap_s, start_s * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0)


def connect(url: str) -> Redis:
    """A client whose every call fails fast: no hidden retries, bounded connects.
    Reconnecting is this store's job, so that a resync follows every reconnect.
    Calls are bounded by `redis_errors`, not by a socket_timeout (see there why)."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=None,  # not redis-py's default (5 s): see redis_errors
        retry=Retry(NoBackoff(), 0),
    )
    return client


@contextlib.asynccontextmanager
async def redis_errors(
    doing: str, *, timeout_s: float = COMMAND_TIMEOUT_S, writes_revision: int | None = None
) -> AsyncIterator[None]:
    """The one place where Redis errors become DependencyUnavailable, and where Redis
    calls are bounded (`timeout_s`, COMMAND_TIMEOUT_S by default, for the whole block).

    `writes_revision`: the block sends a write that would make that revision. A
    timeout or a broken connection then leaves its outcome unknown (Redis may have
    run it and the answer been lost, or may still run it), raised as OutcomeUnknown;
    an error answer from Redis is still a plain refusal.

    The bound is ours rather than redis-py's socket_timeout: given one, redis-py
    sends through asyncio.wait_for, which on Python 3.11 loses a cancellation that
    arrives as the send completes (CPython gh-86296). A loop calling Redis then
    outlives its cancellation, and a controller asked to stop never ends (measured:
    about 1 in 3 cancellations of a task looping on HGET survived)."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (RedisError, OSError) as error:  # OSError: socket errors, and our TimeoutError
        what = str(error) or f"no answer within {timeout_s:g} s"  # TimeoutError says nothing
        if writes_revision is not None and not isinstance(error, ResponseError):
            raise OutcomeUnknown(
                f"Redis did not answer while {doing}: {what}", writes_revision
            ) from error
        raise DependencyUnavailable(f"Redis unavailable while {doing}: {what}") from error


def as_text(value: bytes | str) -> str:
    """A reply as str (the client decodes responses; its types allow bytes too)."""
    return value.decode() if isinstance(value, bytes) else value


async def reconnecting(
    follow: Callable[[], Awaitable[None]], subscriptions: Callable[[], int], meanwhile: str
) -> None:
    """Run `follow` (one subscription's life) again and again until cancelled, with
    bounded backoff. `subscriptions` counts the subscriptions that worked: once one
    did since the last failure, the backoff starts from scratch and the next outage
    is logged again (one warning per outage, saying what is done `meanwhile`)."""
    attempt = 0
    while True:
        subscribed = subscriptions()
        try:
            await follow()
        except DependencyUnavailable as error:
            if subscribed != subscriptions() or attempt == 0:
                log.warning("Redis unreachable, %s: %s", meanwhile, error)
        attempt = 0 if subscribed != subscriptions() else attempt + 1
        await asyncio.sleep(backoff_s(attempt))


async def notifications(pubsub: PubSub) -> list[str]:
    """The data of the messages published within LISTEN_TIMEOUT_S; a burst is drained
    at once (up to DRAIN_MAX), so that it costs one read of what it names."""
    data: list[str] = []
    message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
    for _ in range(DRAIN_MAX):
        if message is None:
            break
        if message.get("type") == "message":
            data.append(message["data"])
        message = await pubsub.get_message(timeout=0)
    return data


async def confirmed(pubsub: PubSub) -> None:
    """Wait for the server's subscribe confirmation, so that a write made after it is
    certain to be notified (a read made after it then misses nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COMMAND_TIMEOUT_S
    while loop.time() < deadline:
        message = await pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
        if message is not None and message.get("type") == "subscribe":
            return
    raise TimeoutError("no subscribe confirmation from Redis")
