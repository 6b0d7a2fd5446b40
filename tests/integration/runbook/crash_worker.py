"""A daemon stand-in for the crash-resume test: runs (or resumes) the example webapp
policy's failover runbook with the real executor and the real SqliteStore, and stops dead
at a chosen point so that the test can SIGKILL it there.

The actions are stand-ins that change a "world" kept in files (the real AWS actions are
tested against moto on their own): each step's effect is its rendered parameters, written
only when not already there (read first, act only if needed, as every action must), and
every real change is appended to ``effects.log`` so that a change applied twice shows.

Crash points, ``<step>:<point>``: ``started`` (step_started committed, nothing touched),
``applied`` (mid-step: the world changed, the journal does not know yet), ``succeeded``
(step_succeeded committed, dependents not started). Each point stops the worker once: it is
written to ``used`` and to ``marker`` (which the test waits for), then the worker blocks the
whole event loop, so that nothing moves until the SIGKILL.

    python -m tests.integration.runbook.crash_worker DIR
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    StepContext,
)
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.state import Decision, ServiceState
from orchestrator.engine.vocabulary import Action as Kind
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.loader import load_policy_file
from orchestrator.runbook import Executor
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus, Store
from orchestrator.store.sqlite import SqliteStore

ROOT = Path(__file__).parents[3]
POLICY = ROOT / "policies" / "webapp" / "webapp.yaml"
RUN_ID = "webapp-crash-test"
POINT_OF = {JournalStatus.STEP_STARTED: "started", JournalStatus.STEP_SUCCEEDED: "succeeded"}


class Crasher:
    def __init__(self, folder: Path) -> None:
        self.used = folder / "used"
        self.marker = folder / "marker"

    def at(self, point: str) -> None:
        used = self.used.read_text().split() if self.used.exists() else []
        if point in used:
            return
        with self.used.open("a") as f:
            f.write(point + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(point)
        tmp.replace(self.marker)
        time.sleep(600)  # blocks the event loop: the test kills us here


class CrashingStore:
    """The real store; stops at ``<step>:started`` / ``<step>:succeeded`` after the write."""

    def __init__(self, inner: Store, crasher: Crasher) -> None:
        self._inner = inner
        self._crasher = crasher
        self.timeout = inner.timeout

    async def append_journal(self, record: JournalRecord) -> None:
        await self._inner.append_journal(record)
        if record.status in POINT_OF:
            self._crasher.at(f"{record.step}:{POINT_OF[record.status]}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WorldAction(Action):
    """Sets ``world/<step>.json`` to the step's rendered parameters, idempotently."""

    name = "world"
    params_model = BaseModel

    def __init__(self, folder: Path, crasher: Crasher) -> None:
        self.world = folder / "world"
        self.effects = folder / "effects.log"
        self.crasher = crasher

    def _wanted(self, ctx: StepContext) -> str:
        return json.dumps(ctx.params.model_dump(mode="json"), sort_keys=True)

    async def check(self, ctx: StepContext) -> CheckReport:
        return CheckReport(ready=self.world.is_dir())

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        target = self.world / f"{ctx.step}.json"
        wanted = self._wanted(ctx)
        if target.exists() and target.read_text() == wanted:
            return ExecuteOutcome(changed=False, detail=f"{ctx.step} already in place")
        tmp = target.with_suffix(".tmp")
        tmp.write_text(wanted)
        tmp.replace(target)
        with self.effects.open("a") as f:
            f.write(f"{ctx.step} attempt={ctx.attempt}\n")
            f.flush()
            os.fsync(f.fileno())
        self.crasher.at(f"{ctx.step}:applied")
        return ExecuteOutcome(changed=True, detail=f"{ctx.step} set")

    async def verify(self, ctx: StepContext) -> None:
        if (self.world / f"{ctx.step}.json").read_text() != self._wanted(ctx):
            raise AssertionError(f"{ctx.step}: effect not visible")

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []


async def main(folder: Path) -> int:
    crasher = Crasher(folder)
    inner = await SqliteStore.open(folder / "state.db")
    try:
        lease = await inner.acquire_lease("crash-worker", 60.0)
        if lease is None:
            print("lease taken", file=sys.stderr)
            return 3
        store = CrashingStore(inner, crasher)
        action = WorldAction(folder, crasher)
        executor = Executor(
            store,
            AwsClients(AwsClientConfig(endpoint_url="http://127.0.0.1:9")),
            SYSTEM_CLOCK,
            token=lambda: lease.token,
            actions=lambda _name: action,
        )
        if await inner.read_run(RUN_ID):
            await executor.resume_unfinished()
        else:
            policy = load_policy_file(POLICY)
            now = SYSTEM_CLOCK.now()
            decision = Decision(
                service="webapp",
                at=now,
                phase=Phase.FAILING_OVER,
                action=Kind.FAILOVER,
                active_region="us-east-1",
                target="us-west-2",
                policy_version="crash-test",
                detected_at=now - 30.0,
            )
            state = ServiceState("webapp", "us-east-1")
            await executor.start_run(policy, decision, state, run_id=RUN_ID)
        return 0
    finally:
        await inner.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]))))
