"""The API's JSON, as pydantic models: the single source of truth for what handlers send and
accept and for the OpenAPI document (``openapi.py`` generates its schemas from these).

Response models are built from the engine's immutable records by the ``*_body`` functions
below; they compute nothing that needs a clock: ages and RTO figures are relative to the
snapshot's own ``at``, so a response is consistent with itself.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from orchestrator.audit import AuditEntry, format_time
from orchestrator.daemon.control import CommandResult, ServiceSnapshot
from orchestrator.engine.healthbook import RegionVerdict, SignalView, VantageView
from orchestrator.engine.state import Decision, LagReading
from orchestrator.engine.vocabulary import REASON_TEXT, Reason
from orchestrator.readiness import ReadinessReport
from orchestrator.runbook.rto import RunProgress
from orchestrator.telemetry import redact_text

MAX_REASON = 500
MAX_NAME = 64


def _no_control_chars(value: str) -> str:
    # Free text lands in the journal, logs and terminals: control characters there forge log
    # lines or rewrite an operator's screen.
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REASON),
    AfterValidator(_no_control_chars),
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME),
    AfterValidator(_no_control_chars),
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests -----------------------------------------------------------------------------
class CommandRequest(BaseModel):
    """The body of every mutating call. ``to`` only for failover/switchover, ``force`` only
    for failover; the handler rejects them elsewhere (a silently ignored field would make an
    operator believe a target was honoured)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Text = Field(description="why: journaled with the command (required)")
    to: Name | None = Field(default=None, description="target region (failover, switchover)")
    force: bool = Field(default=False, description="allow a target that is not healthy")
    by: Name | None = Field(
        default=None,
        description="the name of who asks, recorded beside the token's label (which is who the"
        " audit names); the CLI sends your user name",
    )


# --- errors -------------------------------------------------------------------------------
class ErrorBody(_Out):
    error: str = Field(description="a stable, machine-readable code")
    message: str
    leader: str | None = Field(default=None, description="who leads (not_leader only)")
    leader_api: str | None = Field(
        default=None, description="the leader's API address, as it announced it (not_leader)"
    )
    details: list[str] = Field(default_factory=list)
    result: CommandResultBody | None = None


# --- probes of the process ----------------------------------------------------------------
class HealthBody(_Out):
    status: str


class ReadinessBody(_Out):
    ready: bool
    problems: list[str]


# --- engine records -----------------------------------------------------------------------
class ReasonBody(_Out):
    code: str
    text: str


class SignalBody(_Out):
    signal: str
    vantage: str
    view: str
    detail: str
    target: str
    last_at: float | None
    last_ok: bool | None
    consecutive_failures: int
    consecutive_successes: int
    failure_ratio: float | None
    failing_since: float | None


class VantageBody(_Out):
    vantage: str
    view: str
    signals: list[SignalBody]


class RegionBody(_Out):
    region: str
    verdict: str
    since: float
    quorum: int
    failing: list[str]
    passing: list[str]
    unknown: list[str]
    reasons: list[ReasonBody]
    recent_failures: bool
    vantages: list[VantageBody]


class LagBody(_Out):
    region: str
    seconds: float | None
    observed_at: float
    age: float = Field(description="seconds since the reading, at the snapshot")
    within_rpo: bool | None = Field(description="None when the lag is unknown")


class RtoBody(_Out):
    budget: float
    detected_at: float | None
    elapsed: float | None
    remaining: float | None


class DecisionBody(_Out):
    at: float
    phase: str
    action: str
    active_region: str
    target: str | None
    reasons: list[ReasonBody]
    initiated_by: str
    policy_version: str
    detected_at: float | None
    rto_remaining: float | None
    notes: list[str]


class AttemptBody(_Out):
    attempt: int
    started_at: float
    ended_at: float | None
    duration: float
    error: str
    retryable: bool


class SubstepBody(_Out):
    """A step of the step (an ARC Region switch plan's step), from its progress notes."""

    name: str
    kind: str
    status: str
    started_at: float | None
    finished_at: float | None
    duration: float | None
    error: str


class StepBody(_Out):
    name: str
    action: str
    after: list[str]
    status: str
    attempts: list[AttemptBody]
    started_at: float | None
    finished_at: float | None
    duration: float | None
    error: str
    detail: str
    substeps: list[SubstepBody] = Field(
        default_factory=list, description="The step's own steps (a Region switch plan's)."
    )
    awaiting_approval: list[str] = Field(
        default_factory=list,
        description="Sub-steps waiting for `failoverd approve` (recorded as <step>/<sub-step>).",
    )
    note: str = Field(default="", description="The step's latest progress note.")


class CorruptRecordBody(_Out):
    key: str = Field(description="where the store keeps the record (quarantined, kept)")
    at: float = Field(description="approximate: the time of the record before it")
    error: str = Field(description="why it could not be read")


class RunBody(_Out):
    run_id: str
    service: str
    kind: str
    source: str
    target: str
    policy_version: str
    status: str
    error: str
    steps: list[StepBody]
    detected_at: float | None
    decided_at: float
    started_at: float
    finished_at: float | None
    rto: float
    elapsed: float
    rto_remaining: float
    rto_exceeded: bool
    corrupt_records: list[CorruptRecordBody] = Field(
        default_factory=list,
        description="records of this run the store could not read; the rest is shown without them",
    )


class ServiceSummary(_Out):
    name: str
    mode: str
    active_region: str
    phase: str
    reasons: list[ReasonBody]
    paused: bool
    run_id: str | None
    run_status: str | None


class StatusBody(_Out):
    node_id: str
    leader: str | None
    is_leader: bool
    policy_version: str = Field(description="the policy set this instance has loaded")
    leader_api: str | None = Field(
        default=None, description="the leader's API address, as it announced it with its lease"
    )
    leader_policy_version: str | None = Field(
        default=None,
        description="the policy set the leader acts on (announced with its lease); differs"
        " from `policy_version` when this instance's policies drifted from the leader's",
    )
    services: list[ServiceSummary]


class ServiceBody(_Out):
    service: str
    at: float
    node_id: str
    leader: str | None
    policy_version: str
    mode: str
    regions: list[str]
    primary: str
    active_region: str
    phase: str
    reasons: list[ReasonBody]
    paused: bool
    rto: RtoBody
    rpo: float
    lag: list[LagBody]
    verdicts: list[RegionBody]
    decision: DecisionBody | None
    run: RunBody | None
    recent_decisions: list[DecisionBody]
    state_problem: str | None = Field(
        None,
        description="why the service's stored state could not be used (e.g. corrupt, and"
        " quarantined): the service is then paused until an operator resumes it",
    )


class CommandResultBody(_Out):
    accepted: bool
    message: str
    run_id: str | None = None
    decision: DecisionBody | None = None


class AuditEntryBody(_Out):
    at: float = Field(description="when (epoch seconds)")
    time: str = Field(description="when (RFC 3339, UTC)")
    service: str
    entry: str = Field(
        description="decision, operator_command, run_started, step_started, step_succeeded,"
        " step_failed, step_skipped, run_succeeded, run_failed or drill_finished"
    )
    run_id: str = Field(description="empty for decisions and operator commands")
    step: str
    attempt: int
    policy_version: str
    token: int = Field(description="the fencing token of the leader that wrote the record")
    reasons: list[ReasonBody]
    summary: str = Field(description="one line for humans")
    detail: dict[str, Any] = Field(
        description="the record's detail: a decision's evidence (and the command it answers),"
        " a command's who (`by`: the token's label; `user`: the name the client gave), why"
        " (`reason`), from where (`source`: api, cli, mqtt, scheduler) and its `id`"
    )
    outcome: str = Field(
        default="",
        description="an operator command's outcome (`accepted: ...` or `refused: ...`), from"
        " the decision record that answered it when that is in the same answer",
    )


class AuditBody(_Out):
    service: str | None
    since: float | None
    until: float | None
    limit: int
    count: int
    entries: list[AuditEntryBody] = Field(description="oldest first")


ErrorBody.model_rebuild()


# --- builders -----------------------------------------------------------------------------
def reason_body(code: str) -> ReasonBody:
    try:
        text = REASON_TEXT[Reason(code)]
    except ValueError:
        text = code  # a code newer than this build's vocabulary: show it as is
    return ReasonBody(code=str(code), text=text)


def _reasons(codes: tuple[str, ...]) -> list[ReasonBody]:
    return [reason_body(c) for c in codes]


def _signal(s: SignalView) -> SignalBody:
    return SignalBody(
        signal=s.signal,
        vantage=s.vantage,
        view=str(s.view),
        detail=redact_text(str(s.detail)),
        target=redact_text(s.target),  # agents send theirs: redacted here whatever they did
        last_at=s.last_at,
        last_ok=s.last_ok,
        consecutive_failures=s.consecutive_failures,
        consecutive_successes=s.consecutive_successes,
        failure_ratio=s.failure_ratio,
        failing_since=s.failing_since,
    )


def region_body(v: RegionVerdict, evidence: tuple[VantageView, ...]) -> RegionBody:
    return RegionBody(
        region=v.region,
        verdict=str(v.verdict),
        since=v.since,
        quorum=v.quorum,
        failing=list(v.failing),
        passing=list(v.passing),
        unknown=list(v.unknown),
        reasons=_reasons(v.reasons),
        recent_failures=v.recent_failures,
        vantages=[
            VantageBody(vantage=e.vantage, view=str(e.view), signals=list(map(_signal, e.signals)))
            for e in evidence
        ],
    )


def lag_body(region: str, lag: LagReading, rpo: float, at: float) -> LagBody:
    return LagBody(
        region=region,
        seconds=lag.seconds,
        observed_at=lag.observed_at,
        age=max(0.0, at - lag.observed_at),
        within_rpo=None if lag.seconds is None else lag.seconds <= rpo,
    )


def decision_body(d: Decision) -> DecisionBody:
    return DecisionBody(
        at=d.at,
        phase=str(d.phase),
        action=str(d.action),
        active_region=d.active_region,
        target=d.target,
        reasons=_reasons(d.reasons),
        initiated_by=str(d.initiated_by),
        policy_version=d.policy_version,
        detected_at=d.detected_at,
        rto_remaining=d.rto_remaining,
        notes=list(d.notes),
    )


def run_body(p: RunProgress) -> RunBody:
    return RunBody(
        run_id=p.run_id,
        service=p.service,
        kind=p.kind,
        source=p.source,
        target=p.target,
        policy_version=p.policy_version,
        status=str(p.status),
        error=p.error,
        steps=[
            StepBody(
                name=s.name,
                action=s.action,
                after=list(s.after),
                status=str(s.status),
                attempts=[
                    AttemptBody(
                        attempt=a.attempt,
                        started_at=a.started_at,
                        ended_at=a.ended_at,
                        duration=a.duration,
                        error=a.error,
                        retryable=a.retryable,
                    )
                    for a in s.attempts
                ],
                started_at=s.started_at,
                finished_at=s.finished_at,
                duration=s.duration,
                error=s.error,
                detail=s.detail,
                substeps=[
                    SubstepBody(
                        name=x.name,
                        kind=x.kind,
                        status=x.status,
                        started_at=x.started_at,
                        finished_at=x.finished_at,
                        duration=x.duration,
                        error=x.error,
                    )
                    for x in s.substeps
                ],
                awaiting_approval=list(s.awaiting_approval),
                note=s.note,
            )
            for s in p.steps
        ],
        detected_at=p.detected_at,
        decided_at=p.decided_at,
        started_at=p.started_at,
        finished_at=p.finished_at,
        rto=p.rto,
        elapsed=p.elapsed,
        rto_remaining=p.rto_remaining,
        rto_exceeded=p.rto_exceeded,
        corrupt_records=[
            CorruptRecordBody(key=r.detail, at=r.at, error=r.error) for r in p.corrupt
        ],
    )


def _rto(s: ServiceSnapshot) -> RtoBody:
    # A running run measures the RTO from the journal; otherwise the latest decision's
    # detection time is the clock (nothing detected: nothing is being spent).
    run = s.run
    if run is not None and run.finished_at is None:
        return RtoBody(
            budget=s.rto,
            detected_at=run.detected_at,
            elapsed=run.elapsed,
            remaining=run.rto_remaining,
        )
    detected = s.decision.detected_at if s.decision is not None else None
    if detected is None:
        return RtoBody(budget=s.rto, detected_at=None, elapsed=None, remaining=None)
    elapsed = s.at - detected
    return RtoBody(budget=s.rto, detected_at=detected, elapsed=elapsed, remaining=s.rto - elapsed)


def summary_body(s: ServiceSnapshot) -> ServiceSummary:
    return ServiceSummary(
        name=s.service,
        mode=s.mode,
        active_region=s.active_region,
        phase=s.phase,
        reasons=_reasons(s.reasons),
        paused=s.paused,
        run_id=None if s.run is None else s.run.run_id,
        run_status=None if s.run is None else str(s.run.status),
    )


def service_body(s: ServiceSnapshot, *, node_id: str, leader: str | None) -> ServiceBody:
    evidence: Mapping[str, tuple[VantageView, ...]] = s.evidence
    return ServiceBody(
        service=s.service,
        at=s.at,
        node_id=node_id,
        leader=leader,
        policy_version=s.policy_version,
        mode=s.mode,
        regions=list(s.regions),
        primary=s.regions[0] if s.regions else s.active_region,
        active_region=s.active_region,
        phase=s.phase,
        reasons=_reasons(s.reasons),
        paused=s.paused,
        rto=_rto(s),
        rpo=s.rpo,
        lag=[lag_body(r, lag, s.rpo, s.at) for r, lag in sorted(s.lag.items())],
        verdicts=[
            region_body(s.verdicts[r], evidence.get(r, ())) for r in s.regions if r in s.verdicts
        ],
        decision=None if s.decision is None else decision_body(s.decision),
        run=None if s.run is None else run_body(s.run),
        recent_decisions=[decision_body(d) for d in s.recent_decisions],
        state_problem=s.state_problem,
    )


def audit_entry_body(e: AuditEntry) -> AuditEntryBody:
    return AuditEntryBody(
        at=e.at,
        time=format_time(e.at),
        service=e.service,
        entry=e.entry.value,
        run_id=e.run_id,
        step=e.step,
        attempt=e.attempt,
        policy_version=e.policy_version,
        token=e.token,
        reasons=_reasons(e.reasons),
        summary=e.summary,
        detail=dict(e.detail),
        outcome=e.outcome,
    )


def audit_body(
    entries: Sequence[AuditEntry],
    *,
    service: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> AuditBody:
    return AuditBody(
        service=service,
        since=since,
        until=until,
        limit=limit,
        count=len(entries),
        entries=[audit_entry_body(e) for e in entries],
    )


def command_result_body(r: CommandResult) -> CommandResultBody:
    return CommandResultBody(
        accepted=r.accepted,
        message=r.message,
        run_id=r.run_id,
        decision=None if r.decision is None else decision_body(r.decision),
    )


# -- readiness -------------------------------------------------------------------------


class StepReadinessBody(_Out):
    runbook: str
    source: str
    target: str
    step: str
    action: str
    ready: bool
    checked: bool = Field(description="False: the check itself could not run (throttled...).")
    findings: list[str]
    control_plane_region: str | None
    control_plane_in_source: bool = Field(
        description="The step depends on the control plane of the region it evacuates."
    )
    static_stability: list[str] = Field(
        default_factory=list,
        description="Failover moves: why the step is not statically stable (it needs the"
        " region being left or a global control plane in us-east-1); empty when it is.",
    )


class LagReadinessBody(_Out):
    region: str
    ready: bool
    finding: str


class ServiceReadinessBody(_Out):
    ready: bool
    steps: list[StepReadinessBody]
    lag: list[LagReadinessBody]


class ReadinessReportBody(_Out):
    services: dict[str, ServiceReadinessBody] = Field(
        description="The latest periodic evaluation per service; absent before the first."
    )


def readiness_report_body(reports: Mapping[str, ReadinessReport]) -> ReadinessReportBody:
    out: dict[str, ServiceReadinessBody] = {}
    for service, report in sorted(reports.items()):
        out[service] = ServiceReadinessBody(
            ready=report.ready,
            steps=[
                StepReadinessBody(
                    runbook=x.move.runbook,
                    source=x.move.source,
                    target=x.move.target,
                    step=x.step,
                    action=x.action,
                    ready=x.ready,
                    checked=x.checked,
                    findings=list(x.findings),
                    control_plane_region=x.control_plane_region,
                    control_plane_in_source=x.control_plane_in_source,
                    static_stability=list(x.static_stability),
                )
                for x in report.steps
            ],
            lag=[
                LagReadinessBody(region=x.region, ready=x.ready, finding=x.finding)
                for x in report.lag
            ],
        )
    return ReadinessReportBody(services=out)
