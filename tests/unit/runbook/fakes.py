"""Fake actions for the executor's tests: scripted per step and attempt, recording calls.

One :class:`ScriptedAction` stands in for every action name (the executor's action lookup
is injected); what it does is chosen by the step's name and the attempt number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
)
from orchestrator.store.base import FencedOut, JournalRecord, Store

OK = "ok"
RETRY = "retry"  # raise RetryableError
FAIL = "fail"  # raise ActionFailed
HANG = "hang"  # never return (until cancelled)
NOT_READY = "not_ready"  # check reports not ready


@dataclass
class Call:
    step: str
    attempt: int
    started: float  # clock.monotonic()
    ended: float | None = None
    ctx: StepContext | None = None


@dataclass
class ScriptedAction(Action):
    """``script[step]`` lists what each attempt does (the last entry repeats); ``durations``
    is how long execute sleeps on the clock; ``hooks[step]`` runs inside execute, after
    the sleep (e.g. to look at the journal, or to steal the lease)."""

    clock: Any
    script: dict[str, Sequence[str]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    hooks: dict[str, Callable[[StepContext], Awaitable[None]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    checks: list[tuple[str, int]] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    applied: dict[str, int] = field(default_factory=dict)  # step -> changes made

    name = "fake"
    params_model = BaseModel

    def behaviour(self, ctx: StepContext) -> str:
        plan = self.script.get(ctx.step, [OK])
        return plan[min(ctx.attempt, len(plan)) - 1]

    async def check(self, ctx: StepContext) -> CheckReport:
        self.checks.append((ctx.step, ctx.attempt))
        if self.behaviour(ctx) == NOT_READY:
            return CheckReport(ready=False, findings=(f"{ctx.step} target missing",))
        return CheckReport(ready=True)

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        call = Call(ctx.step, ctx.attempt, self.clock.monotonic(), ctx=ctx)
        self.calls.append(call)
        self.active.add(ctx.step)
        try:
            if ctx.step in self.durations:
                await self.clock.sleep(self.durations[ctx.step])
            if ctx.step in self.hooks:
                await self.hooks[ctx.step](ctx)
            what = self.behaviour(ctx)
            if what == HANG:
                await asyncio.Event().wait()
            if what == RETRY:
                raise RetryableError(f"{ctx.step}: throttled (attempt {ctx.attempt})")
            if what == FAIL:
                raise ActionFailed(f"{ctx.step}: access denied")
            changed = ctx.step not in self.applied
            if changed:
                self.applied[ctx.step] = 1
            return ExecuteOutcome(changed=changed, detail=f"did {ctx.step}")
        finally:
            call.ended = self.clock.monotonic()
            self.active.discard(ctx.step)

    async def verify(self, ctx: StepContext) -> None:
        return None

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []

    def executed(self, step: str) -> list[Call]:
        return [c for c in self.calls if c.step == step]


class FencingStore:
    """A real store, with FencedOut raised for the first journal record matching
    ``fence_when`` (as if another leader had taken over just then)."""

    def __init__(self, inner: Store, fence_when: Callable[[JournalRecord], bool]) -> None:
        self._inner = inner
        self._fence_when = fence_when
        self.timeout = inner.timeout

    async def append_journal(self, record: JournalRecord) -> None:
        if self._fence_when(record):
            raise FencedOut(f"token {record.token} is no longer the lease's")
        await self._inner.append_journal(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
