"""Words for people: ``failoverd explain`` output and scenario results.

Written for an on-call engineer at 3 a.m.: verdicts first, then what failoverd decided and
every reason, each in a plain sentence, with times as the policy writes them.
"""

from __future__ import annotations

from orchestrator.engine.expectations import Failure, phase_timeline
from orchestrator.engine.simulator import SimulationResult
from orchestrator.engine.state import Decision
from orchestrator.engine.vocabulary import REASON_TEXT, Action, Reason, View
from orchestrator.policy.durations import format_duration as fd


def describe_decision(d: Decision) -> str:
    if d.action in (Action.FAILOVER, Action.SWITCHOVER, Action.FAILBACK):
        who = "an operator" if d.initiated_by == "operator" else "the policy"
        return f"start a {d.action} from {d.active_region} to {d.target} (asked by {who})"
    if d.action is Action.AWAIT_APPROVAL:
        return f"wait for an operator to approve a failover to {d.target}"
    if d.action is Action.RECOMMEND:
        return f"recommend a move to {d.target}; a human must start it (advisory policy)"
    return "take no action"


def explain(result: SimulationResult, at: float) -> str:
    policy = result.policy
    moment = result.moment_at(at)
    lines = [
        f"{policy.service} at {fd(at)} — scenario {result.scenario.scenario!r}",
        f"primary {policy.primary}; active {result.state.active_region};"
        f" quorum {policy.detection.quorum} of vantage points",
        "",
        "Regions",
    ]
    for region in policy.regions:
        v = result.verdicts.get(region)
        if v is None:
            lines.append(f"  {region:<16} unknown (no evaluation yet)")
            continue
        tag = " (active)" if region == result.state.active_region else ""
        lines.append(f"  {region}{tag}: {v.verdict.upper()} since {fd(v.since)}")
        lines.append(
            f"    failing: {', '.join(v.failing) or '-'} | passing: {', '.join(v.passing) or '-'}"
            f" | unknown: {', '.join(v.unknown) or '-'}"
        )
        for vv in result.book.evidence(region, at):
            lines.append(f"    {vv.vantage:<12} {vv.view}")
            for s in vv.signals:
                lines.append(f"      {s.signal:<14} {_signal_words(s.view, s, at)}")
    if policy.replication is not None:
        lines += ["", f"Replication lag (RPO {fd(policy.rpo)})"]
        for region in policy.replication.sources:
            reading = result.lag.get(region)
            if reading is None or reading.seconds is None:
                lines.append(f"  {region}: unknown")
                continue
            age = at - reading.observed_at
            stale = " — too old, counts as unknown" if age > policy.replication.max_age else ""
            within = "within" if reading.seconds <= policy.rpo else "ABOVE"
            lines.append(
                f"  {region}: {fd(reading.seconds)} measured {fd(age)} ago, {within} the RPO{stale}"
            )
    lines += ["", "Decision"]
    if moment is None:
        lines.append("  none yet")
    else:
        d = moment.decision
        lines.append(f"  phase: {d.phase}")
        lines.append(f"  action: {describe_decision(d)}")
        if d.reasons:
            lines.append("  because:")
            for code in d.reasons:
                lines.append(f"    - {code}: {REASON_TEXT.get(Reason(code), code)}")
        for note in d.notes:
            lines.append(f"    note: {note}")
        if d.detected_at is not None and d.rto_remaining is not None:
            lines.append(
                f"  RTO: outage detected at {fd(d.detected_at)};"
                f" {fd(max(0.0, d.rto_remaining))} of {fd(policy.rto)} left"
                + (" — BUDGET EXCEEDED" if d.rto_remaining < 0 else "")
            )
    runs = [r for r in result.runs if r.started_at <= at]
    if runs:
        lines += ["", "Runs"]
        for r in runs:
            state = "running" if r.ok is None else ("completed" if r.ok else f"failed: {r.error}")
            lines.append(
                f"  {r.id} {r.kind} {r.source} -> {r.target} at {fd(r.started_at)}: {state}"
            )
            for name, start, end, outcome in r.steps:
                lines.append(f"    {name:<20} {fd(start)} -> {fd(end)} {outcome}")
    return "\n".join(lines)


def _signal_words(view: View, s: object, now: float) -> str:
    from orchestrator.engine.healthbook import NO_DATA, RECENT_FAILURE, STALE, SignalView

    assert isinstance(s, SignalView)
    if view is View.FAILING:
        since = f" since {fd(s.failing_since)}" if s.failing_since is not None else ""
        detail = s.detail or "failure"
        return f"failing ({detail}){since}, {s.consecutive_failures} failure(s) in a row"
    if view is View.PASSING:
        return f"passing, last seen {fd(now - (s.last_at or now))} ago"
    if s.detail == STALE:
        return f"unknown: nothing for {fd(now - (s.last_at or now))}"
    if s.detail == NO_DATA:
        return "unknown: no observation yet"
    if s.detail == RECENT_FAILURE:
        return f"unknown: failed {s.consecutive_failures} time(s), not yet the rule"
    return f"unknown: {s.detail}"


def format_failure(f: Failure) -> list[str]:
    return [
        f"    expected: {f.expected}",
        *(f"    actual:   {a}" if i == 0 else f"              {a}" for i, a in enumerate(f.actual)),
    ]


def timeline_text(result: SimulationResult) -> list[str]:
    return phase_timeline(result, limit=40)
