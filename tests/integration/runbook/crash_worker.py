"""A daemon stand-in for the crash-resume test: runs (or resumes) the example webapp
policy's failover runbook with the real executor, the real actions and the real
SqliteStore, against the test's moto server over HTTP, and stops dead at one chosen point
so that the test can SIGKILL it there.

Crash points (one per incarnation, given on the command line):

* ``run:started`` — ``run_started`` committed, the service state not yet written, no step
  begun;
* ``<step>:started`` — the step's ``step_started`` committed, nothing touched;
* ``<step>:applied`` — mid-step: ``execute`` changed the world, ``verify`` has not run and
  the journal does not know;
* ``before:<Operation>`` / ``after:<Operation>`` — around one AWS call (any service): the
  request not yet sent / the answer received, still inside ``execute``;
* ``<step>:succeeded`` — ``step_succeeded`` committed, dependents not started;
* ``run:settled`` — the service state records the move, ``run_succeeded`` not yet written.

At the point, the worker writes it to ``marker`` (which the test waits for) and blocks the
whole event loop, so nothing else moves until the SIGKILL. A point the run passes without
meeting is a test plan error: the worker then finishes and the test sees it.

    python -m tests.integration.runbook.crash_worker DIR POINT|none

``DIR/config.json`` holds the moto endpoint and the seeded hosted zone id.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.actions.base import Action, CheckReport, ExecuteOutcome, IamStatement, StepContext
from orchestrator.actions.registry import get_action
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.state import ServiceState
from orchestrator.runbook import Executor
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus, Store
from orchestrator.store.sqlite import SqliteStore
from tests.integration.runbook.webapp_world import (
    SERVICE,
    SOURCE,
    failover_decision,
    webapp_policy,
)

RUN_ID = "webapp-crash-test"
POLICY_VERSION = "crash-test"
POINT_OF = {
    JournalStatus.RUN_STARTED: "started",
    JournalStatus.STEP_STARTED: "started",
    JournalStatus.STEP_SUCCEEDED: "succeeded",
}


class Crasher:
    def __init__(self, folder: Path, point: str) -> None:
        self.marker = folder / "marker"
        self.point = point

    def at(self, point: str) -> None:
        if point != self.point:
            return
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(point)
        tmp.replace(self.marker)
        time.sleep(600)  # blocks the event loop: the test kills us here


class CrashingStore:
    """The real store; stops after the journal write or state save named by the point."""

    def __init__(self, inner: Store, crasher: Crasher) -> None:
        self._inner = inner
        self._crasher = crasher
        self.timeout = inner.timeout

    async def append_journal(self, record: JournalRecord) -> None:
        await self._inner.append_journal(record)
        if record.status in POINT_OF:
            self._crasher.at(f"{record.step or 'run'}:{POINT_OF[record.status]}")

    async def save_state(self, state: ServiceState, token: int) -> None:
        await self._inner.save_state(state, token)
        if state.run is None:
            self._crasher.at("run:settled")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CrashingAction(Action):
    """The real action; stops between a changing ``execute`` and ``verify``."""

    # The executor renders a step's parameters from the policy's registry, not from these.
    name = "crashing"
    params_model = BaseModel

    def __init__(self, inner: Action, crasher: Crasher) -> None:
        self.inner = inner
        self.crasher = crasher

    async def check(self, ctx: StepContext) -> CheckReport:
        return await self.inner.check(ctx)

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        outcome = await self.inner.execute(ctx)
        if outcome.changed:
            self.crasher.at(f"{ctx.step}:applied")
        return outcome

    async def verify(self, ctx: StepContext) -> None:
        await self.inner.verify(ctx)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return self.inner.iam_statements(params, regions, account)


class CrashingAws(AwsClients):
    """The real client factory; every client stops before/after the named AWS call."""

    def __init__(self, config: AwsClientConfig, crasher: Crasher) -> None:
        super().__init__(config)
        self.crasher = crasher

    @asynccontextmanager
    async def client(self, service: str, region: str) -> AsyncIterator[Any]:
        async with super().client(service, region) as client:
            for when in ("before", "after"):

                def hook(when: str = when, **kwargs: Any) -> None:
                    operation = kwargs["event_name"].rsplit(".", 1)[-1]
                    self.crasher.at(f"{when}:{operation}")

                client.meta.events.register(f"{when}-call.*", hook)
            yield client


def aws_config(endpoint_url: str) -> AwsClientConfig:
    # As tests/fixtures/moto_server.py's client_config (not imported: it imports moto).
    return AwsClientConfig(
        endpoint_url=endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=2.0,
        read_timeout=10.0,
        max_attempts=2,
    )


async def main(folder: Path, point: str) -> int:
    config = json.loads((folder / "config.json").read_text())
    crasher = Crasher(folder, point)
    inner = await SqliteStore.open(folder / "state.db")
    try:
        lease = await inner.acquire_lease("crash-worker", 60.0)
        if lease is None:
            print("lease taken", file=sys.stderr)
            return 3
        executor = Executor(
            CrashingStore(inner, crasher),
            CrashingAws(aws_config(config["endpoint_url"]), crasher),
            SYSTEM_CLOCK,
            token=lambda: lease.token,
            actions=lambda name: CrashingAction(get_action(name), crasher),
        )
        if await inner.read_run(RUN_ID):
            await executor.resume_unfinished()
        else:
            policy = webapp_policy(config["zone_id"])
            decision = failover_decision(SYSTEM_CLOCK.now(), POLICY_VERSION)
            state = ServiceState(SERVICE, SOURCE)
            await executor.start_run(policy, decision, state, run_id=RUN_ID)
        return 0
    finally:
        await inner.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), sys.argv[2])))
