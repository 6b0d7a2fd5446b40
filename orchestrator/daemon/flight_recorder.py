"""The flight recorder: per service, what the daemon saw around each incident, on disk.

What is recorded, as JSON lines (format :data:`FORMAT`):

* ``obs``: an observation that says something new for its (region, signal, vantage) cell -
  the cell's first, a change of ``ok`` or of the failure kind, or one after a silence (the
  previous observation's time rides along, ``prev``; and when it arrived, ``seen``, if that
  was later than its own time: an agent's batch, a slow probe); AWS Health and CloudWatch alarms are
  observations of their own vantage points, so events opening and closing, the Health API
  failing and alarms changing state are in here too;
* ``lag``: a replication-lag reading that moved (by a tenth of the RPO or across it), became
  known or unknown, or stopped or resumed advancing (a frozen metric);
* ``cmd``: an operator command, with every field it carries (who, why, from where);
* ``leader``: the leader lease won or lost;
* ``dec``: each change of the engine's decision (phase, action, target, reasons, who) with the
  service state behind it;
* ``run``: a run seen starting, and again when it ended, with its steps;
* ``segment``: the first line of every file - a snapshot of every cell's latest observation,
  the lag readings (value, datapoint time, when read), the leader flag and the service state -
  so that any file can be read on its own and silences show (a cell whose latest observation
  is old).

Files: ``<folder>/<service>/<start ms>.jsonl``, a new one every ``segment`` (or sooner when one
grows past a share of the cap), and ``<folder>/<service>/incidents.jsonl`` with the incidents:
one opens at the first decision that is not ``steady`` (nor ``paused``) and closes once the
service has been steady for ``after``. Kept: the files covering the last ``lead``, and those
covering any incident from ``lead`` before it opened until it closed; all services together
stay under ``max_bytes`` (the oldest files go first). A restart keeps everything: an incident
still open goes on, and the first file after it says ``restart``.

Cost on the engine's path: the hooks are synchronous and cheap (the health book tells which
observations are new, most are not); lines are queued in memory and written, rotated and
pruned by :meth:`FlightRecorder.run` in a worker thread, never on the event loop.
``failoverd scenario export`` (:mod:`orchestrator.incident_export`) reads the files back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import Observation
from orchestrator.engine.state import Decision, LagReading, OperatorCommand, RunStatus, ServiceState
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.models import Policy
from orchestrator.runbook.rto import RunProgress
from orchestrator.store.codec import encode_state
from orchestrator.telemetry import FLIGHT_RECORDER_BYTES, FLIGHT_RECORDER_DROPPED, get_logger

log = get_logger("failoverd.flight_recorder")

FORMAT = 1
INCIDENTS = "incidents.jsonl"
PENDING_CAP = 20_000  # records queued per service at most; past it they are dropped (counted)
RECORD_BYTES = 120  # what a record takes on disk, about: files are cut by this estimate
SEGMENT_SHARE = 16  # a file is cut when it passes this share of max_bytes
PRUNE_EVERY = 60.0  # seconds between pruning passes
_QUIET = frozenset({Phase.STEADY, Phase.PAUSED})
_RUN_PHASES = frozenset({Phase.FAILING_OVER, Phase.AWAITING_APPROVAL, Phase.FAILED})
SCAN_EVERY = 10.0  # seconds between looks for new services when no file falls due sooner


@dataclass(frozen=True)
class ServiceView:
    """What the recorder reads of a service (the controller's, at one moment)."""

    policy: Policy
    book: HealthBook
    state: ServiceState
    lag: Mapping[str, LagReading]
    progress: RunProgress | None
    policy_version: str


class RecorderSource(Protocol):
    """The controller, as the recorder sees it."""

    def services(self) -> Sequence[str]: ...

    def service_view(self, service: str) -> ServiceView | None: ...

    def is_leader(self) -> bool: ...


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, ServiceState):  # encoded by the writer thread, not on the loop
        return json.loads(encode_state(value))
    return str(value)


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_encode)


@dataclass
class _Track:
    """One service's recording state (on the event loop)."""

    segment: Path | None = None
    segment_start: float = 0.0
    next_cut: float = 0.0
    segment_bytes: int = 0  # an estimate: records are serialised by the writer thread
    pending: list[Mapping[str, Any]] = field(default_factory=list)
    incident: float | None = None  # when the open incident began
    steady_since: float | None = None
    incidents: list[tuple[float, float | None]] = field(default_factory=list)
    lag: dict[str, tuple[float | None, float, bool]] = field(default_factory=dict)
    lag_read: dict[str, float] = field(default_factory=dict)  # when each was last read
    watch_runs: bool = False  # a run may be under way: its progress is read each second
    running_phase: bool = False  # the last decision's phase is one a run shows in
    runs_seen: set[str] = field(default_factory=set)
    runs_done: set[str] = field(default_factory=set)
    restarted: bool = False
    dropped: int = 0


@dataclass
class _Batch:
    """Work for the writer thread: lines per file, and what pruning must keep."""

    lines: dict[Path, list[Mapping[str, Any]]] = field(default_factory=dict)
    current: set[Path] = field(default_factory=set)
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    now: float = 0.0
    prune: bool = False


class FlightRecorder:
    """See the module docstring. Lifecycle: construct, ``load()`` (reads what a previous run
    left), attach the hooks, ``await run(source)`` until cancelled, ``close()``."""

    def __init__(
        self,
        folder: Path,
        *,
        lead: float = 1800.0,
        after: float = 300.0,
        max_bytes: int = 64 * 1024 * 1024,
        segment: float = 300.0,
        node_id: str = "",
        tick: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.folder = folder
        self.lead = lead
        self.after = after
        self.max_bytes = max_bytes
        self.segment = segment
        self.node_id = node_id
        self.tick_seconds = tick
        self._clock = clock
        self._tracks: dict[str, _Track] = {}
        self._leader: bool | None = None
        self._last_prune = -math.inf
        self._incident_lines: dict[str, list[Mapping[str, Any]]] = {}
        self._dirty: set[str] = set()  # services with queued records
        self._next_scan = -math.inf
        self._cuts: list[tuple[float, str]] = []  # (when, service): files falling due
        self._watching: set[str] = set()  # services whose run progress is read each pass
        self._open: set[str] = set()  # services with an open incident
        self._source: RecorderSource | None = None
        self.bytes_on_disk = 0
        self.dropped = 0

    def attach(self, source: RecorderSource) -> None:
        """The controller whose services are recorded (before the hooks are called)."""
        self._source = source

    # -- start -----------------------------------------------------------------------------
    def load(self) -> None:
        """Create the folder and read the incidents a previous run left (an open one goes
        on). Raises OSError when the folder cannot be made."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.folder.iterdir()):
            if not entry.is_dir():
                continue
            track = self._track(entry.name)
            track.restarted = True
            track.incidents = read_incidents(entry / INCIDENTS)
            if track.incidents and track.incidents[-1][1] is None:
                track.incident = track.incidents[-1][0]
                self._open.add(entry.name)
        self.bytes_on_disk = _size(self.folder)
        FLIGHT_RECORDER_BYTES.set(self.bytes_on_disk)

    def _track(self, service: str) -> _Track:
        track = self._tracks.get(service)
        if track is None:
            track = self._tracks[service] = _Track(restarted=False)
        return track

    def _queue(self, service: str, record: Mapping[str, Any], size: int = RECORD_BYTES) -> None:
        track = self._tracks.get(service) or self._track(service)
        if len(track.pending) >= PENDING_CAP:
            track.dropped += 1
            self.dropped += 1
            FLIGHT_RECORDER_DROPPED.inc()
            return
        if not track.pending:
            self._dirty.add(service)
        track.pending.append(record)
        track.segment_bytes += size
        if (
            track.segment is not None
            and track.segment_bytes >= self.max_bytes // SEGMENT_SHARE
            and track.next_cut > (now := self._clock.now())
        ):
            track.next_cut = now  # too big: cut at the next pass
            heapq.heappush(self._cuts, (now, service))

    # -- hooks (event loop; cheap; never raise) -----------------------------------------
    def observation(self, obs: Observation, previous_at: float | None) -> None:
        """The health book's note: ``obs`` says something new for its cell."""
        record: dict[str, Any] = {
            "k": "obs",
            "at": obs.at,
            "r": obs.region,
            "s": obs.signal,
            "v": obs.vantage,
            "ok": obs.ok,
            "d": obs.detail,
        }
        if previous_at is not None:
            record["prev"] = previous_at
        arrived = self._clock.now()
        if arrived - obs.at > 0.05:  # late (a slow probe, an agent's batch): when it counted
            record["seen"] = round(arrived, 3)
        self._queue(obs.service, record)

    def lag(self, service: str, region: str, reading: LagReading) -> None:
        now = self._clock.now()
        track = self._track(service)
        track.lag_read[region] = now
        seconds = reading.seconds
        last = track.lag.get(region)
        frozen = last is not None and reading.observed_at <= last[1] and now > last[1]
        if last is not None:
            before, _, was_frozen = last
            view = None if self._source is None else self._source.service_view(service)
            rpo = 60.0 if view is None else view.policy.rpo
            moved = (seconds is None) != (before is None) or (
                seconds is not None
                and before is not None
                and (abs(seconds - before) > rpo / 10 or (seconds > rpo) != (before > rpo))
            )
            if not moved and frozen == was_frozen:
                track.lag[region] = (before, reading.observed_at, frozen)
                return
        track.lag[region] = (seconds, reading.observed_at, frozen)
        self._queue(
            service,
            {
                "k": "lag",
                "at": now,
                "r": region,
                "sec": _plain(seconds),
                "obs": reading.observed_at,
                "frozen": frozen,
            },
        )

    def command(self, service: str, command: OperatorCommand, at: float) -> None:
        record: dict[str, Any] = {"k": "cmd", "at": at}
        for f in fields(command):  # every field, including those added later (who, from where)
            record[f.name] = _plain(getattr(command, f.name))
        self._queue(service, record)

    def leadership(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        now = self._clock.now()
        for service in self._tracks:
            self._queue(service, {"k": "leader", "at": now, "on": leader})

    def decision(self, d: Decision) -> None:
        """Each change of a service's decision (the controller's ``on_decision`` hook)."""
        track = self._track(d.service)
        view = None if self._source is None else self._source.service_view(d.service)
        state = None if view is None else view.state
        record: dict[str, Any] = {
            "k": "dec",
            "at": d.at,
            "phase": d.phase.value,
            "action": d.action.value,
            "target": d.target,
            "reasons": [r.value for r in d.reasons],
            "by": d.initiated_by.value,
            "active": d.active_region,
            "detected": d.detected_at,
        }
        if state is not None:
            record["state"] = state
        self._queue(d.service, record)
        track.running_phase = d.phase in _RUN_PHASES or d.starts_run
        if track.running_phase:
            track.watch_runs = True
            self._watching.add(d.service)
        if d.phase in _QUIET:
            if d.phase is Phase.STEADY and track.steady_since is None:
                track.steady_since = d.at
            return
        track.steady_since = None
        if track.incident is None:
            track.incident = d.at
            track.incidents.append((d.at, None))
            self._open.add(d.service)
            log.info("flight_recorder_incident_opened", service=d.service, phase=d.phase.value)
            self._incident_line(d.service, {"k": "open", "at": d.at, "phase": d.phase.value})

    def _incident_line(self, service: str, record: Mapping[str, Any]) -> None:
        self._incident_lines.setdefault(service, []).append(record)

    # -- the periodic part -----------------------------------------------------------------
    def tick(self, source: RecorderSource) -> _Batch:
        """Cut files that are due, close incidents that are over, note runs; hand the queued
        records over (the writer thread serialises and writes the batch)."""
        now = self._clock.now()
        batch = _Batch(now=now)
        self.leadership(source.is_leader())
        if now >= self._next_scan:
            self._scan(source, now, batch)
        cuts = self._cuts
        while cuts and cuts[0][0] <= now:
            at, service = heapq.heappop(cuts)
            track = self._tracks[service]
            if at == track.next_cut and track.segment is not None:
                view = source.service_view(service)
                if view is not None:
                    self._cut(service, track, view, now, batch)
        for service in list(self._watching):
            track = self._tracks[service]
            view = source.service_view(service)
            if view is not None:
                self._runs(service, track, view)
            if not track.watch_runs:
                self._watching.discard(service)
        for service in list(self._open):
            track = self._tracks[service]
            if track.incident is None:
                self._open.discard(service)
            elif track.steady_since is not None and now - track.steady_since >= self.after:
                opened = track.incident
                track.incident = None
                track.incidents[-1] = (opened, now)
                self._incident_line(service, {"k": "close", "at": now})
                self._open.discard(service)
                log.info("flight_recorder_incident_closed", service=service, lasted=now - opened)
        for service in self._dirty:
            track = self._tracks[service]
            if track.segment is not None and track.pending:
                batch.lines.setdefault(track.segment, []).extend(track.pending)
                track.pending = []
        self._dirty = {s for s in self._dirty if self._tracks[s].pending}
        for service, records in self._incident_lines.items():
            batch.lines.setdefault(self.folder / service / INCIDENTS, []).extend(records)
        self._incident_lines = {}
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            batch.prune = True
            for service, track in self._tracks.items():
                if track.segment is not None:
                    batch.current.add(track.segment)
                keep = now - 7 * 86400  # the files say the rest; memory keeps a week
                track.incidents = [w for w in track.incidents if w[1] is None or w[1] > keep]
                batch.windows[service] = [
                    (opened - self.lead, closed if closed is not None else math.inf)
                    for opened, closed in track.incidents
                ]
        return batch

    def _scan(self, source: RecorderSource, now: float, batch: _Batch) -> None:
        """A first file for each service that has none (new ones, after a reload); until
        the controller has loaded its services, at every pass."""
        services = source.services()
        for service in services:
            track = self._tracks.get(service) or self._track(service)
            if track.segment is None:
                view = source.service_view(service)
                if view is not None:
                    self._cut(service, track, view, now, batch)
        self._next_scan = now + SCAN_EVERY if services else now

    def _runs(self, service: str, track: _Track, view: ServiceView) -> None:
        progress = view.progress
        if progress is None or (
            progress.status is not RunStatus.RUNNING and progress.run_id in track.runs_done
        ):
            track.watch_runs = track.running_phase
            return
        if progress.run_id not in track.runs_seen:
            track.runs_seen.add(progress.run_id)
            self._queue(service, run_record(progress, progress.started_at))
        if progress.status is not RunStatus.RUNNING and progress.run_id not in track.runs_done:
            track.runs_done.add(progress.run_id)
            self._queue(service, run_record(progress, progress.finished_at or self._clock.now()))

    def _cut(
        self, service: str, track: _Track, view: ServiceView, now: float, batch: _Batch
    ) -> None:
        path = self.folder / service / f"{round(now * 1000):013d}.jsonl"
        if track.segment == path:
            return
        cells = view.book.last_observations()
        header = {
            "k": "segment",
            "v": FORMAT,
            "at": now,
            "service": service,
            "node": self.node_id,
            "policy_version": view.policy_version,
            "tick": self.tick_seconds,
            "leader": bool(self._leader),
            "restart": track.restarted,
            "state": view.state,
            "cells": cells,
            "lag": [
                [r, _plain(x.seconds), x.observed_at, track.lag_read.get(r, now)]
                for r, x in sorted(view.lag.items())
            ],
        }
        track.restarted = False
        # The snapshot comes first in the new file; what was queued belongs to the old one
        # (or, before the first file, follows the snapshot).
        old_pending, track.pending = track.pending, []
        first = track.segment is None
        if track.segment is not None and old_pending:
            batch.lines.setdefault(track.segment, []).extend(old_pending)
        if track.segment is None:
            # Services cut their files at staggered times, not all in the same second.
            share = 0.5 + (zlib.crc32(service.encode()) % 1000) / 2000
            track.next_cut = now + self.segment * share
        else:
            track.next_cut = now + self.segment
        heapq.heappush(self._cuts, (track.next_cut, service))
        track.segment = path
        track.segment_start = now
        track.segment_bytes = 0
        self._queue(service, header, RECORD_BYTES * (1 + len(cells)))
        if first:
            track.pending.extend(old_pending)

    # -- writing (worker thread) -----------------------------------------------------------
    def write(self, batch: _Batch) -> None:
        """Append the batch's lines, then prune when it is time. Runs in a worker thread;
        an error is logged and the lines are lost (the daemon goes on)."""
        for path, records in batch.lines.items():
            try:
                text = "".join(_line(r) + "\n" for r in records)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(text)
            except (OSError, ValueError, TypeError) as exc:
                self.dropped += len(records)
                FLIGHT_RECORDER_DROPPED.inc(len(records))
                log.warning("flight_recorder_write_failed", path=str(path), error=str(exc))
        if batch.prune:
            try:
                self.bytes_on_disk = prune(
                    self.folder,
                    now=batch.now,
                    lead=self.lead,
                    max_bytes=self.max_bytes,
                    current=batch.current,
                    windows=batch.windows,
                )
            except OSError as exc:
                log.warning("flight_recorder_prune_failed", error=str(exc))
            FLIGHT_RECORDER_BYTES.set(self.bytes_on_disk)

    async def run(self, source: RecorderSource, interval: float = 1.0) -> None:
        """Every ``interval``: take a batch on the loop, write it in a worker thread."""
        self.attach(source)
        while True:
            batch = self.tick(source)
            if batch.lines or batch.prune:
                await asyncio.to_thread(self.write, batch)
            await self._clock.sleep(interval)

    def close(self, source: RecorderSource | None = None) -> None:
        """Write what is queued (at shutdown, after the loop stopped recording)."""
        if source is not None:
            with contextlib.suppress(Exception):
                self.write(self.tick(source))
                return
        batch = _Batch(now=self._clock.now())
        for track in self._tracks.values():
            if track.segment is not None and track.pending:
                batch.lines.setdefault(track.segment, []).extend(track.pending)
                track.pending = []
        self.write(batch)


def run_record(progress: RunProgress, at: float) -> dict[str, Any]:
    return {
        "k": "run",
        "at": at,
        "id": progress.run_id,
        "kind": progress.kind,
        "source": progress.source,
        "target": progress.target,
        "status": progress.status.value,
        "error": progress.error,
        "started_at": progress.started_at,
        "decided_at": progress.decided_at,
        "detected_at": progress.detected_at,
        "finished_at": progress.finished_at,
        "steps": [
            {
                "name": s.name,
                "action": s.action,
                "status": s.status.value,
                "attempts": len(s.attempts),
                "started_at": s.started_at,
                "finished_at": s.finished_at,
                "duration": s.duration,
                "error": s.error,
            }
            for s in progress.steps
        ],
    }


# -- files ---------------------------------------------------------------------------------


def read_incidents(path: Path) -> list[tuple[float, float | None]]:
    """(opened, closed or None) from an incidents file; torn or foreign lines are skipped."""
    out: list[tuple[float, float | None]] = []
    for record in read_lines(path):
        kind, at = record.get("k"), record.get("at")
        if not isinstance(at, int | float):
            continue
        if kind == "open":
            if out and out[-1][1] is None:
                continue  # opened twice (a crash between the two): the first one counts
            out.append((float(at), None))
        elif kind == "close" and out and out[-1][1] is None:
            out[-1] = (out[-1][0], float(at))
    return out


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a file; a torn last line (a crash mid-write) and anything
    not an object are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def segments(folder: Path) -> list[tuple[float, Path]]:
    """A service folder's files, oldest first, with their start times."""
    out: list[tuple[float, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            name = entry.name
            if name.endswith(".jsonl") and name[:-6].isdigit():
                out.append((int(name[:-6]) / 1000, Path(entry.path)))
    return sorted(out)


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def prune(
    folder: Path,
    *,
    now: float,
    lead: float,
    max_bytes: int,
    current: set[Path],
    windows: Mapping[str, Sequence[tuple[float, float]]],
) -> int:
    """Delete the files no incident needs and that are older than ``lead``, then the oldest
    files while the total is above ``max_bytes`` (never a file being written). Returns the
    bytes left."""
    candidates: list[tuple[float, int, Path]] = []
    total = 0
    for service_dir in folder.iterdir() if folder.exists() else ():
        if not service_dir.is_dir():
            continue
        files = segments(service_dir)
        keep_from = now - lead
        kept_any = False
        for i, (start, path) in enumerate(files):
            end = files[i + 1][0] if i + 1 < len(files) else math.inf
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            needed = (
                path in current
                or end > keep_from
                or any(
                    start < closed and end > opened
                    for opened, closed in windows.get(service_dir.name, ())
                )
            )
            if not needed:
                path.unlink(missing_ok=True)
                continue
            kept_any = True
            total += size
            if path not in current:
                candidates.append((start, size, path))
        incidents = service_dir / INCIDENTS
        with contextlib.suppress(FileNotFoundError):
            total += incidents.stat().st_size
        if not kept_any and not any(service_dir.iterdir()):
            service_dir.rmdir()
    for _, size, path in sorted(candidates):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        log.warning("flight_recorder_capped", path=str(path), max_bytes=max_bytes)
    return total
