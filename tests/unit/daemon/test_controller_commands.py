"""Every operator command on the record, against a real SqliteStore on a virtual clock: an
``operator_command`` record (who, why, from where, its id) before the command takes effect,
then a ``decision`` record naming the command with what it led to — for approvals (of a
run's gate, or refused), pauses, resumes and moves, accepted or refused; a command that
cannot be journaled does nothing; a follower names the leader and the API address it
announced, and the policy version it acts on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.actions.registry import get_action
from orchestrator.audit import command_info, decision_info, entries
from orchestrator.daemon.control import NotLeaderError
from orchestrator.daemon.controller import Controller
from orchestrator.engine.state import Command, CommandSource, OperatorCommand
from orchestrator.engine.vocabulary import Reason
from orchestrator.incident_report import render
from orchestrator.store.base import JournalRecord, JournalStatus, Lease, StoreUnavailable
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import make_controller, policy_text
from tests.unit.daemon.controller_support import region_down, running, see
from tests.unit.runbook.fakes import ScriptedAction

GATED = (
    policy_text()
    + """\
    - name: gate
      action: approval
      params: {message: "look first"}
      after: [move]
      timeout: 1h
"""
)


def cmd(command: Command, **kw: object) -> OperatorCommand:
    return OperatorCommand(command, by="alice", reason=f"{command.value} now", **kw)  # type: ignore[arg-type]


async def journal(store: SqliteStore) -> list[JournalRecord]:
    return list(await store.read_journal("shop", limit=1000))


def answers(records: list[JournalRecord]) -> dict[str, dict[str, object]]:
    out = {}
    for r in records:
        info = decision_info(r)
        if info is not None and info.command is not None:
            out[str(info.command["id"])] = dict(info.command)
    return out


async def test_pause_resume_and_moves_are_journaled_before_and_answered_after(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        see(controller, clock, "us-east-1", True)
        see(controller, clock, "us-west-2", True)
        await controller.command("shop", cmd(Command.PAUSE, source=CommandSource.CLI, user="al"))
        refused = await controller.command("shop", cmd(Command.SWITCHOVER, to="us-west-2"))
        assert not refused.accepted
        await controller.command("shop", cmd(Command.RESUME, source=CommandSource.MQTT))
        forced = await controller.command("shop", cmd(Command.FAILOVER, force=True))
        assert forced.accepted and forced.run_id
        await eventually(lambda: action.calls != [], "the run's step")
        assert await controller.audit.flush(5.0)

    records = await journal(store)
    asked = [c for r in records if (c := command_info(r)) is not None]
    assert [(c.command, c.by, c.user, c.source) for c in asked] == [
        ("pause", "alice", "al", "cli"),
        ("switchover", "alice", "", "api"),
        ("resume", "alice", "", "mqtt"),
        ("failover", "alice", "", "api"),
    ]
    assert asked[3].force is True and asked[3].reason == "failover now"
    # Each command is answered by the decision it led to, written after it.
    got = answers(records)
    assert [got[c.id]["accepted"] for c in asked] == [True, False, True, True]
    assert "paused" in str(got[asked[1].id]["message"])
    assert got[asked[3].id]["run_id"] == forced.run_id
    position = {id(r): i for i, r in enumerate(records)}
    for c, r in zip(asked, [r for r in records if command_info(r)], strict=True):
        answer = next(
            a for a in records if (i := decision_info(a)) and i.command and i.command["id"] == c.id
        )
        assert position[id(r)] < position[id(answer)], c.command
    # The forced failover's record precedes its run: journaled before it took effect.
    started = next(r for r in records if r.status is JournalStatus.RUN_STARTED)
    failover = next(i for i, r in enumerate(records) if r.kind == "failover" and command_info(r))
    assert records.index(started) > failover
    shown = [e for e in entries(records) if e.entry is JournalStatus.OPERATOR_COMMAND]
    assert shown[0].summary == "pause by alice (as al) via cli: pause now"
    assert shown[0].outcome == "accepted: shop paused"
    assert shown[3].outcome == "accepted: failover to us-west-2 started"


@pytest.fixture
def policy_yaml() -> str:
    return GATED


@pytest.fixture
async def gated(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> AsyncIterator[Controller]:
    approval = get_action("approval")
    c = await make_controller(
        policy_dir,
        store,
        clock,
        action,
        lease_ttl=30.0,
        actions=lambda name: approval if name == "approval" else action,
    )
    try:
        yield c
    finally:
        await c.close()


async def test_an_approval_of_a_gate_is_on_the_record_before_the_gate_opens(
    gated: Controller, store: SqliteStore, clock: VirtualClock
) -> None:
    ctl = gated
    async with running(ctl):
        await eventually(ctl.is_leader, "the lease")
        early = await ctl.command("shop", cmd(Command.APPROVE))  # nothing waits yet
        assert not early.accepted
        region_down(ctl, clock)
        await ctl.evaluate("shop")

        async def waiting() -> bool:
            snap = ctl.snapshot("shop")
            run = snap.run if snap else None
            return bool(run and any(s.name == "gate" and s.attempts for s in run.steps))

        async with asyncio.timeout(10):
            while not await waiting():
                clock.advance(0.5)
                await ctl.evaluate("shop")
                await asyncio.sleep(0.01)
        approved = await ctl.command(
            "shop",
            OperatorCommand(
                Command.APPROVE, by="bob", reason="replica checked", source=CommandSource.CLI
            ),
        )
        assert approved.accepted and "approved step gate" in approved.message
        async with asyncio.timeout(10):
            while (snap := ctl.snapshot("shop")) is None or snap.active_region != "us-west-2":
                clock.advance(1.0)
                await ctl.evaluate("shop")
                await asyncio.sleep(0.01)
        assert await ctl.audit.flush(5.0)

    records = await journal(store)
    asked = [(r, info) for r in records if (info := command_info(r)) is not None]
    assert [(i.command, i.by, i.source, i.run_id, i.step) for _, i in asked] == [
        ("approve", "alice", "api", "", ""),
        ("approve", "bob", "cli", approved.run_id, "gate"),
    ]
    record, info = asked[1]
    opened = next(
        r for r in records if r.status is JournalStatus.STEP_SUCCEEDED and r.step == "gate"
    )
    assert record.at <= opened.at and records.index(record) < records.index(opened)
    got = answers(records)
    assert got[asked[0][1].id]["accepted"] is False
    assert got[info.id] == {
        "id": info.id,
        "command": "approve",
        "by": "bob",
        "source": "cli",
        "accepted": True,
        "message": f"approved step gate of run {approved.run_id}",
        "run_id": approved.run_id,
    }
    # The run's report names the approver, from where and why.
    data = await ctl.run_report(str(approved.run_id))
    assert data is not None
    text = render(data)
    (row,) = [line for line in text.splitlines() if line.startswith("| Approved by |")]
    assert "bob via cli" in row and "step gate" in row and '("replica checked")' in row


class FailingJournal(SqliteStore):
    fail = False

    async def append_journal(self, record: JournalRecord) -> None:
        if self.fail and record.status is JournalStatus.OPERATOR_COMMAND:
            raise StoreUnavailable("injected: the store is down")
        await super().append_journal(record)


async def test_a_command_that_cannot_be_journaled_does_nothing(
    tmp_path: Path, policy_dir: Path, clock: VirtualClock, action: ScriptedAction
) -> None:
    store = await FailingJournal.open(tmp_path / "failing.db")
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=30.0)
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            store.fail = True
            result = await c.command("shop", cmd(Command.PAUSE))
            assert not result.accepted and "not journaled, nothing done" in result.message
            snap = c.snapshot("shop")
            assert snap is not None and not snap.paused
    finally:
        await c.close()
        await store.close()


async def test_a_follower_names_the_leader_its_api_and_its_policy_version(
    tmp_path: Path, policy_dir: Path, clock: VirtualClock, action: ScriptedAction
) -> None:
    shared = tmp_path / "shared.db"
    leader_store = await SqliteStore.open(shared, clock=clock)
    follower_store = await SqliteStore.open(shared, clock=clock)
    leader = await make_controller(policy_dir, leader_store, clock, action, lease_ttl=30.0)
    leader.api_address = "http://10.0.0.1:8080"
    follower = await make_controller(policy_dir, follower_store, clock, action, lease_ttl=30.0)
    follower.node_id = "node-b"
    try:
        async with running(leader):
            await eventually(leader.is_leader, "the lease")
            async with running(follower):
                # The follower asks the store every second (virtual): it learns what the
                # leader announced once that has landed.
                async with asyncio.timeout(10):
                    while follower.leader_api() is None:
                        clock.advance(1.0)
                        await asyncio.sleep(0.01)
                assert follower.leader() == "node-a" and not follower.is_leader()
                assert follower.leader_api() == "http://10.0.0.1:8080"
                assert follower.leader_policy_version() == leader.policy_version
                assert leader.leader_api() == "http://10.0.0.1:8080"
                with pytest.raises(NotLeaderError) as err:
                    await follower.command("shop", cmd(Command.PAUSE))
                assert (err.value.leader, err.value.leader_api) == (
                    "node-a",
                    "http://10.0.0.1:8080",
                )
                # Nothing reached the journal from the follower.
                assert [r for r in await journal(leader_store) if command_info(r)] == []
    finally:
        await follower.close()
        await leader.close()
        await follower_store.close()
        await leader_store.close()


async def test_a_single_instance_decides_as_the_leader_from_its_first_pass(
    controller: Controller, clock: VirtualClock
) -> None:
    seen: list[tuple[Reason, ...]] = []
    controller.on_decision.append(lambda d: seen.append(d.reasons))
    async with running(controller):
        await eventually(lambda: controller.evaluated, "the first pass")
    assert seen and all(Reason.NOT_LEADER not in reasons for reasons in seen), seen


class HangingAnnounce(SqliteStore):
    """A store whose announcements never complete (a slow etcd for that one write)."""

    async def announce(self, lease: Lease, api: str, policy_version: str) -> None:
        await asyncio.Event().wait()


async def test_a_slow_announcement_never_delays_the_lease_renewals(
    tmp_path: Path, policy_dir: Path, clock: VirtualClock, action: ScriptedAction
) -> None:
    store = await HangingAnnounce.open(tmp_path / "slow.db", clock=clock)
    c = await make_controller(policy_dir, store, clock, action, lease_ttl=30.0)
    c.api_address = "http://10.0.0.1:8080"
    try:
        async with running(c):
            await eventually(c.is_leader, "the lease")
            token = c.token()
            # Three lease TTLs of virtual time: the leader keeps renewing every ttl/3 while
            # its announcement hangs, so it never loses its acting window.
            for _ in range(9):
                sleepers = clock.sleepers
                clock.advance(10.0)
                await eventually(lambda s=sleepers: clock.sleepers >= s, "the next lease step")
                assert c.is_leader() and c.token() == token
    finally:
        await c.close()
        await store.close()
