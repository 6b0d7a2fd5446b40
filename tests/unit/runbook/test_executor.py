"""The runbook executor against the real SqliteStore, with scripted fake actions, on a
virtual clock: DAG order and overlap, timeouts, retries with backoff, abort/continue, the
journal, fencing, resume, RTO accounting."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.actions.base import StepContext
from orchestrator.engine.state import Decision, RunStatus, ServiceState
from orchestrator.engine.vocabulary import Action as Kind
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.access import AwsRole
from orchestrator.policy.actions import Wait
from orchestrator.policy.loader import load_policy_file
from orchestrator.policy.models import OnFailure, Policy, Runbooks, Step
from orchestrator.runbook import Backoff, Executor, NotLeader, RunRejected, StepStatus
from orchestrator.runbook.journal import ProgressNote, RunHeader, fold
from orchestrator.runbook.rto import build_progress, substeps
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.store.base import FencedOut, JournalRecord, JournalStatus, Lease
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.unit.runbook.fakes import FAIL, HANG, NOT_READY, RETRY, FencingStore, ScriptedAction

WEBAPP = Path(__file__).parents[3] / "policies" / "webapp" / "webapp.yaml"
VERSION = "v-test-1"
DETECTED_AGO = 60.0
DECIDED_AGO = 10.0
T = TypeVar("T")


class TracingClock(VirtualClock):
    """A virtual clock that remembers every sleep asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


def step(name: str, *after: str, **fields: Any) -> Step:
    return Step(name=name, action="wait", params={"duration": "1s"}, after=list(after), **fields)


def policy_with(steps: Sequence[Step], rto: float = 900.0) -> Policy:
    base = load_policy_file(WEBAPP)
    return base.model_copy(update={"runbooks": Runbooks(failover=list(steps)), "rto": rto})


def decision(clock: VirtualClock, kind: Kind = Kind.FAILOVER) -> Decision:
    now = clock.now()
    return Decision(
        service="webapp",
        at=now - DECIDED_AGO,
        phase=Phase.FAILING_OVER,
        action=kind,
        active_region="us-east-1",
        target="us-west-2",
        policy_version=VERSION,
        detected_at=now - DETECTED_AGO,
    )


@pytest.fixture
def clock() -> TracingClock:
    return TracingClock()


@pytest.fixture
async def lease(store: SqliteStore) -> Lease:
    got = await store.acquire_lease("node-a", 3600.0)
    assert got is not None
    return got


@pytest.fixture
def aws() -> AwsClients:
    # Never called by the fake actions; an endpoint that refuses connections, to be sure.
    return AwsClients(AwsClientConfig(endpoint_url="http://127.0.0.1:9", max_attempts=1))


def executor(
    store: Any,
    aws: AwsClients,
    clock: VirtualClock,
    lease: Lease,
    fake: ScriptedAction,
    **kwargs: Any,
) -> Executor:
    return Executor(
        store,
        aws,
        clock,
        token=lambda: lease.token,
        actions=lambda _name: fake,
        rng=random.Random(7),
        **kwargs,
    )


async def drive(
    clock: VirtualClock, work: Awaitable[T], tick: float = 0.25, within: float = 20.0
) -> T:
    """Run ``work``, moving virtual time on by ``tick`` whenever something sleeps on it."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while not task.done():
            if loop.time() > deadline:
                pytest.fail(f"run did not end within {within}s of real time")
            if clock.sleepers:
                clock.advance(tick)
            await asyncio.sleep(0.001)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def start(
    ex: Executor, policy: Policy, clock: VirtualClock, run_id: str = "run-1", **kwargs: Any
) -> str:
    return await ex.start_run(
        policy, decision(clock), ServiceState("webapp", "us-east-1"), run_id=run_id, **kwargs
    )


def statuses(records: Sequence[JournalRecord]) -> list[tuple[str, str, int]]:
    return [(r.status.value, r.step, r.attempt) for r in records]


# -- DAG ---------------------------------------------------------------------------------


async def test_independent_steps_overlap_and_dependents_wait_for_both(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, durations={"promote": 2.0, "scale": 3.0, "flip": 1.0})
    policy = policy_with(
        [step("promote"), step("scale"), step("flip", "promote", "scale"), step("done", "flip")]
    )
    ex = executor(store, aws, clock, lease, fake)
    task = asyncio.ensure_future(start(ex, policy, clock))
    # Both roots are inside execute before any virtual time passes: they run concurrently.
    await eventually(lambda: fake.active == {"promote", "scale"}, "both roots running")
    await drive(clock, task)

    promote, scale = fake.executed("promote")[0], fake.executed("scale")[0]
    flip, done = fake.executed("flip")[0], fake.executed("done")[0]
    assert promote.started == scale.started == 0.0
    assert promote.ended is not None and scale.ended is not None
    assert promote.ended == pytest.approx(2.0, abs=0.3)
    assert scale.ended == pytest.approx(3.0, abs=0.3)
    assert flip.started >= max(promote.ended, scale.ended)
    assert flip.ended is not None and done.started >= flip.ended
    state = await store.load_state("webapp")
    assert state is not None and state.active_region == "us-west-2" and state.run is None


async def test_rejects_a_plan_with_a_cycle_before_writing_anything(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock)
    policy = policy_with([step("a", "b"), step("b", "a")])
    with pytest.raises(RunRejected, match="cycle"):
        await start(executor(store, aws, clock, lease, fake), policy, clock)
    assert await store.read_run("run-1") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": Kind.NONE}, "does not start a run"),
        ({"target": "us-east-1"}, "already webapp's active region"),
        ({"target": "eu-west-1"}, "not one of webapp's regions"),
        ({"service": "ledger"}, "different services"),
    ],
)
async def test_rejects_a_decision_that_is_not_a_run(
    store: SqliteStore,
    lease: Lease,
    aws: AwsClients,
    clock: TracingClock,
    change: dict[str, Any],
    message: str,
) -> None:
    from dataclasses import replace

    ex = executor(store, aws, clock, lease, ScriptedAction(clock))
    bad = replace(decision(clock), **change)
    with pytest.raises(RunRejected, match=message):
        await ex.start_run(policy_with([step("a")]), bad, ServiceState("webapp", "us-east-1"))
    assert await store.unfinished_runs() == []


# -- journal -----------------------------------------------------------------------------


async def test_journal_commits_intent_before_the_action_runs(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    seen_in_journal: list[list[tuple[str, str, int]]] = []

    async def look(ctx: StepContext) -> None:
        seen_in_journal.append(statuses(await store.read_run(ctx.run_id)))

    fake = ScriptedAction(clock, hooks={"a": look})
    policy = policy_with([step("a"), step("b", "a")])
    # Nothing here sleeps: virtual time stands still for the whole run.
    await asyncio.wait_for(
        start(executor(store, aws, clock, lease, fake), policy, clock), timeout=10.0
    )

    # Inside execute, the attempt's step_started was already durable in the store.
    assert seen_in_journal == [[("run_started", "", 0), ("step_started", "a", 1)]]
    records = await store.read_run("run-1")
    assert statuses(records) == [
        ("run_started", "", 0),
        ("step_started", "a", 1),
        ("step_succeeded", "a", 1),
        ("step_started", "b", 1),
        ("step_succeeded", "b", 1),
        ("run_succeeded", "", 0),
    ]
    assert {r.token for r in records} == {lease.token}
    assert {r.policy_version for r in records} == {VERSION}
    header = records[0]
    assert (header.kind, header.source_region, header.target_region) == (
        "failover",
        "us-east-1",
        "us-west-2",
    )
    assert records[2].detail == "changed: did a"
    assert all(r.at == clock.now() for r in records)  # virtual time did not move


async def test_params_are_rendered_for_the_run(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock)
    policy = policy_with([Step(name="a", action="wait", params={"duration": "1m30s"})])
    await drive(
        clock,
        start(executor(store, aws, clock, lease, fake), policy, clock, facts={"lag_seconds": 0.5}),
    )
    ctx = fake.executed("a")[0].ctx
    assert ctx is not None
    assert ctx.params == Wait(duration=90.0)
    assert (ctx.source_region, ctx.target_region, ctx.primary_region) == (
        "us-east-1",
        "us-west-2",
        "us-east-1",
    )
    # The caller's facts, with the ones every run has (orchestrator.actions.moves).
    assert ctx.kind == "failover"
    assert ctx.facts == {
        "kind": "failover",
        "drill": False,
        "source_region": "us-east-1",
        "source_verdict": None,
        "source_down": False,
        "target_lag_seconds": None,
        "target_lag_age_seconds": None,
        "lag_seconds": 0.5,
    }
    assert ctx.approvals is store


# -- timeouts and retries ----------------------------------------------------------------


async def test_an_attempt_that_hangs_times_out_on_the_clock_and_is_retried(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"a": [HANG, HANG]})
    policy = policy_with([step("a", timeout=30.0, retries=1)])
    await drive(
        clock,
        start(
            executor(store, aws, clock, lease, fake, backoff=Backoff(base=1.0, cap=1.0)),
            policy,
            clock,
        ),
        tick=1.0,
    )

    first, second = fake.executed("a")
    assert first.ctx is not None and first.ctx.deadline == first.started + 30.0
    assert first.ended == pytest.approx(first.started + 30.0, abs=1.0)
    assert second.ended == pytest.approx(second.started + 30.0, abs=1.0)
    records = await store.read_run("run-1")
    failed = [r for r in records if r.status is JournalStatus.STEP_FAILED]
    assert [(r.attempt, r.error, r.retryable) for r in failed] == [
        (1, "attempt timed out after 30s", True),
        (2, "attempt timed out after 30s", True),
    ]
    assert records[-1].status is JournalStatus.RUN_FAILED
    assert records[-1].error == "step a failed: attempt timed out after 30s"


async def test_retryable_errors_are_retried_with_full_jitter_backoff(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"a": [RETRY, RETRY, RETRY, "ok"]})
    policy = policy_with([step("a", timeout=60.0, retries=3)])
    backoff = Backoff(base=2.0, cap=5.0)
    await drive(
        clock,
        start(executor(store, aws, clock, lease, fake, backoff=backoff), policy, clock),
        tick=0.01,
    )

    # The executor's rng is Random(7): the same draws, against ceilings 2, 4, 5 (capped).
    rng = random.Random(7)
    expected = [rng.uniform(0, 2.0), rng.uniform(0, 4.0), rng.uniform(0, 5.0)]
    backoffs = [s for s in clock.slept if s != 60.0]  # 60 s: the attempts' own timeouts
    assert backoffs == expected
    calls = fake.executed("a")
    assert [c.attempt for c in calls] == [1, 2, 3, 4]
    gaps = [b.started - a.started for a, b in itertools.pairwise(calls)]
    assert gaps == pytest.approx(expected, abs=0.02)
    progress = await executor(store, aws, clock, lease, fake).progress("run-1")
    assert progress is not None and progress.status is RunStatus.SUCCEEDED
    assert [a.error for a in progress.step("a").attempts] == [
        "a: throttled (attempt 1)",
        "a: throttled (attempt 2)",
        "a: throttled (attempt 3)",
        "",
    ]


async def test_retries_stop_at_the_budget(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"a": [RETRY]})
    policy = policy_with([step("a", retries=2), step("b", "a")])
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    assert len(fake.executed("a")) == 3
    assert fake.executed("b") == []
    records = await store.read_run("run-1")
    assert records[-1].status is JournalStatus.RUN_FAILED
    assert records[-1].error == "step a failed: a: throttled (attempt 3)"


async def test_a_non_retryable_failure_is_not_retried(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"a": [FAIL, "ok"]})
    policy = policy_with([step("a", retries=5)])
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    assert len(fake.executed("a")) == 1
    assert [s for s in clock.slept if s != 300.0] == []  # no backoff either
    failed = [r for r in await store.read_run("run-1") if r.status is JournalStatus.STEP_FAILED]
    assert [(r.error, r.retryable) for r in failed] == [("a: access denied", False)]


async def test_a_check_that_is_not_ready_stops_the_first_attempt_before_execute(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"a": [NOT_READY]})
    await drive(
        clock,
        start(executor(store, aws, clock, lease, fake), policy_with([step("a", retries=3)]), clock),
    )
    assert fake.checks == [("a", 1)] and fake.calls == []
    failed = [r for r in await store.read_run("run-1") if r.status is JournalStatus.STEP_FAILED]
    assert [(r.error, r.retryable) for r in failed] == [
        ("precondition not met: a target missing", False)
    ]


# -- on_failure --------------------------------------------------------------------------


async def test_abort_skips_steps_not_started_lets_running_ones_finish_and_fails_the_run(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"db": [FAIL]}, durations={"db": 1.0, "scale": 5.0})
    policy = policy_with(
        [step("db"), step("scale"), step("dns", "db", "scale"), step("after-scale", "scale")]
    )
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))

    assert fake.executed("scale")[0].ended == pytest.approx(5.0, abs=0.3)  # ran to its end
    assert fake.executed("dns") == [] and fake.executed("after-scale") == []
    records = await store.read_run("run-1")
    skipped = {r.step: r.error for r in records if r.status is JournalStatus.STEP_SKIPPED}
    assert skipped == {
        "dns": "not started: step db failed: db: access denied",
        "after-scale": "not started: step db failed: db: access denied",
    }
    assert records[-1].status is JournalStatus.RUN_FAILED
    state = await store.load_state("webapp")
    assert state is not None and state.failed and state.active_region == "us-east-1"
    assert state.run is not None and state.run.error == "step db failed: db: access denied"


async def test_continue_lets_dependents_run_and_the_run_succeed(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, script={"notify": [FAIL]})
    policy = policy_with([step("notify", on_failure=OnFailure.CONTINUE), step("dns", "notify")])
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    assert len(fake.executed("dns")) == 1
    progress = await executor(store, aws, clock, lease, fake).progress("run-1")
    assert progress is not None and progress.status is RunStatus.SUCCEEDED
    assert progress.step("notify").status is StepStatus.FAILED
    state = await store.load_state("webapp")
    assert state is not None and state.active_region == "us-west-2"


# -- fencing -----------------------------------------------------------------------------


async def test_a_newer_lease_fences_the_run_out_at_its_next_write(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    async def usurp(ctx: StepContext) -> None:
        # A restarted incarnation (or another daemon) takes the lease: a larger token.
        assert await store.acquire_lease("node-a", 3600.0) is not None

    fake = ScriptedAction(clock, hooks={"a": usurp})
    policy = policy_with([step("a"), step("b", "a")])
    with pytest.raises(FencedOut):
        await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    assert fake.executed("b") == []
    assert statuses(await store.read_run("run-1")) == [
        ("run_started", "", 0),
        ("step_started", "a", 1),
    ]
    assert await store.unfinished_runs() == ["run-1"]  # for the next leader to resume


async def test_fenced_out_stops_concurrent_steps_at_once(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, durations={"slow": 100.0})
    fenced = FencingStore(store, lambda r: r.step == "fast" and r.status.value != "step_started")
    policy = policy_with([step("slow"), step("fast"), step("last", "slow")])
    with pytest.raises(FencedOut):
        await drive(clock, start(executor(fenced, aws, clock, lease, fake), policy, clock))
    assert clock.monotonic() < 100.0  # "slow" was cancelled, not waited for
    assert fake.executed("last") == []


async def test_without_the_lease_nothing_is_written(
    store: SqliteStore, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock)
    ex = Executor(store, aws, clock, token=lambda: None, actions=lambda _n: fake)
    with pytest.raises(NotLeader):
        await start(ex, policy_with([step("a")]), clock)
    assert await store.read_run("run-1") == [] and fake.calls == []


# -- resume ------------------------------------------------------------------------------


async def test_resume_redoes_nothing_finished_and_reenters_the_interrupted_step(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    first = ScriptedAction(clock, script={"b": [HANG]})
    policy = policy_with([step("a"), step("b", "a", retries=0), step("c", "b")])
    crashed = asyncio.ensure_future(start(executor(store, aws, clock, lease, first), policy, clock))
    await eventually(lambda: "b" in first.active, "step b running")
    crashed.cancel()  # the process dies mid-step: no end record for b
    await asyncio.gather(crashed, return_exceptions=True)

    second = ScriptedAction(clock)
    second.applied = dict(first.applied)  # the world remembers what was done
    resumed = await drive(clock, executor(store, aws, clock, lease, second).resume_unfinished())

    assert resumed == ["run-1"]
    assert second.executed("a") == []  # succeeded before the crash: not redone
    assert [c.attempt for c in second.executed("b")] == [2]  # numbering continues
    assert len(second.executed("c")) == 1
    assert statuses(await store.read_run("run-1"))[3:] == [
        ("step_started", "b", 1),
        ("step_started", "b", 2),
        ("step_succeeded", "b", 2),
        ("step_started", "c", 1),
        ("step_succeeded", "c", 1),
        ("run_succeeded", "", 0),
    ]
    state = await store.load_state("webapp")
    assert state is not None and state.active_region == "us-west-2" and state.run is None
    assert await store.unfinished_runs() == []


async def test_resume_reenters_through_execute_even_when_check_says_done(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    first = ScriptedAction(clock, script={"a": [HANG]})
    policy = policy_with([step("a")])
    crashed = asyncio.ensure_future(start(executor(store, aws, clock, lease, first), policy, clock))
    await eventually(lambda: "a" in first.active, "step a running")
    crashed.cancel()
    await asyncio.gather(crashed, return_exceptions=True)

    # After the crash the world already shows a's effect: its check no longer holds, but a
    # re-entered attempt leaves the decision to the idempotent execute.
    second = ScriptedAction(clock, script={"a": [NOT_READY]}, applied={"a": 1})
    await drive(clock, executor(store, aws, clock, lease, second).resume_unfinished())
    records = await store.read_run("run-1")
    assert [
        (r.step, r.attempt, r.detail) for r in records if r.status is JournalStatus.STEP_SUCCEEDED
    ] == [("a", 2, "unchanged: did a")]
    assert records[-1].status is JournalStatus.RUN_SUCCEEDED


async def test_resume_with_nothing_unfinished_does_nothing(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock)
    assert await executor(store, aws, clock, lease, fake).resume_unfinished() == []


# -- approvals and RTO -------------------------------------------------------------------


async def test_an_approval_step_shows_the_run_waiting_for_approval(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    waiting: list[bool] = []

    async def look(ctx: StepContext) -> None:
        state = await store.load_state("webapp")
        assert state is not None and state.run is not None
        waiting.append(state.run.waiting_approval)

    fake = ScriptedAction(clock, hooks={"gate": look, "dns": look})
    policy = policy_with(
        [
            Step(name="gate", action="approval", params={"message": "ok?"}),
            step("dns", "gate"),
        ]
    )
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    assert waiting == [True, False]


async def test_progress_accounts_time_against_the_rto(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    fake = ScriptedAction(clock, durations={"a": 4.0, "b": 100.0})
    policy = policy_with([step("a"), step("b", "a")], rto=300.0)
    ex = executor(store, aws, clock, lease, fake)
    task = asyncio.ensure_future(start(ex, policy, clock))
    await eventually(lambda: fake.active == {"a"}, "a running")
    clock.advance(4.0)
    await eventually(lambda: fake.active == {"b"}, "b running")
    clock.advance(30.0)

    mid = await ex.progress("run-1")
    assert mid is not None and mid.status is RunStatus.RUNNING
    assert mid.detected_at == pytest.approx(clock.now() - 34.0 - DETECTED_AGO)
    assert mid.decided_at == pytest.approx(clock.now() - 34.0 - DECIDED_AGO)
    assert mid.elapsed == pytest.approx(DETECTED_AGO + 34.0)
    assert mid.rto_remaining == pytest.approx(300.0 - DETECTED_AGO - 34.0)
    a, b = mid.step("a"), mid.step("b")
    assert (a.status, a.duration, len(a.attempts)) == (StepStatus.SUCCEEDED, 4.0, 1)
    assert (b.status, b.duration, b.finished_at) == (StepStatus.RUNNING, 30.0, None)

    clock.advance(250.0)  # b wakes at 284 s into the run: past the budget
    await asyncio.wait_for(task, timeout=10.0)  # nothing sleeps any more: no time passes
    end = await ex.progress("run-1")
    assert end is not None and end.status is RunStatus.SUCCEEDED
    assert end.elapsed == pytest.approx(DETECTED_AGO + 284.0)
    assert end.rto_exceeded and end.rto_remaining == pytest.approx(300.0 - DETECTED_AGO - 284.0)
    clock.advance(1000.0)  # a finished run's numbers no longer move
    later = await ex.progress("run-1")
    assert later is not None and later.elapsed == end.elapsed
    assert await ex.progress("no-such-run") is None


async def test_each_step_acts_as_its_role_and_the_plan_says_which(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    # The policy's role for every step, a step's own role where it names one; journaled
    # with the plan, so a resumed run acts as the same roles after a reload.
    workload = AwsRole(role_arn="arn:aws:iam::111111111111:role/failoverd", external_id="x1")
    dns = AwsRole(role_arn="arn:aws:iam::222222222222:role/failoverd-dns")
    fake = ScriptedAction(clock)
    steps = [step("a"), step("b").model_copy(update={"aws": dns})]
    policy = policy_with(steps).model_copy(update={"aws": workload})
    run_id = await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))
    roles = {
        c.step: c.ctx.aws.role.role_arn
        for c in fake.calls
        if c.ctx is not None and c.ctx.aws.role is not None
    }
    assert roles == {"a": workload.role_arn, "b": dns.role_arn}
    header = RunHeader.from_record((await store.read_run(run_id))[0])
    assert [s.aws for s in header.steps] == [workload, dns]


# -- progress notes (a step following a Region switch execution) and giving a step up ------


async def test_notes_are_journaled_shown_and_handed_back_to_a_reentered_step(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    histories: list[tuple[int, tuple[Any, ...]]] = []

    async def plan(ctx: StepContext) -> None:
        assert ctx.progress is not None
        histories.append((ctx.attempt, ctx.history))
        if ctx.attempt == 1:
            t = clock.now()
            await ctx.progress({"execution": "started", "execution_id": "x1", "note": "x1 started"})
            await ctx.progress({"substep": {"name": "scale", "status": "running", "at": t}})
            await ctx.progress({"substep": {"name": "scale", "status": "succeeded", "at": t + 3}})
        await ctx.progress({"note": f"attempt {ctx.attempt} following x1"})

    fake = ScriptedAction(clock, script={"switch": ["retry", "ok"]}, hooks={"switch": plan})
    policy = policy_with([step("switch", retries=1)])
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock))

    records = await store.read_run("run-1")
    notes = [r for r in records if r.status is JournalStatus.STEP_PROGRESS]
    assert [(r.step, r.attempt) for r in notes] == [("switch", 1)] * 4 + [("switch", 2)]
    assert json.loads(notes[0].detail)["execution_id"] == "x1"
    # The re-entered attempt got the first attempt's notes, oldest first.
    assert histories[0] == (1, ())
    attempt, earlier = histories[1]
    assert attempt == 2 and [n.get("execution_id") for n in earlier][:1] == ["x1"]
    assert len(earlier) == 4
    progress = build_progress(fold(records), clock.now())
    switch = progress.step("switch")
    assert switch.status is StepStatus.SUCCEEDED and len(switch.attempts) == 2
    assert [(x.name, x.status, x.duration) for x in switch.substeps] == [
        ("scale", "succeeded", 3.0)
    ]
    assert switch.note == "attempt 2 following x1"


async def test_a_substep_awaiting_approval_shows_in_the_service_state_until_approved(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    flags: list[bool] = []

    async def look() -> None:
        state = await store.load_state("webapp")
        flags.append(bool(state and state.run and state.run.waiting_approval))

    async def plan(ctx: StepContext) -> None:
        assert ctx.progress is not None
        await look()
        await ctx.progress(
            {"awaiting_approval": "gate", "substep": {"name": "gate", "status": "waiting_approval"}}
        )
        await look()
        await ctx.progress({"approved": "gate", "by": "alice", "reason": "go"})
        await look()

    fake = ScriptedAction(clock, hooks={"switch": plan})
    await drive(
        clock, start(executor(store, aws, clock, lease, fake), policy_with([step("switch")]), clock)
    )
    assert flags == [False, True, False]


async def test_a_note_that_is_not_json_fails_the_step_not_the_run_loop(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    async def plan(ctx: StepContext) -> None:
        assert ctx.progress is not None
        await ctx.progress({"when": object()})

    fake = ScriptedAction(clock, hooks={"switch": plan})
    await drive(
        clock, start(executor(store, aws, clock, lease, fake), policy_with([step("switch")]), clock)
    )
    records = await store.read_run("run-1")
    failed = [r for r in records if r.status is JournalStatus.STEP_FAILED]
    assert "progress note is not JSON" in failed[0].error
    assert records[-1].status is JournalStatus.RUN_FAILED


async def test_only_the_last_attempt_timing_out_gives_the_step_up(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    reasons: list[tuple[int, str | None]] = []

    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            reasons.append((ctx.attempt, ctx.cancel_reason()))
            raise

    fake = ScriptedAction(clock, hooks={"switch": hang})
    policy = policy_with([step("switch", retries=1, timeout=5.0)])
    await drive(clock, start(executor(store, aws, clock, lease, fake), policy, clock), tick=1.0)
    assert reasons == [
        (1, None),  # a retry follows: whatever the step started goes on
        (2, "step switch timed out after 5s on its last attempt"),
    ]


async def test_a_shutdown_is_no_reason_to_give_the_step_up(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    reasons: list[str | None] = []

    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            reasons.append(ctx.cancel_reason())
            raise

    fake = ScriptedAction(clock, hooks={"switch": hang})
    policy = policy_with([step("switch", timeout=60.0)])
    task = asyncio.ensure_future(start(executor(store, aws, clock, lease, fake), policy, clock))
    await eventually(lambda: fake.active == {"switch"}, "the step to run")
    task.cancel()  # the daemon stops (or its TaskGroup goes): the run resumes later
    await asyncio.gather(task, return_exceptions=True)
    assert reasons == [None]


def test_junk_notes_never_break_the_view() -> None:
    junk = [
        {"substep": "scale"},
        {"substep": {"name": 3, "status": "running"}},
        {"substep": {"name": "scale", "status": "exploded"}},
        {"substep": {"name": "scale", "status": "running", "at": "yesterday"}},
        {"awaiting_approval": ["a"]},
    ]
    notes = [ProgressNote(10.0 + i, 1, d) for i, d in enumerate(junk)]
    [scale] = substeps(notes, end=20.0)
    assert (scale.status, scale.started_at, scale.duration) == ("running", 13.0, 7.0)


async def test_a_resumed_step_clears_the_approval_wait_it_inherited_once_approved(
    store: SqliteStore, lease: Lease, aws: AwsClients, clock: TracingClock
) -> None:
    """Killed while a sub-step waited for approval: the resumed attempt shows the wait, and
    the approval (or the sub-step moving on) clears it at once, not at the step's end."""

    async def wait_then_hang(ctx: StepContext) -> None:
        assert ctx.progress is not None
        await ctx.progress({"awaiting_approval": "gate"})
        await asyncio.Event().wait()

    first = ScriptedAction(clock, hooks={"switch": wait_then_hang})
    policy = policy_with([step("switch")])
    crashed = asyncio.ensure_future(start(executor(store, aws, clock, lease, first), policy, clock))

    async def waiting() -> bool:
        state = await store.load_state("webapp")
        return bool(state and state.run and state.run.waiting_approval)

    flags: list[bool] = []

    async def approved_by_the_console(ctx: StepContext) -> None:
        assert ctx.progress is not None
        flags.append(await waiting())
        await ctx.progress({"substep": {"name": "gate", "status": "succeeded"}})
        flags.append(await waiting())

    await eventually(lambda: "switch" in first.active, "the step running")
    for _ in range(200):
        if await waiting():
            break
        await asyncio.sleep(0.005)
    crashed.cancel()  # the process dies mid-step, the service state still says "waiting"
    await asyncio.gather(crashed, return_exceptions=True)
    assert await waiting()

    second = ScriptedAction(clock, hooks={"switch": approved_by_the_console})
    await drive(clock, executor(store, aws, clock, lease, second).resume_unfinished())
    assert flags == [True, False]
