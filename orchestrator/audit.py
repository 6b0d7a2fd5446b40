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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.engine.healthbook import RegionVerdict, VantageView
from orchestrator.engine.state import Decision, LagReading
from orchestrator.engine.vocabulary import View
from orchestrator.policy.durations import DURATION_PATTERN, parse_duration
from orchestrator.store.base import JournalRecord, JournalStatus

DECISION_DETAIL_VERSION = 1
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
) -> str:
    """The ``detail`` of a decision record: compact JSON, at most :data:`MAX_DETAIL` bytes."""

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
    )


def _decision_summary(info: DecisionInfo) -> str:
    move = ""
    if info.target:
        move = f" {info.active_region} -> {info.target}"
    run = f" (run {info.run_id})" if info.run_id else ""
    return f"{info.phase}: {info.action}{move}{run}"


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
        to = f" to {record.target_region}" if record.target_region else ""
        force = " (forced)" if detail.get("force") else ""
        by = detail.get("by") or "unknown"
        why = detail.get("reason") or ""
        return f"{record.kind}{to}{force} by {by}: {why}".rstrip(": ")
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
    return [entry(r) for r in records]


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
