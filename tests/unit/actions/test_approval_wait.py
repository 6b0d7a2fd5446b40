"""approval and wait on virtual time: gates hold until approved or the deadline, sleeps are
exact and never outlast the step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.actions.approval import Approval
from orchestrator.actions.base import (
    ActionError,
    ActionFailed,
    Approvals,
    RetryableError,
    StepContext,
)
from orchestrator.actions.registry import get_action
from orchestrator.actions.wait import Wait, poll_until
from orchestrator.policy.actions import Approval as ApprovalParams
from orchestrator.policy.actions import Wait as WaitParams
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import StoreUnavailable
from tests.fixtures.clock import VirtualClock, eventually

SERVICE, RUN, STEP = "web", "run-3", "gate"


def make_ctx(
    clock: VirtualClock, params: Any, *, within: float, approvals: Approvals | None = None
) -> StepContext:
    return StepContext(
        service=SERVICE,
        run_id=RUN,
        step=STEP,
        attempt=1,
        kind="failover",
        source_region="us-east-1",
        target_region="us-west-2",
        primary_region="us-east-1",
        params=params,
        aws=AwsClients(),
        clock=clock,
        deadline=clock.monotonic() + within,
        approvals=approvals,
    )


class FakeApprovals:
    """The store's approvals: a set of (service, run_id, step), and optionally an outage."""

    def __init__(self) -> None:
        self.granted: set[tuple[str, str, str]] = set()
        self.asked: list[tuple[str, str, str]] = []
        self.down = False

    async def approved(self, service: str, run_id: str, step: str) -> bool:
        self.asked.append((service, run_id, step))
        if self.down:
            raise StoreUnavailable("store did not answer in time")
        return (service, run_id, step) in self.granted


async def parked(clock: VirtualClock, task: asyncio.Task[Any]) -> None:
    """Let ``task`` run until it sleeps on the virtual clock (or ends)."""
    await eventually(lambda: clock.sleepers > 0 or task.done(), "the task to sleep or end")


async def advance(clock: VirtualClock, task: asyncio.Task[Any], seconds: float) -> None:
    """Move time forward in small steps, letting ``task`` react at each."""
    step = 0.25
    while seconds > 0 and not task.done():
        await parked(clock, task)
        clock.advance(min(step, seconds))
        seconds -= step
        await asyncio.sleep(0)
    await parked(clock, task)


async def failure_of(work: Awaitable[object]) -> ActionError | None:
    """The ActionError ``work`` ends with (None if it succeeds), as a task's result."""
    try:
        await work
    except ActionError as exc:
        return exc
    return None


def test_registered_under_their_policy_names() -> None:
    assert isinstance(get_action("approval"), Approval)
    assert isinstance(get_action("wait"), Wait)


# -- wait ------------------------------------------------------------------------------


async def test_wait_sleeps_exactly_its_duration_on_the_step_clock() -> None:
    clock = VirtualClock()
    ctx = make_ctx(clock, WaitParams(duration=30.0), within=60.0)
    assert (await Wait().check(ctx)).ready
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(Wait().execute(ctx))
        await advance(clock, task, 29.75)
        assert not task.done()
        await advance(clock, task, 0.25)
        assert task.done()
    assert task.result().detail == "waited 30s"
    assert not task.result().changed


async def test_wait_longer_than_the_step_fails_at_once() -> None:
    clock = VirtualClock()
    ctx = make_ctx(clock, WaitParams(duration=600.0), within=300.0)
    with pytest.raises(ActionFailed, match="does not fit in the step's remaining 5m"):
        await Wait().execute(ctx)
    assert clock.monotonic() == 0.0  # failed without sleeping first


# -- approval ----------------------------------------------------------------------------


async def test_approval_holds_until_the_step_is_approved() -> None:
    clock, approvals = VirtualClock(), FakeApprovals()
    ctx = make_ctx(clock, ApprovalParams(), within=600.0, approvals=approvals)
    assert (await Approval().check(ctx)).ready
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(Approval().execute(ctx))
        await advance(clock, task, 120.0)
        assert not task.done()
        # An approval for another run or step does not open this gate.
        approvals.granted |= {(SERVICE, "run-other", STEP), (SERVICE, RUN, "other-step")}
        await advance(clock, task, 10.0)
        assert not task.done()

        approvals.granted.add((SERVICE, RUN, STEP))
        approved_at = clock.monotonic()
        await advance(clock, task, 5.0)
        assert task.done()
    assert task.result().detail == "approved"
    assert set(approvals.asked) == {(SERVICE, RUN, STEP)}
    # Polled often enough that an operator is not kept waiting.
    assert clock.monotonic() - approved_at <= 2.0


async def test_approval_times_out_at_the_deadline() -> None:
    clock, approvals = VirtualClock(), FakeApprovals()
    ctx = make_ctx(clock, ApprovalParams(), within=60.0, approvals=approvals)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(failure_of(Approval().execute(ctx)))
        await advance(clock, task, 59.0)
        assert not task.done()
        await advance(clock, task, 2.0)
        assert task.done()
    failure = task.result()
    assert isinstance(failure, ActionFailed)
    assert str(failure) == "approval timed out after 1m: 'approve to continue'"
    assert clock.monotonic() <= 61.0


async def test_an_unreadable_store_is_never_an_approval() -> None:
    clock, approvals = VirtualClock(), FakeApprovals()
    approvals.down = True
    approvals.granted.add((SERVICE, RUN, STEP))  # recorded, but the store cannot be read
    ctx = make_ctx(clock, ApprovalParams(), within=600.0, approvals=approvals)
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(Approval().execute(ctx))
            await advance(clock, task, 30.0)
            assert not task.done()
            assert len(approvals.asked) > 1  # it kept looking

            approvals.down = False
            await advance(clock, task, 5.0)
            assert task.done()
    assert task.result().detail == "approved"
    # Said once per outage, not at every look.
    assert [e["event"] for e in logs if e["event"] == "approval_store_unavailable"] == [
        "approval_store_unavailable"
    ]


async def test_approval_without_a_store_fails_for_good() -> None:
    ctx = make_ctx(VirtualClock(), ApprovalParams(), within=60.0)
    with pytest.raises(ActionFailed, match="no approval store"):
        await Approval().execute(ctx)


# -- poll_until --------------------------------------------------------------------------


class RecordingClock(VirtualClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)  # time passes exactly as asked
        await asyncio.sleep(0)


def never(seen: str) -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def probe() -> tuple[bool, str]:
        return False, seen

    return probe


async def test_poll_until_backs_off_with_jitter_and_stops_at_the_deadline() -> None:
    clock = RecordingClock()
    ctx = make_ctx(clock, WaitParams(duration=1.0), within=100.0)
    expected = r"timed out waiting for ready after 1m40s \(last seen: 2/3\)"
    with pytest.raises(RetryableError, match=expected):
        await poll_until(ctx, never("2/3"), what="ready", first_delay=1.0, max_delay=8.0)
    assert clock.monotonic() == pytest.approx(100.0)  # exactly to the deadline, not past it
    delays = clock.sleeps[:-1]  # the last one is cut short by the deadline
    for n, delay in enumerate(delays):
        ceiling = min(8.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling


async def test_poll_until_looks_once_even_with_no_time_left() -> None:
    clock = RecordingClock()
    looks = 0

    async def probe() -> tuple[bool, str]:
        nonlocal looks
        looks += 1
        return True, "done"

    await poll_until(make_ctx(clock, WaitParams(duration=1.0), within=0.0), probe, what="x")
    assert looks == 1
    assert clock.sleeps == []
