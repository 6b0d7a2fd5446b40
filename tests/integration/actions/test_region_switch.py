"""arc.region_switch against the Region switch emulator, through the daemon's own clients
(aiobotocore via AwsClients), on virtual time shared by the action and the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from orchestrator.actions.base import ActionFailed, RetryableError, StepContext
from orchestrator.actions.region_switch import (
    RegionSwitch,
    client_token,
    event_note,
    execution_mode,
)
from orchestrator.actions.registry import get_action
from orchestrator.iam import iam_policy
from orchestrator.policy.actions import ArcRegionSwitch
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator, plan_document
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import ApprovalRecord
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.region_switch_emulator import WallClock, client_config
from tests.integration.actions.step_support import SOURCE, TARGET, make_ctx, on_virtual_time

STEPS = [
    ("scale", "EC2AutoScaling"),
    ("approve-db", "ManualApproval"),
    ("flip", "ARCRoutingControl"),
]


def orders_policy(plan_arn: str) -> str:
    """A policy whose failover runbook is one arc.region_switch step on ``plan_arn``."""
    return f"""
service: orders
regions: [{SOURCE}, {TARGET}]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
signals:
  - {{name: api, type: http, target: "https://api.{{region}}.example.com/healthz"}}
runbooks:
  failover:
    - name: switch
      action: arc.region_switch
      params: {{plan_arn: "{plan_arn}"}}
"""


class Approvals:
    """The approvals store as the action sees it: an approval appears at virtual time ``at``."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.given: dict[str, tuple[float, ApprovalRecord]] = {}

    def grant(
        self, key: str, at: float, by: str = "alice", reason: str = "replica caught up"
    ) -> None:
        self.given[key] = (at, ApprovalRecord("orders", "run-1", key, by, reason, 0.0))

    async def approved(self, service: str, run_id: str, step: str) -> bool:
        return await self.approval(service, run_id, step) is not None

    async def approval(self, service: str, run_id: str, step: str) -> ApprovalRecord | None:
        found = self.given.get(step)
        if found is None or self.clock.monotonic() < found[0]:
            return None
        return found[1]


class World:
    def __init__(self, emulator: RegionSwitchEmulator, clock: VirtualClock) -> None:
        self.emulator = emulator
        self.clock = clock
        emulator.use_clock(clock)
        self.arn = emulator.add_plan(
            plan_document("orders", (SOURCE, TARGET), steps=STEPS),
            {"scale": {"duration": 30}, "flip": {"duration": 20}},
        )
        self.aws = AwsClients(client_config(emulator))
        self.approvals = Approvals(clock)
        self.notes: list[dict[str, Any]] = []

    def ctx(self, *, kind: str = "failover", within: float = 900.0, **params: Any) -> StepContext:
        p = ArcRegionSwitch(plan_arn=self.arn, poll_interval=5.0, **params)

        async def progress(detail: Mapping[str, Any]) -> None:
            self.notes.append(dict(detail))

        base = make_ctx(self.aws, p, clock=self.clock, within=within, step="switch")
        return replace(base, kind=kind, progress=progress, approvals=self.approvals)

    def calls(self, operation: str, region: str = TARGET) -> int:
        return self.emulator.calls[(operation, region)]

    def starts(self) -> list[dict[str, Any]]:
        return [r for r in self.emulator.requests() if r["operation"] == "StartPlanExecution"]


@pytest.fixture
def world(region_switch: tuple[RegionSwitchEmulator, WallClock]) -> World:
    return World(region_switch[0], VirtualClock())


async def run_step(ctx: StepContext, clock: VirtualClock) -> Any:
    action = RegionSwitch()

    async def steps() -> Any:
        report = await action.check(ctx)
        assert report.ready, report.findings
        outcome = await action.execute(ctx)
        await action.verify(ctx)
        return outcome

    return await on_virtual_time(clock, steps(), step=5.0)


async def test_a_failover_runs_the_plan_ungraceful_in_the_target_region(world: World) -> None:
    world.approvals.grant("switch/approve-db", at=60.0)
    outcome = await run_step(world.ctx(), world.clock)

    assert outcome.changed and outcome.detail.endswith("completed")
    [start] = world.starts()
    assert start["region"] == TARGET
    assert start["body"]["mode"] == "ungraceful"
    assert start["body"]["targetRegion"] == TARGET and start["body"]["action"] == "activate"
    assert start["body"]["clientToken"] == client_token("run-1", "switch")
    assert client_token("run-1", "switch") in start["body"]["comment"]
    # Nothing went to the region being left.
    assert not [r for r in world.emulator.requests() if r["region"] == SOURCE]
    [ex] = world.emulator.executions(world.arn)
    assert ex["state"] == "completed" and ex["region"] == TARGET

    started = world.notes[0]
    assert started["execution"] == "started" and started["execution_id"] == ex["id"]
    assert started["mode_reason"].startswith(f"failover with {SOURCE} of unknown health")
    subs = [(n["substep"]["name"], n["substep"]["status"]) for n in world.notes if "substep" in n]
    assert subs == [
        ("scale", "running"),
        ("scale", "succeeded"),
        ("approve-db", "running"),
        ("approve-db", "waiting_approval"),
        ("approve-db", "succeeded"),
        ("flip", "running"),
        ("flip", "succeeded"),
    ]
    assert [n["awaiting_approval"] for n in world.notes if "awaiting_approval" in n] == [
        "approve-db"
    ]
    [approved] = [n for n in world.notes if "approved" in n]
    assert (approved["approved"], approved["by"]) == ("approve-db", "alice")
    approve = [r for r in world.emulator.requests() if r["operation"] == "ApprovePlanExecutionStep"]
    assert approve[0]["body"]["approval"] == "approve"
    assert "replica caught up" in approve[0]["body"]["comment"]
    assert "alice" in approve[0]["body"]["comment"]
    # Each event once, with the emulator's times: scale ran 30 s.
    ids = [n["event_id"] for n in world.notes if "event_id" in n]
    assert len(ids) == len(set(ids)) == 10
    scale = [n["substep"]["at"] for n in world.notes if n.get("substep", {}).get("name") == "scale"]
    assert scale[1] - scale[0] == 30


@pytest.mark.parametrize(
    ("kind", "facts", "mode", "expected"),
    [
        ("failover", {}, "auto", "ungraceful"),
        ("failover", {"source_verdict": "down"}, "auto", "ungraceful"),
        ("failover", {"source_verdict": "unknown"}, "auto", "ungraceful"),
        ("failover", {"source_verdict": "degraded"}, "auto", "graceful"),
        ("failover", {"source_verdict": "healthy"}, "auto", "graceful"),
        ("failover", {"source_healthy": True}, "auto", "graceful"),
        ("failover", {"drill": True, "source_verdict": "down"}, "auto", "graceful"),
        ("switchover", {}, "auto", "graceful"),
        ("failback", {}, "auto", "graceful"),
        ("switchover", {}, "ungraceful", "ungraceful"),
    ],
)
def test_the_mode_follows_the_run(
    world: World, kind: str, facts: dict[str, Any], mode: str, expected: str
) -> None:
    ctx = replace(world.ctx(kind=kind), facts=facts)
    assert execution_mode(mode, ctx) == expected


async def test_a_resumed_step_follows_the_execution_it_journaled(world: World) -> None:
    world.approvals.grant("switch/approve-db", at=10_000.0)  # not before the "crash"
    first = asyncio.ensure_future(RegionSwitch().execute(world.ctx()))
    await eventually(lambda: world.calls("StartPlanExecution") == 1, "the start")
    await eventually(lambda: world.clock.sleepers > 0, "the first poll")
    world.clock.advance(35)
    await eventually(
        lambda: any(n.get("awaiting_approval") for n in world.notes), "the approval wait"
    )
    first.cancel()  # the daemon dies: no cancel reason, the execution goes on
    with pytest.raises(asyncio.CancelledError):
        await first
    assert world.calls("CancelPlanExecution") == 0

    before = list(world.notes)
    world.approvals.grant("switch/approve-db", at=0.0)
    ctx = replace(world.ctx(), attempt=2, history=tuple(before))
    outcome = await on_virtual_time(world.clock, RegionSwitch().execute(ctx), step=5.0)
    assert outcome.changed
    assert world.calls("StartPlanExecution") == 1  # never a second start
    assert len(world.emulator.executions(world.arn)) == 1
    assert world.calls("ListPlanExecutions") == 0  # the journal named the execution
    ids = [n["event_id"] for n in world.notes if "event_id" in n]
    assert len(ids) == len(set(ids)) == 10  # the resumed step journaled only new events


async def test_without_its_journal_note_the_step_finds_its_execution_by_token(
    world: World,
) -> None:
    """A crash between StartPlanExecution and the journal write: the execution is found with
    ListPlanExecutions (its comment carries the token), not started again."""
    world.approvals.grant("switch/approve-db", at=0.0)
    other = world.ctx()
    await RegionSwitch()._start(other, other.params, TARGET, "ungraceful")  # type: ignore[arg-type]
    assert world.calls("StartPlanExecution") == 1
    again = replace(world.ctx(), attempt=2)
    outcome = await on_virtual_time(world.clock, RegionSwitch().execute(again), step=5.0)
    assert outcome.changed and world.calls("StartPlanExecution") == 1
    assert world.notes[0]["execution"] == "found"


async def test_a_target_region_that_cannot_be_connected_to_falls_back(world: World) -> None:
    class Unreachable(AwsClients):
        def client(self, service: str, region: str) -> Any:
            cm = super().client(service, region)
            if region != TARGET:
                return cm
            outer = cm

            class Wrapped:
                async def __aenter__(self) -> Any:
                    c = await outer.__aenter__()

                    def refuse(**_: Any) -> None:
                        raise EndpointConnectionError(endpoint_url=f"https://{TARGET}")

                    c.meta.events.register("before-send", refuse)
                    return c

                async def __aexit__(self, *exc: Any) -> Any:
                    return await outer.__aexit__(*exc)

            return Wrapped()

    world.aws = Unreachable(client_config(world.emulator))
    world.approvals.grant("switch/approve-db", at=0.0)
    await on_virtual_time(world.clock, RegionSwitch().execute(world.ctx()), step=5.0)
    [start] = world.starts()
    assert start["region"] == SOURCE
    [ex] = world.emulator.executions(world.arn)
    assert ex["region"] == SOURCE and ex["state"] == "completed"


async def test_an_ambiguous_start_failure_never_starts_elsewhere(world: World) -> None:
    """The target region drops the connection after the request was sent: it may have
    started the execution, so the step retries there instead of starting one in the other
    region (client tokens are regional)."""
    world.emulator.set_region_down(TARGET)
    with pytest.raises(RetryableError):
        await RegionSwitch().execute(world.ctx())
    assert world.starts() == [] and world.emulator.executions(world.arn) == []
    # Back up: the retry starts exactly one, there.
    world.emulator.set_region_down(TARGET, down=False)
    world.approvals.grant("switch/approve-db", at=0.0)
    await on_virtual_time(world.clock, RegionSwitch().execute(world.ctx()), step=5.0)
    assert [s["region"] for s in world.starts()] == [TARGET]


async def test_a_failed_execution_fails_the_step_with_its_error(world: World) -> None:
    world.emulator.set_step(world.arn, "scale", duration=10, fail="ASG webapp not found")
    with pytest.raises(ActionFailed, match="ended failed: step scale failed: ASG webapp not found"):
        await on_virtual_time(world.clock, RegionSwitch().execute(world.ctx()), step=5.0)
    failed = [n for n in world.notes if n.get("substep", {}).get("status") == "failed"]
    assert failed[0]["substep"]["error"] == "ASG webapp not found"


async def test_a_paused_execution_is_followed_until_the_deadline(world: World) -> None:
    world.emulator.set_step(world.arn, "scale", duration=10, fail="boom", pause_on_failure=True)
    with pytest.raises(RetryableError, match="still running at the step's deadline"):
        await on_virtual_time(world.clock, RegionSwitch().execute(world.ctx(within=60.0)), step=5.0)
    assert world.emulator.executions(world.arn)[0]["state"] == "pausedByFailedStep"


async def test_the_last_attempt_timing_out_cancels_the_execution(world: World) -> None:
    reason = "step switch timed out after 15m on its last attempt"
    ctx = replace(world.ctx(), cancel_reason=lambda: reason)
    task = asyncio.ensure_future(RegionSwitch().execute(ctx))
    await eventually(lambda: world.clock.sleepers > 0, "the first poll")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [ex] = world.emulator.executions(world.arn)
    assert ex["state"] == "canceled"
    cancel = [r for r in world.emulator.requests() if r["operation"] == "CancelPlanExecution"]
    assert cancel[0]["region"] == TARGET and reason in cancel[0]["body"]["comment"]
    assert world.notes[-1]["cancelled"] == ex["id"]


async def test_check_reads_the_plan_and_its_evaluation(world: World) -> None:
    action = RegionSwitch()
    report = await action.check(world.ctx())
    assert report.ready and report.control_plane_region is None
    assert any("approve-db waits for a manual approval" in f for f in report.findings)

    world.emulator.set_evaluation(
        world.arn, "actionRequired", ["execution role lacks autoscaling:UpdateAutoScalingGroup"]
    )
    report = await action.check(world.ctx())
    assert not report.ready
    assert "plan evaluation is actionRequired (read in us-west-2)" in report.findings
    assert (
        "plan evaluation warning: execution role lacks autoscaling:UpdateAutoScalingGroup"
        in report.findings
    )
    world.emulator.set_evaluation(world.arn, "passed")

    # The recovery region's endpoint down: the plan is read in the other region.
    world.emulator.set_region_down(TARGET)
    assert (await action.check(world.ctx())).ready
    world.emulator.set_region_down(SOURCE)
    with pytest.raises(RetryableError, match="could not be reached"):
        await action.check(world.ctx())
    world.emulator.set_region_down(TARGET, down=False)
    world.emulator.set_region_down(SOURCE, down=False)

    other = replace(
        world.ctx(), params=ArcRegionSwitch(plan_arn=world.arn.replace("orders", "nope"))
    )
    report = await action.check(other)
    assert not report.ready and "not found" in report.findings[0]
    wrong = replace(
        world.ctx(), params=ArcRegionSwitch(plan_arn=world.arn, target_region="eu-west-1")
    )
    report = await action.check(wrong)
    assert not report.ready and any("not one of the plan's regions" in f for f in report.findings)


async def test_check_sees_another_execution_under_way(world: World) -> None:
    other = replace(world.ctx(), run_id="someone-else")
    await RegionSwitch()._start(other, other.params, TARGET, "graceful")  # type: ignore[arg-type]
    report = await RegionSwitch().check(world.ctx())
    assert not report.ready
    assert any("Region switch runs one at a time" in f for f in report.findings)
    # ...while the run's own execution is no obstacle to re-entering the step.
    assert (await RegionSwitch().check(other)).ready


def test_events_become_substep_notes() -> None:
    note = event_note(
        {
            "eventId": "e-1",
            "type": "stepFailed",
            "stepName": "promote",
            "executionBlockType": "AuroraGlobalDatabase",
            "timestamp": 1_700_000_010.0,
            "error": "cluster busy",
        }
    )
    assert note["substep"] == {
        "name": "promote",
        "status": "failed",
        "at": 1_700_000_010.0,
        "kind": "AuroraGlobalDatabase",
        "error": "cluster busy",
    }
    assert note["note"] == "stepFailed promote: cluster busy"
    paused = event_note({"eventId": "e-2", "type": "executionPaused"})
    assert "substep" not in paused and paused["note"] == "executionPaused"


def test_iam_policy_names_the_plan() -> None:
    from orchestrator.policy.loader import load_policy_text

    text = orders_policy("arn:aws:arc-region-switch::123456789012:plan/orders:abc123")
    policy = load_policy_text(text, "orders.yaml")
    [statement] = [
        s
        for s in iam_policy([policy])["Statement"]
        if "arc-region-switch:StartPlanExecution" in s["Action"]
    ]
    assert statement["Resource"] == "arn:aws:arc-region-switch::123456789012:plan/orders:abc123"
    assert "arc-region-switch:ApprovePlanExecutionStep" in statement["Action"]
    assert not any(a.endswith(":GetPlan") for a in statement["Action"])  # control plane
    assert isinstance(get_action("arc.region_switch"), RegionSwitch)


async def test_readiness_says_not_ready_with_the_plans_warnings(world: World) -> None:
    from orchestrator.policy.loader import load_policy_text
    from orchestrator.readiness import format_report, readiness

    text = orders_policy(world.arn)
    policy = load_policy_text(text, "orders.yaml")
    report = await readiness([policy], world.aws, world.clock)
    assert report.ready, format_report(report)
    # Failover and failback were both checked, each in the region it recovers into.
    assert {(s.move.runbook, s.move.target) for s in report.steps} == {
        ("failover", TARGET),
        ("failback", SOURCE),
    }
    world.emulator.set_evaluation(world.arn, "actionRequired", ["ASG orders-usw2 is missing"])
    report = await readiness([policy], world.aws, world.clock)
    assert not report.ready
    text_report = format_report(report)
    assert "NOT READY  switch (arc.region_switch)" in text_report
    assert "- plan evaluation warning: ASG orders-usw2 is missing" in text_report
    assert "control plane" not in text_report  # data-plane calls only
