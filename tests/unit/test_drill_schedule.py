"""Scheduled drills: cron entries parse (or fail with a clear message), become apscheduler
jobs that replace each other on reload, and fire only when the service is quiet."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from pydantic import ValidationError

from orchestrator.daemon.control import ServiceSnapshot
from orchestrator.drills import DrillMode, DrillSchedule, DrillSpec, may_run, why_not
from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.state import RunStatus
from orchestrator.engine.vocabulary import Verdict
from orchestrator.runbook.rto import RunProgress

PRIMARY, STANDBY = "us-east-1", "us-west-2"


def verdict(region: str, v: Verdict) -> RegionVerdict:
    return RegionVerdict(region, v, 0.0, 1, (), (), ())


def snap(**changes: Any) -> ServiceSnapshot:
    base = ServiceSnapshot(
        service="shop",
        at=0.0,
        policy_version="v",
        mode="automatic",
        regions=(PRIMARY, STANDBY),
        active_region=PRIMARY,
        phase="steady",
        reasons=(),
        paused=False,
        rto=900.0,
        rpo=60.0,
        verdicts={r: verdict(r, Verdict.HEALTHY) for r in (PRIMARY, STANDBY)},
        evidence={},
        lag={},
        decision=None,
        run=None,
    )
    return replace(base, **changes)


def run(status: RunStatus) -> RunProgress:
    return RunProgress(
        "r1", "shop", "failover", PRIMARY, STANDBY, "v", status, "", (), None, 0, 0, None, 900,
        1, 899,
    )  # fmt: skip


def test_cron_entries_parse_and_bad_ones_say_why() -> None:
    spec = DrillSpec.model_validate({"cron": "0 10 * * TUE", "mode": "switchover", "hold": "10m"})
    assert spec.mode is DrillMode.SWITCHOVER and spec.hold == 600.0
    assert DrillSpec.model_validate({"cron": "*/15 * * * *"}).mode is DrillMode.DRY_RUN
    # The next Tuesday 10:00 UTC after Monday 2024-01-01 12:00 UTC.
    monday = datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.UTC)
    fire = spec.trigger().get_next_fire_time(None, monday)
    assert fire.isoformat() == "2024-01-02T10:00:00+00:00"

    for bad, words in [
        ("0 10 * *", "invalid cron expression '0 10 \\* \\*': Wrong number of fields"),
        ("0 25 * * *", "invalid cron expression '0 25 "),
        ("0 10 * * FUNDAY", "invalid cron expression"),
    ]:
        with pytest.raises(ValidationError, match=words):
            DrillSpec.model_validate({"cron": bad})
    with pytest.raises(ValidationError, match="mode"):
        DrillSpec.model_validate({"cron": "0 10 * * TUE", "mode": "chaos"})
    with pytest.raises(ValidationError, match="extra"):
        DrillSpec.model_validate({"cron": "0 10 * * TUE", "when": "always"})
    with pytest.raises(ValueError, match="time zone 'Mars/Olympus'"):
        DrillSpec(cron="0 10 * * TUE", timezone="Mars/Olympus").trigger()


def test_may_run_only_when_every_region_is_healthy_and_nothing_runs() -> None:
    assert may_run(snap()) and why_not(snap()) == ()
    assert not may_run(None)
    down = snap(verdicts={PRIMARY: verdict(PRIMARY, Verdict.HEALTHY)} | {
        STANDBY: verdict(STANDBY, Verdict.DOWN)
    })  # fmt: skip
    assert why_not(down) == ("region_down:us-west-2",)
    degraded = snap(verdicts={PRIMARY: verdict(PRIMARY, Verdict.DEGRADED)})
    assert why_not(degraded) == ("region_degraded:us-east-1", "region_unknown:us-west-2")
    assert why_not(snap(run=run(RunStatus.RUNNING))) == ("run_in_progress",)
    assert may_run(snap(run=run(RunStatus.SUCCEEDED)))  # the last run, finished
    assert why_not(snap(paused=True)) == ("paused",)
    assert "phase_suspect" in why_not(snap(phase="suspect"))


async def test_schedule_builds_jobs_replaces_them_and_guards_each_fire() -> None:
    current: dict[str, ServiceSnapshot | None] = {"shop": snap(), "api": snap(service="api")}
    ran: list[tuple[str, DrillMode]] = []

    async def drill(service: str, spec: DrillSpec) -> None:
        ran.append((service, spec.mode))

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.start()
    try:
        schedule = DrillSchedule(scheduler, drill, current.get)
        tuesday = DrillSpec(cron="0 10 * * TUE", mode=DrillMode.SWITCHOVER)
        ids = schedule.replace({"shop": [tuesday, DrillSpec(cron="30 9 * * *")], "api": []})
        assert ids == ["drill:shop:0", "drill:shop:1"]
        jobs = {j.id: j for j in scheduler.get_jobs()}
        assert set(jobs) == set(ids)
        assert jobs["drill:shop:0"].next_run_time.weekday() == 1  # a Tuesday
        assert jobs["drill:shop:0"].next_run_time.hour == 10
        assert jobs["drill:shop:1"].next_run_time.minute == 30

        # A reload replaces the set; a bad entry leaves the old set in place.
        other = scheduler.add_job(lambda: None, "interval", hours=1, id="health-poll")
        assert schedule.replace({"api": [DrillSpec(cron="0 3 * * SUN")]}) == ["drill:api:0"]
        assert {j.id for j in scheduler.get_jobs()} == {"drill:api:0", other.id}
        with pytest.raises(ValueError, match="time zone"):
            schedule.replace({"api": [DrillSpec(cron="0 3 * * SUN", timezone="Nowhere/None")]})
        assert {j.id for j in scheduler.get_jobs()} == {"drill:api:0", other.id}

        # Firing: runs when quiet, skipped when a region is down or a run is in progress.
        assert await schedule.fire("shop", tuesday)
        current["shop"] = snap(verdicts={PRIMARY: verdict(PRIMARY, Verdict.DOWN)})
        assert not await schedule.fire("shop", tuesday)
        current["shop"] = snap(run=run(RunStatus.RUNNING))
        assert not await schedule.fire("shop", tuesday)
        assert not await schedule.fire("gone", tuesday)
        assert ran == [("shop", DrillMode.SWITCHOVER)]
    finally:
        scheduler.shutdown(wait=False)


async def test_a_failing_drill_is_logged_not_raised() -> None:
    async def broken(service: str, spec: DrillSpec) -> None:
        raise RuntimeError("moto went away")

    schedule = DrillSchedule(AsyncIOScheduler(timezone="UTC"), broken, lambda s: snap())
    assert not await schedule.fire("shop", DrillSpec(cron="0 10 * * TUE"))
