"""Readiness: run every runbook step's ``check`` for every move the policy could make.

A move is (runbook, source, target): the failover runbook from the primary to each standby,
the switchover runbook likewise, and the failback runbook from each standby to the primary.
Each step's parameters are rendered for that move and its action's ``check`` runs (read-only),
in the region the step acts in (the move's target, or the step's own ``region``).
The report says what is ready, what is missing, and which steps depend on a control plane in
the region being evacuated (DESIGN principle 5: static stability).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from pydantic import ValidationError

from orchestrator.actions.base import ActionError, CheckReport, RetryableError, StepContext
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.policy.durations import format_duration
from orchestrator.policy.models import Policy, Step
from orchestrator.signals.aws_clients import AwsClients


@dataclass(frozen=True)
class Move:
    runbook: str  # failover, switchover, failback
    source: str
    target: str


@dataclass(frozen=True)
class StepReadiness:
    service: str
    move: Move
    step: str
    action: str
    ready: bool
    findings: tuple[str, ...] = ()
    control_plane_region: str | None = None
    checked: bool = True  # False: the check itself could not run (throttled, unreachable)

    @property
    def control_plane_in_source(self) -> bool:
        """The step needs the control plane of the region it is evacuating."""
        return self.control_plane_region == self.move.source


@dataclass(frozen=True)
class LagReadiness:
    """The replica in a standby region: is its lag known, fresh and within the RPO?"""

    service: str
    region: str
    ready: bool
    finding: str


@dataclass
class ReadinessReport:
    steps: list[StepReadiness] = field(default_factory=list)
    lag: list[LagReadiness] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(s.ready and s.checked for s in self.steps) and all(x.ready for x in self.lag)


def moves(policy: Policy) -> Iterator[tuple[Move, list[Step]]]:
    primary = policy.primary
    for standby in policy.regions[1:]:
        yield Move("failover", primary, standby), policy.runbooks.failover
        if policy.runbooks.switchover is not None:
            yield Move("switchover", primary, standby), policy.runbooks.switchover
        yield Move("failback", standby, primary), policy.runbooks.for_kind("failback")


async def check_step(
    policy: Policy, move: Move, step: Step, aws: AwsClients, clock: Clock
) -> StepReadiness:
    base = StepReadiness(policy.service, move, step.name, step.action, ready=False)
    try:
        params = render_params(
            step,
            service=policy.service,
            source_region=move.source,
            target_region=move.target,
            primary_region=policy.primary,
            regions=policy.regions,
        )
    except ValidationError as exc:
        return replace(base, findings=(f"parameters invalid: {exc.errors()[0]['msg']}",))
    ctx = StepContext(
        service=policy.service,
        run_id="readiness",
        step=step.name,
        attempt=0,
        kind=move.runbook,
        source_region=move.source,
        target_region=move.target,
        primary_region=policy.primary,
        params=params,
        aws=aws.with_role(policy.role(step.aws)),
        clock=clock,
        deadline=clock.monotonic() + step.timeout,
    )
    try:
        async with asyncio.timeout(step.timeout):
            report: CheckReport = await get_action(step.action).check(ctx)
    except (RetryableError, TimeoutError) as exc:
        return replace(base, checked=False, findings=(f"could not check: {exc or 'timed out'}",))
    except ActionError as exc:
        return replace(base, findings=(str(exc),))
    return replace(
        base,
        ready=report.ready,
        findings=report.findings,
        control_plane_region=report.control_plane_region,
    )


async def check_lag(
    policies: Sequence[Policy], aws: AwsClients, clock: Clock
) -> list[LagReadiness]:
    """Read each standby replica's lag once, as the daemon would, and hold it against the
    RPO: a replica that is missing, silent, stale or behind is not ready to take over."""
    from orchestrator.signals.lag import (
        ReplicationLagSource,
        describe_query,
        lag_watches,
        listed_query,
    )

    by_service = {p.service: p for p in policies}
    source = ReplicationLagSource(list(policies), aws, clock)
    out: list[LagReadiness] = []
    for watch in lag_watches(policies):
        rpo = by_service[watch.service].rpo
        try:
            async with aws.with_role(watch.role).client("cloudwatch", watch.region) as client:
                reading = await source.read(client, watch)
                # The metric it reads must exist with these dimensions (ListMetrics).
                listed = await listed_query(client, watch.queries)
        except Exception as exc:  # any failure to read is "could not check", reported
            out.append(LagReadiness(watch.service, watch.region, False, f"could not read: {exc}"))
            continue
        fd = format_duration
        if listed is None:
            wanted = " or ".join(describe_query(q) for q in watch.queries)
            finding, ok = (
                f"no metric {wanted} in {watch.region} (ListMetrics): check the dimensions"
                " (a new metric can take 15 minutes to be listed)",
                False,
            )
        elif reading is None or reading.seconds is None:
            finding, ok = "no lag data: replica absent, or its metric is not published", False
        elif clock.now() - reading.observed_at > watch.max_age:
            age = fd(clock.now() - reading.observed_at)
            finding, ok = f"lag reading is {age} old (max_age {fd(watch.max_age)})", False
        elif reading.seconds > rpo:
            finding, ok = f"lag {fd(reading.seconds)} above the RPO {fd(rpo)}", False
        else:
            finding, ok = f"lag {fd(reading.seconds)} within the RPO {fd(rpo)}", True
        out.append(LagReadiness(watch.service, watch.region, ok, finding))
    return out


async def readiness(
    policies: Iterable[Policy], aws: AwsClients, clock: Clock = SYSTEM_CLOCK
) -> ReadinessReport:
    """Check every step of every move (checks of one policy run concurrently), and the
    replication lag of every standby replica."""
    policies = list(policies)
    report = ReadinessReport()
    for policy in policies:
        jobs = [(move, step) for move, steps in moves(policy) for step in steps]
        results = await asyncio.gather(
            *(check_step(policy, move, step, aws, clock) for move, step in jobs)
        )
        report.steps.extend(results)
    report.lag.extend(await check_lag(policies, aws, clock))
    return report


def format_report(report: ReadinessReport) -> str:
    lines: list[str] = []
    current: tuple[str, Move] | None = None
    for s in report.steps:
        if current != (s.service, s.move):
            current = (s.service, s.move)
            lines.append(f"{s.service}: {s.move.runbook} {s.move.source} -> {s.move.target}")
        state = (
            "ready" if s.ready and s.checked else ("UNCHECKED" if not s.checked else "NOT READY")
        )
        lines.append(f"  {state:<10} {s.step} ({s.action})")
        for finding in s.findings:
            lines.append(f"             - {finding}")
        if s.control_plane_in_source:
            lines.append(
                f"             ! depends on the {s.control_plane_region} control plane, the"
                " region being evacuated (prefer a data-plane switch: health-check inversion,"
                " ARC routing controls)"
            )
    for x in report.lag:
        state = "ready" if x.ready else "NOT READY"
        lines.append(f"{x.service}: replica in {x.region}: {state} - {x.finding}")
    ready = sum(1 for s in report.steps if s.ready and s.checked)
    lines.append(f"{ready} of {len(report.steps)} step checks ready")
    return "\n".join(lines)
