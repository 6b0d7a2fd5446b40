"""What a run's journal says: its header (the plan it runs) and each step's history.

The ``run_started`` record carries the whole plan in its ``detail`` (JSON): the steps as they
were when the run began, the regions, the RTO and the decision's times. A resumed run is
rebuilt from that record alone, so a policy reload between a crash and the restart cannot
change the steps of a run already under way, and ``progress`` needs nothing but the journal.

Folding a run's records (in append order) gives each step's state:

* no record                         -> ``pending``
* ``step_started`` last             -> ``running`` (after a crash: interrupted)
* ``step_succeeded`` last           -> ``succeeded``
* ``step_failed`` last, retryable, with retries left -> ``retrying``
* ``step_failed`` last otherwise    -> ``failed``
* ``step_skipped``                  -> ``skipped``

Only failed attempts count against a step's ``retries``: an attempt cut short by a crash or
a leader change was not the step's fault, and is re-entered through the idempotent action.

An operator's abort of the run is an ``operator_command`` record (``abort``) in the run's own
journal, its ``error`` the run's error to be (``aborted by alice: wrong region``): folded into
:attr:`RunJournal.aborted`, so that a run resumed after a crash mid-abort ends as aborted
instead of re-entering its steps.

``step_progress`` records leave a step's state alone: they are notes an action journals while
it works (:attr:`~orchestrator.actions.base.StepContext.progress`), kept in the step's
``progress`` in order. Their ``detail`` is a JSON object; these keys mean something to the
executor, the API, the status page, the metrics and the report (an action may add its own):

* ``note``: a line for humans (``execution 4f2a… in us-west-2, ungraceful``);
* ``substep``: ``{"name", "status", "at", "kind"?, "error"?}``, a step of the step's own
  changed status (the steps of an ARC Region switch plan); ``status`` is one of
  :data:`SUBSTEP_STATUSES`, ``at`` epoch seconds of the change as the source reports it;
* ``awaiting_approval``: the name of a sub-step that waits for an operator's approval
  (``failoverd approve``; recorded under the key ``<step>/<sub-step>``, see
  :func:`approval_key`); ``approved`` (with ``by`` and ``reason``): that approval was passed on.

A record the store could not decode (status ``corrupt``) is set aside (``RunJournal.corrupt``)
and the rest folded without it: a lost ``step_succeeded`` leaves its step running, so a
resume re-enters it through the idempotent action; a lost ``step_started`` or
``step_failed`` changes an attempt count, not what is done. Only a corrupt ``run_started``
(the plan) makes a run unreadable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from orchestrator.engine.state import Command
from orchestrator.policy.models import Step
from orchestrator.store.base import JournalRecord, JournalStatus

HEADER_VERSION = 1
ABORT = Command.ABORT.value  # the kind of an operator's abort record in a run's journal
SUBSTEP_STATUSES = ("running", "waiting_approval", "succeeded", "failed", "skipped", "cancelled")


class JournalError(Exception):
    """A run's journal cannot be read back (missing or malformed ``run_started``)."""


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


FINAL_STEP_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


@dataclass(frozen=True)
class RunHeader:
    """The plan of a run, as journaled in its ``run_started`` record."""

    run_id: str
    service: str
    kind: str
    source: str
    target: str
    primary: str
    policy_version: str
    rto: float
    decided_at: float
    detected_at: float | None
    steps: tuple[Step, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # the run_started record's time (set when read back)

    def detail(self) -> str:
        return json.dumps(
            {
                "v": HEADER_VERSION,
                "primary": self.primary,
                "rto": self.rto,
                "decided_at": self.decided_at,
                "detected_at": self.detected_at,
                "facts": dict(self.facts),
                "steps": [s.model_dump(mode="json") for s in self.steps],
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @classmethod
    def from_record(cls, record: JournalRecord) -> RunHeader:
        if record.status is not JournalStatus.RUN_STARTED:
            raise JournalError(
                f"run {record.run_id}: first record is {record.status.value}, not run_started"
            )
        try:
            data = json.loads(record.detail)
            if data.get("v") != HEADER_VERSION:
                raise JournalError(
                    f"run {record.run_id}: run_started header version {data.get('v')!r}, "
                    f"expected {HEADER_VERSION}"
                )
            steps = tuple(Step.model_validate(s) for s in data["steps"])
            detected = data["detected_at"]
            return cls(
                run_id=record.run_id,
                service=record.service,
                kind=record.kind,
                source=record.source_region,
                target=record.target_region,
                primary=str(data["primary"]),
                policy_version=record.policy_version,
                rto=_number(data["rto"]),
                decided_at=_number(data["decided_at"]),
                detected_at=None if detected is None else _number(detected),
                steps=steps,
                facts=dict(data.get("facts") or {}),
                started_at=record.at,
            )
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise JournalError(
                f"run {record.run_id}: unreadable run_started header: {exc}"
            ) from exc


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def approval_key(step: str, substep: str) -> str:
    """The approval store's key for an operator's approval of ``substep`` of ``step``."""
    return f"{step}/{substep}"


def _progress_detail(text: str) -> dict[str, Any]:
    """A progress record's detail as a JSON object; anything else is kept as a note."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"note": text}
    return value if isinstance(value, dict) else {"note": text}


@dataclass(frozen=True)
class ProgressNote:
    """One ``step_progress`` record of a step: when, in which attempt, and its detail."""

    at: float
    attempt: int
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    started_at: float
    ended_at: float | None = None
    error: str = ""
    retryable: bool = False


@dataclass(frozen=True)
class UnknownStep:
    """A step known only from its records (its plan lost): no retries assumed."""

    retries: int = 0


@dataclass
class StepHistory:
    """One step's journal, folded (mutable while folding; the executor keeps it current)."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: list[AttemptRecord] = field(default_factory=list)
    failed_attempts: int = 0
    error: str = ""
    retryable: bool = False
    detail: str = ""
    skipped_at: float | None = None
    progress: list[ProgressNote] = field(default_factory=list)

    @property
    def last_attempt(self) -> int:
        return self.attempts[-1].attempt if self.attempts else 0

    @property
    def started_at(self) -> float | None:
        return self.attempts[0].started_at if self.attempts else None

    @property
    def finished_at(self) -> float | None:
        if self.status is StepStatus.SKIPPED:
            return self.skipped_at
        if self.status in FINAL_STEP_STATUSES and self.attempts:
            return self.attempts[-1].ended_at
        return None

    @property
    def awaiting_approval(self) -> tuple[str, ...]:
        """The sub-steps waiting for an operator's approval now, in the order they began to."""
        if self.status in FINAL_STEP_STATUSES:
            return ()
        waiting: dict[str, None] = {}
        for note in self.progress:
            name = note.detail.get("awaiting_approval")
            if isinstance(name, str):
                waiting[name] = None
            for key in ("approved",):
                done = note.detail.get(key)
                if isinstance(done, str):
                    waiting.pop(done, None)
            sub = note.detail.get("substep")
            if isinstance(sub, dict) and sub.get("status") != "waiting_approval":
                name = sub.get("name")
                if isinstance(name, str):
                    waiting.pop(name, None)
        return tuple(waiting)

    def apply(self, record: JournalRecord, step: Step | UnknownStep) -> None:
        status = record.status
        if status is JournalStatus.STEP_PROGRESS:
            note = ProgressNote(record.at, record.attempt, _progress_detail(record.detail))
            self.progress.append(note)
            return
        if status is JournalStatus.STEP_STARTED:
            self.attempts.append(AttemptRecord(record.attempt, record.at))
            self.status = StepStatus.RUNNING
            return
        if status is JournalStatus.STEP_SKIPPED:
            self.status = StepStatus.SKIPPED
            self.skipped_at = record.at
            self.error = record.error
            return
        if self.attempts and self.attempts[-1].ended_at is None:
            last = self.attempts[-1]
            self.attempts[-1] = AttemptRecord(
                last.attempt, last.started_at, record.at, record.error, record.retryable
            )
        self.error = record.error
        self.retryable = record.retryable
        self.detail = record.detail
        if status is JournalStatus.STEP_SUCCEEDED:
            self.status = StepStatus.SUCCEEDED
        else:
            self.failed_attempts += 1
            retry_left = record.retryable and self.failed_attempts <= step.retries
            self.status = StepStatus.RETRYING if retry_left else StepStatus.FAILED


@dataclass(frozen=True)
class RunJournal:
    """A run's records, folded."""

    header: RunHeader
    steps: Mapping[str, StepHistory]
    finished: JournalRecord | None  # the run_succeeded / run_failed record, if any
    records: Sequence[JournalRecord]
    aborted: str | None = None  # an operator's abort of the run: the run's error
    corrupt: tuple[JournalRecord, ...] = ()  # records that could not be read, set aside


_STEP_STATUSES = frozenset(
    {
        JournalStatus.STEP_PROGRESS,
        JournalStatus.STEP_STARTED,
        JournalStatus.STEP_SUCCEEDED,
        JournalStatus.STEP_FAILED,
        JournalStatus.STEP_SKIPPED,
    }
)


def fold(records: Sequence[JournalRecord]) -> RunJournal:
    """Rebuild a run from its records (append order); JournalError when it has no header."""
    if not records:
        raise JournalError("empty journal: no run_started record")
    if records[0].status is JournalStatus.CORRUPT:
        raise JournalError(
            f"run {records[0].run_id}: its run_started record is corrupt ({records[0].detail}):"
            f" {records[0].error}"
        )
    header = RunHeader.from_record(records[0])
    steps = {s.name: StepHistory(s.name) for s in header.steps}
    finished: JournalRecord | None = None
    aborted: str | None = None
    corrupt: list[JournalRecord] = []
    for record in records[1:]:
        if record.status is JournalStatus.CORRUPT:
            corrupt.append(record)
        elif record.status in _STEP_STATUSES:
            history = steps.get(record.step)
            if history is None:
                raise JournalError(f"run {header.run_id}: record for unknown step {record.step!r}")
            history.apply(record, header.step(record.step))
        elif record.status in (JournalStatus.RUN_SUCCEEDED, JournalStatus.RUN_FAILED):
            finished = record
        elif record.status is JournalStatus.OPERATOR_COMMAND and record.kind == ABORT:
            aborted = aborted or record.error or "aborted by an operator"
    return RunJournal(header, steps, finished, tuple(records), aborted, tuple(corrupt))
