"""Checking a simulation against a scenario's expectations, with readable diffs.

A run whose target is the policy's primary region is a *failback*; every other run is a
*failover* (operator-started runs count like automatic ones, SCENARIOS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.engine.scenario import Expectation
from orchestrator.engine.simulator import RunRecord, SimulationResult
from orchestrator.policy.durations import format_duration as fd

_EPS = 1e-9


@dataclass(frozen=True)
class Failure:
    expected: str
    actual: list[str]


def check(result: SimulationResult) -> list[Failure]:
    return [f for x in result.scenario.expect if (f := _check_one(result, x)) is not None]


def _runs(result: SimulationResult, failback: bool) -> list[RunRecord]:
    return [r for r in result.runs if r.is_failback == failback]


def _describe_run(r: RunRecord) -> str:
    how = "by an operator" if r.initiated_by == "operator" else "automatically"
    kind = "failback" if r.is_failback else str(r.kind)
    out = f"{fd(r.started_at)}: {kind} {r.source} -> {r.target} started {how}"
    if r.ok is True and r.finished_at is not None:
        out += f", completed at {fd(r.finished_at)}"
    elif r.ok is False:
        out += f", failed at {fd(r.finished_at or 0)} ({r.error})"
    return out


def _runs_summary(result: SimulationResult, failback: bool) -> list[str]:
    runs = _runs(result, failback)
    if not runs:
        return [f"no {'failback' if failback else 'failover'} run started"]
    return [_describe_run(r) for r in runs]


def phase_timeline(result: SimulationResult, limit: int = 12) -> list[str]:
    """Change points of (phase, reasons, active region): what happened, compactly."""
    out: list[str] = []
    last: tuple[object, ...] | None = None
    for m in result.moments:
        d = m.decision
        key = (d.phase, d.reasons, m.active_region)
        if key != last:
            reasons = f" [{', '.join(d.reasons)}]" if d.reasons else ""
            out.append(f"{fd(m.at)} {d.phase}{reasons} (active {m.active_region})")
            last = key
    if len(out) > limit:
        out = [*out[: limit // 2], f"... {len(out) - limit} more changes ...", *out[-limit // 2 :]]
    return out


def _in(t: float, lo: float, hi: float) -> bool:
    return lo - _EPS <= t <= hi + _EPS


def _check_one(result: SimulationResult, x: Expectation) -> Failure | None:
    if x.failover is not None:
        lo, hi = x.failover.between or (0.0, result.scenario.duration)
        to = x.failover.to
        ok = any(
            _in(r.started_at, lo, hi) and (to is None or r.target == to)
            for r in _runs(result, failback=False)
        )
        if ok:
            return None
        return Failure(
            f"failover{' to ' + to if to else ''} starting between {fd(lo)} and {fd(hi)}",
            [*_runs_summary(result, False), "timeline:", *phase_timeline(result)],
        )
    if x.no_failover is not None:
        lo = x.no_failover.after if x.no_failover.after is not None else 0.0
        hi = x.no_failover.before if x.no_failover.before is not None else float("inf")
        bad = [r for r in _runs(result, failback=False) if lo - _EPS <= r.started_at < hi - _EPS]
        if not bad:
            return None
        span = "ever"
        if x.no_failover.after is not None or x.no_failover.before is not None:
            span = f"from {fd(lo)}" + (f" until {fd(hi)}" if hi != float("inf") else "")
        return Failure(
            f"no failover {span}",
            [*(_describe_run(r) for r in bad), "timeline:", *phase_timeline(result)],
        )
    if x.failovers is not None:
        n = len(_runs(result, failback=False))
        if x.failovers.max is not None and n <= x.failovers.max:
            return None
        if x.failovers.count is not None and n == x.failovers.count:
            return None
        want = (
            f"at most {x.failovers.max}"
            if x.failovers.max is not None
            else f"exactly {x.failovers.count}"
        )
        return Failure(f"{want} failover run(s)", [f"{n} started:", *_runs_summary(result, False)])
    if x.failback is not None:
        runs = _runs(result, failback=True)
        if x.failback.between is None:
            if not runs:
                return None
            return Failure("no failback ever", _runs_summary(result, True))
        lo, hi = x.failback.between
        if any(_in(r.started_at, lo, hi) for r in runs):
            return None
        return Failure(
            f"failback starting between {fd(lo)} and {fd(hi)}",
            [*_runs_summary(result, True), "timeline:", *phase_timeline(result)],
        )
    if x.phase is not None:
        m = result.moment_at(x.phase.at)
        want = f"phase {x.phase.is_} at {fd(x.phase.at)}"
        if x.phase.reason is not None:
            want += f" with reason {x.phase.reason}"
        if m is None:
            return Failure(want, ["no decision by then"])
        d = m.decision
        if d.phase == x.phase.is_ and (x.phase.reason is None or x.phase.reason in d.reasons):
            return None
        reasons = ", ".join(d.reasons) or "none"
        return Failure(
            want,
            [
                f"{fd(x.phase.at)}: phase {d.phase}, reasons [{reasons}], active {m.active_region}",
                "timeline:",
                *phase_timeline(result),
            ],
        )
    if x.active_region is not None:
        m = result.moment_at(x.active_region.at)
        want = f"active region {x.active_region.is_} at {fd(x.active_region.at)}"
        if m is not None and m.active_region == x.active_region.is_:
            return None
        actual = f"{fd(x.active_region.at)}: active {m.active_region}" if m else "no moment by then"
        return Failure(want, [actual, *_runs_summary(result, False), *_runs_summary(result, True)])
    return None  # pragma: no cover - the model admits no other expectation
