"""The metrics exporter on a real Controller over the sqlite store, on virtual time: the
engine-state enums follow a failing region, decision reasons come and go, a run's gauges and
counters, series removed when a reload removes a service, the leadership gauges, the engine
pass timer, the event-loop lag monitor, and the generated reference being current."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from orchestrator.daemon.controller import Controller
from orchestrator.daemon.metrics_export import (
    PHASES,
    VERDICTS,
    MetricsExporter,
    metrics_reference,
    record_reload,
    watch_loop_lag,
)
from orchestrator.policy.loader import load_policy_set
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import make_controller as make
from tests.fixtures.controller import policy_text
from tests.unit.daemon.controller_support import running as run_controller
from tests.unit.daemon.controller_support import see
from tests.unit.runbook.fakes import ScriptedAction

ROOT = Path(__file__).resolve().parents[3]


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def write(policy_dir: Path, service: str, approval: bool = False) -> None:
    text = policy_text(service, approval=approval, announce=True)
    (policy_dir / f"{service}.yaml").write_text(text)


@pytest.fixture
def policy_yaml() -> str:
    return ""  # each test writes its own services


async def make_controller(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> Controller:
    # no renewal due while a test moves the clock by tens of seconds
    return await make(policy_dir, store, clock, action, lease_ttl=600.0)


def running(c: Controller) -> AbstractAsyncContextManager[None]:
    return run_controller(c, close=True)


def observe(c: Controller, clock: VirtualClock, service: str, east_ok: bool, n: int = 3) -> None:
    for _ in range(n):
        clock.advance(1.0)
        see(c, clock, "us-east-1", east_ok, service)
        see(c, clock, "us-west-2", True, service)


async def idle(clock: VirtualClock, sleepers: int = 2) -> None:
    """Wait until the controller waits for its next tick (the lease loop, the engine loop
    and any running step asleep on the clock): what happens during a pass (an observation,
    the clock moving) is only seen a tick later, and a virtual tick never comes by itself."""
    await eventually(lambda: clock.sleepers >= sleepers, "the engine to wait for its next tick")


def enum(name: str, label: str, values: tuple[str, ...], **labels: str) -> dict[str, float]:
    return {v: value(name, **labels, **{label: v}) or 0.0 for v in values}


def one_hot(name: str, label: str, values: tuple[str, ...], on: str, **labels: str) -> bool:
    return enum(name, label, values, **labels) == {v: float(v == on) for v in values}


async def test_verdict_phase_reasons_and_vantages_follow_a_failing_region(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    svc = "metrics-enum"
    write(policy_dir, svc, approval=True)  # the failover waits for an approval: no run
    c = await make_controller(policy_dir, store, clock, action)
    MetricsExporter(c, clock, backend="sqlite").install()
    async with running(c):
        await eventually(c.is_leader, "the lease")
        await idle(clock)
        observe(c, clock, svc, east_ok=True)

        def verdict(region: str, on: str) -> bool:
            return one_hot(
                "failoverd_region_verdict", "verdict", VERDICTS, on, service=svc, region=region
            )

        def phase(on: str) -> bool:
            return one_hot("failoverd_service_phase", "phase", PHASES, on, service=svc)

        await eventually(lambda: verdict("us-east-1", "healthy") and phase("steady"), "steady")
        assert value("failoverd_vantage_up", service=svc, region="us-east-1", vantage="local") == 1
        assert value("failoverd_active_region", service=svc, region="us-east-1") == 1
        assert value("failoverd_active_region", service=svc, region="us-west-2") == 0
        assert value("failoverd_rto_seconds", service=svc) == 900
        assert value("failoverd_rpo_seconds", service=svc) == 60
        assert value("failoverd_run_awaiting_approval", service=svc) == 0
        changes = value("failoverd_decision_changes_total", service=svc) or 0.0

        await idle(clock)
        observe(c, clock, svc, east_ok=False)
        await eventually(
            lambda: verdict("us-east-1", "down") and phase("awaiting_approval"),
            "us-east-1 down and the service awaiting approval",
        )
        assert verdict("us-west-2", "healthy")
        assert value("failoverd_vantage_up", service=svc, region="us-east-1", vantage="local") == 0
        assert value("failoverd_decision_reason", service=svc, reason="active_down") == 1
        assert value("failoverd_decision_reason", service=svc, reason="approval_required") == 1
        assert value("failoverd_run_awaiting_approval", service=svc) == 1
        assert value("failoverd_run_in_progress", service=svc) == 0
        assert (value("failoverd_decision_changes_total", service=svc) or 0.0) > changes
        assert action.calls == []

        await idle(clock)
        observe(c, clock, svc, east_ok=True, n=4)
        await eventually(lambda: phase("steady"), "steady again once us-east-1 recovers")
        # The old decision's reasons are gone, not left at their last value.
        assert value("failoverd_decision_reason", service=svc, reason="active_down") is None
        assert value("failoverd_decision_reason", service=svc, reason="approval_required") is None
        assert value("failoverd_run_awaiting_approval", service=svc) == 0


async def test_a_run_shows_its_budget_while_it_runs_then_its_counts_and_duration(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    svc = "metrics-run"
    write(policy_dir, svc)
    c = await make_controller(policy_dir, store, clock, action)
    MetricsExporter(c, clock, backend="sqlite").install()
    started = value(
        "failoverd_runs_started_total", service=svc, kind="failover", initiator="policy"
    )
    assert started is None
    budget_name = "failoverd_run_rto_budget_remaining_seconds"
    async with running(c):
        await eventually(c.is_leader, "the lease")
        assert value(budget_name, service=svc) is None
        action.durations["move"] = 30.0  # holds the run open until the clock moves
        await idle(clock)
        observe(c, clock, svc, east_ok=False)
        await eventually(lambda: action.calls != [], "the first step to run")
        await idle(clock, 4)  # the lease, the engine, the step and its timeout
        clock.advance(1.0)  # the next engine pass reads the run's progress back
        assert (
            value("failoverd_runs_started_total", service=svc, kind="failover", initiator="policy")
            == 1
        )
        await eventually(
            lambda: (
                value("failoverd_run_step_state", service=svc, step="move", state="running") == 1
            ),
            "the running step in the step-state enum",
        )
        assert value("failoverd_run_in_progress", service=svc) == 1
        assert value("failoverd_run_step_state", service=svc, step="announce", state="pending") == 1
        budget = value(budget_name, service=svc)
        assert budget is not None and 0 < budget <= 900
        first: float = budget

        await idle(clock, 4)  # the lease, the engine, the step and its timeout
        clock.advance(10.0)  # a tick passes: the budget shrinks with the clock
        await eventually(
            lambda: (value(budget_name, service=svc) or 900.0) <= first - 10.0,
            "the RTO budget to shrink by the time that passed",
        )

        await idle(clock, 4)  # the lease, the engine, the step and its timeout
        clock.advance(25.0)
        await eventually(
            lambda: value("failoverd_active_region", service=svc, region="us-west-2") == 1,
            "the run to finish",
        )
        await eventually(lambda: value(budget_name, service=svc) is None, "the budget series to go")
        assert value("failoverd_run_in_progress", service=svc) == 0
        for step in ("move", "announce"):
            assert one_hot(
                "failoverd_run_step_state",
                "state",
                ("pending", "running", "succeeded", "failed", "skipped"),
                "succeeded",
                service=svc,
                step=step,
            )
        labels = {"service": svc, "kind": "failover", "outcome": "succeeded"}
        assert value("failoverd_runs_finished_total", **labels) == 1
        assert value("failoverd_run_duration_seconds_count", **labels) == 1
        duration = value("failoverd_run_duration_seconds_sum", **labels)
        # From detection to the end: at least the 35 s the step held the run open.
        assert duration is not None and 35.0 <= duration < 60.0
        assert value("failoverd_run_duration_seconds_bucket", **labels, le="60.0") == 1
        assert value("failoverd_run_duration_seconds_bucket", **labels, le="30.0") == 0


async def test_a_reload_that_removes_a_service_removes_its_series(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    keep, drop = "metrics-keep", "metrics-drop"
    write(policy_dir, keep)
    write(policy_dir, drop)
    c = await make_controller(policy_dir, store, clock, action)
    exporter = MetricsExporter(c, clock, backend="sqlite")
    exporter.install()
    await c.evaluate_all()
    exporter.update()
    for svc in (keep, drop):
        assert value("failoverd_service_phase", service=svc, phase="steady") is not None
        assert value("failoverd_region_verdict", service=svc, region="us-east-1", verdict="unknown")
        assert value("failoverd_rto_seconds", service=svc) == 900
    old_version = c.policy_version
    assert value("failoverd_policy_info", version=old_version) == 1

    (policy_dir / f"{drop}.yaml").unlink()
    await c.swap(load_policy_set([policy_dir]))
    exporter.update()

    names = ("failoverd_service_phase", "failoverd_region_verdict", "failoverd_active_region")
    left = [
        s
        for family in REGISTRY.collect()
        if family.name in (*names, "failoverd_rto_seconds", "failoverd_run_in_progress")
        for s in family.samples
        if s.labels.get("service") == drop
    ]
    assert left == []
    assert value("failoverd_rto_seconds", service=keep) == 900
    # One policy-info series at a time: the new version's.
    assert value("failoverd_policy_info", version=c.policy_version) == 1
    assert value("failoverd_policy_info", version=old_version) is None
    await c.close()


async def test_leader_gauges_follow_the_lease(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    write(policy_dir, "metrics-lead")
    c = await make_controller(policy_dir, store, clock, action)
    exporter = MetricsExporter(c, clock, backend="sqlite")
    acquired = value("failoverd_leader_transitions_total", event="acquired") or 0.0
    lost = value("failoverd_leader_transitions_total", event="lost") or 0.0
    exporter.install()
    assert value("failoverd_is_leader") == 0 and value("failoverd_fencing_token") == 0
    assert value("failoverd_store_up", backend="sqlite") == 1

    await c.lease_step()
    exporter.update()
    token = c.token()
    assert token is not None and token > 0
    assert value("failoverd_is_leader") == 1 and value("failoverd_fencing_token") == token
    assert value("failoverd_leader_transitions_total", event="acquired") == acquired + 1

    await c.close()  # releases the lease
    exporter.update()
    assert value("failoverd_is_leader") == 0 and value("failoverd_fencing_token") == 0
    assert value("failoverd_leader_transitions_total", event="lost") == lost + 1

    await store.close()  # the store goes away: the next lease step cannot reach it
    await c.lease_step()
    exporter.update()
    assert value("failoverd_store_up", backend="sqlite") == 0


async def test_a_standby_says_when_its_policies_differ_from_the_leader_s(
    tmp_path: Path, policy_dir: Path, clock: VirtualClock, action: ScriptedAction
) -> None:
    write(policy_dir, "metrics-drift")
    shared = tmp_path / "shared.db"
    leader_store = await SqliteStore.open(shared, clock=clock)
    standby_store = await SqliteStore.open(shared, clock=clock)
    leader = await make_controller(policy_dir, leader_store, clock, action)
    standby = await make_controller(policy_dir, standby_store, clock, action)
    standby.node_id = "node-b"
    exporter = MetricsExporter(standby, clock, backend="sqlite")
    try:
        exporter.update()
        assert value("failoverd_policy_differs_from_leader") == 0  # no leader known
        await leader.lease_step()  # leads, and announces the version it acts on
        await standby.lease_step()  # learns it
        exporter.update()
        assert standby.leader_policy_version() == leader.policy_version
        assert value("failoverd_policy_differs_from_leader") == 0
        # The leader reloads a changed set; the standby's files did not change.
        other = tmp_path / "other"
        other.mkdir()
        (other / "metrics-drift.yaml").write_text(policy_text("metrics-drift", approval=True))
        await leader.swap(load_policy_set([other]))
        await standby.lease_step()
        exporter.update()
        assert standby.leader_policy_version() == leader.policy_version != standby.policy_version
        assert value("failoverd_policy_differs_from_leader") == 1
    finally:
        await standby.close()
        await leader.close()
        await standby_store.close()
        await leader_store.close()


async def test_every_engine_pass_is_timed(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    write(policy_dir, "metrics-tick")
    c = await make_controller(policy_dir, store, clock, action)
    MetricsExporter(c, clock, backend="sqlite").install()
    before = value("failoverd_engine_tick_duration_seconds_count") or 0.0
    await c.evaluate_all()
    await c.evaluate_all()
    assert value("failoverd_engine_tick_duration_seconds_count") == before + 2
    await c.close()


async def test_event_loop_lag_is_how_late_the_timer_fires(clock: VirtualClock) -> None:
    count = value("failoverd_event_loop_lag_seconds_count") or 0.0
    total = value("failoverd_event_loop_lag_seconds_sum") or 0.0
    task = asyncio.create_task(watch_loop_lag(clock, 0.25))
    try:
        await eventually(lambda: clock.sleepers == 1, "the monitor's timer")
        clock.advance(0.25)  # on time
        await eventually(
            lambda: value("failoverd_event_loop_lag_seconds_count") == count + 1, "on time"
        )
        await eventually(lambda: clock.sleepers == 1, "the next timer")
        clock.advance(1.0)  # the loop was busy for 0.75 s past the timer's due time
        await eventually(
            lambda: value("failoverd_event_loop_lag_seconds_count") == count + 2, "late"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert value("failoverd_event_loop_lag_seconds_sum") == pytest.approx(total + 0.75)
    assert value("failoverd_event_loop_lag_seconds_bucket", le="0.5") == count + 1


def test_reload_outcomes_set_the_reload_gauges_and_the_policy_info() -> None:
    record_reload(True, "v-good", 1_700_000_000.0)
    assert value("failoverd_policy_last_reload_successful") == 1
    assert value("failoverd_policy_last_reload_timestamp_seconds") == 1_700_000_000.0
    assert value("failoverd_policy_info", version="v-good") == 1

    record_reload(False, "v-good", 1_700_000_060.0)  # a broken file: the old set stays
    assert value("failoverd_policy_last_reload_successful") == 0
    assert value("failoverd_policy_last_reload_timestamp_seconds") == 1_700_000_000.0
    assert value("failoverd_policy_info", version="v-good") == 1


def test_the_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == metrics_reference(), (
        "docs/metrics.md is out of date with orchestrator/telemetry.py; run"
        " `python -m orchestrator.daemon.metrics_export > docs/metrics.md` and commit the result"
    )


def test_the_reference_names_every_contract_metric() -> None:
    text = metrics_reference()
    for name in CONTRACT:
        assert f"| `{name}` |" in text, name


CONTRACT = (
    "failoverd_region_verdict",
    "failoverd_service_phase",
    "failoverd_decision_reason",
    "failoverd_decision_changes_total",
    "failoverd_active_region",
    "failoverd_rto_seconds",
    "failoverd_rpo_seconds",
    "failoverd_vantage_up",
    "failoverd_runs_started_total",
    "failoverd_runs_finished_total",
    "failoverd_run_duration_seconds",
    "failoverd_run_in_progress",
    "failoverd_run_awaiting_approval",
    "failoverd_run_rto_budget_remaining_seconds",
    "failoverd_run_step_state",
    "failoverd_run_substep_state",
    "failoverd_run_substep_duration_seconds",
    "failoverd_runbook_step_duration_seconds",
    "failoverd_is_leader",
    "failoverd_fencing_token",
    "failoverd_leader_transitions_total",
    "failoverd_store_up",
    "failoverd_policy_info",
    "failoverd_build_info",
    "failoverd_policy_last_reload_successful",
    "failoverd_policy_last_reload_timestamp_seconds",
    "failoverd_policy_reloads_total",
    "failoverd_engine_tick_duration_seconds",
    "failoverd_event_loop_lag_seconds",
    "failoverd_aws_api_calls_total",
)


async def test_a_steps_own_steps_reach_the_metrics_and_wait_for_failoverd_approve(
    policy_dir: Path, store: SqliteStore, clock: VirtualClock, action: ScriptedAction
) -> None:
    """A step that journals its own steps (as arc.region_switch does with a Region switch
    plan's): their state and duration are metrics, a sub-step waiting for approval makes the
    run await approval, and `approve` reaches the step under <step>/<sub-step>."""
    from orchestrator.actions.base import StepContext
    from orchestrator.engine.state import Command, OperatorCommand
    from orchestrator.runbook.journal import SUBSTEP_STATUSES

    svc = "metrics-plan"
    write(policy_dir, svc)
    seen: list[object] = []

    async def plan(ctx: StepContext) -> None:
        assert ctx.progress is not None and ctx.approvals is not None
        t0 = clock.now()
        await ctx.progress({"substep": {"name": "scale", "status": "running", "at": t0}})
        await ctx.progress({"substep": {"name": "scale", "status": "succeeded", "at": t0 + 4}})
        await ctx.progress(
            {
                "substep": {"name": "gate", "status": "waiting_approval", "at": t0 + 4},
                "awaiting_approval": "gate",
            }
        )
        while (record := await ctx.approvals.approval(svc, ctx.run_id, "move/gate")) is None:
            await clock.sleep(1.0)
        seen.append(record)
        await ctx.progress({"approved": "gate", "by": record.by, "reason": record.reason})
        await ctx.progress({"substep": {"name": "gate", "status": "succeeded", "at": clock.now()}})

    action.hooks["move"] = plan
    c = await make_controller(policy_dir, store, clock, action)
    MetricsExporter(c, clock, backend="sqlite").install()

    def sub(step: str, on: str) -> bool:
        return one_hot(
            "failoverd_run_substep_state",
            "state",
            SUBSTEP_STATUSES,
            on,
            service=svc,
            step="move",
            substep=step,
        )

    async def advance_until(done: Callable[[], bool], what: str) -> None:
        """Move virtual time on by half a second whenever everything sleeps, until done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        while not done():
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            if clock.sleepers >= 2:
                clock.advance(0.5)
            await asyncio.sleep(0.005)

    async with running(c):
        await eventually(c.is_leader, "the lease")
        await idle(clock)
        observe(c, clock, svc, east_ok=False)
        await advance_until(
            lambda: sub("gate", "waiting_approval") and sub("scale", "succeeded"),
            "the plan's steps in the metrics",
        )
        labels = {"service": svc, "step": "move", "substep": "scale"}
        assert value("failoverd_run_substep_duration_seconds", **labels) == 4.0
        assert value("failoverd_run_awaiting_approval", service=svc) == 1
        # The state's flag is written just after the journal's note the metrics read: wait
        # for it rather than race it.
        async with asyncio.timeout(10):
            while True:
                state = await store.load_state(svc)
                if state is not None and state.run is not None and state.run.waiting_approval:
                    break
                await asyncio.sleep(0.005)

        result = await c.command(svc, OperatorCommand(Command.APPROVE, by="alice", reason="go"))
        assert result.accepted and "move/gate" in result.message
        await advance_until(lambda: bool(seen), "the step to read the approval")
        assert [(r.by, r.reason) for r in seen] == [("alice", "go")]  # type: ignore[attr-defined]
        await advance_until(
            lambda: value("failoverd_active_region", service=svc, region="us-west-2") == 1,
            "the run to finish",
        )
        await advance_until(lambda: sub("gate", "succeeded"), "the approved step succeeded")
        assert value("failoverd_run_awaiting_approval", service=svc) == 0
        state = await store.load_state(svc)
        assert state is not None and state.run is None and state.active_region == "us-west-2"
