"""The background audit writer against a real SqliteStore: records land in submission order,
a failing or hanging append is bounded, counted and skipped, a full queue drops its oldest
records, and a record the store cannot take does not stop the writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.daemon.audit_writer import AuditWriter
from orchestrator.store.base import JournalRecord, StoreUnavailable
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import eventually
from tests.unit import audit_records as ar


class FlakyStore(SqliteStore):
    """Appends of records whose detail says so fail, hang or raise something unexpected."""

    release: asyncio.Event | None = None

    async def append_journal(self, record: JournalRecord) -> None:
        if "hang" in record.detail:
            self.release = self.release or asyncio.Event()
            await self.release.wait()
        if "down" in record.detail:
            raise StoreUnavailable("injected")
        if "bug" in record.detail:
            raise RuntimeError("injected bug")
        await super().append_journal(record)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    s = await FlakyStore.open(tmp_path / "state.db")
    lease = await s.acquire_lease("node-a", 3600.0)
    assert lease is not None and lease.token == TOKEN
    try:
        yield s
    finally:
        if s.release is not None:
            s.release.set()
        await s.close()


async def started(writer: AuditWriter) -> AsyncIterator[None]:
    task = asyncio.create_task(writer.run())
    try:
        yield None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


TOKEN = 1  # the first lease's: the journal is fenced


def record(i: int, detail: str = "", token: int = TOKEN) -> JournalRecord:
    detail = detail or f'{{"phase": "p{i}"}}'
    return replace(ar.around()[1], at=ar.T0 + i, detail=detail, token=token)


async def test_records_land_in_order_and_failures_are_counted_and_skipped(
    store: FlakyStore,
) -> None:
    writer = AuditWriter(store, timeout=0.2)
    seen: list[str] = []
    writer.on_outcome = seen.append
    async for _ in started(writer):
        done = [writer.submit(record(i)) for i in range(3)]
        done.append(writer.submit(record(3, '{"down": 1}')))
        done.append(writer.submit(record(4, '{"bug": 1}')))
        done.append(writer.submit(record(5, '{"hang": 1}')))
        done.append(writer.submit(record(6, token=TOKEN + 1)))  # not the lease's token: fenced
        done.append(writer.submit(record(7)))
        assert await writer.flush(5.0)
        assert [await d for d in done] == [True, True, True, False, False, False, False, True]
    assert [r.at - ar.T0 for r in await store.read_journal()] == [0, 1, 2, 7]
    assert writer.counts == {"written": 4, "failed": 4, "dropped": 0}
    assert seen == ["written"] * 3 + ["failed"] * 4 + ["written"]


async def test_a_full_queue_drops_the_oldest_waiting_record(store: FlakyStore) -> None:
    writer = AuditWriter(store, timeout=5.0, max_pending=2)
    async for _ in started(writer):
        first = writer.submit(record(0, '{"hang": 1}'))
        await eventually(lambda: writer.pending == 0, "the first append to start")
        waiting = [writer.submit(record(i)) for i in (1, 2, 3)]
        assert writer.pending == 2 and waiting[0].done() and not waiting[0].result()
        assert store.release is not None
        store.release.set()
        assert await writer.flush(5.0)
        assert await first and await waiting[1] and await waiting[2]
    assert [r.at - ar.T0 for r in await store.read_journal()] == [0, 2, 3]
    assert writer.counts == {"written": 3, "failed": 0, "dropped": 1}


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        AuditWriter(None, timeout=0)  # type: ignore[arg-type]
