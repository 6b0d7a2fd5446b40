"""The post-incident report of one run, as Markdown (``failoverd report RUN_ID``).

Pure: built from the run's journal records, the service's records around it (the decision
records that led to it and operator commands) and the RPO, with no I/O and no clock.

Definitions the report states where it uses them:

* **Detection** is the decision's ``detected_at`` (journaled with the run: when the engine
  first saw the active region down, the start of the RTO clock, as ``RunProgress`` uses it).
  A run an operator asked for with nothing detected is measured from its decision instead.
  The **first sign** (the first decision record that was not ``steady`` in the lead-up, e.g.
  ``suspect``) is shown too: it may precede detection.
* **RTO achieved** is the run's end minus detection (unknown while the run has not ended).
* **RPO achieved** is the replication lag to the target region in the evidence of the
  decision that started the run (the last reading before the decision, with its age); it
  is "unknown" when no lag was measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.audit import CommandInfo, DecisionInfo, command_info, decision_info
from orchestrator.engine.vocabulary import REASON_TEXT, Reason
from orchestrator.runbook.journal import JournalError, RunHeader, fold
from orchestrator.runbook.rto import RunProgress, build_progress
from orchestrator.store.base import JournalRecord, JournalStatus

LEAD_UP_DECISIONS = 20  # decision changes shown before the one that started the run


@dataclass(frozen=True)
class ReportData:
    """What a report is built from (``Control.run_report`` gathers it from the store)."""

    run: Sequence[JournalRecord]  # the run's records, append order (run_started first)
    around: Sequence[JournalRecord]  # the service's other records up to the run's end
    rpo: float | None  # the policy's RPO, used when the decision did not record it
    now: float  # when the report is made (for a run still going)


@dataclass(frozen=True)
class Context:
    """The records around a run that the report uses."""

    decision: DecisionInfo | None  # the decision that started the run
    lead_up: tuple[DecisionInfo, ...]  # decision changes before it, since the last steady
    commands: tuple[JournalRecord, ...]  # operator commands from the lead-up to the run end


def select_context(header: RunHeader, around: Sequence[JournalRecord], end: float) -> Context:
    """The decision that started the run (the decision record naming its run id, else the
    last decision at or before its start), the decisions leading to it (back to the last
    ``steady`` one, at most :data:`LEAD_UP_DECISIONS`) and the operator commands in between."""
    decisions = [
        (i, info)
        for i, r in enumerate(around)
        if r.service == header.service and (info := decision_info(r)) is not None
    ]
    start = next((d for d in decisions if d[1].run_id == header.run_id), None)
    if start is None:
        before = [d for d in decisions if d[1].at <= header.started_at and d[1].run_id is None]
        start = before[-1] if before else None
    if start is None:
        return Context(None, (), _commands(header, around, header.decided_at, end))
    index, decision = start
    lead_up: list[DecisionInfo] = []
    for i, info in reversed(decisions):
        if i >= index:
            continue
        if info.phase == "steady" or len(lead_up) == LEAD_UP_DECISIONS:
            break
        lead_up.append(info)
    lead_up.reverse()
    begin = lead_up[0].at if lead_up else decision.at
    return Context(decision, tuple(lead_up), _commands(header, around, begin, end))


def _commands(
    header: RunHeader, around: Sequence[JournalRecord], begin: float, end: float
) -> tuple[JournalRecord, ...]:
    # A minute of slack before: the command that asked for the run precedes its decision.
    # An approval of another run's step is that run's, not this one's.
    out = []
    for r in around:
        info = command_info(r)
        if (
            info is not None
            and r.service == header.service
            and begin - 60.0 <= r.at <= end
            and r.run_id in ("", header.run_id)
            and info.run_id in ("", header.run_id)
        ):
            out.append(r)
    return tuple(out)


def _answers(around: Sequence[JournalRecord]) -> dict[str, str]:
    """What each operator command led to, by command id (the decisions naming them)."""
    out: dict[str, str] = {}
    for r in around:
        info = decision_info(r)
        if info is not None and info.command is not None and info.command.get("id"):
            word = "accepted" if info.command.get("accepted") else "refused"
            message = str(info.command.get("message") or "")
            out[str(info.command["id"])] = f"{word}: {message}" if message else word
    return out


# --- formatting ---------------------------------------------------------------------------
def _utc(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _secs(value: float | None) -> str:
    if value is None:
        return "unknown"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 120:
        return f"{sign}{value:.1f} s"
    if value < 7200:
        return f"{sign}{value / 60:.1f} min"
    return f"{sign}{value / 3600:.2f} h"


def _offset(at: float | None, t0: float) -> str:
    if at is None:
        return "-"
    delta = at - t0
    return f"T{'+' if delta >= 0 else '-'}{abs(delta):.1f}s"


def _cell(text: Any) -> str:
    # Markdown table cells: a pipe or a newline would break the row.
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ") or " "


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = [_row(*headers), "|" + "|".join("---" for _ in headers) + "|"]
    out.extend(_row(*r) for r in rows)
    return out


def _reason_text(code: str) -> str:
    try:
        return f"`{code}`: {REASON_TEXT[Reason(code)]}"
    except ValueError:
        return f"`{code}`"


def _target_lag(decision: DecisionInfo | None, target: str) -> dict[str, Any] | None:
    if decision is None:
        return None
    for lag in decision.lag:
        if lag.get("region") == target:
            return dict(lag)
    return None


# --- the report ---------------------------------------------------------------------------
def render(data: ReportData) -> str:
    """The Markdown report; raises JournalError when the run's journal is unreadable."""
    journal = fold(data.run)
    header = journal.header
    progress = build_progress(journal, data.now)
    finished = journal.finished
    end = finished.at if finished is not None else data.now
    # An abort is journaled in the run it ends; it shows with the other operator commands.
    aborts = [r for r in data.run if r.status is JournalStatus.OPERATOR_COMMAND]
    ctx = select_context(header, [*data.around, *aborts], end)
    decision = ctx.decision
    detected = header.detected_at
    t0 = detected if detected is not None else header.decided_at
    rpo = decision.rpo if decision is not None and decision.rpo is not None else data.rpo

    lines = [f"# Incident report: {header.service} {header.kind} run `{header.run_id}`", ""]
    lines += _summary(data, header, progress.status.value, progress.error, ctx, detected)
    lines += ["", "## RTO and RPO", ""]
    lines += _objectives(header, finished, detected, decision, rpo)
    lines += ["", "## Timeline", ""]
    lines += _timeline(data, header, ctx, t0, detected)
    lines += ["", "## Evidence at decision time", ""]
    lines += _evidence(decision, rpo)
    lines += ["", "## Step durations", ""]
    lines += _steps(progress, t0)
    return "\n".join(lines) + "\n"


def _summary(
    data: ReportData,
    header: RunHeader,
    status: str,
    error: str,
    ctx: Context,
    detected: float | None,
) -> list[str]:
    decision = ctx.decision
    commands = [c for r in ctx.commands if (c := command_info(r)) is not None]
    if decision is not None and decision.initiated_by == "operator":
        asked = [c for c in commands if c.command == header.kind and c.at <= decision.at]
        who = ""
        if asked:
            c = asked[-1]
            forced = " (forced)" if c.force else ""
            who = f': {c.who()}{forced} ("{c.reason}")'
        initiated = f"operator{who}"
    elif decision is not None:
        initiated = "policy (the engine's own decision)"
    else:
        initiated = "unknown (no decision record found)"
    outcome = f"**{status}**" + (f": {error}" if error else "")
    if status == "running":
        outcome = "**running** (not finished when this report was made)"
    detection = (
        f"{_utc(detected)} (when the engine first saw the active region down)"
        if detected is not None
        else "none recorded (e.g. an operator's run): the RTO clock starts at the decision"
    )
    rows = [
        ("Service", header.service),
        ("Kind", header.kind),
        ("Source → target", f"{header.source} → {header.target}"),
        ("Initiated by", initiated),
        ("Approved by", _approvers(commands, header)),
        ("Outcome", outcome),
        ("Policy version", f"`{header.policy_version}`"),
        ("Detection", detection),
        ("First sign", _first_sign(ctx, detected)),
        ("Decided", _utc(header.decided_at)),
        ("Run started", _utc(header.started_at)),
        ("Run finished", _utc(data.run[-1].at) if status != "running" else "-"),
    ]
    return _table(("", ""), rows)


def _approvers(commands: Sequence[CommandInfo], header: RunHeader) -> str:
    """Who approved (this run's approval steps, or the decision that started it), why."""
    approvals = [
        c
        for c in commands
        if c.command == "approve" and (c.run_id == header.run_id or c.at <= header.started_at)
    ]
    if not approvals:
        return "-"
    parts = []
    for c in approvals:
        gate = f" step {c.step}" if c.step else " the move"
        parts.append(f'{c.who()} at {_utc(c.at)},{gate} ("{c.reason}")')
    return "; ".join(parts)


def _first_sign(ctx: Context, detected: float | None) -> str:
    first = ctx.lead_up[0] if ctx.lead_up else None
    if first is None or (detected is not None and first.at >= detected):
        return "-"
    lead = "" if detected is None else f", {_secs(detected - first.at)} before detection"
    return f"{_utc(first.at)} (the first decision that was not steady: {first.phase}{lead})"


def _objectives(
    header: RunHeader,
    finished: JournalRecord | None,
    detected: float | None,
    decision: DecisionInfo | None,
    rpo: float | None,
) -> list[str]:
    start = detected if detected is not None else header.decided_at
    clock = "detection" if detected is not None else "the decision"
    if finished is None:
        rto_line = f"- **RTO achieved: unknown** (the run has not ended) — RTO {_secs(header.rto)}"
    else:
        achieved = finished.at - start
        verdict = "met" if achieved <= header.rto else f"MISSED by {_secs(achieved - header.rto)}"
        rto_line = (
            f"- **RTO achieved: {_secs(achieved)}** (run end - {clock}) vs RTO"
            f" {_secs(header.rto)}: {verdict}"
        )
    lag = _target_lag(decision, header.target)
    seconds = None if lag is None else lag.get("seconds")
    rpo_text = _secs(rpo) if rpo is not None else "unknown"
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        why = "no decision record" if decision is None else f"no lag reading for {header.target}"
        rpo_line = f"- **RPO achieved: unknown** ({why} at decision time) vs RPO {rpo_text}"
    else:
        if rpo is None:
            verdict = "RPO unknown"
        else:
            verdict = "within" if seconds <= rpo else f"ABOVE by {_secs(seconds - rpo)}"
        age = lag.get("age") if lag is not None else None
        measured = f", measured {_secs(age)} before the decision" if age is not None else ""
        rpo_line = (
            f"- **RPO achieved: {_secs(seconds)}** (replication lag to {header.target} at"
            f" decision time{measured}) vs RPO {rpo_text}: {verdict}"
        )
    parts = []
    if detected is not None:
        parts.append(f"detection to decision {_secs(header.decided_at - detected)}")
    parts.append(f"decision to run start {_secs(header.started_at - header.decided_at)}")
    if finished is not None:
        parts.append(f"the run itself {_secs(finished.at - header.started_at)}")
    return [rto_line, "  - where the time went: " + ", ".join(parts), rpo_line]


def _detail(record: JournalRecord) -> dict[str, Any]:
    try:
        data = json.loads(record.detail) if record.detail else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _timeline(
    data: ReportData, header: RunHeader, ctx: Context, t0: float, detected: float | None
) -> list[str]:
    label = "detection" if detected is not None else "the decision (nothing was detected)"
    out = [f"Offsets from T0 = {label}, {_utc(t0)}.", ""]
    events: list[tuple[float, int, str, str]] = []  # at, order, event, result
    if detected is not None:
        events.append((detected, 0, "active region first seen down (detection)", ""))
    for info in ctx.lead_up:
        events.append((info.at, 1, f"decision: {info.phase}, {info.action}", _codes(info)))
    if ctx.decision is not None:
        d = ctx.decision
        target = f" → {d.target}" if d.target else ""
        events.append((d.at, 1, f"decision: {d.phase}, {d.action}{target}", _codes(d)))
    answers = _answers(data.around)
    for record in ctx.commands:
        c = command_info(record)
        assert c is not None
        what = c.command
        if isinstance(c.extra.get("mode"), str):
            what += f" {c.extra['mode']}"
        if c.to:
            what += f" to {c.to}"
        if c.force:
            what += " (forced)"
        if c.step:
            what += f" of step {c.step}"
        answer = answers.get(c.id, "")
        why = f'"{c.reason}"' + (f" -> {answer}" if answer else "")
        events.append((c.at, 1, f"operator command: {what} by {c.who()}", why))
    for r in data.run:
        if r.status is not JournalStatus.OPERATOR_COMMAND:  # among ctx.commands above
            events.append(_run_event(r))
    events.sort(key=lambda e: (e[0], e[1]))
    rows = [(_offset(at, t0), _utc(at), what, result) for at, _, what, result in events]
    return out + _table(("T", "time (UTC)", "event", "result"), rows)


def _codes(info: DecisionInfo) -> str:
    return ", ".join(info.reasons) or "-"


def _run_event(r: JournalRecord) -> tuple[float, int, str, str]:
    s = r.status
    if s is JournalStatus.RUN_STARTED:
        return (r.at, 2, f"run started: {r.kind} {r.source_region} → {r.target_region}", "")
    if s is JournalStatus.STEP_STARTED:
        return (r.at, 3, f"step {r.step} attempt {r.attempt} started", "")
    if s is JournalStatus.STEP_SUCCEEDED:
        return (r.at, 3, f"step {r.step} attempt {r.attempt} ended", "succeeded")
    if s is JournalStatus.STEP_FAILED:
        kind = "failed, will retry if attempts remain" if r.retryable else "failed"
        return (r.at, 3, f"step {r.step} attempt {r.attempt} ended", f"{kind}: {r.error}")
    if s is JournalStatus.STEP_SKIPPED:
        return (r.at, 3, f"step {r.step} skipped", r.error)
    if s is JournalStatus.STEP_PROGRESS:
        note = _detail(r).get("note")
        return (r.at, 3, f"step {r.step}: {note if isinstance(note, str) else 'progress'}", "")
    if s is JournalStatus.RUN_SUCCEEDED:
        return (r.at, 4, "run ended", "succeeded")
    if s is JournalStatus.RUN_FAILED:
        return (r.at, 4, "run ended", f"failed: {r.error}")
    if s is JournalStatus.CORRUPT:
        return (r.at, 3, f"corrupt record {r.detail} (quarantined; time approximate)", r.error)
    return (r.at, 3, s.value, r.error)


def _evidence(decision: DecisionInfo | None, rpo: float | None) -> list[str]:
    if decision is None:
        return [
            "No decision record was found for this run (written by a daemon without the"
            " audit log, or the record could not be written): the evidence is unknown."
        ]
    target = f" → {decision.target}" if decision.target else ""
    out = [
        f"Decision at {_utc(decision.at)} (policy version `{decision.policy_version}`):"
        f" phase **{decision.phase}**, action **{decision.action}**{target}, active region"
        f" {decision.active_region}, initiated by {decision.initiated_by}.",
        "",
        "Reasons:",
        "",
    ]
    out += [f"- {_reason_text(code)}" for code in decision.reasons] or ["- none given"]
    out += [f"- note: {n}" for n in decision.notes]
    if decision.regions:
        out += ["", "Region verdicts:", ""]
        rows = [
            (
                r.get("region", "?"),
                r.get("verdict", "?"),
                f"{len(r.get('failing') or [])}/{r.get('quorum', '?')}",
                ", ".join(r.get("failing") or []) or "-",
                ", ".join(r.get("passing") or []) or "-",
                ", ".join(r.get("unknown") or []) or "-",
                ", ".join(r.get("reasons") or []) or "-",
            )
            for r in decision.regions
        ]
        out += _table(
            ("region", "verdict", "failing/quorum", "failing", "passing", "unknown", "reasons"),
            rows,
        )
        signals = [
            (r.get("region", "?"), s)
            for r in decision.regions
            for s in r.get("signals") or []
            if isinstance(s, dict)
        ]
        if signals:
            out += ["", "Signals not passing:", ""]
            out += _table(
                ("region", "signal", "vantage", "view", "detail", "consecutive failures"),
                [
                    (
                        region,
                        s.get("signal", "?"),
                        s.get("vantage", "?"),
                        s.get("view", "?"),
                        s.get("detail") or "-",
                        s.get("consecutive_failures", "-"),
                    )
                    for region, s in signals
                ],
            )
    if decision.truncated:
        out += ["", "(the per-signal evidence was left out: the record would have been too big)"]
    out += ["", f"Replication lag (RPO {_secs(rpo) if rpo is not None else 'unknown'}):", ""]
    if decision.lag:
        lag_rows: list[tuple[Any, str, str, str]] = []
        for lag in decision.lag:
            within = lag.get("within_rpo")
            verdict = "unknown" if within is None else ("within RPO" if within else "ABOVE RPO")
            seconds = lag.get("seconds")
            lag_rows.append(
                (
                    lag.get("region", "?"),
                    _secs(seconds) if isinstance(seconds, int | float) else "unknown",
                    _secs(lag.get("age")) if isinstance(lag.get("age"), int | float) else "-",
                    verdict,
                )
            )
        out += _table(("region", "lag", "measured before the decision", "vs RPO"), lag_rows)
    else:
        out.append("No lag readings at decision time.")
    return out


def _steps(progress: RunProgress, t0: float) -> list[str]:
    rows: list[tuple[Any, ...]] = []
    for s in progress.steps:
        rows.append(
            (
                s.name,
                s.action,
                s.status.value,
                len(s.attempts),
                _offset(s.started_at, t0),
                _secs(s.duration) if s.duration is not None else "-",
                s.error or "",
            )
        )
        # The step's own steps (an ARC Region switch plan's), as the source timed them.
        for x in s.substeps:
            rows.append(
                (
                    f"{s.name} / {x.name}",
                    x.kind,
                    x.status,
                    "",
                    _offset(x.started_at, t0),
                    _secs(x.duration) if x.duration is not None else "-",
                    x.error,
                )
            )
    note = (
        "Duration: a step's first attempt start to its end, retries and backoff included;"
        " `step / sub-step` rows are the step's own steps (a Region switch plan's)."
    )
    table = _table(("step", "action", "status", "attempts", "started", "duration", "error"), rows)
    return [note, "", *table]


def report_markdown(data: ReportData) -> str:
    """:func:`render`, with an unreadable journal reported instead of raised."""
    try:
        return render(data)
    except JournalError as exc:
        run_id = data.run[0].run_id if data.run else "?"
        return f"# Incident report: run `{run_id}`\n\nThe run's journal is unreadable: {exc}\n"
