"""Readiness: run every runbook step's ``check`` for every move the policy could make.

A move is (runbook, source, target): the failover runbook from the primary to each standby,
the switchover runbook likewise, and the failback runbook from each standby to the primary.
Each step's parameters are rendered for that move and its action's ``check`` runs (read-only),
in the region the step acts in (the move's target, or the step's own ``region``).
The report says what is ready, what is missing, and which failover steps are not statically
stable (DESIGN principle 5): those that need the region being left or a global control plane
in us-east-1, as the actions declare (:mod:`orchestrator.static_stability`).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
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


# Why AWS calls fail, told apart from what a check finds in the world: a missing replica and
# a refused call are different problems with different fixes. Matched on what the actions
# and the lag reader report (the exception's class or AWS's error code is always in it):
# kind, pattern, in a few words, what to do.
AWS_CAUSES: tuple[tuple[str, re.Pattern[str], str, str], ...] = (
    (
        "no_credentials",
        re.compile(
            r"NoCredentialsError|PartialCredentialsError|CredentialRetrievalError"
            r"|NoAuthTokenError|Unable to locate credentials"
        ),
        "no AWS credentials",
        "no AWS credentials were found: configure the standard chain (AWS_PROFILE, or"
        " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or this instance's or container's"
        ' role); for the sandbox: eval "$(failoverd sandbox env)"',
    ),
    (
        "credentials_rejected",
        re.compile(
            r"\b(InvalidClientTokenId|UnrecognizedClientException|SignatureDoesNotMatch"
            r"|InvalidAccessKeyId|ExpiredToken(Exception)?|RequestExpired|AuthFailure"
            r"|InvalidSignatureException)\b"
        ),
        "credentials rejected by AWS",
        "AWS rejected the credentials (an unknown key, a wrong secret or an expired"
        " session): renew or replace them",
    ),
    (
        "access_denied",
        re.compile(
            r"\b(AccessDenied(Exception)?|UnauthorizedOperation|AuthorizationError"
            r"(Exception)?|UnauthorizedException|NotAuthorized)\b|\(HTTP 403\)"
        ),
        "access denied by AWS",
        "AWS denied access: attach the policy `failoverd iam-policy` prints to the role"
        " failoverd runs as",
    ),
    (
        "unreachable",
        re.compile(
            r"EndpointConnectionError|ConnectTimeoutError|ConnectionClosedError"
            r"|Could not connect to the endpoint URL|ClientConnectorError|ProxyConnectionError"
        ),
        "AWS endpoint unreachable",
        "an AWS endpoint could not be reached (the network or a proxy; or AWS_ENDPOINT_URL /"
        " --endpoint-url pointing where nothing listens)",
    ),
)


def aws_cause(text: str) -> str:
    """The kind of AWS failure ``text`` (a finding, an error) reports, or "" for none."""
    for kind, pattern, _, _ in AWS_CAUSES:
        if pattern.search(text):
            return kind
    return ""


def cause_advice(kind: str) -> str:
    """What ``kind`` (an :func:`aws_cause`) means and what to do about it."""
    return next((advice for k, _, _, advice in AWS_CAUSES if k == kind), kind)


def cause_words(kind: str) -> str:
    return next((words for k, _, words, _ in AWS_CAUSES if k == kind), kind)


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
    # Why the step is not statically stable on this move (failover moves only): what it
    # needs of the region being left or of a global control plane, and the advice.
    static_stability: tuple[str, ...] = ()
    # Why an AWS call failed, when one did (aws_cause): "" when the check found its answer.
    cause: str = ""

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
    cause: str = ""  # why the read failed (aws_cause), when it did


@dataclass
class ReadinessReport:
    steps: list[StepReadiness] = field(default_factory=list)
    lag: list[LagReadiness] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(s.ready and s.checked for s in self.steps) and all(x.ready for x in self.lag)

    def causes(self) -> Counter[str]:
        """How many checks and lag reads each kind of AWS failure spoiled."""
        return Counter(
            [s.cause for s in self.steps if s.cause] + [x.cause for x in self.lag if x.cause]
        )


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
        readiness=True,
    )
    try:
        async with asyncio.timeout(step.timeout):
            report: CheckReport = await get_action(step.action).check(ctx)
    except (RetryableError, TimeoutError) as exc:
        finding = f"could not check: {exc or 'timed out'}"
        return replace(base, checked=False, findings=(finding,), cause=aws_cause(finding))
    except ActionError as exc:
        return replace(base, findings=(str(exc),), cause=aws_cause(str(exc)))
    causes = [c for c in map(aws_cause, report.findings) if c]
    return replace(
        base,
        ready=report.ready,
        findings=report.findings,
        control_plane_region=report.control_plane_region,
        # A check that got its answer despite an AWS error (a finding, not a verdict).
        checked=not causes if not report.ready else True,
        cause=causes[0] if causes else "",
    )


async def check_lag(
    policies: Sequence[Policy], aws: AwsClients, clock: Clock
) -> list[LagReadiness]:
    """Read each standby replica's lag once, as the daemon would, and hold it against the
    RPO: a replica that is missing, silent, stale or behind is not ready to take over."""
    from orchestrator.signals.lag import (
        ReplicationLagSource,
        describe_query,
        get_metric_results,
        lag_watches,
        listed_query,
        newest_reading,
    )

    by_service = {p.service: p for p in policies}
    source = ReplicationLagSource(list(policies), aws, clock)
    out: list[LagReadiness] = []
    for watch in lag_watches(policies):
        rpo = by_service[watch.service].rpo
        try:
            # As the daemon's reader queries it, but a failed call is reported as such: an
            # AWS error must never read as "no data" (as if the replica were absent).
            period = source.period if source.period is not None else watch.period
            window = max(source.window, watch.max_age + period)
            async with aws.with_role(watch.role).client("cloudwatch", watch.region) as client:
                async with asyncio.timeout(min(watch.interval, 30)):
                    results = await get_metric_results(
                        client, watch.queries, clock.now(), window=window, period=period
                    )
                reading, _ = newest_reading(watch.queries, results, clock.now())
                # The metric it reads must exist with these dimensions (ListMetrics).
                listed = await listed_query(client, watch.queries)
        except Exception as exc:  # any failure to read is "could not check", reported
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            cause = aws_cause(text)
            why = f" ({cause_words(cause)})" if cause else ""
            finding = f"could not read the lag{why}: {text}"
            out.append(LagReadiness(watch.service, watch.region, False, finding, cause))
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
    from orchestrator.static_stability import findings_for_move

    policies = list(policies)
    report = ReadinessReport()
    for policy in policies:
        jobs = [(move, step) for move, steps in moves(policy) for step in steps]
        results = await asyncio.gather(
            *(check_step(policy, move, step, aws, clock) for move, step in jobs)
        )
        for result in results:
            if result.move.runbook == "failover":
                found = findings_for_move(policy, result.move.source, result.move.target)
                notes = tuple(f.message for f in found.get(result.step, ()))
                result = replace(result, static_stability=notes)
            report.steps.append(result)
    report.lag.extend(await check_lag(policies, aws, clock))
    return report


def format_report(report: ReadinessReport) -> str:
    lines: list[str] = []
    for kind, count in report.causes().most_common():
        lines.append(f"AWS calls failed in {count} check(s): {cause_advice(kind)}")
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
        for note in s.static_stability:
            lines.append(f"             ! not statically stable: {note}")
    for x in report.lag:
        state = "ready" if x.ready else "NOT READY"
        lines.append(f"{x.service}: replica in {x.region}: {state} - {x.finding}")
    ready = sum(1 for s in report.steps if s.ready and s.checked)
    lines.append(f"{ready} of {len(report.steps)} step checks ready")
    unstable = sum(1 for s in report.steps if s.static_stability)
    if unstable:
        lines.append(
            f"{unstable} failover step check(s) not statically stable (marked !): they need the"
            " region being left or a global control plane in us-east-1"
        )
    return "\n".join(lines)
