"""The example webapp policy's failover runbook, end to end: the executor with the real
actions, the real SQLite store, and AwsClients talking to moto over HTTP on loopback."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.state import RunStatus, ServiceState
from orchestrator.policy.loader import policy_version
from orchestrator.policy.models import Policy
from orchestrator.runbook import Executor, StepStatus
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus, Lease, StoreUnavailable
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.moto_fixups import apply_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.runbook.webapp_world import (
    DESIRED,
    DONE_MESSAGE,
    RECORD,
    SERVICE,
    SOURCE,
    SOURCE_ENDPOINT,
    START_MESSAGE,
    TARGET,
    TARGET_ENDPOINT,
    Seeded,
    asg_desired,
    assert_failed_over,
    dns_values,
    failover_decision,
    moto_mutations,
    notifications,
    seed_world,
    webapp_policy,
)

RUN_ID = "webapp-full-run"
STEPS = ["notify-start", "promote-db", "scale-up", "flip-dns", "notify-done"]
INDEPENDENT = ["notify-start", "promote-db", "scale-up"]  # no `after` among them


@pytest.fixture(autouse=True)
def _moto_fixups() -> None:
    apply_moto_fixups()


@pytest.fixture
def seeded(moto: MotoServer) -> Seeded:
    return seed_world(moto)


@pytest.fixture
def policy(seeded: Seeded) -> Policy:
    return webapp_policy(seeded.zone_id)


class Daemon:
    """One daemon's executor over its own store file, holding the leader lease."""

    def __init__(self, store: SqliteStore, lease: Lease, moto: MotoServer) -> None:
        self.store = store
        self.lease = lease
        self.executor = Executor(
            store, AwsClients(moto.client_config()), SYSTEM_CLOCK, token=lambda: lease.token
        )

    async def fail_over(self, policy: Policy) -> str:
        decision = failover_decision(SYSTEM_CLOCK.now(), policy_version([policy]))
        return await self.executor.start_run(
            policy, decision, ServiceState(SERVICE, SOURCE), run_id=RUN_ID
        )


@pytest.fixture
async def daemon(tmp_path: Path, moto: MotoServer) -> AsyncIterator[Daemon]:
    async with daemon_on(tmp_path / "state.db", moto) as d:
        yield d


@asynccontextmanager
async def daemon_on(path: Path, moto: MotoServer) -> AsyncIterator[Daemon]:
    store = await SqliteStore.open(path)
    try:
        lease = await store.acquire_lease("failoverd-a", 60.0)
        assert lease is not None
        yield Daemon(store, lease, moto)
    finally:
        await store.close()


def of(records: Sequence[JournalRecord], status: JournalStatus, step: str) -> JournalRecord:
    [record] = [r for r in records if r.status is status and r.step == step]
    return record


async def test_the_failover_runbook_moves_webapp_to_us_west_2(
    moto: MotoServer, seeded: Seeded, policy: Policy, daemon: Daemon
) -> None:
    assert dns_values(moto, seeded.zone_id) != [TARGET_ENDPOINT]
    assert asg_desired(moto) == 0

    with moto_mutations() as changes:
        run_id = await daemon.fail_over(policy)

    # The world moved: DNS, database, capacity, and on-call heard about it.
    assert_failed_over(moto, seeded, run_id)
    assert changes == Counter(
        AddTagsToResource=1,
        PromoteReadReplica=1,
        SetDesiredCapacity=1,
        ChangeResourceRecordSets=1,
        Publish=2,
    )
    sent = notifications(moto, seeded.queue_url)
    assert sorted(n["Message"] for n in sent) == sorted([START_MESSAGE, DONE_MESSAGE])
    for n in sent:
        assert n["MessageAttributes"]["failoverd.run_id"]["Value"] == run_id

    # The service's state says so.
    state = await daemon.store.load_state(SERVICE)
    assert state is not None
    assert state.active_region == TARGET and state.run is None
    assert await daemon.store.unfinished_runs() == []

    # The journal: intent before result for every step, one attempt each, dependencies
    # honoured, every record under this daemon's lease and the run's policy version.
    records = list(await daemon.store.read_run(run_id))
    assert records[0].status is JournalStatus.RUN_STARTED
    assert (records[0].kind, records[0].source_region, records[0].target_region) == (
        "failover",
        SOURCE,
        TARGET,
    )
    assert records[-1].status is JournalStatus.RUN_SUCCEEDED
    assert {r.token for r in records} == {daemon.lease.token}
    assert {r.policy_version for r in records} == {policy_version([policy])}
    step_records = [r for r in records if r.step]
    assert Counter(r.step for r in step_records) == Counter({s: 2 for s in STEPS})
    assert all(r.attempt == 1 for r in step_records)
    position = {(r.status, r.step): i for i, r in enumerate(records)}
    started, succeeded = JournalStatus.STEP_STARTED, JournalStatus.STEP_SUCCEEDED
    for step in STEPS:
        assert position[started, step] < position[succeeded, step], step
    for dep in ("promote-db", "scale-up"):
        assert position[succeeded, dep] < position[started, "flip-dns"]
    assert position[succeeded, "flip-dns"] < position[started, "notify-done"]
    details = {r.step: r.detail for r in records if r.status is succeeded}
    assert details["promote-db"].startswith("changed: promoted webapp-db-usw2")
    assert details["scale-up"] == f"changed: desired 0 -> {DESIRED}"
    assert details["flip-dns"].startswith(f"changed: {RECORD}.: {SOURCE_ENDPOINT} ttl=60 -> ")
    assert details["notify-start"].startswith("changed:")

    # The independent steps ran side by side: each started before any of them ended.
    last_start = max(of(records, started, s).at for s in INDEPENDENT)
    first_end = min(of(records, succeeded, s).at for s in INDEPENDENT)
    assert last_start < first_end

    progress = await daemon.executor.progress(run_id)
    assert progress is not None
    assert progress.status is RunStatus.SUCCEEDED
    assert [s.status for s in progress.steps] == [StepStatus.SUCCEEDED] * len(STEPS)
    assert 0 < progress.rto_remaining < policy.rto
    # Nothing is left to resume.
    assert await daemon.executor.resume_unfinished() == []


async def test_replaying_the_finished_run_changes_nothing_but_renotifies(
    moto: MotoServer, seeded: Seeded, policy: Policy, daemon: Daemon, tmp_path: Path
) -> None:
    """The same run driven again from nothing (as if its journal had been lost after the
    run): every step re-enters through check and execute, finds its effect in place, and
    only the notifications go out again (at least once, by design)."""
    run_id = await daemon.fail_over(policy)
    notifications(moto, seeded.queue_url)  # drain the first run's

    async with daemon_on(tmp_path / "other.db", moto) as replay:
        with moto_mutations() as changes:
            assert await replay.fail_over(policy) == run_id
        records = list(await replay.store.read_run(run_id))

    assert records[-1].status is JournalStatus.RUN_SUCCEEDED
    details = {r.step: r.detail for r in records if r.status is JournalStatus.STEP_SUCCEEDED}
    assert details["promote-db"] == "unchanged: webapp-db-usw2 already standalone"
    assert details["scale-up"] == f"unchanged: already at desired {DESIRED}"
    assert details["flip-dns"] == f"unchanged: {RECORD}. already {TARGET_ENDPOINT} ttl=60"
    assert details["notify-start"].startswith("changed:")
    assert details["notify-done"].startswith("changed:")
    assert changes == Counter(Publish=2)
    assert_failed_over(moto, seeded, run_id)
    assert sorted(n["Message"] for n in notifications(moto, seeded.queue_url)) == sorted(
        [START_MESSAGE, DONE_MESSAGE]
    )


class _StateWriteDies:
    """The real store, but the daemon "dies" at its first state write (after run_started
    was committed): the write fails, as a SIGKILL there would leave it."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.timeout = inner.timeout

    async def save_state(self, state: ServiceState, token: int) -> None:
        raise StoreUnavailable("daemon killed before its first state write")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _StateWatcher:
    """The real store; notes the service state as each step attempt starts."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.timeout = inner.timeout
        self.seen: dict[str, ServiceState | None] = {}

    async def append_journal(self, record: JournalRecord) -> None:
        await self._inner.append_journal(record)
        if record.status is JournalStatus.STEP_STARTED:
            self.seen[record.step] = await self._inner.load_state(SERVICE)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_run_resumed_before_its_state_was_written_shows_in_the_service_state(
    moto: MotoServer, seeded: Seeded, policy: Policy, daemon: Daemon
) -> None:
    dying = Executor(
        _StateWriteDies(daemon.store),
        AwsClients(moto.client_config()),
        SYSTEM_CLOCK,
        token=lambda: daemon.lease.token,
    )
    decision = failover_decision(SYSTEM_CLOCK.now(), policy_version([policy]))
    with pytest.raises(StoreUnavailable):
        await dying.start_run(policy, decision, ServiceState(SERVICE, SOURCE), run_id=RUN_ID)
    assert await daemon.store.unfinished_runs() == [RUN_ID]
    assert await daemon.store.load_state(SERVICE) is None

    watcher = _StateWatcher(daemon.store)
    resumed = Executor(
        watcher,
        AwsClients(moto.client_config()),
        SYSTEM_CLOCK,
        token=lambda: daemon.lease.token,
    )
    assert await resumed.resume_unfinished() == [RUN_ID]

    # The run itself completes and the world and the final state are right...
    assert_failed_over(moto, seeded, RUN_ID)
    state = await daemon.store.load_state(SERVICE)
    assert state is not None and state.active_region == TARGET and state.run is None
    # ...but while it ran, the service state must have shown it (the API, the status page
    # and the engine's "a run is in progress" guard all read it from there).
    assert sorted(watcher.seen) == sorted(STEPS)
    for step, during in watcher.seen.items():
        assert during is not None and during.run is not None, step
        assert during.run.id == RUN_ID and during.run.status is RunStatus.RUNNING, step
        assert during.active_region == SOURCE, step
