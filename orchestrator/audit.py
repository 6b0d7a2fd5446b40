"""The audit log: the journal, read as a list of entries a human can follow.

The journal (append-only, fenced) already holds every run, step attempt, operator command and
drill; the leader adds a ``decision`` record each time its decision for a service changes (or
starts a run). This module owns the ``decision`` record's ``detail`` format (what the engine
saw: each region's verdict with the vantage points and failing signals behind it, the lag
readings against the RPO) and turns any :class:`JournalRecord` into an :class:`AuditEntry`
with a one-line summary. Pure: no I/O, no clock.

A decision record's ``detail`` is bounded (:data:`MAX_DETAIL` bytes of JSON): evidence lists
are capped and, past the bound, the per-signal evidence is left out (``truncated`` says so).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.engine.healthbook import RegionVerdict, VantageView
from orchestrator.engine.state import (
    Command,
    CommandSource,
    Decision,
    LagReading,
    OperatorCommand,
)
from orchestrator.engine.vocabulary import View
from orchestrator.policy.durations import DURATION_PATTERN, parse_duration
from orchestrator.store.base import JournalRecord, JournalStatus

DECISION_DETAIL_VERSION = 1
COMMAND_DETAIL_VERSION = 1
MAX_DETAIL = 16 * 1024  # bytes of JSON; a typical decision record is 1-3 KiB
MAX_LISTED = 16  # vantage point names per list (failing/passing/unknown)
MAX_SIGNALS = 8  # non-passing signal views per region
MAX_NOTES = 8
MAX_TEXT = 200  # characters of one note or signal detail

EntryKind = JournalStatus  # an entry's kind is its record's status: decision, run_started...


@dataclass(frozen=True)
class AuditEntry:
    """One journal record as the audit view shows it."""

    at: float
    service: str
    entry: EntryKind
    run_id: str
    step: str
    attempt: int
    policy_version: str
    token: int  # the fencing token of the leader that wrote it
    reasons: tuple[str, ...]  # reason codes (decisions, failed runs' engine reasons)
    summary: str  # one line for humans
    detail: Mapping[str, Any]  # the record's detail as JSON ({"text": ...} when not JSON)
    # An operator command's outcome, from the decision record that answered it (found in
    # the same read): "accepted: ..." or "refused: ..."; "" when not known.
    outcome: str = ""


@dataclass(frozen=True)
class DecisionInfo:
    """A ``decision`` record's detail, read back."""

    at: float
    service: str
    policy_version: str
    phase: str
    action: str
    target: str | None
    active_region: str
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    initiated_by: str
    run_id: str | None  # the run this decision started, if any
    detected_at: float | None
    rto: float | None
    rpo: float | None
    regions: tuple[Mapping[str, Any], ...]  # per region: verdict, vantage lists, signals
    lag: tuple[Mapping[str, Any], ...]  # per region: seconds, observed_at, age, within_rpo
    truncated: bool
    # The operator command this decision answered (its id, command, by, source, and whether
    # it was accepted, with the message the operator got); None for the engine's own.
    command: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CommandInfo:
    """An ``operator_command`` record read back: who asked what, why, and from where."""

    at: float
    service: str
    id: str
    command: str  # approve, pause, resume, failover, switchover, failback, drill
    by: str  # the authenticated principal: the API token's label, "scheduler"...
    user: str  # the name the client gave besides (the CLI's OS user); "" when none
    source: str  # api, cli, mqtt, scheduler ("" in records older than the field)
    reason: str
    to: str | None
    force: bool
    run_id: str  # an approval of a run's step: the run ("" otherwise)
    step: str  # ... and the step
    extra: Mapping[str, Any]  # anything else the record holds (a drill's mode)

    def who(self) -> str:
        """``alice via cli`` (``alice (as bob) via cli`` when the client named a user)."""
        user = f" (as {self.user})" if self.user and self.user != self.by else ""
        via = f" via {self.source}" if self.source else ""
        return f"{self.by or 'unknown'}{user}{via}"


# --- writing ------------------------------------------------------------------------------
def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _names(values: Sequence[str]) -> list[str]:
    return [str(v) for v in values[:MAX_LISTED]]


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _region(v: RegionVerdict, evidence: Sequence[VantageView], signals: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "region": v.region,
        "verdict": str(v.verdict),
        "since": v.since,
        "quorum": v.quorum,
        "failing": _names(v.failing),
        "passing": _names(v.passing),
        "unknown": _names(v.unknown),
        "reasons": [str(r) for r in v.reasons],
        "recent_failures": v.recent_failures,
    }
    if signals:
        views = [s for e in evidence for s in e.signals if s.view is not View.PASSING]
        out["signals"] = [
            {
                "signal": s.signal,
                "vantage": s.vantage,
                "view": str(s.view),
                "detail": _clip(str(s.detail)),
                "consecutive_failures": s.consecutive_failures,
                "failure_ratio": _finite(s.failure_ratio),
                "failing_since": s.failing_since,
                "last_at": s.last_at,
            }
            for s in views[:MAX_SIGNALS]
        ]
        out["signals_omitted"] = max(0, len(views) - MAX_SIGNALS)
    return out


def decision_detail(
    d: Decision,
    *,
    verdicts: Mapping[str, RegionVerdict],
    evidence: Mapping[str, Sequence[VantageView]],
    lag: Mapping[str, LagReading],
    regions: Sequence[str],
    rto: float,
    rpo: float,
    run_id: str | None,
    command: Mapping[str, Any] | None = None,
) -> str:
    """The ``detail`` of a decision record: compact JSON, at most :data:`MAX_DETAIL` bytes.
    ``command``: the operator command this decision answers (:func:`command_answer`)."""

    listed = [r for r in regions if r in verdicts]

    def build(signals: bool, shown: int) -> str:
        body = {
            "v": DECISION_DETAIL_VERSION,
            "phase": str(d.phase),
            "action": str(d.action),
            "target": d.target,
            "active_region": d.active_region,
            "reasons": [str(r) for r in d.reasons],
            "notes": [_clip(n) for n in d.notes[:MAX_NOTES]],
            "initiated_by": str(d.initiated_by),
            "run_id": run_id,
            "detected_at": d.detected_at,
            "rto_remaining": _finite(d.rto_remaining),
            "rto": rto,
            "rpo": rpo,
            "regions": [_region(verdicts[r], evidence.get(r, ()), signals) for r in listed[:shown]],
            "regions_omitted": len(listed) - shown,
            "lag": [
                {
                    "region": r,
                    "seconds": _finite(reading.seconds),
                    "observed_at": reading.observed_at,
                    "age": max(0.0, d.at - reading.observed_at),
                    "within_rpo": None if reading.seconds is None else reading.seconds <= rpo,
                }
                for r, reading in sorted(lag.items())
            ],
            "truncated": not signals,
        }
        if command is not None:
            body["command"] = dict(command)
        return json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False)

    # Past the bound, leave out the per-signal evidence first, then the last regions.
    text = build(signals=True, shown=len(listed))
    shown = len(listed)
    while len(text.encode()) > MAX_DETAIL and shown >= 0:
        text = build(signals=False, shown=shown)
        shown -= 1
    return text


def decision_record(d: Decision, *, token: int, detail: str) -> JournalRecord:
    """The journal record of a decision change (run_id "": a decision is not part of a run;
    the run it starts is named in ``detail``)."""
    return JournalRecord(
        run_id="",
        service=d.service,
        status=JournalStatus.DECISION,
        at=d.at,
        token=token,
        policy_version=d.policy_version,
        kind=str(d.action),
        source_region=d.active_region,
        target_region=d.target or "",
        detail=detail,
    )


def new_command_id() -> str:
    """A fresh id for an operator command (links its record to the decision answering it)."""
    return "cmd-" + uuid.uuid4().hex[:16]


def with_command_id(command: OperatorCommand) -> OperatorCommand:
    """``command`` with an id (its own, or a new one)."""
    return command if command.id else replace(command, id=new_command_id())


def command_record(
    service: str,
    command: str,
    *,
    by: str,
    reason: str,
    source: CommandSource | str,
    command_id: str,
    at: float,
    token: int,
    policy_version: str,
    user: str = "",
    to: str | None = None,
    force: bool = False,
    run_id: str = "",
    step: str = "",
    extra: Mapping[str, Any] | None = None,
) -> JournalRecord:
    """The ``operator_command`` journal record of a command (written before it takes effect):
    who (``by``, and the ``user`` the client named), why, from where (``source``), what
    (``command``, ``to``, ``force``; an approval of a run's step names ``run_id`` and
    ``step``). run_id of the record itself is "": commands are not part of a run."""
    body: dict[str, Any] = {
        **dict(extra or {}),
        "v": COMMAND_DETAIL_VERSION,
        "id": command_id,
        "command": command,
        "by": by,
        "user": user or None,
        "source": str(source),
        "reason": reason,
        "to": to,
        "force": force,
    }
    if run_id:
        body["run_id"], body["step"] = run_id, step
    return JournalRecord(
        run_id="",
        service=service,
        status=JournalStatus.OPERATOR_COMMAND,
        at=at,
        token=token,
        policy_version=policy_version,
        step=f"operator.{command}",
        kind=command,
        target_region=to or "",
        detail=json.dumps(body, sort_keys=True, separators=(",", ":")),
    )


def operator_command_record(
    service: str,
    command: OperatorCommand,
    *,
    at: float,
    token: int,
    policy_version: str,
    run_id: str = "",
    step: str = "",
) -> JournalRecord:
    """:func:`command_record` for an :class:`OperatorCommand` (it must have an id). An abort
    of run ``run_id`` is part of the run it ends: its record carries the run's id and, as
    ``error``, the run's error to be (:func:`abort_error`), so that the run's own journal says
    it was aborted (a resume after a crash mid-abort reads it there)."""
    if not command.id:
        raise ValueError("an operator command is journaled with its id (with_command_id)")
    record = command_record(
        service,
        command.command.value,
        by=command.by,
        reason=command.reason,
        source=command.source,
        command_id=command.id,
        at=at,
        token=token,
        policy_version=policy_version,
        user=command.user,
        to=command.to,
        force=command.force,
        run_id=run_id,
        step=step,
    )
    if command.command is Command.ABORT and run_id:
        record = replace(record, run_id=run_id, error=abort_error(command))
    return record


def abort_error(command: OperatorCommand) -> str:
    """The error a run aborted by ``command`` ends with: who aborted it, and why."""
    user = f" (as {command.user})" if command.user and command.user != command.by else ""
    return f"aborted by {command.by or 'an operator'}{user}: {command.reason}".rstrip(": ")


def command_answer(
    command: OperatorCommand, *, accepted: bool, message: str, run_id: str | None = None
) -> dict[str, Any]:
    """What a decision record says about the command it answered (``decision_detail``'s
    ``command``)."""
    return {
        "id": command.id,
        "command": command.command.value,
        "by": command.by,
        "source": command.source.value,
        "accepted": accepted,
        "message": _clip(message),
        "run_id": run_id,
    }


# --- reading ------------------------------------------------------------------------------
def _json_detail(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {"text": text}
    return data if isinstance(data, dict) else {"text": text}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _dicts(value: Any) -> tuple[Mapping[str, Any], ...]:
    return tuple(v for v in value if isinstance(v, dict)) if isinstance(value, list) else ()


def decision_info(record: JournalRecord) -> DecisionInfo | None:
    """A decision record's content; None for another status. Tolerant of missing fields (a
    record written by an older or newer build shows what it has)."""
    if record.status is not JournalStatus.DECISION:
        return None
    data = _json_detail(record.detail)
    run_id = data.get("run_id")
    target = data.get("target", record.target_region or None)
    return DecisionInfo(
        at=record.at,
        service=record.service,
        policy_version=record.policy_version,
        phase=str(data.get("phase", "unknown")),
        action=str(data.get("action", record.kind or "none")),
        target=None if target is None else str(target),
        active_region=str(data.get("active_region", record.source_region)),
        reasons=_str_tuple(data.get("reasons")),
        notes=_str_tuple(data.get("notes")),
        initiated_by=str(data.get("initiated_by", "policy")),
        run_id=str(run_id) if run_id else None,
        detected_at=_float(data.get("detected_at")),
        rto=_float(data.get("rto")),
        rpo=_float(data.get("rpo")),
        regions=_dicts(data.get("regions")),
        lag=_dicts(data.get("lag")),
        truncated=bool(data.get("truncated", False)),
        command=data["command"] if isinstance(data.get("command"), dict) else None,
    )


def command_info(record: JournalRecord) -> CommandInfo | None:
    """An operator_command record's content; None for another status. Tolerant of records
    written before ``id``/``source``/``user`` existed."""
    if record.status is not JournalStatus.OPERATOR_COMMAND:
        return None
    data = _json_detail(record.detail)
    known = {"v", "id", "command", "by", "user", "source", "reason", "to", "force", "run_id"}
    to = data.get("to") or record.target_region or None
    return CommandInfo(
        at=record.at,
        service=record.service,
        id=str(data.get("id") or ""),
        command=str(data.get("command") or record.kind),
        by=str(data.get("by") or ""),
        user=str(data.get("user") or ""),
        source=str(data.get("source") or ""),
        reason=str(data.get("reason") or ""),
        to=None if to is None else str(to),
        force=data.get("force") is True,
        run_id=str(data.get("run_id") or ""),
        step=str(data.get("step") or ""),
        extra={k: v for k, v in data.items() if k not in known | {"step"}},
    )


def answer_text(answer: Mapping[str, Any]) -> str:
    """``accepted: failover to us-west-2 started`` from a decision's ``command``."""
    word = "accepted" if answer.get("accepted") else "refused"
    message = str(answer.get("message") or "").strip()
    return f"{word}: {message}" if message else word


def _decision_summary(info: DecisionInfo) -> str:
    move = ""
    if info.target:
        move = f" {info.active_region} -> {info.target}"
    run = f" (run {info.run_id})" if info.run_id else ""
    answered = ""
    if info.command is not None:
        c = info.command
        answered = f"; answers {c.get('command')} by {c.get('by')}: {answer_text(c)}"
    return f"{info.phase}: {info.action}{move}{run}{answered}"


def summarize(record: JournalRecord) -> str:
    """One line saying what the record is about."""
    status, detail = record.status, _json_detail(record.detail)
    step = f"step {record.step}"
    attempt = f" attempt {record.attempt}" if record.attempt else ""
    if status is JournalStatus.DECISION:
        info = decision_info(record)
        assert info is not None
        return _decision_summary(info)
    if status is JournalStatus.OPERATOR_COMMAND:
        cmd = command_info(record)
        assert cmd is not None
        to = f" to {cmd.to}" if cmd.to else ""
        force = " (forced)" if cmd.force else ""
        mode = f" {cmd.extra['mode']}" if isinstance(cmd.extra.get("mode"), str) else ""
        gate = f" (step {cmd.step} of run {cmd.run_id})" if cmd.run_id and cmd.step else ""
        if cmd.run_id and not cmd.step:
            gate = f" (run {cmd.run_id})"  # an abort
        return f"{cmd.command}{mode}{to}{force}{gate} by {cmd.who()}: {cmd.reason}".rstrip(": ")
    if status is JournalStatus.RUN_STARTED:
        steps = detail.get("steps")
        count = f", {len(steps)} steps" if isinstance(steps, list) else ""
        return f"{record.kind} {record.source_region} -> {record.target_region}{count}"
    if status is JournalStatus.STEP_STARTED:
        return f"{step}{attempt} started"
    if status is JournalStatus.STEP_SUCCEEDED:
        return f"{step}{attempt} succeeded"
    if status is JournalStatus.STEP_FAILED:
        kind = "retryable" if record.retryable else "final"
        return f"{step}{attempt} failed ({kind}): {record.error}"
    if status is JournalStatus.STEP_SKIPPED:
        return f"{step} skipped: {record.error}".rstrip(": ")
    if status is JournalStatus.STEP_PROGRESS:
        note = detail.get("note")
        return f"{step}: {note}" if isinstance(note, str) and note else f"{step} progress"
    if status is JournalStatus.RUN_SUCCEEDED:
        return "run succeeded"
    if status is JournalStatus.RUN_FAILED:
        return f"run failed: {record.error}".rstrip(": ")
    if status is JournalStatus.DRILL_FINISHED:
        return f"drill {record.kind} finished"
    if status is JournalStatus.CORRUPT:
        return f"CORRUPT record {record.detail} (quarantined; time approximate): {record.error}"
    return status.value  # pragma: no cover - every status is handled above


def entry(record: JournalRecord) -> AuditEntry:
    """The audit view of one journal record."""
    detail = (
        {"key": record.detail, "error": record.error}
        if record.status is JournalStatus.CORRUPT
        else _json_detail(record.detail)
    )
    reasons: tuple[str, ...] = ()
    if record.status is JournalStatus.DECISION:
        reasons = _str_tuple(detail.get("reasons"))
    return AuditEntry(
        at=record.at,
        service=record.service,
        entry=record.status,
        run_id=record.run_id,
        step=record.step,
        attempt=record.attempt,
        policy_version=record.policy_version,
        token=record.token,
        reasons=reasons,
        summary=summarize(record),
        detail=detail,
    )


def entries(records: Sequence[JournalRecord]) -> list[AuditEntry]:
    """The audit view of ``records``; an operator command whose answer (the decision record
    naming its id) is among them gets that answer as its ``outcome``."""
    answers: dict[str, str] = {}
    for r in records:
        if r.status is JournalStatus.DECISION:
            info = decision_info(r)
            if info is not None and info.command is not None and info.command.get("id"):
                answers[str(info.command["id"])] = answer_text(info.command)
    out = []
    for r in records:
        e = entry(r)
        if r.status is JournalStatus.OPERATOR_COMMAND:
            command_id = e.detail.get("id")
            if isinstance(command_id, str) and command_id in answers:
                e = replace(e, outcome=answers[command_id])
        out.append(e)
    return out


# --- time filters -------------------------------------------------------------------------
TIME_HINT = (
    "an RFC 3339 time (2026-11-26T16:00:00Z; no offset means UTC), epoch seconds"
    " (1795708800), a duration ago (30m, 2h, 1d) or 'now'"
)
_EPOCH = re.compile(r"^\d+(\.\d+)?$")
_DURATION = re.compile(DURATION_PATTERN)


def parse_time(text: str, now: float) -> float:
    """An audit window bound as an SRE types it, in epoch seconds; ``ValueError`` with
    :data:`TIME_HINT` otherwise. A bare number is epoch seconds (a duration needs a unit)."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if _EPOCH.match(value):
        return float(value)
    if _DURATION.match(value):
        return now - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected {TIME_HINT}, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(at: float) -> str:
    """RFC 3339 in UTC with milliseconds: how the audit shows a record's time."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
