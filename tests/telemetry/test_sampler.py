"""When an admin change's one reading stands for the publisher's pre-change reading
(telemetry/sampler.py), and when the publisher's hook reads again. No Envoy: the
sampler's reader is replaced by one that counts its reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from tests.factories import local_settings
from xds_server.telemetry import sampler as sampler_module
from xds_server.telemetry.envoy_stats import HostStats, TrafficReading
from xds_server.telemetry.sampler import MemoryLedger, TrafficSampler
from xds_server.xds.status import ProxyRegistry, ProxyStatus


class CountingReader:
    def __init__(self) -> None:
        self.reads = 0
        self.gate: asyncio.Event | None = None  # set: each read waits for it

    async def traffic(self, proxies: Iterable[ProxyStatus]) -> list[TrafficReading]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return []

    async def aclose(self) -> None:
        pass


@pytest.fixture
def sampler() -> TrafficSampler:
    intent = local_settings().intent
    made = TrafficSampler(ProxyRegistry(), lambda: intent)
    made.reader = CountingReader()  # type: ignore[assignment]
    return made


def reads(sampler: TrafficSampler) -> int:
    reader = sampler.reader
    assert isinstance(reader, CountingReader)
    return reader.reads


async def test_without_an_admin_reading_the_hook_reads(sampler: TrafficSampler) -> None:
    await sampler.before_cluster_change()
    assert reads(sampler) == 1 and sampler.hook_reads == 1


async def test_an_admin_reading_covers_one_cluster_change(sampler: TrafficSampler) -> None:
    """Read once for the change; the hook of its publish reads nothing. A second
    cluster change in the same call (another writer's) is not covered."""
    async with sampler.covering_change():
        assert reads(sampler) == 1
        await sampler.before_cluster_change()
        assert reads(sampler) == 1 and sampler.hook_reads == 0
        await sampler.before_cluster_change()
        assert reads(sampler) == 2 and sampler.hook_reads == 1


async def test_a_finished_admin_change_covers_nothing(sampler: TrafficSampler) -> None:
    async with sampler.covering_change():
        pass
    await sampler.before_cluster_change()
    assert reads(sampler) == 2


async def test_an_old_admin_reading_covers_nothing(
    sampler: TrafficSampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish held off past MAX_COVER_AGE_S reads again."""
    monkeypatch.setattr(sampler_module, "MAX_COVER_AGE_S", 0.01)
    async with sampler.covering_change():
        await asyncio.sleep(0.02)
        await sampler.before_cluster_change()
    assert reads(sampler) == 2


async def test_another_changes_hook_may_use_an_admin_reading_under_way(
    sampler: TrafficSampler,
) -> None:
    """Another cluster change is published while an admin reading is under way: its
    hook waits for that reading instead of reading itself. The reading is then used
    up, and the admin change's own publish reads again."""
    reader = sampler.reader
    assert isinstance(reader, CountingReader)
    reader.gate = asyncio.Event()
    async with sampler.covering_change() as reading:
        other = asyncio.create_task(sampler.before_cluster_change())
        await asyncio.sleep(0)
        assert not other.done()  # waiting for the admin reading
        reader.gate.set()
        await reading
        await other
        assert reads(sampler) == 1 and sampler.hook_reads == 0
        await sampler.before_cluster_change()
    assert reads(sampler) == 2 and sampler.hook_reads == 1


async def test_a_reading_begun_during_another_changes_hook_covers_nothing(
    sampler: TrafficSampler,
) -> None:
    """An admin reading begun while another cluster change's hook ran may be taken
    before that change's rebuild, so it cannot stand for the next one."""
    reader = sampler.reader
    assert isinstance(reader, CountingReader)
    reader.gate = asyncio.Event()
    other = asyncio.create_task(sampler.before_cluster_change())
    await asyncio.sleep(0)  # its reading waits on Envoy
    async with sampler.covering_change() as reading:
        reader.gate.set()
        await other
        await reading
        assert reads(sampler) == 2 and sampler.hook_reads == 1
        await sampler.before_cluster_change()  # the admin change's own publish
    assert reads(sampler) == 3 and sampler.hook_reads == 2


async def test_a_failure_to_count_does_not_fail_the_change(sampler: TrafficSampler) -> None:
    """Ledgers report outages as data; should one raise all the same (a bug), the
    admin change still gets its figures, read once more, as the hook's own reading
    would have failed alike."""

    class Broken(MemoryLedger):
        async def apply(self, *_args: object) -> None:
            raise RuntimeError("a bug")

    sampler.ledger = Broken()
    async with sampler.covering_change() as reading:
        assert await reading == []
    assert reads(sampler) == 2


async def test_every_reading_feeds_the_passive_view() -> None:
    """The sampler's readings (periodic, pre-change, covering) are where Envoy's
    ejections come from: no admin read of their own (telemetry/passive.py)."""
    intent = local_settings().intent
    primary = next(b for b in intent.backends() if b.name == "qdrant-primary")
    ejected = HostStats(
        "qdrant", primary.name, "127.0.0.1:1", health={"failed_outlier_check": True}
    )

    class EjectingReader(CountingReader):
        async def traffic(self, proxies: Iterable[ProxyStatus]) -> list[TrafficReading]:
            self.reads += 1
            return [TrafficReading("envoy-a", "127.0.0.1:1", hosts=(ejected,))]

    made = TrafficSampler(ProxyRegistry(), lambda: intent)
    made.reader = EjectingReader()  # type: ignore[assignment]
    await made.before_cluster_change()
    assert [e.node_id for e in made.passive.ejected_by("qdrant-primary")] == ["envoy-a"]
