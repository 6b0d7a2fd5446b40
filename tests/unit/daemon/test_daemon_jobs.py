"""The daemon's periodic jobs: the readiness job runs on its apscheduler schedule and keeps
its results on the controller and in metrics; policies' ``drills:`` become cron jobs that a
reload replaces; a dry-run drill evaluates readiness, a switchover drill goes through the
controller (journaled, its executor) and comes back after the hold."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from orchestrator.audit import command_info
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.support import READINESS_JOB, DaemonJobs, reload_policies
from orchestrator.engine.state import RunStatus
from orchestrator.policy.models import DrillMode, DrillSpec, Policy
from orchestrator.readiness import Move, ReadinessReport, StepReadiness
from orchestrator.store.base import JournalStatus
from tests.fixtures.clock import VirtualClock, eventually
from tests.unit.daemon.controller_support import SHOP_POLICY, see
from tests.unit.runbook.fakes import ScriptedAction

DRILLS = """\
drills:
  - {cron: "0 10 * * TUE", mode: dry-run}
  - {cron: "30 4 1 * *", mode: switchover, hold: 10m}
"""


class FakeReadiness:
    """Stands in for ``readiness()``: one not-ready step per policy, calls recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, policies: Sequence[Policy]) -> ReadinessReport:
        self.calls.append([p.service for p in policies])
        report = ReadinessReport()
        for p in policies:
            move = Move("failover", p.primary, p.regions[1])
            report.steps.append(StepReadiness(p.service, move, "dns", "fake", ready=True))
            report.steps.append(
                StepReadiness(p.service, move, "db", "fake", ready=False, findings=("gone",))
            )
        return report


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def write_policy(policy_dir: Path, extra: str = "") -> None:
    (policy_dir / "shop.yaml").write_text(SHOP_POLICY + extra)


@pytest.fixture
def policy_yaml() -> str:
    return SHOP_POLICY + DRILLS


@pytest.fixture
def lease_ttl() -> float:
    # The tests race virtual time ahead of real store calls; a short lease would lapse
    # between two renewals (leases are not what these tests are about).
    return 3600.0


@contextlib.asynccontextmanager
async def running(jobs: DaemonJobs) -> AsyncIterator[DaemonJobs]:
    task = asyncio.create_task(jobs.run())
    try:
        started = asyncio.ensure_future(jobs.started.wait())
        await asyncio.wait({task, started}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # raises what stopped it
        assert jobs.started.is_set(), "the jobs did not start within 5 s"
        yield jobs
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_readiness_runs_every_30_minutes_first_shortly_after_start(
    controller: Controller, clock: VirtualClock
) -> None:
    async with running(DaemonJobs(controller, FakeReadiness(), clock)) as jobs:
        job = jobs.scheduler.get_job(READINESS_JOB)
        assert job is not None and job.trigger.interval == datetime.timedelta(minutes=30)
        first = job.next_run_time - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(0) < first <= datetime.timedelta(seconds=10)
    assert not jobs.scheduler.running  # shut down with its owner


async def test_the_readiness_job_keeps_reports_and_exports_metrics(
    controller: Controller, clock: VirtualClock
) -> None:
    fake = FakeReadiness()
    jobs = DaemonJobs(controller, fake, clock, readiness_interval=0.2, first_delay=0.01)
    assert controller.readiness_report() == {}
    async with running(jobs):
        # Twice: the first run after the short delay, then again on the interval.
        await eventually(lambda: len(fake.calls) >= 2, "two readiness runs", within=5.0)
    assert fake.calls[:2] == [["shop"], ["shop"]]
    report = controller.readiness_report()["shop"]
    assert [s.step for s in report.steps if not s.ready] == ["db"]
    assert gauge("failoverd_readiness_not_ready_steps", service="shop") == 1.0
    assert gauge("failoverd_readiness_last_run_timestamp_seconds") == clock.now()


async def test_a_failing_readiness_evaluation_keeps_the_last_report(
    controller: Controller, clock: VirtualClock
) -> None:
    fake = FakeReadiness()
    jobs = DaemonJobs(controller, fake, clock)
    await jobs.evaluate_readiness()
    kept = controller.readiness_report()["shop"]

    async def broken(policies: Sequence[Policy]) -> ReadinessReport:
        raise RuntimeError("boom")

    await DaemonJobs(controller, broken, clock).evaluate_readiness()  # does not raise
    assert controller.readiness_report()["shop"] is kept


async def test_drills_from_the_policy_are_scheduled_and_a_reload_replaces_them(
    controller: Controller, clock: VirtualClock, policy_dir: Path
) -> None:
    async with running(DaemonJobs(controller, FakeReadiness(), clock)) as jobs:
        drills = {j.id: j for j in jobs.scheduler.get_jobs() if j.id.startswith("drill:")}
        assert sorted(drills) == ["drill:shop:0", "drill:shop:1"]
        tuesday = drills["drill:shop:0"].next_run_time
        assert (tuesday.weekday(), tuesday.hour, tuesday.minute) == (1, 10, 0)
        assert drills["drill:shop:1"].args[1].mode is DrillMode.SWITCHOVER

        write_policy(policy_dir, 'drills: [{cron: "15 3 * * SUN", mode: dry-run}]\n')
        assert await reload_policies(controller, [str(policy_dir)], "test")
        assert jobs.replace_drills(controller.policy_set)
        drills = {j.id: j for j in jobs.scheduler.get_jobs() if j.id.startswith("drill:")}
        assert list(drills) == ["drill:shop:0"]
        sunday = drills["drill:shop:0"].next_run_time
        assert (sunday.weekday(), sunday.hour, sunday.minute) == (6, 3, 15)

        # A drill in an unknown time zone: the schedule in place stays.
        write_policy(policy_dir, 'drills: [{cron: "0 1 * * *", timezone: "Mars/Olympus"}]\n')
        assert await reload_policies(controller, [str(policy_dir)], "test")
        assert not jobs.replace_drills(controller.policy_set)
        assert [j.id for j in jobs.scheduler.get_jobs() if j.id.startswith("drill:")] == [
            "drill:shop:0"
        ]
        assert jobs.scheduler.get_job("drill:shop:0").next_run_time == sunday

        write_policy(policy_dir)  # drills removed
        assert await reload_policies(controller, [str(policy_dir)], "test")
        assert jobs.replace_drills(controller.policy_set)
        assert [j.id for j in jobs.scheduler.get_jobs() if j.id.startswith("drill:")] == []
        assert jobs.scheduler.get_job(READINESS_JOB) is not None


def healthy(c: Controller, clock: VirtualClock) -> None:
    for _ in range(3):
        clock.advance(1.0)
        for region in ("us-east-1", "us-west-2"):
            see(c, clock, region, True)


async def test_a_dry_run_drill_evaluates_readiness_for_its_service(
    controller: Controller, clock: VirtualClock
) -> None:
    fake = FakeReadiness()
    await controller.lease_step()  # the leader records drills
    healthy(controller, clock)
    await controller.evaluate_all()
    async with running(DaemonJobs(controller, fake, clock)) as jobs:
        assert await jobs.drills.fire("shop", DrillSpec(cron="0 10 * * TUE"))
    assert fake.calls == [["shop"]] and "shop" in controller.readiness_report()
    # Recorded like a run: a journal record with the result, not a run of its own.
    records = await controller._store.read_run("")
    (drill,) = [r for r in records if r.status is JournalStatus.DRILL_FINISHED]
    assert drill.service == "shop" and drill.kind == "dry-run"
    assert '"cron": "0 10 * * TUE"' in drill.detail
    assert await controller._store.recent_runs("shop") == []
    # On the record before it ran: the scheduler's command, with why.
    (asked,) = [c for r in records if (c := command_info(r)) is not None]
    assert (asked.command, asked.by, asked.source) == ("drill", "scheduler", "scheduler")
    assert asked.reason.startswith("scheduled drill (0 10 * * TUE")
    assert asked.extra["mode"] == "dry-run" and records.index(drill) > 0
    assert json.loads(drill.detail)["command_id"] == asked.id


async def test_a_drill_never_fires_while_a_region_is_not_healthy(
    controller: Controller, clock: VirtualClock
) -> None:
    fake = FakeReadiness()
    await controller.evaluate_all()  # nothing observed: verdicts unknown
    async with running(DaemonJobs(controller, fake, clock)) as jobs:
        assert not await jobs.drills.fire("shop", DrillSpec(cron="0 10 * * TUE"))
    assert fake.calls == []


async def test_a_switchover_drill_goes_through_the_controller_and_comes_back(
    controller: Controller, clock: VirtualClock, action: ScriptedAction
) -> None:
    spec = DrillSpec(cron="0 10 * * TUE", mode=DrillMode.SWITCHOVER, hold=60.0)
    async with (
        running(DaemonJobs(controller, FakeReadiness(), clock)) as jobs,
        asyncio.TaskGroup() as tg,
    ):
        core = tg.create_task(controller.run())
        await eventually(controller.is_leader, "the lease")
        healthy(controller, clock)
        await controller.evaluate_all()
        drill = tg.create_task(jobs.drills.fire("shop", spec))
        # Virtual time: move it on until the drill (switchover, hold, failback) is done.
        async with asyncio.timeout(10):
            while not drill.done():
                await asyncio.sleep(0.005)
                clock.advance(1.0)
                healthy(controller, clock)
        assert drill.result()
        # The drill follows the journal; the controller reads the state back right after.
        await eventually(
            lambda: (
                (snap := controller.snapshot("shop")) is not None
                and snap.active_region == "us-east-1"
                and snap.run is not None
                and snap.run.status is RunStatus.SUCCEEDED
            ),
            "the controller to see the failback's end",
        )
        core.cancel()
    snap = controller.snapshot("shop")
    assert snap is not None and snap.active_region == "us-east-1"
    assert snap.run is not None and snap.run.status is RunStatus.SUCCEEDED
    assert snap.run.kind == "failback"
    targets = [c.ctx.target_region for c in action.calls if c.ctx is not None]
    assert targets == ["us-west-2", "us-east-1"]
    asked = [c for r in await controller._store.read_run("") if (c := command_info(r))]
    assert [(c.command, c.by, c.source, c.to) for c in asked] == [
        ("drill", "scheduler", "scheduler", None),
        ("switchover", "scheduler", "scheduler", "us-west-2"),
        ("failback", "scheduler", "scheduler", "us-east-1"),
    ]
