"""What a policy change does to a scenario: the pure part of ``failoverd diff``.

Two simulations of one scenario, under the old and the new version of its policy, are
compared moment by moment: the first time the engine's decisions differ (phase, action,
target, reasons, who initiated it, the active region), and the runs each one started.
Everything here works on :class:`SimulationResult` values; reading policies from files or git
and printing live in :mod:`orchestrator.cli.diff`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.engine.expectations import Failure
from orchestrator.engine.simulator import Moment, RunRecord, SimulationResult
from orchestrator.policy.durations import format_duration


class Status(StrEnum):
    SAME = "same"
    CHANGED = "changed"  # decisions differ
    ADDED = "added"  # the service has a policy only in the new version
    REMOVED = "removed"  # ... only in the old one
    INVALID = "invalid"  # the scenario cannot run under either version


class Outcome(StrEnum):
    """A scenario's expectations under one version of its policy."""

    PASS = "pass"
    FAIL = "fail"
    INVALID = "invalid"  # the scenario does not fit that policy (an unknown region...)
    ABSENT = "absent"  # no policy for the service in that version


@dataclass(frozen=True, slots=True)
class DecisionView:
    """What the diff compares of a decision."""

    phase: str
    action: str
    target: str | None
    reasons: tuple[str, ...]
    initiated_by: str
    active_region: str

    @classmethod
    def of(cls, moment: Moment) -> DecisionView:
        d = moment.decision
        return cls(
            phase=str(d.phase),
            action=str(d.action),
            target=d.target,
            reasons=tuple(str(r) for r in d.reasons),
            initiated_by=str(d.initiated_by),
            active_region=moment.active_region,
        )

    def text(self) -> str:
        move = f"{self.action} -> {self.target}" if self.target else self.action
        reasons = ", ".join(self.reasons) or "-"
        return f"{self.phase}: {move} [{reasons}] (active {self.active_region})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "action": self.action,
            "target": self.target,
            "reasons": list(self.reasons),
            "initiated_by": self.initiated_by,
            "active_region": self.active_region,
        }


@dataclass(frozen=True, slots=True)
class RunView:
    kind: str
    source: str
    target: str
    started_at: float
    initiated_by: str
    finished_at: float | None
    ok: bool | None

    @classmethod
    def of(cls, run: RunRecord) -> RunView:
        kind = "failback" if run.is_failback else str(run.kind)
        return cls(
            kind, run.source, run.target, run.started_at, run.initiated_by, run.finished_at, run.ok
        )

    def text(self) -> str:
        how = "by an operator" if self.initiated_by == "operator" else "automatically"
        out = f"{format_duration(self.started_at)} {self.kind} {self.source} -> {self.target} {how}"
        if self.finished_at is not None:
            end = "completed" if self.ok else "failed"
            out += f", {end} at {format_duration(self.finished_at)}"
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "started_at": self.started_at,
            "initiated_by": self.initiated_by,
            "finished_at": self.finished_at,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class Difference:
    """The first moment at which the two versions decide differently."""

    at: float
    old: DecisionView | None
    new: DecisionView | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "at_text": format_duration(self.at),
            "old": None if self.old is None else self.old.as_dict(),
            "new": None if self.new is None else self.new.as_dict(),
        }


def first_difference(old: SimulationResult, new: SimulationResult) -> Difference | None:
    """The first time at which the decisions of ``old`` and ``new`` differ, or None when
    they agree all along. Each result holds its decision from one judged moment to the next
    (the simulator's contract), so comparing at every moment either judged is exact."""
    times = sorted({m.at for m in old.moments} | {m.at for m in new.moments})
    for t in times:
        a, b = old.moment_at(t), new.moment_at(t)
        va = None if a is None else DecisionView.of(a)
        vb = None if b is None else DecisionView.of(b)
        if va != vb:
            return Difference(t, va, vb)
    runs_a = [RunView.of(r) for r in old.runs]
    runs_b = [RunView.of(r) for r in new.runs]
    if runs_a != runs_b:
        # Same decisions at every moment yet different runs (not expected: a run's end moves
        # the active region): the first run that differs is the difference.
        pairs = zip(runs_a, runs_b, strict=False)
        starts = [min(a.started_at, b.started_at) for a, b in pairs if a != b]
        longer = runs_a if len(runs_a) > len(runs_b) else runs_b
        starts += [r.started_at for r in longer[min(len(runs_a), len(runs_b)) :]]
        return _at(old, new, min(starts))
    return None


def _at(old: SimulationResult, new: SimulationResult, t: float) -> Difference:
    a, b = old.moment_at(t), new.moment_at(t)
    return Difference(
        t,
        None if a is None else DecisionView.of(a),
        None if b is None else DecisionView.of(b),
    )


@dataclass(frozen=True)
class ScenarioDiff:
    """One scenario under both versions."""

    file: str
    name: str
    service: str
    status: Status
    difference: Difference | None = None
    old_runs: tuple[RunView, ...] = ()
    new_runs: tuple[RunView, ...] = ()
    old_outcome: Outcome = Outcome.ABSENT
    new_outcome: Outcome = Outcome.ABSENT
    new_failures: tuple[Failure, ...] = ()
    problems: tuple[str, ...] = ()  # why a version could not run it

    @property
    def changed(self) -> bool:
        return self.status is not Status.SAME

    @property
    def failing(self) -> bool:
        """Its expectations do not hold under the new version (or it cannot run there)."""
        return self.new_outcome in (Outcome.FAIL, Outcome.INVALID)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "service": self.service,
            "status": str(self.status),
            "first_difference": None if self.difference is None else self.difference.as_dict(),
            "runs": {
                "old": [r.as_dict() for r in self.old_runs],
                "new": [r.as_dict() for r in self.new_runs],
            },
            "expectations": {"old": str(self.old_outcome), "new": str(self.new_outcome)},
            "failures": [{"expected": f.expected, "actual": f.actual} for f in self.new_failures],
            "problems": list(self.problems),
        }


def compare_results(
    file: str,
    name: str,
    service: str,
    old: SimulationResult,
    new: SimulationResult,
    old_failures: list[Failure],
    new_failures: list[Failure],
) -> ScenarioDiff:
    """Both versions ran the scenario."""
    difference = first_difference(old, new)
    return ScenarioDiff(
        file=file,
        name=name,
        service=service,
        status=Status.SAME if difference is None else Status.CHANGED,
        difference=difference,
        old_runs=tuple(RunView.of(r) for r in old.runs),
        new_runs=tuple(RunView.of(r) for r in new.runs),
        old_outcome=Outcome.FAIL if old_failures else Outcome.PASS,
        new_outcome=Outcome.FAIL if new_failures else Outcome.PASS,
        new_failures=tuple(new_failures),
    )


@dataclass(frozen=True)
class Summary:
    scenarios: int
    changed: int
    now_failing: int
    skipped: int = 0

    def text(self) -> str:
        out = f"{self.scenarios} scenarios, {self.changed} changed, {self.now_failing} now failing"
        if self.skipped:
            out += f" ({self.skipped} skipped: no policy for their service in either version)"
        return out

    def as_dict(self) -> dict[str, int]:
        return {
            "scenarios": self.scenarios,
            "changed": self.changed,
            "now_failing": self.now_failing,
            "skipped": self.skipped,
        }


def summarize(diffs: list[ScenarioDiff], skipped: int = 0) -> Summary:
    return Summary(
        scenarios=len(diffs),
        changed=sum(1 for d in diffs if d.changed),
        now_failing=sum(1 for d in diffs if d.failing),
        skipped=skipped,
    )
