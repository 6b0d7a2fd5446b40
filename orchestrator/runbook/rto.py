"""RTO accounting: where a run stands against its recovery time objective.

The RTO clock starts at detection (the decision's ``detected_at``: when the active region
was first seen down). A run an operator asked for, with nothing detected, is measured from
the decision instead. ``rto_remaining`` is ``rto - elapsed`` and goes negative when the
budget is overrun (the overrun is a number worth showing, not a zero). Everything here is
computed from the journal alone, so a progress snapshot reads the same on any daemon
instance and after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.engine.state import RunStatus
from orchestrator.runbook.journal import (
    SUBSTEP_STATUSES,
    ProgressNote,
    RunJournal,
    StepHistory,
    StepStatus,
    UnknownStep,
    fold,
)
from orchestrator.store.base import JournalRecord, JournalStatus


@dataclass(frozen=True, slots=True)
class AttemptProgress:
    attempt: int
    started_at: float
    ended_at: float | None
    duration: float  # so far, while it runs
    error: str = ""
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class SubstepProgress:
    """A step of a step (an ARC Region switch plan's step), from the step's progress notes."""

    name: str
    kind: str  # e.g. the plan step's execution block type
    status: str  # one of journal.SUBSTEP_STATUSES
    started_at: float | None
    finished_at: float | None
    duration: float | None  # start to end (or to now while it runs)
    error: str = ""


_SUBSTEP_ENDED = frozenset({"succeeded", "failed", "skipped", "cancelled"})


def substeps(notes: Sequence[ProgressNote], end: float) -> tuple[SubstepProgress, ...]:
    """The sub-steps the notes speak of, in the order they first appeared, each with its
    latest status; a sub-step still going is measured up to ``end``."""
    seen: dict[str, dict[str, object]] = {}
    for note in notes:
        sub = note.detail.get("substep")
        if not isinstance(sub, dict):
            continue
        name, status = sub.get("name"), sub.get("status")
        if not isinstance(name, str) or status not in SUBSTEP_STATUSES:
            continue
        at = sub.get("at")
        when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else note.at
        entry = seen.setdefault(name, {"kind": "", "start": None, "end": None, "error": ""})
        entry["status"] = status
        if isinstance(sub.get("kind"), str) and sub["kind"]:
            entry["kind"] = sub["kind"]
        if entry["start"] is None:
            entry["start"] = when
        if status in _SUBSTEP_ENDED:
            entry["end"] = when
            if isinstance(sub.get("error"), str):
                entry["error"] = sub["error"]
        else:
            entry["end"] = None
    out = []
    for name, e in seen.items():
        start = e["start"] if isinstance(e["start"], float) else None
        stop = e["end"] if isinstance(e["end"], float) else None
        duration = None if start is None else (stop if stop is not None else end) - start
        out.append(
            SubstepProgress(
                name=name,
                kind=str(e["kind"]),
                status=str(e["status"]),
                started_at=start,
                finished_at=stop,
                duration=None if duration is None else max(duration, 0.0),
                error=str(e["error"]),
            )
        )
    return tuple(out)


def latest_note(notes: Sequence[ProgressNote]) -> str:
    for note in reversed(notes):
        text = note.detail.get("note")
        if isinstance(text, str) and text:
            return text
    return ""


@dataclass(frozen=True, slots=True)
class StepProgress:
    name: str
    action: str
    after: tuple[str, ...]
    status: StepStatus
    attempts: tuple[AttemptProgress, ...]
    started_at: float | None
    finished_at: float | None
    duration: float | None  # first start to end (or to now while running), backoffs included
    error: str = ""
    detail: str = ""
    # What the step's progress notes say: its own steps (an ARC Region switch plan's), the
    # sub-steps waiting for an operator's approval, and the latest note.
    substeps: tuple[SubstepProgress, ...] = ()
    awaiting_approval: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class RunProgress:
    """One run, as the API, the status page and the metrics show it."""

    run_id: str
    service: str
    kind: str
    source: str
    target: str
    policy_version: str
    status: RunStatus
    error: str
    steps: tuple[StepProgress, ...]
    detected_at: float | None
    decided_at: float
    started_at: float
    finished_at: float | None
    rto: float
    elapsed: float  # since detection (or the decision), to the end or to now
    rto_remaining: float  # rto - elapsed; negative when overrun
    # Records of the run the store could not read (status corrupt: key in detail, error):
    # shown, and the progress built without them.
    corrupt: tuple[JournalRecord, ...] = ()

    @property
    def rto_exceeded(self) -> bool:
        return self.rto_remaining < 0

    def step(self, name: str) -> StepProgress:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


def rto_clock_start(detected_at: float | None, decided_at: float) -> float:
    return decided_at if detected_at is None else detected_at


def rto_remaining(rto: float, detected_at: float | None, decided_at: float, now: float) -> float:
    """``rto - (now - detection)``: the budget left at ``now``."""
    return rto - (now - rto_clock_start(detected_at, decided_at))


_STEP_RECORDS = frozenset(
    {
        JournalStatus.STEP_STARTED,
        JournalStatus.STEP_SUCCEEDED,
        JournalStatus.STEP_FAILED,
        JournalStatus.STEP_SKIPPED,
        JournalStatus.STEP_PROGRESS,
    }
)


def progress_from_records(records: Sequence[JournalRecord], now: float) -> RunProgress:
    """A snapshot of the run at ``now`` (wall clock) from its journal records; a run whose
    ``run_started`` is corrupt gets what the other records tell (:func:`headless_progress`)."""
    if records and records[0].status is JournalStatus.CORRUPT:
        return headless_progress(records, now)
    return build_progress(fold(records), now)


def headless_progress(records: Sequence[JournalRecord], now: float) -> RunProgress:
    """The run as far as its records tell without its plan (``run_started`` is corrupt):
    the steps in the order they were journaled (action and RTO unknown), its end if it
    has one, every corrupt record listed. Shown, never resumed from."""
    first = records[0]
    readable = [r for r in records if r.status is not JournalStatus.CORRUPT]
    ends = (JournalStatus.RUN_SUCCEEDED, JournalStatus.RUN_FAILED)
    finished = next((r for r in reversed(readable) if r.status in ends), None)
    end = finished.at if finished is not None else now
    histories: dict[str, StepHistory] = {}
    for r in readable:
        if r.step and r.status in _STEP_RECORDS:
            history = histories.setdefault(r.step, StepHistory(r.step))
            history.apply(r, UnknownStep())
    status, error = _outcome(finished)
    started = readable[0].at if readable else first.at
    return RunProgress(
        run_id=first.run_id,
        service=first.service or (readable[0].service if readable else ""),
        kind="unknown",
        source="",
        target="",
        policy_version=readable[0].policy_version if readable else "",
        status=status,
        error=error or f"the run's plan (run_started) is corrupt: {first.error}",
        steps=tuple(_step(h, "", (), end) for h in histories.values()),
        detected_at=None,
        decided_at=started,
        started_at=started,
        finished_at=None if finished is None else finished.at,
        rto=0.0,
        elapsed=end - started,
        rto_remaining=0.0,
        corrupt=tuple(r for r in records if r.status is JournalStatus.CORRUPT),
    )


def _outcome(finished: JournalRecord | None) -> tuple[RunStatus, str]:
    if finished is None:
        return RunStatus.RUNNING, ""
    if finished.status is JournalStatus.RUN_SUCCEEDED:
        return RunStatus.SUCCEEDED, ""
    return RunStatus.FAILED, finished.error


def _step(history: StepHistory, action: str, after: tuple[str, ...], end: float) -> StepProgress:
    """One step's progress; times still running are counted up to ``end``."""
    attempts = tuple(
        AttemptProgress(
            a.attempt,
            a.started_at,
            a.ended_at,
            (a.ended_at if a.ended_at is not None else end) - a.started_at,
            a.error,
            a.retryable,
        )
        for a in history.attempts
    )
    started, ended = history.started_at, history.finished_at
    duration = None if started is None else (ended if ended is not None else end) - started
    return StepProgress(
        name=history.name,
        action=action,
        after=after,
        status=history.status,
        attempts=attempts,
        started_at=started,
        finished_at=ended,
        duration=duration,
        error=history.error,
        detail=history.detail,
        substeps=substeps(history.progress, end),
        awaiting_approval=history.awaiting_approval,
        note=latest_note(history.progress),
    )


def build_progress(journal: RunJournal, now: float) -> RunProgress:
    header = journal.header
    finished = journal.finished
    end = finished.at if finished is not None else now
    status, error = _outcome(finished)
    steps = [
        _step(journal.steps[step.name], step.action, tuple(step.after), end)
        for step in header.steps
    ]
    elapsed = end - rto_clock_start(header.detected_at, header.decided_at)
    return RunProgress(
        run_id=header.run_id,
        service=header.service,
        kind=header.kind,
        source=header.source,
        target=header.target,
        policy_version=header.policy_version,
        status=status,
        error=error,
        steps=tuple(steps),
        detected_at=header.detected_at,
        decided_at=header.decided_at,
        started_at=header.started_at,
        finished_at=None if finished is None else finished.at,
        rto=header.rto,
        elapsed=elapsed,
        rto_remaining=header.rto - elapsed,
        corrupt=journal.corrupt,
    )
