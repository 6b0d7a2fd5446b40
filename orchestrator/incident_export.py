"""A recorded incident as a scenario file: what ``failoverd scenario export`` writes.

The flight recorder's files (:mod:`orchestrator.daemon.flight_recorder`) are read back for one
service and one time window (:func:`read_recording`): the state at the window's start comes
from the file that covers it (its snapshot, then the records up to the start), then every
record inside the window. :func:`to_scenario` turns that into a scenario in the documented
format (SCENARIOS.md), time 0 being the window's start:

* what was observed becomes facts: each cell's state changes become ``probes`` facts for that
  signal and vantage point (``up``, ``down``, ``slow``; a silence long enough to make the view
  stale becomes ``unknown``), AWS Health observations ``aws_health`` / ``aws_health_api``
  facts, alarms ``alarm`` facts, lag readings ``lag`` facts (``frozen`` when the metric had
  stopped), operator commands ``operator`` facts (with who and why), the leader lease
  ``leader`` facts, and each run's steps ``step`` facts (how long each took, which failed or
  hung);
* the service's state at the start becomes ``start`` (active region, pause, the cooldown's
  start, earlier moves);
* what the daemon decided becomes the expectations: each run it started (failover or failback,
  to which region, within a tolerance), how many, the phase in the middle of every phase that
  lasted long enough, and the active region at the end.

The tolerance: in the daemon each vantage point probes on its own schedule; replayed, every
cell is observed on the policy's interval from time 0 (a change from the moment it reached
the daemon), so a change is seen up to one interval later, and a decision may move by about
as much; and the daemon itself may have decided later than its data allowed (a busy loop, a
slow store). A run is expected from twice the tolerance before the daemon's start to the
tolerance after it, the tolerance being two intervals and a tick; phases are checked only in
the middle of spans longer than twice the tolerance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.daemon.flight_recorder import INCIDENTS, read_incidents, read_lines, segments
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import FailureKind
from orchestrator.engine.state import ServiceState
from orchestrator.engine.vocabulary import RUN_ACTIONS, Action
from orchestrator.policy.actions import APPROVAL_ACTION
from orchestrator.policy.durations import format_duration
from orchestrator.policy.models import (
    AWS_HEALTH_VANTAGE,
    CLOUDWATCH_VANTAGE,
    PROBE_TYPES,
    AwsHealthSignal,
    CloudWatchAlarmSignal,
    Policy,
)
from orchestrator.store.base import CorruptRecord
from orchestrator.store.codec import decode_state

MAX_PHASE_CHECKS = 24


class ExportError(Exception):
    """Nothing (usable) recorded for what was asked; the message says what is there."""


Cell = tuple[str, str, str]


@dataclass
class Recording:
    """One service's record over [since, until]: the state at ``since`` and what followed."""

    service: str
    since: float
    until: float
    node: str = ""
    tick: float = 1.0
    cells: dict[Cell, tuple[float, bool | None, str]] = field(default_factory=dict)
    lag: dict[str, tuple[float | None, float, float]] = field(default_factory=dict)  # sec, at, read
    leader: bool = True
    state: ServiceState | None = None
    decision: dict[str, Any] | None = None  # the last one before ``since``
    records: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # later files' first lines
    policy_versions: set[str] = field(default_factory=set)
    restarts: list[float] = field(default_factory=list)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def incidents(folder: Path, service: str) -> list[tuple[float, float | None]]:
    return read_incidents(folder / service / INCIDENTS)


def recorded_services(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def find_run(folder: Path, service: str, run_id: str) -> dict[str, Any] | None:
    for _, path in segments(folder / service):
        for record in read_lines(path):
            if record.get("k") == "run" and record.get("id") == run_id:
                return record
    return None


def read_recording(folder: Path, service: str, since: float, until: float) -> Recording:
    files = segments(folder / service)
    if not files:
        raise ExportError(f"nothing recorded for service {service!r} in {folder}")
    first = max((i for i, (start, _) in enumerate(files) if start <= since), default=None)
    from_start = first is None
    if first is None:
        # The window begins before the record: take it from its very beginning. The first
        # file starts with what was queued before it was cut (the daemon's first decisions
        # and observations, each cell's first): those are the start, not its snapshot.
        first = 0
        early = [
            at
            for r in read_lines(files[0][1])
            if r.get("k") != "segment" and (at := _number(r.get("at"))) is not None
        ]
        since = min([files[0][0], *early])
    if files[first][0] > until:
        raise ExportError(
            f"the record of {service!r} begins at {iso(files[0][0])}, after --until {iso(until)}"
        )
    since = max(since, files[first][0]) if not from_start else since
    rec = Recording(service, since, until)
    for index, (start, path) in enumerate(files[first:]):
        if start > until:
            break
        for record in read_lines(path):
            kind = record.get("k")
            at = _number(record.get("at"))
            if at is None:
                continue
            if kind == "segment":
                _snapshot(rec, record, apply=index == 0 and not from_start, first=index == 0)
                if (index > 0 or from_start) and at <= until:
                    rec.snapshots.append(record)
                continue
            if at <= since and not from_start:
                _apply(rec, record)
            elif at <= until:
                rec.records.append(record)
    rec.records.sort(key=lambda r: float(r["at"]))
    if from_start:
        # The service's state before its first decision: what the daemon loaded.
        first_state = next((r.get("state") for r in rec.records if r.get("k") == "dec"), None)
        rec.state = _state(first_state) or rec.state
    return rec


def _snapshot(
    rec: Recording, header: Mapping[str, Any], *, apply: bool, first: bool = False
) -> None:
    version = header.get("policy_version")
    if isinstance(version, str) and version:
        rec.policy_versions.add(version)
    at = _number(header.get("at")) or 0.0
    if header.get("restart") and at > rec.since:
        rec.restarts.append(at)
    if first:
        rec.node = str(header.get("node") or "")
        rec.tick = _number(header.get("tick")) or 1.0
    if not apply:
        return
    rec.leader = bool(header.get("leader", True))
    for cell in header.get("cells") or ():
        if isinstance(cell, list) and len(cell) == 6:
            region, signal, vantage, seen, ok, detail = cell
            if _number(seen) is not None:
                rec.cells[(str(region), str(signal), str(vantage))] = (
                    float(seen),
                    ok if isinstance(ok, bool) else None,
                    str(detail or ""),
                )
    for item in header.get("lag") or ():
        if isinstance(item, list) and len(item) in (3, 4) and _number(item[2]) is not None:
            read = _number(item[3]) if len(item) == 4 else None
            rec.lag[str(item[0])] = (_number(item[1]), float(item[2]), read or at)
    rec.state = _state(header.get("state")) or rec.state


def _state(doc: Any) -> ServiceState | None:
    if not isinstance(doc, dict):
        return None
    try:
        return decode_state(json.dumps(doc))
    except CorruptRecord:
        return None


def _apply(rec: Recording, record: Mapping[str, Any]) -> None:
    """A record before the window: it only moves the state at the window's start."""
    kind = record.get("k")
    at = float(record["at"])
    if kind == "obs":
        cell = (str(record.get("r")), str(record.get("s")), str(record.get("v")))
        ok = record.get("ok")
        rec.cells[cell] = (at, ok if isinstance(ok, bool) else None, str(record.get("d") or ""))
    elif kind == "lag":
        seen = _number(record.get("obs"))
        if seen is not None:
            rec.lag[str(record.get("r"))] = (_number(record.get("sec")), seen, at)
    elif kind == "leader":
        rec.leader = bool(record.get("on"))
    elif kind == "dec":
        rec.decision = dict(record)
        rec.state = _state(record.get("state")) or rec.state


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- to a scenario ----------------------------------------------------------------------------


def _probe_state(ok: bool | None, detail: str) -> str:
    if ok is None:
        return "unknown"
    if ok:
        return "up"
    return "slow" if detail == FailureKind.TIMEOUT else "down"


@dataclass
class _Facts:
    since: float
    entries: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, at: float, entry: dict[str, Any]) -> None:
        ms = max(0, round((at - self.since) * 1000))
        self.entries.append((ms, len(self.entries), entry))

    def timeline(self) -> list[dict[str, Any]]:
        out = []
        for ms, _, entry in sorted(self.entries, key=lambda e: (e[0], e[1])):
            out.append({"at": format_duration(ms / 1000), **entry})
        return out


def to_scenario(rec: Recording, policy: Policy, policy_ref: str) -> dict[str, Any]:
    """The scenario (as YAML-ready data) that replays ``rec`` under ``policy``."""
    facts = _Facts(rec.since)
    book = HealthBook(policy)
    cells = set(book.cells())
    kinds = {s.name: s for s in policy.signals}
    known: dict[Cell, str] = {}  # what each cell's fact says now

    def cell_fact(cell: Cell, at: float, ok: bool | None, detail: str, start: bool) -> None:
        region, signal, vantage = cell
        spec = kinds.get(signal)
        if spec is None or cell not in cells:
            return  # a signal the policy no longer has
        if vantage == AWS_HEALTH_VANTAGE and isinstance(spec, AwsHealthSignal):
            _health(facts, at, region, spec, ok, detail)
        elif vantage == CLOUDWATCH_VANTAGE and isinstance(spec, CloudWatchAlarmSignal):
            _alarm(facts, at, region, spec, ok)
        elif spec.type in PROBE_TYPES:
            state = _probe_state(ok, detail)
            if known.get(cell) == state or (start and state == "unknown"):
                return
            known[cell] = state
            fact = {"region": region, "signal": signal, "vantage": vantage, "state": state}
            facts.add(at, {"probes": fact})

    # The start: every cell as it stood (a stale one is left unknown).
    if any(c[2] == AWS_HEALTH_VANTAGE for c in rec.cells):
        facts.add(rec.since, {"aws_health_api": "available"})
    for cell, (seen, ok, detail) in sorted(rec.cells.items()):
        if cell in cells and rec.since - seen <= book.staleness(*cell):
            cell_fact(cell, rec.since, ok, detail, start=True)
    _group_start(facts, policy, book)
    replication = policy.replication
    for region, (seconds, seen, read) in sorted(rec.lag.items()):
        if replication is not None and region in replication.sources:
            # Read again every interval, it stays as old as it was when read; not read for
            # two intervals, it is frozen and ages from its datapoint's time.
            frozen = rec.since - read > replication.interval * 2
            age = (rec.since if frozen else read) - seen
            _lag(facts, rec.since, region, seconds, frozen, max(0.0, age))
    if not rec.leader:
        facts.add(rec.since, {"leader": False})
    # The window.
    runs: dict[str, dict[str, Any]] = {}
    decisions: list[dict[str, Any]] = []
    for snapshot in rec.snapshots:
        at = float(snapshot["at"])
        for item in snapshot.get("cells") or ():
            if not (isinstance(item, list) and len(item) == 6):
                continue
            cell = (str(item[0]), str(item[1]), str(item[2]))
            last_seen = _number(item[3])
            if cell in cells and last_seen is not None and at - last_seen > book.staleness(*cell):
                cell_fact(cell, last_seen + 0.001, None, "", start=False)  # silent since then
    for record in rec.records:
        kind = record.get("k")
        at = float(record["at"])
        if kind == "obs":
            cell = (str(record.get("r")), str(record.get("s")), str(record.get("v")))
            previous = _number(record.get("prev"))
            if cell in cells and previous is not None and at - previous > book.staleness(*cell):
                cell_fact(cell, max(previous + 0.001, rec.since), None, "", start=False)
            ok = record.get("ok")
            # The daemon knew it when it arrived: that is when it could weigh in.
            known_at = max(at, _number(record.get("seen")) or at)
            detail = str(record.get("d") or "")
            cell_fact(cell, known_at, ok if isinstance(ok, bool) else None, detail, False)
        elif kind == "lag":
            region = str(record.get("r"))
            if replication is not None and region in replication.sources:
                datapoint = _number(record.get("obs"))
                age = 0.0 if datapoint is None else max(0.0, at - datapoint)
                frozen = bool(record.get("frozen"))
                _lag(facts, at, region, _number(record.get("sec")), frozen, age)
        elif kind == "cmd":
            _command(facts, at, record, set(policy.regions))
        elif kind == "leader":
            facts.add(at, {"leader": bool(record.get("on"))})
        elif kind == "dec":
            decisions.append(record)
        elif kind == "run" and isinstance(record.get("id"), str):
            runs[str(record["id"])] = record  # the last one seen: the end, when it ended
    _steps(facts, rec, policy, runs)
    scenario: dict[str, Any] = {
        "scenario": f"{rec.service} incident {iso(rec.since)}",
        "description": _description(rec, decisions, policy),
        "policy": policy_ref,
        "service": rec.service,
        "duration": format_duration(max(1.0, math.ceil((rec.until - rec.since) * 1000) / 1000)),
        "tick": format_duration(min(rec.tick, 1.0)),
    }
    start = _start(rec, policy)
    if start:
        scenario["start"] = start
    scenario["timeline"] = facts.timeline()
    scenario["expect"] = _expectations(rec, policy, decisions)
    return scenario


def _group_start(facts: _Facts, policy: Policy, book: HealthBook) -> None:
    """Per-cell start facts become one ``probes: {region, state}`` where a region's every
    probe cell starts the same (the file reads like a hand-written one)."""
    probe_cells = [c for c in book.cells() if _is_probe(policy, c[1])]
    start = [e for e in facts.entries if e[0] == 0 and "probes" in e[2]]
    states: dict[Cell, str] = {}
    for _, _, entry in start:
        p = entry["probes"]
        states[(p["region"], p["signal"], p["vantage"])] = p["state"]
    grouped: list[dict[str, Any]] = []
    for region in policy.regions:
        mine = [c for c in probe_cells if c[0] == region]
        seen = {states.get(c) for c in mine}
        if mine and len(seen) == 1 and None not in seen:
            grouped.append({"probes": {"region": region, "state": seen.pop()}})
        else:
            grouped += [e[2] for e in start if e[2]["probes"]["region"] == region]
    others = [e for e in facts.entries if not (e[0] == 0 and "probes" in e[2])]
    # First in the file, in region order: facts at the same time apply in file order.
    facts.entries = [(0, i - len(grouped), entry) for i, entry in enumerate(grouped)] + others


def _is_probe(policy: Policy, signal: str) -> bool:
    return any(s.name == signal and s.type in PROBE_TYPES for s in policy.signals)


def _health(
    facts: _Facts, at: float, region: str, spec: AwsHealthSignal, ok: bool | None, detail: str
) -> None:
    if ok is None:
        if detail == FailureKind.HEALTH_API_UNAVAILABLE:
            facts.add(at, {"aws_health_api": "unavailable"})
        return
    facts.add(at, {"aws_health_api": "available"})
    status = "closed" if ok else "open"
    facts.add(at, {"aws_health": {"region": region, "service": spec.services[0], "status": status}})


def _alarm(
    facts: _Facts, at: float, region: str, spec: CloudWatchAlarmSignal, ok: bool | None
) -> None:
    names = spec.alarms.get(region) or []
    if not names:
        return
    if ok is True:
        for name in names:
            facts.add(at, {"alarm": {"name": name, "state": "OK"}})
    elif ok is False:
        facts.add(at, {"alarm": {"name": names[0], "state": "ALARM"}})
    else:
        facts.add(at, {"alarm": {"name": names[0], "state": "INSUFFICIENT_DATA"}})


def _lag(
    facts: _Facts, at: float, region: str, seconds: float | None, frozen: bool, age: float = 0.0
) -> None:
    fact: dict[str, Any] = {
        "region": region,
        "seconds": None if seconds is None else round(seconds, 3),
    }
    if frozen:
        fact["frozen"] = True
    if age >= 0.001:
        fact["age"] = format_duration(age)  # the reading was that old when the daemon read it
    facts.add(at, {"lag": fact})


_COMMANDS = frozenset({"pause", "resume", "approve", "failback", "failover", "switchover"})


def _command(facts: _Facts, at: float, record: Mapping[str, Any], regions: set[str]) -> None:
    command = record.get("command")
    if command not in _COMMANDS:
        return
    fact: dict[str, Any] = {"command": command}
    to = record.get("to")
    if isinstance(to, str) and to in regions:
        fact["to"] = to
    if record.get("force") is True:
        fact["force"] = True
    for key in ("by", "reason"):
        value = record.get(key)
        if isinstance(value, str) and value:
            fact[key] = value
    facts.add(at, {"operator": fact})


def _steps(
    facts: _Facts, rec: Recording, policy: Policy, runs: Mapping[str, Mapping[str, Any]]
) -> None:
    """Each run's steps as they went (before the run: facts hold until replaced)."""
    names = {
        s.name: s
        for book in (policy.runbooks.failover, policy.runbooks.failback, policy.runbooks.switchover)
        for s in (book or [])
    }
    previous_end = rec.since
    ordered = sorted(runs.values(), key=lambda r: _number(r.get("started_at")) or 0.0)
    for run in ordered:
        started = _number(run.get("started_at")) or rec.since
        for step in run.get("steps") or ():
            if not isinstance(step, dict):
                continue
            spec = names.get(str(step.get("name")))
            status = step.get("status")
            if spec is None or spec.action == APPROVAL_ACTION:
                continue
            if status not in ("succeeded", "failed"):
                continue
            duration = max(0.0, _number(step.get("duration")) or 0.0)
            attempts = max(1, int(_number(step.get("attempts")) or 1))
            fact: dict[str, Any] = {"name": spec.name}
            if status == "succeeded":
                fact["duration"] = format_duration(duration)
            elif "timed out" in str(step.get("error") or ""):
                fact["outcome"] = "hang"
            else:
                fact["outcome"] = "fail"
                fact["duration"] = format_duration(duration / attempts)
            facts.add(min(max(previous_end, rec.since), started), {"step": fact})
        end = _number(run.get("finished_at"))
        previous_end = end if end is not None else started


def _start(rec: Recording, policy: Policy) -> dict[str, Any]:
    state = rec.state
    if state is None:
        return {}
    out: dict[str, Any] = {}
    if state.active_region != policy.primary and state.active_region in policy.regions:
        out["active_region"] = state.active_region
    if state.paused:
        out["paused"] = True
    last = state.last_move_finished_at
    if last is not None and 0 < rec.since - last < policy.guards.cooldown:
        out["last_automatic_move"] = format_duration(rec.since - last)
    window = policy.guards.max_failovers.window
    moves = [
        {"ago": format_duration(rec.since - m.at), "kind": m.kind.value, "to": m.target}
        for m in state.moves
        if 0 < rec.since - m.at < window and m.target in policy.regions
    ]
    if moves:
        out["moves"] = moves
    return out


def tolerance(rec: Recording, policy: Policy) -> float:
    return max(2.0, 2 * policy.detection.interval + rec.tick)


def _expectations(
    rec: Recording, policy: Policy, decisions: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    tol = tolerance(rec, policy)
    out: list[dict[str, Any]] = []
    starts = [d for d in decisions if d.get("action") in {a.value for a in RUN_ACTIONS}]
    failovers = 0
    failbacks = 0
    for d in starts:
        at = float(d["at"]) - rec.since
        target = d.get("target")
        # The replay weighs each observation the moment it arrives; the daemon, busy or
        # waiting on a store, may have decided later: the window reaches further back.
        window = [format_duration(max(0.0, at - 2 * tol)), format_duration(at + tol)]
        if target == policy.primary:
            failbacks += 1
            out.append({"failback": {"between": window}})
        else:
            failovers += 1
            out.append({"failover": {"to": target, "between": window}})
    out.append({"failovers": {"count": failovers}})
    if not failovers:
        out.append({"no_failover": {}})
    if not failbacks:
        out.append({"failback": {}})
    # The phase in the middle of every phase that lasted long enough.
    spans: list[tuple[float, float, Mapping[str, Any]]] = []
    points: list[tuple[float, Mapping[str, Any]]] = []
    if rec.decision is not None:
        points.append((rec.since, rec.decision))
    points += [(float(d["at"]), d) for d in decisions]
    for i, (at, d) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else rec.until
        if end - at >= 2 * tol + 2 * rec.tick:
            spans.append((at, end, d))
    step = max(1, math.ceil(len(spans) / MAX_PHASE_CHECKS))
    for at, end, d in spans[::step]:
        middle = round((at + end) / 2 - rec.since, 3)
        check: dict[str, Any] = {"at": format_duration(max(0.0, middle)), "is": d.get("phase")}
        reasons = d.get("reasons")
        if isinstance(reasons, list) and reasons and isinstance(reasons[0], str):
            check["reason"] = reasons[0]
        out.append({"phase": check})
    last = points[-1][1] if points else None
    active = None if last is None else last.get("active")
    if rec.state is not None and active is None:
        active = rec.state.active_region
    settled = last is not None and (rec.until - points[-1][0]) > tol
    if isinstance(active, str) and active in policy.regions and settled:
        out.append({"active_region": {"at": format_duration(rec.until - rec.since), "is": active}})
    return out


def _description(rec: Recording, decisions: Sequence[Mapping[str, Any]], policy: Policy) -> str:
    moves = []
    for d in decisions:
        if d.get("action") in {a.value for a in RUN_ACTIONS}:
            who = "by an operator" if d.get("by") == "operator" else "automatically"
            kind = Action.FAILBACK.value if d.get("target") == policy.primary else d.get("action")
            moves.append(
                f"{format_duration(float(d['at']) - rec.since)} {kind} to {d.get('target')} {who}"
            )
    decided = "; ".join(moves) if moves else "no move"
    parts = [
        f"Recorded by failoverd's flight recorder on node {rec.node or '?'}: {rec.service}"
        f" from {iso(rec.since)} (time 0 here) to {iso(rec.until)}.",
        f"The daemon decided: {decided}.",
    ]
    if rec.policy_versions:
        parts.append(f"Policy set version(s) then: {', '.join(sorted(rec.policy_versions))}.")
    parts.append(
        f"Observations replay from the moments their results changed; the daemon's vantage"
        f" points probed on their own schedules, so times may differ by up to an interval:"
        f" the expectations allow {format_duration(tolerance(rec, policy))} either way (twice"
        " that earlier for a run's start)."
    )
    if rec.restarts:
        when = ", ".join(format_duration(t - rec.since) for t in rec.restarts)
        parts.append(
            f"The daemon restarted at {when} (its health windows started over; the replay's"
            " did not)."
        )
    return " ".join(parts)


def window_for(
    folder: Path,
    service: str,
    *,
    lead: float,
    now: float,
    run_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> tuple[float, float]:
    """The window to export: the given bounds; else the incident holding the run (or the
    latest incident), from ``lead`` before it opened until it closed (or now)."""
    found = incidents(folder, service)
    if run_id is not None:
        run = find_run(folder, service, run_id)
        if run is None:
            raise ExportError(f"no run {run_id!r} in the record of {service!r}")
        started = _number(run.get("started_at")) or _number(run.get("at")) or now
        holding = [i for i in found if i[0] <= started and (i[1] is None or started <= i[1])]
        opened, closed = holding[-1] if holding else (started, _number(run.get("finished_at")))
    elif since is None:
        if not found:
            raise ExportError(f"no incident recorded for {service!r}; give --since and --until")
        opened, closed = found[-1]
    else:
        return since, until if until is not None else now
    start = since if since is not None else opened - lead
    end = until if until is not None else (closed if closed is not None else now)
    return start, end


def recorded_runs(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in records if r.get("k") == "run" and isinstance(r.get("id"), str)]
