"""Waiting on the step's clock: the ``wait`` action, and :func:`poll_until`, the bounded
poll-with-backoff that the other actions' ``verify`` (and ``approval``) use.

Both sleep on ``ctx.clock`` only, so a test drives them with virtual time, and neither ever
sleeps past ``ctx.deadline``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionError,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.policy.actions import Wait as WaitParams
from orchestrator.policy.durations import format_duration

Probe = Callable[[], Awaitable[tuple[bool, str]]]
"""One look at the world: ``(done, what was seen)``; the description ends up in the error
when the deadline passes first."""


async def poll_until(
    ctx: StepContext,
    probe: Probe,
    *,
    what: str,
    first_delay: float = 1.0,
    max_delay: float = 15.0,
    on_timeout: type[ActionError] = RetryableError,
) -> None:
    """Call ``probe`` until it reports done, sleeping on ``ctx.clock`` in between with
    exponential backoff and jitter (``first_delay`` doubling up to ``max_delay``, each
    delay drawn from its upper half so that many pollers do not beat in step).

    Bounded: the probe runs at least once, never after ``ctx.deadline`` has been reached by
    a sleep, and then ``on_timeout`` is raised naming ``what`` and the last thing seen.
    Errors the probe raises propagate unchanged.
    """
    if first_delay <= 0 or max_delay < first_delay:
        raise ValueError(f"poll_until needs 0 < first_delay <= max_delay for {what}")
    started = ctx.clock.monotonic()
    delay = first_delay
    while True:
        done, seen = await probe()
        if done:
            return
        remaining = ctx.remaining()
        if remaining <= 0:
            waited = format_duration(ctx.clock.monotonic() - started)
            raise on_timeout(f"timed out waiting for {what} after {waited} (last seen: {seen})")
        await ctx.clock.sleep(min(random.uniform(delay / 2, delay), remaining))
        delay = min(max_delay, delay * 2)


class Wait(Action):
    """Sleep ``duration`` on the step's clock (e.g. to let DNS caches drain).

    A wait longer than what is left of the step's deadline fails at once instead of sleeping
    and then failing: the policy needs a longer ``timeout``. A resumed run waits again in
    full (the conservative reading of "wait at least this long")."""

    name = "wait"
    params_model = WaitParams

    async def check(self, ctx: StepContext) -> CheckReport:
        typed_params(ctx, WaitParams)
        return CheckReport(ready=True)

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        duration = typed_params(ctx, WaitParams).duration
        remaining = ctx.remaining()
        if duration > remaining:
            raise ActionFailed(
                f"wait of {format_duration(duration)} does not fit in the step's remaining "
                f"{format_duration(remaining)}: give the step a longer timeout"
            )
        await ctx.clock.sleep(duration)
        return ExecuteOutcome(changed=False, detail=f"waited {format_duration(duration)}")

    async def verify(self, ctx: StepContext) -> None:
        return None

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        return ()

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []
