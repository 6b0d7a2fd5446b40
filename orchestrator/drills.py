"""Drills (game days): rehearse what the daemon relies on.

* ``dry-run``: readiness for the service, then the failover runbook walked in DAG order
  calling only each step's read-only ``check``; prints what each step would do (its
  rendered parameters) and what the check found. Nothing changes.
* ``switchover``: a planned switchover from the primary to the first standby through the
  :class:`~orchestrator.runbook.executor.Executor` (journaled in the store like any run),
  a hold, then the failback; a report (Markdown, or JSON for a ``.json`` path) with per-step
  timings, the RTO achieved against the budget, and anything that failed.

:class:`DrillSchedule` turns a policy's ``drills`` (:class:`DrillSpec`) into apscheduler
cron jobs; a job fires only when :func:`may_run` says the service is quiet.

Exit codes of ``failoverd drill``: 0 the drill passed; 1 it ran and something was not ready
or failed; 2 unusable input (policy, service, options, the store's lease is held).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from pydantic import ValidationError

from orchestrator.actions.moves import run_facts
from orchestrator.actions.render import render_params
from orchestrator.audit import command_record, new_command_id
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.daemon.control import ServiceSnapshot
from orchestrator.engine.state import CommandSource, Decision, Initiator, RunStatus, ServiceState
from orchestrator.engine.vocabulary import Action, Phase, Verdict
from orchestrator.policy.durations import DurationError, parse_duration
from orchestrator.policy.models import DrillMode, DrillSpec, Policy, Step
from orchestrator.readiness import Move, StepReadiness, check_step, readiness
from orchestrator.runbook.executor import Executor
from orchestrator.runbook.rto import RunProgress
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus, Store
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.drills")

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
LEASE_TTL = 3600.0  # a drill holds the lease for its whole length (hold included)


# ---------------------------------------------------------------------------------------
# The guard and the schedule


def why_not(snapshot: ServiceSnapshot | None) -> tuple[str, ...]:
    """Why a drill must not start now (empty: it may). Unknown counts as unhealthy."""
    if snapshot is None:
        return ("unknown_service",)
    reasons: list[str] = []
    if snapshot.paused:
        reasons.append("paused")
    if snapshot.run is not None and snapshot.run.status is RunStatus.RUNNING:
        reasons.append("run_in_progress")
    if snapshot.phase != Phase.STEADY:
        reasons.append(f"phase_{snapshot.phase}")
    for region in snapshot.regions:
        verdict = snapshot.verdicts.get(region)
        if verdict is None or verdict.verdict is not Verdict.HEALTHY:
            state = "unknown" if verdict is None else str(verdict.verdict)
            reasons.append(f"region_{state}:{region}")
    return tuple(reasons)


def may_run(snapshot: ServiceSnapshot | None) -> bool:
    """Never while a region is not healthy, a run is in progress, or the service is paused
    or not steady."""
    return not why_not(snapshot)


DrillRunner = Callable[[str, DrillSpec], Awaitable[None]]
SnapshotReader = Callable[[str], ServiceSnapshot | None]


class DrillSchedule:
    """Cron jobs for the policies' drills on the daemon's AsyncIOScheduler.

    ``replace`` is idempotent and atomic from the scheduler's view: on every policy
    (re)load it removes this schedule's jobs and adds the new set. A job checks
    :func:`may_run` on the service's current snapshot when it fires, then awaits ``run``;
    one instance per job at a time (``max_instances=1``), missed fires coalesce into one.
    """

    JOB_PREFIX = "drill:"

    def __init__(
        self, scheduler: AsyncIOScheduler, run: DrillRunner, snapshot: SnapshotReader
    ) -> None:
        self._scheduler = scheduler
        self._run = run
        self._snapshot = snapshot

    def replace(self, drills: Mapping[str, Sequence[DrillSpec]]) -> list[str]:
        """Schedule ``drills`` (by service) in place of the previous set; returns job ids.
        Raises ValueError (naming the drill) before touching the schedule if one is bad."""
        planned = [
            (f"{self.JOB_PREFIX}{service}:{i}", service, spec, spec.trigger())
            for service, specs in sorted(drills.items())
            for i, spec in enumerate(specs)
        ]
        for job in self._scheduler.get_jobs():
            if job.id.startswith(self.JOB_PREFIX):
                job.remove()
        for job_id, service, spec, trigger in planned:
            self._scheduler.add_job(
                self.fire,
                trigger,
                args=(service, spec),
                id=job_id,
                name=f"{spec.mode} drill of {service}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=600,
            )
        return [job_id for job_id, *_ in planned]

    async def fire(self, service: str, spec: DrillSpec) -> bool:
        """Run one drill now if the guard allows; False (and a log line) if not. Never
        raises: a failed drill is logged, the schedule carries on."""
        blocked = why_not(self._snapshot(service))
        if blocked:
            log.warning("drill_skipped", service=service, mode=str(spec.mode), reasons=blocked)
            return False
        log.info("drill_started", service=service, mode=str(spec.mode))
        try:
            await self._run(service, spec)
        except Exception:
            log.exception("drill_error", service=service, mode=str(spec.mode))
            return False
        return True


# ---------------------------------------------------------------------------------------
# Dry run


@dataclass(frozen=True)
class PlannedStep:
    step: str
    action: str
    after: tuple[str, ...]
    params: dict[str, Any]
    check: StepReadiness


@dataclass
class DryRunReport:
    service: str
    move: Move
    steps: list[PlannedStep]
    readiness: list[StepReadiness]

    @property
    def ready(self) -> bool:
        return all(s.ready and s.checked for s in self.readiness) and all(
            p.check.ready and p.check.checked for p in self.steps
        )


def dag_order(steps: Sequence[Step]) -> list[Step]:
    """Steps in an order where each comes after its ``after`` (stable: file order among
    independent steps). The policy loader has already refused cycles."""
    done: set[str] = set()
    ordered: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if set(s.after) <= done]
        if not ready:
            raise ValueError(f"runbook has a cycle among {[s.name for s in pending]}")
        for s in ready:
            ordered.append(s)
            done.add(s.name)
        pending = [s for s in pending if s.name not in done]
    return ordered


async def dry_run(policy: Policy, aws: AwsClients, clock: Clock = SYSTEM_CLOCK) -> DryRunReport:
    """Readiness for ``policy``'s service, and the failover runbook to the first standby
    walked step by step through ``check`` only."""
    move = Move("failover", policy.primary, policy.regions[1])
    ready = await readiness([policy], aws, clock)
    planned: list[PlannedStep] = []
    for step in dag_order(policy.runbooks.failover):
        try:
            params = render_params(
                step,
                service=policy.service,
                source_region=move.source,
                target_region=move.target,
                primary_region=policy.primary,
            )
            shown: dict[str, Any] = params.model_dump(mode="json")
        except ValidationError:
            shown = dict(step.params)
        result = await check_step(policy, move, step, aws, clock)
        planned.append(PlannedStep(step.name, step.action, tuple(step.after), shown, result))
    return DryRunReport(policy.service, move, planned, list(ready.steps))


def format_dry_run(report: DryRunReport) -> str:
    m = report.move
    lines = [f"{report.service}: dry run of {m.runbook} {m.source} -> {m.target} (nothing changes)"]
    for i, p in enumerate(report.steps, 1):
        state = "ready" if p.check.ready else ("UNCHECKED" if not p.check.checked else "NOT READY")
        after = f" after {', '.join(p.after)}" if p.after else ""
        lines.append(f"  {i}. {p.step} ({p.action}){after}: {state}")
        lines.append(f"     would run with {json.dumps(p.params, sort_keys=True)}")
        for finding in p.check.findings:
            lines.append(f"     - {finding}")
    not_ready = [s for s in report.readiness if not (s.ready and s.checked)]
    lines.append(
        f"readiness: {len(report.readiness) - len(not_ready)} of {len(report.readiness)}"
        " step checks ready"
    )
    for s in not_ready:
        lines.append(
            f"  NOT READY {s.move.runbook} -> {s.move.target}: {s.step}: {'; '.join(s.findings)}"
        )
    lines.append("dry run: READY" if report.ready else "dry run: NOT READY")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Switchover and back


@dataclass
class DrillReport:
    service: str
    source: str
    target: str
    hold: float
    started_at: float
    finished_at: float | None = None
    runs: list[RunProgress] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.status is RunStatus.SUCCEEDED for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "source": self.source,
            "target": self.target,
            "hold": self.hold,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "ok": self.ok,
            "problems": self.problems,
            "runs": [
                {
                    "run_id": r.run_id,
                    "kind": r.kind,
                    "source": r.source,
                    "target": r.target,
                    "status": str(r.status),
                    "error": r.error,
                    "rto": r.rto,
                    "rto_achieved": r.elapsed,
                    "rto_remaining": r.rto_remaining,
                    "rto_met": not r.rto_exceeded,
                    "steps": [
                        {
                            "name": s.name,
                            "action": s.action,
                            "status": str(s.status),
                            "duration": s.duration,
                            "attempts": len(s.attempts),
                            "error": s.error,
                        }
                        for s in r.steps
                    ],
                }
                for r in self.runs
            ],
        }


def format_markdown(report: DrillReport) -> str:
    verdict = "PASSED" if report.ok else "FAILED"
    lines = [
        f"# Drill: {report.service} switchover {report.source} -> {report.target} and back",
        "",
        f"Result: **{verdict}**; hold on {report.target}: {report.hold:g}s",
        "",
    ]
    for r in report.runs:
        met = "met" if not r.rto_exceeded else "EXCEEDED"
        lines += [
            f"## {r.kind} {r.source} -> {r.target} (`{r.run_id}`): {r.status}",
            "",
            f"RTO achieved {r.elapsed:.3f}s of a {r.rto:g}s budget ({met})",
            "",
            "| step | action | status | seconds | attempts | error |",
            "|---|---|---|---|---|---|",
        ]
        for s in r.steps:
            seconds = "" if s.duration is None else f"{s.duration:.3f}"
            lines.append(
                f"| {s.name} | {s.action} | {s.status} | {seconds} | {len(s.attempts)} |"
                f" {s.error.replace('|', '/')} |"
            )
        lines.append("")
    if report.problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in report.problems] + [""]
    return "\n".join(lines)


def _decision(
    policy: Policy, kind: Action, source: str, target: str, at: float, version: str
) -> Decision:
    return Decision(
        service=policy.service,
        at=at,
        phase=Phase.FAILING_OVER,
        action=kind,
        active_region=source,
        target=target,
        initiated_by=Initiator.OPERATOR,
        policy_version=version,
        notes=("drill",),
    )


async def switchover_drill(
    policy: Policy,
    store: Store,
    aws: AwsClients,
    *,
    token: Callable[[], int | None],
    policy_version: str,
    hold: float,
    clock: Clock = SYSTEM_CLOCK,
) -> DrillReport:
    """Switch ``policy``'s service from its primary to the first standby, hold, and fail
    back, through the executor (each move journaled as a run). Refuses (a problem in the
    report, nothing changed) unless the service is on its primary with no run, and unless
    the switchover and failback checks are ready. The failback is skipped when the
    switchover failed: the report says where the service was left."""
    source, target = policy.primary, policy.regions[1]
    report = DrillReport(policy.service, source, target, hold, clock.now())
    state = await store.load_state(policy.service) or ServiceState(policy.service, source)
    if state.active_region != source or state.running or state.paused:
        report.problems.append(
            f"{policy.service} must be on its primary {source}, unpaused and idle for a drill"
            f" (active {state.active_region}, paused {state.paused}, running {state.running})"
        )
        return _finished(report, clock)
    preflight = [
        await check_step(policy, Move(kind, a, b), step, aws, clock)
        for kind, a, b in (("switchover", source, target), ("failback", target, source))
        for step in policy.runbooks.for_kind(kind)
    ]
    for s in preflight:
        if not (s.ready and s.checked):
            report.problems.append(
                f"preflight {s.move.runbook} {s.step}: {'; '.join(s.findings) or 'not ready'}"
            )
    if report.problems:
        return _finished(report, clock)

    executor = Executor(store, aws, clock, token=token)
    moves = ((Action.SWITCHOVER, source, target), (Action.FAILBACK, target, source))
    for i, (kind, a, b) in enumerate(moves):
        if i:
            log.info("drill_hold", service=policy.service, region=target, seconds=hold)
            await clock.sleep(hold)
            state = await store.load_state(policy.service) or state
        decision = _decision(policy, kind, a, b, clock.now(), policy_version)
        facts = run_facts(kind.value, drill=True, source_region=a)
        run_id = await executor.start_run(policy, decision, state, facts=facts)
        progress = await executor.progress(run_id)
        if progress is not None:
            report.runs.append(progress)
        if progress is None or progress.status is not RunStatus.SUCCEEDED:
            where = (await store.load_state(policy.service) or state).active_region
            report.problems.append(
                f"{kind} {a} -> {b} failed: {progress.error if progress else 'no journal'};"
                f" {policy.service} left on {where}"
            )
            break
    return _finished(report, clock)


def _finished(report: DrillReport, clock: Clock) -> DrillReport:
    report.finished_at = clock.now()
    log.info(
        "drill_finished",
        service=report.service,
        ok=report.ok,
        runs=[r.run_id for r in report.runs],
        problems=report.problems,
    )
    return report


# ---------------------------------------------------------------------------------------
# The command


def add_drill_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``drill`` subcommand; dispatch it with ``run_drill(args)``."""
    p = subparsers.add_parser(
        "drill",
        help="rehearse a failover: a dry run, or a switchover to the standby and back",
        description="dry-run: readiness, then the failover runbook walked with read-only checks"
        " (nothing changes). switchover: a planned switchover to the first standby, a hold,"
        " and the failback, journaled in the store; writes a report. Exit codes: 0 passed;"
        " 1 not ready or failed; 2 unusable input. AWS credentials: the standard chain.",
    )
    p.add_argument("service", help="the service to drill")
    p.add_argument("--mode", choices=[m.value for m in DrillMode], required=True)
    p.add_argument(
        "--policy",
        action="append",
        dest="policies",
        metavar="PATH",
        help="policy file or folder; repeatable (default: $FAILOVERD_POLICIES, else policies)",
    )
    p.add_argument(
        "--endpoint-url",
        help="send every AWS call here (an emulator; default: $AWS_ENDPOINT_URL, else AWS)",
    )
    p.add_argument("--hold", default="5m", help="switchover: time on the standby (default 5m)")
    p.add_argument("--state", help="switchover: the daemon's SQLite state file (or use --config)")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="the daemon's settings file: its `aws` section is used for every AWS call, and"
        " (switchover) its state store (SQLite or etcd)",
    )
    p.add_argument("--report", help="switchover: write the report here (.json: JSON, else MD)")
    p.add_argument("--node-id", default="drill", help="lease holder name (default: drill)")
    p.add_argument(
        "--reason",
        default=None,
        help="switchover: why (required; journaled with who and from where before the drill"
        " moves anything)",
    )
    p.add_argument("--by", default=None, help="switchover: who (default: your user name)")
    return p


def run_drill(args: argparse.Namespace) -> int:
    from orchestrator.policy.loader import load_policy_set
    from orchestrator.policy.yamlsource import SourceErrors
    from orchestrator.settings import policy_paths_from_env

    paths = args.policies or policy_paths_from_env(os.environ)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return _usage(f"no such file or folder: {', '.join(missing)}")
    try:
        policies = load_policy_set(paths)
    except SourceErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_UNUSABLE
    policy = policies.policies.get(args.service)
    if policy is None:
        known = ", ".join(sorted(policies.policies)) or "none"
        return _usage(f"no policy for service {args.service!r} (known: {known})")
    try:
        hold = parse_duration(args.hold)
    except DurationError as exc:
        return _usage(f"{exc}")
    from orchestrator.cli.main import cli_aws_clients

    # The daemon's aws settings (timeouts, attempts, endpoint), as readiness uses them.
    aws = cli_aws_clients(args.config, args.endpoint_url)
    if aws is None:
        return EXIT_UNUSABLE
    if args.mode == DrillMode.DRY_RUN:
        report = asyncio.run(dry_run(policy, aws))
        print(format_dry_run(report))
        return EXIT_OK if report.ready else EXIT_FAILED
    if not args.state and not args.config:
        return _usage(
            "--mode switchover needs the daemon's state store: --config (its settings file)"
            " or --state (a SQLite file)"
        )
    if not (args.reason or "").strip():
        return _usage("--mode switchover needs --reason (journaled with who asked)")
    result = asyncio.run(_switchover(args, policy, policies.version, aws, hold))
    if isinstance(result, int):
        return result
    text = format_markdown(result)
    print(text)
    if args.report:
        path = Path(args.report)
        if path.suffix == ".json":
            text = json.dumps(result.as_dict(), indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
    return EXIT_OK if result.ok else EXIT_FAILED


async def _switchover(
    args: argparse.Namespace, policy: Policy, version: str, aws: AwsClients, hold: float
) -> DrillReport | int:
    from orchestrator.policy.yamlsource import SourceErrors
    from orchestrator.settings import SettingsError, load_settings
    from orchestrator.store.open import open_store
    from orchestrator.store.sqlite import SqliteStore

    store: Store
    if args.state:
        store = await SqliteStore.open(Path(args.state))
    else:
        try:
            settings = load_settings(args.config, os.environ)
            store = await open_store(settings.state)
        except SourceErrors as exc:
            return _usage("\n".join(str(e) for e in exc.errors))
        except (SettingsError, OSError) as exc:
            return _usage(str(exc))
    try:
        lease = await store.acquire_lease(args.node_id, LEASE_TTL)
        if lease is None:
            leader = await store.leader()
            return _usage(
                f"the leader lease is held by {leader or 'another instance'}: a drill must not"
                " race the daemon (run it when the daemon is stopped, or schedule it in the"
                " policy)"
            )
        try:
            command_id = new_command_id()
            await store.append_journal(
                command_record(
                    policy.service,
                    "drill",
                    by=args.by or _user(),
                    reason=args.reason.strip(),
                    source=CommandSource.CLI,
                    command_id=command_id,
                    at=time.time(),
                    token=lease.token,
                    policy_version=version,
                    extra={"mode": "switchover", "hold": hold},
                )
            )
            report = await switchover_drill(
                policy,
                store,
                aws,
                token=lambda: lease.token,
                policy_version=version,
                hold=hold,
            )
            await store.append_journal(
                JournalRecord(
                    run_id="",
                    service=policy.service,
                    status=JournalStatus.DRILL_FINISHED,
                    at=time.time(),
                    token=lease.token,
                    policy_version=version,
                    step="drill.switchover",
                    kind="switchover",
                    detail=json.dumps(
                        {
                            "ok": report.ok,
                            "command_id": command_id,
                            "runs": [r.run_id for r in report.runs],
                            "problems": report.problems,
                        },
                        sort_keys=True,
                    ),
                )
            )
        finally:
            await store.release_lease(lease)
    finally:
        await store.close()
    return report


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _usage(message: str) -> int:
    print(f"failoverd drill: {message}", file=sys.stderr)
    return EXIT_UNUSABLE
