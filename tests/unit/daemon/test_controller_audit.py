"""The controller's audit records, against a real SqliteStore on a virtual clock: a decision
change is journaled once by the leader with its evidence, the decision that starts a run is
the last decision before its run_started and names it, followers write nothing, and a slow
or failing store neither blocks nor breaks the engine pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.daemon.audit_writer import AuditWriter
from orchestrator.daemon.controller import Controller
from orchestrator.engine.state import LagReading
from orchestrator.incident_report import render
from orchestrator.store.base import JournalRecord, JournalStatus, StoreUnavailable
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.unit.daemon.controller_support import region_down, running, see
from tests.unit.runbook.fakes import ScriptedAction


class TapStore(SqliteStore):
    """A real SqliteStore whose decision appends can be made to fail or hang."""

    fail_decisions = False
    hang: asyncio.Event | None = None

    async def append_journal(self, record: JournalRecord) -> None:
        if record.status is JournalStatus.DECISION:
            if self.hang is not None:
                await self.hang.wait()
            if self.fail_decisions:
                raise StoreUnavailable("injected: the store is down")
        await super().append_journal(record)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TapStore]:
    s = await TapStore.open(tmp_path / "state.db")
    try:
        yield s
    finally:
        if s.hang is not None:
            s.hang.set()
        await s.close()


async def decisions(store: SqliteStore) -> list[JournalRecord]:
    return [r for r in await store.read_journal("shop") if r.status is JournalStatus.DECISION]


async def writer_running(c: Controller) -> AsyncIterator[None]:
    task = asyncio.create_task(c.audit.run())
    try:
        yield None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def healthy(c: Controller, clock: VirtualClock) -> None:
    for _ in range(3):
        clock.advance(1.0)
        see(c, clock, "us-east-1", True)
        see(c, clock, "us-west-2", True)


async def steady_then_down(c: Controller, clock: VirtualClock) -> None:
    """Two engine passes, both regions healthy then us-east-1 down (two decision changes
    to record), and the audit writer drained."""
    healthy(c, clock)
    await c.evaluate("shop")
    region_down(c, clock)
    await c.evaluate("shop")
    assert await c.audit.flush(5.0)


async def test_a_decision_change_is_journaled_once_with_policy_version_and_reasons(
    controller: Controller, store: TapStore, clock: VirtualClock
) -> None:
    await controller.lease_step()
    async for _ in writer_running(controller):
        healthy(controller, clock)
        await controller.evaluate("shop")
        await controller.evaluate("shop")  # the same decision: nothing new to record
        assert await controller.audit.flush(5.0)
        (steady,) = await decisions(store)
        detail = json.loads(steady.detail)
        assert detail["phase"] == "steady" and detail["run_id"] is None
        assert steady.policy_version == controller.policy_version and steady.run_id == ""
        assert steady.token > 0  # fenced: written with the leader's token

        clock.advance(1.0)
        see(controller, clock, "us-east-1", False)  # one failure: suspect, not down yet
        await controller.evaluate("shop")
        await controller.evaluate("shop")
        assert await controller.audit.flush(5.0)
        first, second = await decisions(store)
        assert first == steady
        changed = json.loads(second.detail)
        assert changed["phase"] != "steady" and changed["reasons"], changed
        east = next(r for r in changed["regions"] if r["region"] == "us-east-1")
        api = next(s for s in east["signals"] if s["signal"] == "api")
        # One failure of two needed: not failing yet, not passing either; the count says why.
        assert (api["vantage"], api["view"], api["consecutive_failures"]) == ("local", "unknown", 1)
        assert len(second.detail) < 4096  # compact: a few KiB at most for a small policy


async def test_the_decision_that_starts_a_run_precedes_its_run_started_and_names_it(
    controller: Controller, store: TapStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        controller.put_lag("shop", "us-west-2", LagReading(5.0, clock.now()))
        action.durations["move"] = 5.0
        region_down(controller, clock)
        await eventually(lambda: action.calls != [], "the runbook step to run")
        # More passes while the run starts: their decision records must not overtake it.
        for _ in range(3):
            clock.advance(0.5)
            see(controller, clock, "us-west-2", True)
            await controller.evaluate("shop")
        clock.advance(5.0)
        await eventually(
            lambda: controller.snapshot("shop").active_region == "us-west-2",  # type: ignore[union-attr]
            "the run to finish",
        )
        assert await controller.audit.flush(5.0)
        journal = list(await store.read_journal("shop", limit=1000))
        (started,) = [r for r in journal if r.status is JournalStatus.RUN_STARTED]
        before = [
            r for r in journal[: journal.index(started)] if r.status is JournalStatus.DECISION
        ]
        detail = json.loads(before[-1].detail)
        assert detail["run_id"] == started.run_id
        assert (detail["action"], detail["target"]) == ("failover", "us-west-2")
        assert "active_down" in detail["reasons"]
        assert detail["lag"] == [
            {
                "age": pytest.approx(detail["lag"][0]["age"]),
                "observed_at": detail["lag"][0]["observed_at"],
                "region": "us-west-2",
                "seconds": 5.0,
                "within_rpo": True,
            }
        ]
        after = [r for r in journal[journal.index(started) :] if r.status is JournalStatus.DECISION]
        assert after, "the run-in-progress decision is recorded after run_started"

        data = await controller.run_report(started.run_id)
        assert data is not None
        report = render(data)
        assert "RPO achieved: 5.0 s" in report and "RTO achieved: " in report
        assert "| move | wait | succeeded |" in report
        assert await controller.run_report("no-such-run") is None

        entries = await controller.audit_entries("shop", limit=1000)
        kinds = [e.entry.value for e in entries]
        assert kinds.index("decision") < kinds.index("run_started") < kinds.index("run_succeeded")


async def test_a_follower_writes_no_decision_records(
    controller: Controller, store: TapStore, clock: VirtualClock
) -> None:
    other = await store.acquire_lease("node-b", 3600.0)
    assert other is not None
    await controller.lease_step()
    assert not controller.is_leader()
    async for _ in writer_running(controller):
        await steady_then_down(controller, clock)
    assert await decisions(store) == []
    assert controller.audit.counts == {"written": 0, "failed": 0, "dropped": 0}


async def test_a_hanging_store_does_not_block_the_pass_and_order_is_kept(
    controller: Controller, store: TapStore, clock: VirtualClock
) -> None:
    controller.audit = AuditWriter(store, timeout=0.2)  # a short bound keeps the test fast
    await controller.lease_step()
    store.hang = asyncio.Event()
    async for _ in writer_running(controller):
        healthy(controller, clock)
        async with asyncio.timeout(1.0):  # far below the hang: the pass does not wait on it
            await controller.evaluate("shop")
        await eventually(lambda: controller.audit.counts["failed"] == 1, "the bounded append")
        store.hang = None
        clock.advance(1.0)
        see(controller, clock, "us-east-1", False)
        await controller.evaluate("shop")
        region_down(controller, clock)
        await controller.evaluate("shop")
        assert await controller.audit.flush(5.0)
    phases = [json.loads(r.detail)["phase"] for r in await decisions(store)]
    assert len(phases) == 2 and phases[0] != "steady", phases  # the hung one is lost, in order
    snap = controller.snapshot("shop")
    assert snap is not None and snap.decision is not None  # the engine went on


async def test_a_failing_store_is_counted_and_never_breaks_the_pass(
    controller: Controller, store: TapStore, clock: VirtualClock
) -> None:
    await controller.lease_step()
    store.fail_decisions = True
    async for _ in writer_running(controller):
        await steady_then_down(controller, clock)
    assert controller.audit.counts["failed"] == 2 and controller.audit.counts["written"] == 0
    assert await decisions(store) == []
    snap = controller.snapshot("shop")  # the engine went on deciding
    assert snap is not None and snap.decision is not None and snap.phase == "failing_over"
