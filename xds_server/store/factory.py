"""factory: split from xds_server.store."""

from __future__ import annotations

from xds_server.settings import Settings
from xds_server.store.base import IntentStore
from xds_server.store.memory import MemoryStore
from xds_server.store.redis import RedisStore


def open_store(settings: Settings) -> IntentStore:
    """RedisStore when settings.redis_url is set (ROUTER_REDIS_URL), else MemoryStore."""
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.intent)
    return MemoryStore(settings.intent)
