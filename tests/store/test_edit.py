"""store.base.edit with the memory store: the change and its check run outside the
store, once; a moved revision makes them run again; a refusal stores nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from tests.factories import local_settings
from xds_server.errors import Conflict, NotFound
from xds_server.model.intent import Intent, Strategy
from xds_server.store.base import edit
from xds_server.store.memory import MemoryStore


def random_default(intent: Intent) -> Intent:
    return dataclasses.replace(intent, default_strategy=Strategy.RANDOM)


async def test_compare_and_put_refuses_a_moved_revision() -> None:
    store = MemoryStore(local_settings().intent)
    computed_at = store.revision
    await store.update(random_default)
    stale = dataclasses.replace(store.intent, default_strategy=Strategy.MAGLEV)
    assert await store.compare_and_put(stale, computed_at) is None
    assert store.intent.default_strategy is Strategy.RANDOM and store.revision == 2


async def test_an_edit_checks_once_and_stores_what_it_checked() -> None:
    store = MemoryStore(local_settings().intent)
    checked: list[Intent] = []
    edited = await edit(store, random_default, checked.append)
    assert checked == [edited.after] and store.intent is edited.after
    assert edited.before.default_strategy is not Strategy.RANDOM
    assert edited.revision == store.revision == 2


class Contended(MemoryStore):
    """A store where another writer's change lands just before the first put."""

    def __init__(self, intent: Intent, rival: Callable[[Intent], Intent]) -> None:
        super().__init__(intent)
        self._rival: Callable[[Intent], Intent] | None = rival

    async def compare_and_put(self, intent: Intent, revision: int) -> int | None:
        if self._rival is not None:
            rival, self._rival = self._rival, None
            await super().compare_and_put(rival(self.intent), self.revision)
        return await super().compare_and_put(intent, revision)


async def test_an_edit_whose_revision_moved_computes_and_checks_again() -> None:
    store = Contended(local_settings().intent, random_default)
    checked: list[Intent] = []
    edited = await edit(
        store, lambda i: dataclasses.replace(i, services=i.services[:1]), checked.append
    )
    assert len(checked) == 2 and checked[1].default_strategy is Strategy.RANDOM
    assert edited.after == store.intent and len(store.intent.services) == 1
    assert store.intent.default_strategy is Strategy.RANDOM and store.revision == 3


async def test_a_refused_edit_stores_nothing() -> None:
    store = MemoryStore(local_settings().intent)
    before = store.intent

    def refuse(_intent: Intent) -> None:
        raise NotFound("refused by the check")

    with pytest.raises(NotFound):
        await edit(store, random_default, refuse)
    assert store.intent is before and store.revision == 1


async def test_an_edit_that_always_loses_gives_up_with_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore(local_settings().intent)

    async def always_moved(_intent: Intent, _revision: int) -> int | None:
        return None

    monkeypatch.setattr(store, "compare_and_put", always_moved)
    monkeypatch.setattr("xds_server.store.base.MAX_ATTEMPTS", 3)
    monkeypatch.setattr("xds_server.store.base.backoff_s", lambda *_: 0.0)
    with pytest.raises(Conflict):
        await edit(store, random_default)


async def test_an_edit_is_stored_only_once_it_is_ready() -> None:
    """`ready` (the admin API's reading before a change) runs while the change is
    computed and checked, and the change lands only once it is complete."""
    store = MemoryStore(local_settings().intent)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    checked: list[Intent] = []
    editing = asyncio.create_task(edit(store, random_default, checked.append, ready=ready))
    await asyncio.sleep(0.01)
    assert len(checked) == 1 and store.revision == 1  # checked, not stored
    ready.set_result(None)
    edited = await editing
    assert edited.revision == store.revision == 2 and len(checked) == 1
