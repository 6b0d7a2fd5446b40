"""Small parts of the daemon: source supervision, policy reload, the periodic jobs
(readiness, scheduled drills) and the bridge from the controller to the MQTT event stream.

Kept apart from :mod:`orchestrator.daemon.main` (the wiring) so each can be tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from orchestrator.clock import Clock
from orchestrator.daemon.control import NotLeaderError
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.events import EventPublisher
from orchestrator.daemon.metrics_export import record_reload
from orchestrator.drills import DrillSchedule
from orchestrator.engine.state import Command, CommandSource, OperatorCommand, RunStatus
from orchestrator.policy.loader import PolicySet, load_policy_set, policy_files
from orchestrator.policy.models import DrillMode, DrillSpec, Policy
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.readiness import ReadinessReport
from orchestrator.store.base import StoreError
from orchestrator.telemetry import (
    POLICY_RELOADS,
    READINESS_LAST_RUN,
    READINESS_STEPS_NOT_READY,
    SOURCE_RESTARTS,
    get_logger,
)

log = get_logger("failoverd.daemon")


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    clock: Clock,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> None:
    """Run ``run()`` until cancelled, restarting it after a crash (or an unexpected return)
    with exponential backoff and full jitter; a source that ran longer than ``cap`` starts
    its backoff afresh. Nothing but cancellation escapes."""
    rng = rng or random.Random()
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await run()
            log.warning("signal_source_returned", source=name)
        except Exception as exc:
            log.error("signal_source_crashed", source=name, error=repr(exc), exc_info=True)
        SOURCE_RESTARTS.labels(source=name).inc()
        if clock.monotonic() - started > cap:
            failures = 0
        failures += 1
        delay = rng.uniform(0, min(cap, base * 2**failures))
        log.info("signal_source_restarting", source=name, delay=round(delay, 3))
        await clock.sleep(delay)


def _load(paths: Sequence[str]) -> PolicySet | list[str]:
    """The policy set, or every error (file:line, as ``validate`` prints them). The loader
    answers any file with a set or located errors; anything else escaping it is a bug, and
    still must not stop the daemon."""
    from orchestrator.static_stability import enforce

    try:
        policies = load_policy_set(paths)
        enforce(policies)  # guards.data_plane_only: refused like any invalid policy
        return policies
    except SourceErrors as exc:
        return [str(error) for error in exc.errors]
    except Exception as exc:
        return [f"{', '.join(paths)}: the policies could not be loaded ({type(exc).__name__})"]


async def try_load(paths: Sequence[str]) -> PolicySet | None:
    """Load the whole set in a worker thread, so that a hostile file (the largest the
    loader accepts, an alias bomb it refuses) never holds the event loop, which the engine
    tick, the lease renewal and the API share; on error log every one and return None."""
    loaded = await asyncio.to_thread(_load, list(paths))
    if isinstance(loaded, PolicySet):
        return loaded
    for error in loaded:
        log.error("policy_error", error=error)
    return None


async def reload_policies(controller: Controller, paths: Sequence[str], why: str) -> bool:
    """Validate the set fully and swap it in, or keep the old one. True when swapped."""
    new = await try_load(paths)
    if new is None:
        POLICY_RELOADS.labels(outcome="failure").inc()
        record_reload(False, controller.policy_version, time.time())
        log.error("policy_reload_failed", why=why, kept_version=controller.policy_version)
        return False
    old = controller.policy_version
    await controller.swap(new)
    POLICY_RELOADS.labels(outcome="success").inc()
    record_reload(True, new.version, time.time())
    log.info("policy_reloaded", why=why, old_version=old, version=new.version)
    return True


SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits (default 5 ms)


def tune_process() -> None:
    """Once, after start-up: keep the daemon's worker threads (policy reloads, ``/metrics``
    rendering, SQLite) from stalling the event loop, which the engine tick, the lease renewal
    and the API share (bench/policy_load.py measures it).

    * Everything alive now (the modules and their tables: most of the daemon's objects) is
      frozen out of the garbage collector's reach. A full collection walks every tracked
      object while holding the GIL: with them one took ~80 ms, without ~1 ms. What is frozen
      is never freed, hence once.
    * A thread hands the GIL over after 1 ms instead of 5 ms when the loop waits for it: a
      20,000-key policy loading in its thread held the loop up 17 ms (median) before, 5 ms
      after, on a busy 2-core machine.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL)


def policy_mtimes(paths: Iterable[str]) -> dict[str, float]:
    """Modification times of the policy files (and folders: a new file changes them)."""
    out: dict[str, float] = {}
    for raw in [*paths, *(str(f) for f in policy_files(paths))]:
        try:
            out[raw] = Path(raw).stat().st_mtime
        except OSError:
            out[raw] = -1.0
    return out


# -- periodic jobs -------------------------------------------------------------------------
ReadinessFn = Callable[[Sequence[Policy]], Awaitable[ReadinessReport]]
"""``orchestrator.readiness.readiness`` bound to the daemon's AWS clients and clock."""

READINESS_JOB = "readiness"
READINESS_INTERVAL = 30 * 60.0
READINESS_FIRST_DELAY = 10.0  # after start: let the clients and the first evaluation settle
READINESS_TIMEOUT = 300.0  # per service: every check has its own step timeout besides
DRILL_RUN_POLL = 1.0
SCHEDULER = "scheduler"  # who the audit names for what the policies' schedules start


class DaemonJobs:
    """The daemon's periodic jobs on one apscheduler ``AsyncIOScheduler``: readiness every
    ``readiness_interval`` seconds (first ``first_delay`` after start) and the policies'
    scheduled drills (:class:`DrillSchedule`).

    Contract: ``run()`` is the only owner of the scheduler and of the jobs' work; it starts
    the scheduler, returns only by cancellation, and on the way out shuts the scheduler down
    and cancels and awaits every job in flight (the work runs in ``run``'s TaskGroup, the
    scheduler's own task only waits for it). Jobs never raise into the scheduler. Job
    timing is apscheduler's (wall clock); the work uses the injected clock.
    """

    def __init__(
        self,
        controller: Controller,
        readiness: ReadinessFn,
        clock: Clock,
        *,
        readiness_interval: float = READINESS_INTERVAL,
        first_delay: float = READINESS_FIRST_DELAY,
        readiness_timeout: float = READINESS_TIMEOUT,
    ) -> None:
        if not readiness_interval > 0 or first_delay < 0 or not readiness_timeout > 0:
            raise ValueError(
                "readiness_interval and readiness_timeout must be positive and first_delay not"
                f" negative, got {readiness_interval!r}, {readiness_timeout!r}, {first_delay!r}"
            )
        self._controller = controller
        self._readiness = readiness
        self._clock = clock
        self._interval = readiness_interval
        self._first_delay = first_delay
        self._timeout = readiness_timeout
        self.scheduler = AsyncIOScheduler(timezone=datetime.UTC)
        self.drills = DrillSchedule(self.scheduler, self._owned_drill, controller.snapshot)
        self._tg: asyncio.TaskGroup | None = None
        self.started = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                self.scheduler.start()
                self.scheduler.add_job(
                    self._owned_readiness,
                    IntervalTrigger(seconds=self._interval, timezone=datetime.UTC),
                    id=READINESS_JOB,
                    name="readiness evaluation",
                    next_run_time=_utcnow() + datetime.timedelta(seconds=self._first_delay),
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=max(1, int(self._interval)),
                )
                self.replace_drills(self._controller.policy_set)
                log.info("daemon_jobs_started", readiness_interval=self._interval)
                self.started.set()
                await asyncio.Event().wait()
            finally:
                self._tg = None
                if self.scheduler.running:
                    self.scheduler.shutdown(wait=False)
                log.info("daemon_jobs_stopped")

    def replace_drills(self, policies: PolicySet) -> bool:
        """Schedule ``policies``' drills in place of the previous ones (on start and each
        reload). On a bad drill (unknown time zone) the old schedule stays and False."""
        try:
            ids = self.drills.replace({p.service: p.drills for p in policies if p.drills})
        except ValueError as exc:
            log.error("drill_schedule_failed", error=str(exc), version=policies.version)
            return False
        log.info("drills_scheduled", jobs=ids, version=policies.version)
        return True

    # The scheduler's tasks only wait: the work belongs to run()'s TaskGroup, so cancelling
    # run() cancels it (awaiting a task propagates the waiter's cancellation too).
    async def _owned(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:  # not running (or stopping): nothing may outlive run()
            log.warning("daemon_job_skipped", why="the jobs are not running")
            work.close()
            return
        await self._tg.create_task(work)

    async def _owned_readiness(self) -> None:
        await self._owned(self.evaluate_readiness())

    async def _owned_drill(self, service: str, spec: DrillSpec) -> None:
        await self._owned(self.run_drill(service, spec))

    async def evaluate_readiness(self, services: Sequence[str] | None = None) -> None:
        """Evaluate readiness of ``services`` (default: all), keep each report on the
        controller and export the not-ready step counts. Never raises: a service whose
        evaluation fails or overruns keeps its previous report."""
        policies = self._controller.policy_set
        wanted = [p for p in policies if services is None or p.service in services]
        if services is None:
            for gone in set(self._controller.readiness_report()) - set(policies.policies):
                self._controller.record_readiness(gone, None)
                _remove_label(gone)
        for policy in wanted:
            try:
                async with asyncio.timeout(self._timeout):
                    report = await self._readiness([policy])
            except Exception as exc:  # a check that escapes is a bug; the job carries on
                log.error(
                    "readiness_evaluation_failed",
                    service=policy.service,
                    error=repr(exc),
                    exc_info=not isinstance(exc, TimeoutError),
                )
                continue
            not_ready = sum(1 for s in report.steps if not (s.ready and s.checked))
            self._controller.record_readiness(policy.service, report)
            READINESS_STEPS_NOT_READY.labels(service=policy.service).set(not_ready)
            log.info(
                "readiness_evaluated",
                service=policy.service,
                ready=report.ready,
                steps=len(report.steps),
                not_ready_steps=not_ready,
                lag_not_ready=sum(1 for x in report.lag if not x.ready),
            )
        READINESS_LAST_RUN.set(self._clock.now())

    async def run_drill(self, service: str, spec: DrillSpec) -> None:
        """A scheduled drill (the guard has passed). ``dry-run``: readiness for the service,
        kept like the periodic one. ``switchover``: operator commands through the controller
        (journaled, its executor, never two runs), a hold, and the failback. Either way the
        drill is first journaled as an operator command of the scheduler's."""
        reason = f"scheduled drill ({spec.cron} {spec.timezone})"
        try:
            command_id = await self._controller.record_command(
                service,
                "drill",
                by=SCHEDULER,
                reason=reason,
                source=CommandSource.SCHEDULER,
                extra={"mode": str(spec.mode)},
            )
        except StoreError as exc:
            log.warning("drill_skipped", service=service, reasons=["not_journaled"], error=str(exc))
            return
        if command_id is None:
            log.info("drill_skipped", service=service, reasons=["not_leader"])
            return
        if spec.mode is DrillMode.DRY_RUN:
            await self.evaluate_readiness([service])
            report = self._controller.readiness_report().get(service)
            ok = report is not None and report.ready
            log.info("drill_finished", service=service, mode=str(spec.mode), ok=ok)
            detail = {
                "ok": ok,
                "command_id": command_id,
                "cron": spec.cron,
                "not_ready": [
                    f"{s.move.runbook} {s.move.target} {s.step}: {'; '.join(s.findings)}"
                    for s in (report.steps if report else [])
                    if not (s.ready and s.checked)
                ]
                + [
                    f"replica {x.region}: {x.finding}"
                    for x in (report.lag if report else [])
                    if not x.ready
                ],
            }
            try:
                await self._controller.journal_drill(service, str(spec.mode), detail)
            except StoreError as exc:
                log.warning("drill_not_recorded", service=service, error=str(exc))
            return
        policy = self._controller.policy_set.policies.get(service)
        if policy is None:
            log.warning("drill_skipped", service=service, mode=str(spec.mode), reasons=["gone"])
            return
        standby, primary = policy.regions[1], policy.primary
        if not await self._move(policy, Command.SWITCHOVER, standby, reason):
            return
        log.info("drill_hold", service=service, region=standby, seconds=spec.hold)
        await self._clock.sleep(spec.hold)
        ok = await self._move(policy, Command.FAILBACK, primary, reason)
        log.info("drill_finished", service=service, mode=str(spec.mode), ok=ok)

    async def _move(self, policy: Policy, command: Command, to: str, reason: str) -> bool:
        service = policy.service
        try:
            move = OperatorCommand(
                command, to=to, by=SCHEDULER, reason=reason, source=CommandSource.SCHEDULER
            )
            result = await self._controller.command(service, move)
        except NotLeaderError as exc:
            log.info("drill_skipped", service=service, reasons=["not_leader"], leader=exc.leader)
            return False
        if not result.accepted or result.run_id is None:
            log.warning("drill_refused", service=service, command=str(command), why=result.message)
            return False
        # Bounded: a run held at an approval step goes on, the drill stops following it.
        deadline = self._clock.monotonic() + 2 * policy.rto
        while self._clock.monotonic() < deadline:
            progress = await self._controller.run_progress(result.run_id)
            if progress is not None and progress.status is not RunStatus.RUNNING:
                ok = progress.status is RunStatus.SUCCEEDED
                log.info(
                    "drill_run_finished",
                    service=service,
                    run_id=result.run_id,
                    status=str(progress.status),
                    rto_achieved=progress.elapsed,
                )
                return ok
            await self._clock.sleep(DRILL_RUN_POLL)
        log.warning("drill_run_overdue", service=service, run_id=result.run_id)
        return False


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _remove_label(service: str) -> None:
    with contextlib.suppress(KeyError):  # never exported for this service
        READINESS_STEPS_NOT_READY.remove(service)


# -- the event stream ----------------------------------------------------------------------
class EventBridge:
    """Feeds an :class:`EventPublisher` from the controller: each decision change (the
    controller's ``on_decision`` hook), and after every engine tick the retained state of
    each service (the publisher sends only what changed) and the progress of its run (read
    by the controller's tick already: no extra store reads). Every call is synchronous and
    never raises into the engine."""

    def __init__(self, controller: Controller, publisher: EventPublisher) -> None:
        self._controller = controller
        self._publisher = publisher
        self._known: set[str] = set()
        self._finished: dict[str, str] = {}  # service -> the last run id reported ended

    def attach(self) -> None:
        self._controller.on_decision.append(self._publisher.publish_decision)
        self._controller.on_tick.append(self.after_tick)

    def after_tick(self) -> None:
        try:
            self._after_tick()
        except Exception:
            log.exception("event_bridge_failed")

    def _after_tick(self) -> None:
        services = set(self._controller.services())
        for gone in self._known - services:
            self._publisher.forget_service(gone)
            self._finished.pop(gone, None)
        for service in sorted(services):
            snap = self._controller.snapshot(service)
            if snap is None:
                continue
            self._publisher.publish_state(snap)
            run = snap.run
            if run is None or self._finished.get(service) == run.run_id:
                continue
            ended = run.status is not RunStatus.RUNNING
            # A run that ended before we first saw the service (before a restart) was
            # reported then: do not replay it.
            if not (ended and service not in self._known):
                self._publisher.publish_run(run)
            if ended:
                self._finished[service] = run.run_id
        self._known = services
