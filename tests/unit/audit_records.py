"""Hand-built journal records of one incident, as the daemon writes them: the decision that
went suspect, the decision that started a failover (with its evidence), an operator's pause
and approval, the run with a retried step, and its end. Shared by the audit, report, API and
CLI tests."""

from __future__ import annotations

import json
from dataclasses import replace

from orchestrator.audit import decision_detail, decision_record
from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.state import Decision, Initiator, LagReading
from orchestrator.engine.vocabulary import Action, Phase, Reason, Verdict
from orchestrator.policy.models import Step
from orchestrator.runbook.journal import RunHeader
from orchestrator.store.base import JournalRecord, JournalStatus

T0 = 1_795_708_800.0  # 2026-11-26T16:00:00Z: detection
RUN_ID = "webapp-0123456789abcdef"
VERSION = "a1b2c3d4e5f6"
SERVICE = "webapp"
RTO = 900.0
RPO = 60.0
TOKEN = 7


def verdicts(at: float, east: Verdict) -> dict[str, RegionVerdict]:
    failing = ("local", "eu") if east is Verdict.DOWN else ()
    return {
        "us-east-1": RegionVerdict(
            "us-east-1",
            east,
            at - 10.0,
            2,
            failing,
            ("ap",) if failing else ("local", "eu", "ap"),
            (),
            (Reason.STALE_DATA,) if east is Verdict.DOWN else (),
        ),
        "us-west-2": RegionVerdict(
            "us-west-2", Verdict.HEALTHY, at - 600.0, 2, (), ("local", "eu", "ap"), ()
        ),
    }


def decision(
    at: float,
    phase: Phase,
    action: Action = Action.NONE,
    *,
    reasons: tuple[Reason, ...] = (),
    target: str | None = None,
    run_id: str | None = None,
    lag: float | None = 5.0,
    initiated_by: Initiator = Initiator.POLICY,
    down: bool = True,
) -> JournalRecord:
    d = Decision(
        SERVICE,
        at,
        phase,
        action,
        "us-east-1",
        target,
        reasons,
        initiated_by,
        VERSION,
        detected_at=T0 if down else None,
        notes=("lag 5s <= rpo 60s",),
    )
    detail = decision_detail(
        d,
        verdicts=verdicts(at, Verdict.DOWN if down else Verdict.HEALTHY),
        evidence={},
        lag={} if lag is None else {"us-west-2": LagReading(lag, at - 3.0)},
        regions=("us-east-1", "us-west-2"),
        rto=RTO,
        rpo=RPO,
        run_id=run_id,
    )
    return decision_record(d, token=TOKEN, detail=detail)


STEPS = (
    Step(name="promote-db", action="rds.promote_read_replica", retries=2),
    Step(name="flip-dns", action="route53.set_record", after=["promote-db"]),
)


def _run(status: JournalStatus, at: float, **kw: object) -> JournalRecord:
    return replace(
        JournalRecord(RUN_ID, SERVICE, status, at, TOKEN, VERSION),
        **kw,  # type: ignore[arg-type]
    )


def run_records(*, fail: bool = False, detected: float | None = T0) -> list[JournalRecord]:
    """The run: promote-db fails once (throttled) then succeeds; flip-dns succeeds (or,
    with ``fail``, fails for good and the run fails)."""
    decided = T0 + 4.0
    header = RunHeader(
        run_id=RUN_ID,
        service=SERVICE,
        kind="failover",
        source="us-east-1",
        target="us-west-2",
        primary="us-east-1",
        policy_version=VERSION,
        rto=RTO,
        decided_at=decided,
        detected_at=detected,
        steps=STEPS,
    )
    S = JournalStatus
    out = [
        _run(
            S.RUN_STARTED,
            T0 + 4.5,
            kind="failover",
            source_region="us-east-1",
            target_region="us-west-2",
            detail=header.detail(),
        ),
        _run(S.STEP_STARTED, T0 + 5.0, step="promote-db", attempt=1),
        _run(
            S.STEP_FAILED,
            T0 + 6.0,
            step="promote-db",
            attempt=1,
            error="Throttling: rate exceeded",
            retryable=True,
        ),
        _run(S.STEP_STARTED, T0 + 7.0, step="promote-db", attempt=2),
        _run(S.STEP_SUCCEEDED, T0 + 37.0, step="promote-db", attempt=2, detail="promoted"),
        _run(S.STEP_STARTED, T0 + 38.0, step="flip-dns", attempt=1),
    ]
    if fail:
        out += [
            _run(S.STEP_FAILED, T0 + 40.0, step="flip-dns", attempt=1, error="NoSuchHostedZone"),
            _run(S.RUN_FAILED, T0 + 40.5, error="step flip-dns failed: NoSuchHostedZone"),
        ]
    else:
        out += [
            _run(S.STEP_SUCCEEDED, T0 + 40.0, step="flip-dns", attempt=1),
            _run(S.RUN_SUCCEEDED, T0 + 40.5),
        ]
    return out


def operator_command(at: float, command: str, by: str, reason: str) -> JournalRecord:

    return JournalRecord(
        "",
        SERVICE,
        JournalStatus.OPERATOR_COMMAND,
        at,
        TOKEN,
        VERSION,
        step=f"operator.{command}",
        kind=command,
        detail=json.dumps({"by": by, "reason": reason, "to": None, "force": False}),
    )


def command(
    at: float,
    what: str,
    by: str,
    reason: str,
    *,
    source: str = "cli",
    command_id: str = "cmd-1",
    **kw: object,
) -> JournalRecord:
    """An operator_command record as the daemon writes it today (id, source, user)."""
    from orchestrator.audit import command_record

    return command_record(
        SERVICE,
        what,
        by=by,
        reason=reason,
        source=source,
        command_id=command_id,
        at=at,
        token=TOKEN,
        policy_version=VERSION,
        **kw,  # type: ignore[arg-type]
    )


def answer(
    at: float, command_id: str, what: str, by: str, accepted: bool, message: str, **kw: object
) -> JournalRecord:
    """The decision record answering a command (the engine's decision, naming it)."""
    record = decision(at, Phase.FAILING_OVER, **kw)  # type: ignore[arg-type]
    data = json.loads(record.detail)
    data["command"] = {
        "id": command_id,
        "command": what,
        "by": by,
        "source": "cli",
        "accepted": accepted,
        "message": message,
        "run_id": None,
    }
    return replace(record, detail=json.dumps(data))


def around() -> list[JournalRecord]:
    """The service's records around the run (not the run's own), in append order."""
    return [
        decision(T0 - 600.0, Phase.STEADY, down=False),
        decision(T0 + 1.0, Phase.SUSPECT, reasons=(Reason.NO_QUORUM,)),
        decision(
            T0 + 4.0,
            Phase.FAILING_OVER,
            Action.FAILOVER,
            reasons=(Reason.ACTIVE_DOWN,),
            target="us-west-2",
            run_id=RUN_ID,
        ),
        decision(T0 + 5.0, Phase.FAILING_OVER, reasons=(Reason.RUN_IN_PROGRESS,)),
        operator_command(T0 + 20.0, "pause", "alice", "watching the promotion"),
    ]


def journal() -> list[JournalRecord]:
    """Everything, in append order (what read_journal would return)."""
    run = run_records()
    rest = around()
    return [*rest[:3], run[0], rest[3], *run[1:4], rest[4], *run[4:]]
