"""The controller with observations fed by hand, a real SqliteStore and a fake action, on a
virtual clock: a region going down starts a run that moves the active region; operator
commands are journaled and act; a follower starts nothing; a broken reload keeps the set."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.actions.moves import move_style
from orchestrator.audit import command_info
from orchestrator.daemon.control import NotLeaderError
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.support import POLICY_RELOADS, reload_policies
from orchestrator.engine.state import Command, LagReading, OperatorCommand, ServiceState
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.runbook.journal import RunHeader
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.unit.daemon.controller_support import SHOP_POLICY, region_down, running, see
from tests.unit.runbook.fakes import ScriptedAction


async def test_a_region_seen_down_starts_a_run_that_moves_the_active_region(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        action.durations["move"] = 5.0  # holds the run open until the clock moves
        region_down(controller, clock)
        await eventually(lambda: action.calls != [], "the runbook step to run")
        state = await store.load_state("shop")
        assert state is not None and state.run is not None
        assert (state.run.kind, state.run.target) == (Action.FAILOVER, "us-west-2")
        clock.advance(5.0)
        await eventually(
            lambda: controller.snapshot("shop").active_region == "us-west-2",  # type: ignore[union-attr]
            "the run to finish and the state to be read back",
        )
        saved = await store.load_state("shop")
        assert saved is not None and saved.active_region == "us-west-2" and saved.run is None
        assert [c.step for c in action.calls] == ["move"]  # one run, not two
        snap = controller.snapshot("shop")
        assert snap is not None and snap.run is not None and snap.run.target == "us-west-2"
        phases = [d.phase for d in snap.recent_decisions]
        assert Phase.FAILING_OVER in phases


async def test_operator_commands_are_journaled_and_act(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        see(controller, clock, "us-east-1", True)
        see(controller, clock, "us-west-2", True)
        pause = OperatorCommand(Command.PAUSE, by="alice", reason="maintenance")
        result = await controller.command("shop", pause)
        assert result.accepted
        saved = await store.load_state("shop")
        assert saved is not None and saved.paused

        move = OperatorCommand(Command.SWITCHOVER, to="us-west-2", by="alice", reason="drill")
        refused = await controller.command("shop", move)
        assert not refused.accepted and refused.decision is not None
        assert Reason.PAUSED in refused.decision.reasons
        assert action.calls == []

        await controller.command("shop", OperatorCommand(Command.RESUME, by="bob", reason="ok"))
        started = await controller.command("shop", move)
        assert started.accepted and started.run_id
        assert started.decision is not None and started.decision.action is Action.SWITCHOVER
        await eventually(lambda: action.calls != [], "the switchover step")

        journal = await store.read_run("")
        commands = [info for r in journal if (info := command_info(r)) is not None]
        assert [(c.command, c.by, c.reason, c.to, c.source) for c in commands][:2] == [
            ("pause", "alice", "maintenance", None, "api"),
            ("switchover", "alice", "drill", "us-west-2", "api"),
        ]
        assert all(c.id.startswith("cmd-") for c in commands)
        unknown = await controller.command("nope", pause)
        assert not unknown.accepted and "unknown service" in unknown.message


async def test_a_follower_starts_nothing_and_refuses_commands(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    other = await store.acquire_lease("node-b", 3600.0)
    assert other is not None
    async with running(controller):
        await eventually(lambda: controller.leader() == "node-b", "the leader's name")
        region_down(controller, clock)
        await controller.evaluate("shop")
        snap = controller.snapshot("shop")
        assert snap is not None and snap.decision is not None
        assert Reason.NOT_LEADER in snap.decision.reasons
        assert snap.decision.action is Action.NONE
        assert action.calls == [] and await store.unfinished_runs() == []
        with pytest.raises(NotLeaderError) as err:
            await controller.command("shop", OperatorCommand(Command.PAUSE, reason="x"))
        assert err.value.leader == "node-b"
        # A follower is ready (it knows the leader): it serves reads and redirects writes.
        await eventually(lambda: controller.readiness().ready, "readiness as a follower")


async def test_a_follower_follows_the_leaders_state_and_takes_over_from_it(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    other = await store.acquire_lease("node-b", 30.0)
    assert other is not None
    # The other leader failed the service over (and paused it) while this one followed.
    moved = ServiceState("shop", "us-west-2", paused=True)
    await store.save_state(moved, other.token)
    async with running(controller):
        await eventually(lambda: controller.leader() == "node-b", "the leader's name")

        def follows() -> bool:
            snap = controller.snapshot("shop")
            return snap is not None and snap.active_region == "us-west-2"

        await eventually(follows, "the follower shows the leader's active region")
        await store.release_lease(other)  # the leader goes away
        clock.advance(10.0)  # the next lease step (every ttl/3)
        await eventually(controller.is_leader, "taking over")
        await controller.evaluate("shop")
        # The new leader acts from where the old one left off: nothing undone, no new run.
        stored = await store.load_state("shop")
        assert stored is not None
        assert (stored.active_region, stored.paused) == ("us-west-2", True)
        assert action.calls == [] and await store.unfinished_runs() == []


async def test_a_broken_reload_keeps_the_old_set_and_a_good_one_keeps_state(
    controller: Controller, policy_dir: Path, clock: VirtualClock
) -> None:
    old = controller.policy_version
    failures = POLICY_RELOADS.labels(outcome="failure")._value.get()
    (policy_dir / "shop.yaml").write_text(SHOP_POLICY.replace("rto: 15m", "rto: soon"))
    assert not await reload_policies(controller, [str(policy_dir)], "test")
    assert controller.policy_version == old
    assert POLICY_RELOADS.labels(outcome="failure")._value.get() == failures + 1
    assert controller.services() == ["shop"]

    (policy_dir / "shop.yaml").write_text(SHOP_POLICY.replace("rto: 15m", "rto: 10m"))
    assert await reload_policies(controller, [str(policy_dir)], "test")
    assert controller.policy_version != old
    snap = controller.snapshot("shop")
    assert snap is not None and snap.rto == 600.0 and snap.active_region == "us-east-1"


async def test_every_run_gets_the_facts_of_its_decision(
    controller: Controller, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    # What the steps (Aurora's switchover-or-failover choice among them) know about the move:
    # its kind, whether it is a drill, the source's verdict, the target's lag reading.
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        controller.put_lag("shop", "us-west-2", LagReading(0.8, clock.now()))
        region_down(controller, clock)
        await eventually(lambda: action.calls != [], "the failover step")
        facts = dict(action.calls[0].ctx.facts)
        assert facts == {
            "kind": "failover",
            "drill": False,
            "source_region": "us-east-1",
            "source_verdict": "down",
            "source_down": True,
            "target_lag_seconds": 0.8,
            "target_lag_age_seconds": 3.0,
        }
        assert not move_style("failover", facts).graceful
        # The facts are in the journaled plan: a resumed run sees the same ones.
        run_id = action.calls[0].ctx.run_id
        header = RunHeader.from_record((await store.read_run(run_id))[0])
        assert header.facts == facts
