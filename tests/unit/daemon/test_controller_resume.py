"""A run cut short while the leader could not act is resumed once it acts again, without a
change of leader: a slow lease renewal lets the leader's acting window close in the middle of
a step (its journal write is refused: NotLeader), then the renewal lands and the same
instance finishes the run. Real SqliteStore on a virtual clock (the store judges the lease on
the same clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.daemon.controller import Controller
from orchestrator.engine.state import RunStatus
from orchestrator.store.base import JournalRecord, JournalStatus, Lease
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import make_controller, policy_text
from tests.unit.daemon.controller_support import region_down, running
from tests.unit.runbook.fakes import ScriptedAction

TTL = 30.0  # the leader acts for 24 s after each renewal it sent, renewing every 10 s


class SlowRenewals(SqliteStore):
    """A real store whose renewals wait at a gate while ``hold`` is set (a slow etcd), and
    whose journal takes a run's end only once ``end_gate`` is open."""

    hold = False
    gate: asyncio.Event | None = None
    end_gate: asyncio.Event | None = None

    async def renew_lease(self, lease: Lease) -> Lease | None:
        if self.hold:
            self.gate = asyncio.Event()
            await self.gate.wait()
        return await super().renew_lease(lease)

    async def append_journal(self, record: JournalRecord) -> None:
        if record.status is JournalStatus.RUN_SUCCEEDED and self.end_gate is not None:
            await self.end_gate.wait()
        await super().append_journal(record)


@pytest.fixture
def policy_yaml() -> str:
    return policy_text(announce=True)  # "move", then "announce"


@pytest.fixture
async def slow(tmp_path: Path, clock: VirtualClock) -> AsyncIterator[SlowRenewals]:
    s = await SlowRenewals.open(tmp_path / "slow.db", clock=clock)
    try:
        yield s
    finally:
        if s.gate is not None:
            s.gate.set()
        await s.close()


async def test_a_run_cut_short_by_a_closed_lease_window_is_resumed_when_it_reopens(
    policy_dir: Path, slow: SlowRenewals, clock: VirtualClock
) -> None:
    action = ScriptedAction(clock, durations={"move": 26.0})  # past the 24 s acting window
    c: Controller = await make_controller(policy_dir, slow, clock, action, lease_ttl=TTL)
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            slow.hold = True  # the next renewal hangs
            region_down(c, clock)
            await c.evaluate("shop")
            await eventually(lambda: action.executed("move") != [], "the move step")
            await cut_short(c, slow, clock, action)
            ctx = action.calls[0].ctx
            assert ctx is not None
            await until_finished(c, clock, ctx.run_id)
        state = await slow.load_state("shop")
        assert state is not None and state.run is None and state.active_region == "us-west-2"
        assert [call.step for call in action.calls].count("announce") == 1
    finally:
        await c.close()


async def cut_short(
    c: Controller, slow: SlowRenewals, clock: VirtualClock, action: ScriptedAction
) -> None:
    """26 s of virtual time: the renewal due at 10 s waits at the gate, the window closes
    at 24 s, the step's end cannot be journaled: the run is cut short. Then the renewal
    lands (the store's lease, 30 s from the acquisition, still holds): the same instance
    acts again and resumes the run it started."""
    for _ in range(26):
        clock.advance(1.0)
        await asyncio.sleep(0.005)
    await eventually(lambda: not c.is_leader(), "the acting window to close")
    await eventually(
        lambda: c.snapshot("shop") is not None and action.executed("move")[0].ended,
        "the step to end",
    )
    assert action.executed("announce") == []
    slow.hold = False
    assert slow.gate is not None
    slow.gate.set()
    await eventually(c.is_leader, "the window to reopen")


async def until_finished(c: Controller, clock: VirtualClock, run_id: str) -> None:
    async def finished() -> bool:
        progress = await c.executor.progress(run_id)  # the journal's word
        return progress is not None and progress.status is RunStatus.SUCCEEDED

    async with asyncio.timeout(10):
        while not await finished():
            clock.advance(1.0)
            await asyncio.sleep(0.01)


async def test_the_end_of_a_resumed_run_reaches_the_status_when_the_journal_lags_the_state(
    policy_dir: Path, slow: SlowRenewals, clock: VirtualClock
) -> None:
    # The executor settles the state (the run gone, the target active) before the run's
    # end reaches the journal; a pass in between read "running" from the journal, and the
    # status said "running" for good (found by the soak, with a slow store: runs done for
    # minutes still shown running).
    action = ScriptedAction(clock, durations={"move": 26.0})
    c: Controller = await make_controller(policy_dir, slow, clock, action, lease_ttl=TTL)
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            slow.hold = True
            region_down(c, clock)
            await c.evaluate("shop")
            await eventually(lambda: action.executed("move") != [], "the move step")
            slow.end_gate = asyncio.Event()  # the resumed run's end waits here
            await cut_short(c, slow, clock, action)
            ctx = action.calls[0].ctx
            assert ctx is not None

            async def settled_before_its_end() -> bool:
                state = await slow.load_state("shop")
                return state is not None and state.run is None

            async with asyncio.timeout(10):
                while not await settled_before_its_end():
                    clock.advance(1.0)
                    await asyncio.sleep(0.01)
            await c.evaluate("shop")  # the pass in the window
            snapshot = c.snapshot("shop")
            assert snapshot is not None and snapshot.run is not None
            assert snapshot.run.status is RunStatus.RUNNING  # what the journal says now
            slow.end_gate.set()
            await until_finished(c, clock, ctx.run_id)
            await c.evaluate("shop")
            snapshot = c.snapshot("shop")
            assert snapshot is not None and snapshot.run is not None
            assert snapshot.run.run_id == ctx.run_id
            assert snapshot.run.status is RunStatus.SUCCEEDED
    finally:
        if slow.end_gate is not None:
            slow.end_gate.set()
        await c.close()
