"""The scenario simulator: drives the real health book and ``decide()`` on a virtual clock.

Time is kept in integer milliseconds so that ticks, probe intervals and fact times line up
exactly. At each moment, in this order: the timeline's facts apply (file order), observations
due now are fed to the health book, operator commands are judged, the running runbook makes
progress, the engine ticks, and a run it starts makes progress at once (steps succeed
instantly unless a ``step`` fact says otherwise).

Runbook steps are simulated with the policy's own DAG, timeouts, retries and ``on_failure``;
``approval`` steps wait for an ``operator: approve``; no step starts without the leader lease.
Retries follow each other without the executor's backoff: scenarios judge decisions, not
backoff timing.

Idle ticks are skipped (``every_tick=False``, the default): between two moments where
something happens (a fact, an observation, a step's end) the engine answers the same at every
tick unless a deadline passes (a view turning stale, the cooldown or a lag reading running
out...), so only the tick after a change and the ticks at deadlines
(:meth:`HealthBook.stale_times`, :func:`~orchestrator.engine.decide.next_change`) are
evaluated. The decisions are exactly those of ticking every interval (phase, action, target,
reasons, who initiated, the RTO clock, the runs); only the moments list is shorter, and
:meth:`SimulationResult.moment_at` answers for any time. A property test holds the two modes
together. ``every_tick=True`` evaluates every tick (``failoverd explain`` uses it: it shows
the moment's notes and RTO budget, which age with every tick).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.engine.decide import decide, next_change
from orchestrator.engine.healthbook import HealthBook, RegionVerdict
from orchestrator.engine.observation import FailureKind
from orchestrator.engine.scenario import (
    Flap,
    OperatorFact,
    ProbesFact,
    Scenario,
    StepFact,
    TimelineEntry,
)
from orchestrator.engine.state import (
    Command,
    Decision,
    LagReading,
    Move,
    OperatorCommand,
    ServiceState,
    apply_command,
    apply_decision,
    finish_run,
    set_waiting_approval,
)
from orchestrator.engine.vocabulary import Action, Reason
from orchestrator.policy.actions import APPROVAL_ACTION
from orchestrator.policy.durations import parse_duration
from orchestrator.policy.models import (
    AWS_HEALTH_VANTAGE,
    CLOUDWATCH_VANTAGE,
    PROBE_TYPES,
    AwsHealthSignal,
    CloudWatchAlarmSignal,
    OnFailure,
    Policy,
    Step,
)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class RunRecord:
    id: str
    kind: Action
    source: str
    target: str
    started_at: float
    initiated_by: str
    is_failback: bool
    finished_at: float | None = None
    ok: bool | None = None
    error: str = ""
    steps: list[tuple[str, float, float, str]] = field(
        default_factory=list
    )  # name, start, end, outcome


@dataclass(frozen=True)
class Moment:
    at: float
    decision: Decision
    active_region: str


@dataclass
class SimulationResult:
    scenario: Scenario
    policy: Policy
    moments: list[Moment]
    runs: list[RunRecord]
    book: HealthBook
    state: ServiceState
    verdicts: dict[str, RegionVerdict]
    lag: dict[str, LagReading]

    def moment_at(self, t: float) -> Moment | None:
        """The last moment at or before ``t``."""
        best: Moment | None = None
        lo, hi = 0, len(self.moments)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.moments[mid].at <= t + 1e-9:
                best = self.moments[mid]
                lo = mid + 1
            else:
                hi = mid
        return best


_StepStatus = Literal["pending", "running", "succeeded", "failed", "continued"]


class _RunExec:
    """Virtual-time execution of one run's DAG."""

    def __init__(self, record: RunRecord, steps: list[Step]) -> None:
        self.record = record
        self.steps = {s.name: s for s in steps}
        self.order = [s.name for s in steps]
        self.status: dict[str, _StepStatus] = dict.fromkeys(self.order, "pending")
        self.attempts: dict[str, int] = dict.fromkeys(self.order, 0)
        # name -> (end time ms, outcome, started ms); an approval's end is its deadline
        self.running: dict[str, tuple[int, str, int]] = {}
        self.done = False
        self.ok = False
        self.error = ""

    def waiting_approval(self) -> bool:
        return any(outcome == "approval" for _, outcome, _ in self.running.values())


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        policy_version: str = "",
        *,
        every_tick: bool = False,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.version = policy_version
        self.every_tick = every_tick
        self._tick = max(1, ms(scenario.tick))
        self.book = HealthBook(policy)
        self.state = _start_state(scenario, policy)
        self.leader = True
        # World
        self.probe_world: dict[tuple[str, str, str], tuple[str | Flap, int]] = {}
        self.health_api: str | None = None  # None: never said; "available" / "unavailable"
        self.open_events: set[tuple[str, str]] = set()
        self.alarms: dict[str, str] = {}
        self.lag_values: dict[str, float | None] = {}
        self.lag_frozen: set[str] = set()
        self.lag_age: dict[str, float] = {}  # how old each region's reading is when read
        self.lag: dict[str, LagReading] = {}
        self.step_facts: dict[str, StepFact] = {}
        # Output
        self.moments: list[Moment] = []
        self.runs: list[RunRecord] = []
        self.exec: _RunExec | None = None
        self.verdicts: dict[str, RegionVerdict] = {}
        self._heap: list[int] = []
        self._queued: set[int] = set()
        self._forced: set[int] = set()
        # The next deadline (ms): the first moment at or after it is judged.
        self._deadline: int | None = None
        self._force_next = False  # judge the next moment, whatever it is
        self._last = ms(scenario.duration)
        self._probe_cells = [
            (region, signal, vantage)
            for (region, signal, vantage) in self.book.cells()
            if self._signal_type(signal) in PROBE_TYPES
        ]
        self._feeders: dict[tuple[str, str, str], Callable[[float, bool | None, str], bool]] = {
            cell: self.book.feeder(*cell) for cell in self._probe_cells
        }

    # -- scheduling ----------------------------------------------------------------------

    def _signal_type(self, name: str) -> str:
        for s in self.policy.signals:
            if s.name == name:
                return s.type
        return ""

    def _at(self, t: int, *, forced: bool = True) -> None:
        """Queue the moment ``t``; a forced one is judged by the engine even if nothing was
        observed to change (facts, step ends, deadlines, the tick after a change)."""
        if t > self._last:
            return
        if forced:
            self._forced.add(t)
        if t not in self._queued:
            self._queued.add(t)
            heapq.heappush(self._heap, t)

    def _periodic(self, period_s: float, until: int, *, forced: bool = False) -> None:
        period = max(1, ms(period_s))
        for t in range(0, until + 1, period):
            self._at(t, forced=forced)

    def run(self, until: float | None = None) -> SimulationResult:
        end = ms(self.scenario.duration if until is None else min(until, self.scenario.duration))
        self._last = end
        facts: dict[int, list[TimelineEntry]] = {}
        for entry in self.scenario.timeline:
            facts.setdefault(ms(entry.at), []).append(entry)
            self._at(ms(entry.at))
        if self.every_tick:
            self._periodic(self.scenario.tick, end, forced=True)
        else:
            self._at(0)
            self._at(end - end % self._tick)  # the last tick: the final state and verdicts
        self._periodic(self.policy.detection.interval, end, forced=self.every_tick)
        for s in self.policy.signals:
            if isinstance(s, AwsHealthSignal):
                self._periodic(s.poll_interval, end, forced=self.every_tick)
        if self.policy.replication is not None:
            self._periodic(self.policy.replication.interval, end, forced=self.every_tick)
        while self._heap:
            t = heapq.heappop(self._heap)
            if t > end:
                break
            before = self.state
            entries = facts.get(t, [])
            forced = (
                self._force_next
                or t in self._forced
                or (self._deadline is not None and t >= self._deadline)
            )
            self._force_next = False
            judged = self._moment(t, entries, forced)
            if self.every_tick:
                continue
            if judged is None:
                self._queue_deadline(t)
            else:
                self._wake(t, judged or bool(entries) or self.state is not before)
        return SimulationResult(
            self.scenario,
            self.policy,
            self.moments,
            self.runs,
            self.book,
            self.state,
            self.verdicts,
            dict(self.lag),
        )

    def _wake(self, t: int, changed: bool) -> None:
        """After a judged moment ``t``: when the situation changed, judge the next moment
        too (a run just started is in progress, a refused command is gone, the RTO clock
        started...); and work out the next deadline, the first time at which time alone may
        change the answer (a view turning stale, a guard running out): the first moment at
        or after it is judged (ticking every interval, that moment may be a probe's as well
        as a tick)."""
        tick = self._tick
        now = t / 1000
        deadlines = [d for key, d in self.book.stale_times(now) if not self._fed_before(key, d, t)]
        # A reading refreshed before it grows too old never runs out.
        replication = self.policy.replication
        lag = self.lag
        if replication is not None:
            refresh = self._next(t, replication.interval) / 1000
            lag = {
                region: reading
                for region, reading in lag.items()
                if region in self.lag_frozen
                or region not in self.lag_values
                or refresh > reading.observed_at + replication.max_age
            }
        change = next_change(self.policy, self.state, self.verdicts, lag, now)
        if change is not None:
            deadlines.append(change)
        due = [round(d * 1000) for d in deadlines]
        # A deadline falling on this very moment: comparing floats, the answer may turn now
        # or at the next moment.
        if changed or t in due:
            self._force_next = True
            self._at((t // tick + 1) * tick)  # the next tick (``t`` may be off the grid)
        self._deadline = min((d for d in due if d > t), default=None)
        self._queue_deadline(t)

    @staticmethod
    def _next(t: int, period_s: float) -> int:
        """The first multiple of the period after ``t`` (ms)."""
        period = max(1, ms(period_s))
        return (t // period + 1) * period

    def _fed_before(self, cell: tuple[str, str, str], deadline: float, t: int) -> bool:
        """Whether the world observes ``cell`` again after ``t`` and before it would turn
        stale at ``deadline``: then that staleness never comes."""
        region, signal, vantage = cell
        policy = self.policy
        if vantage == AWS_HEALTH_VANTAGE:
            if self.health_api is None:
                return False
            polls = [
                s.poll_interval
                for s in policy.signals
                if isinstance(s, AwsHealthSignal) and s.name == signal
            ]
            return bool(polls) and self._next(t, polls[0]) / 1000 <= deadline
        if vantage == CLOUDWATCH_VANTAGE:
            signals = [s for s in policy.signals if isinstance(s, CloudWatchAlarmSignal)]
            names = [n for s in signals if s.name == signal for n in s.alarms.get(region, ())]
            if all(self.alarms.get(n) is None for n in names):
                return False
        else:
            world = self.probe_world.get(cell)
            if world is None or world[0] == "unknown":
                return False
        return self._next(t, policy.detection.interval) / 1000 <= deadline

    def _queue_deadline(self, t: int) -> None:
        """Queue the first tick at or after the deadline unless a moment comes first (then
        that moment is judged: see ``run``)."""
        deadline = self._deadline
        if deadline is None:
            return
        tick = self._tick
        at = -(-deadline // tick) * tick
        following = self._heap[0] if self._heap else self._last + 1
        if t < at < following:
            self._at(at)

    # -- one moment ----------------------------------------------------------------------

    def _moment(self, t: int, entries: list[TimelineEntry], forced: bool) -> bool | None:
        """One moment. None when it was quiet: no fact, nothing due, and the observations
        changed no view, so the engine would answer exactly as at the last moment judged
        (nothing is recorded; ``moment_at`` answers with that one). Otherwise True when the
        decision remembered differs from the last one."""
        commands: list[OperatorFact] = []
        for entry in entries:
            self._apply(entry, t, commands)
        observed = self._emit(t)
        if not (forced or entries or observed):
            return None
        now = t / 1000
        refused: Decision | None = None
        for fact in commands:
            cmd = OperatorCommand(
                Command(fact.command), to=fact.to, force=fact.force, by=fact.by, reason=fact.reason
            )
            if cmd.command in (Command.PAUSE, Command.RESUME):
                self.state = apply_command(self.state, cmd)
                continue
            if cmd.command is Command.APPROVE and self.exec is not None:
                self._approve(t)
                continue
            answer = self._decide(t, cmd)
            if Reason.OPERATOR_REFUSED in answer.reasons:
                refused = answer
        self._progress(t)
        decision = self._decide(t, None)
        # A refused command is what this moment is remembered for (phase/reason checks).
        shown = refused if refused is not None and not decision.starts_run else decision
        last = self.moments[-1] if self.moments else None
        self.moments.append(Moment(now, shown, self.state.active_region))
        return (
            last is None
            or shown is not decision
            or last.decision.key() != shown.key()
            or last.decision.initiated_by is not shown.initiated_by
            or last.active_region != self.state.active_region
        )

    def _decide(self, t: int, cmd: OperatorCommand | None) -> Decision:
        now = t / 1000
        self.verdicts = self.book.verdicts(now)
        decision = decide(
            self.policy,
            self.state,
            self.verdicts,
            self.lag,
            now,
            cmd,
            leader=self.leader,
            policy_version=self.version,
        )
        run_id = f"run-{len(self.runs) + 1}"
        self.state = apply_decision(self.state, decision, run_id)
        if decision.starts_run and decision.target is not None:
            record = RunRecord(
                id=run_id,
                kind=decision.action,
                source=decision.active_region,
                target=decision.target,
                started_at=now,
                initiated_by=str(decision.initiated_by),
                is_failback=decision.target == self.policy.primary,
            )
            self.runs.append(record)
            self.exec = _RunExec(record, self.policy.runbooks.for_kind(str(decision.action)))
            self._progress(t)
        return decision

    def _apply(self, entry: TimelineEntry, t: int, commands: list[OperatorFact]) -> None:
        if entry.probes is not None:
            self._set_probes(entry.probes, t)
        if entry.aws_health is not None:
            key = (entry.aws_health.region, entry.aws_health.service.upper())
            if entry.aws_health.status == "open":
                self.open_events.add(key)
            else:
                self.open_events.discard(key)
            if self.health_api is None:
                self.health_api = "available"
        if entry.aws_health_api is not None:
            self.health_api = entry.aws_health_api
        if entry.alarm is not None:
            self.alarms[entry.alarm.name] = entry.alarm.state
        if entry.lag is not None:
            self.lag_values[entry.lag.region] = entry.lag.seconds
            self.lag_age[entry.lag.region] = entry.lag.age
            self.lag[entry.lag.region] = LagReading(entry.lag.seconds, t / 1000 - entry.lag.age)
            if entry.lag.frozen:
                self.lag_frozen.add(entry.lag.region)
            else:
                self.lag_frozen.discard(entry.lag.region)
        if entry.operator is not None:
            commands.append(entry.operator)
        if entry.leader is not None:
            self.leader = entry.leader
        if entry.step is not None:
            self.step_facts[entry.step.name] = entry.step

    def _set_probes(self, fact: ProbesFact, t: int) -> None:
        for cell in self._probe_cells:
            region, signal, vantage = cell
            if region != fact.region:
                continue
            if fact.signal is not None and signal != fact.signal:
                continue
            if fact.vantage is not None and vantage != fact.vantage:
                continue
            self.probe_world[cell] = (fact.state, t)

    def _emit(self, t: int) -> bool:
        """The observations due at ``t``, fed to the health book; True when one of them may
        have changed a view, or a lag reading changed in a way the engine can see."""
        now = t / 1000
        policy = self.policy
        changed = False
        ok: bool | None
        detail: str
        if t % max(1, ms(policy.detection.interval)) == 0:
            feeders = self._feeders
            for cell, (state, since) in self.probe_world.items():
                if isinstance(state, Flap):
                    period = max(1, ms(state.flap))
                    state = "down" if ((t - since) // period) % 2 == 0 else "up"
                if state == "unknown":
                    continue
                if state == "up":
                    changed |= feeders[cell](now, True, "")
                else:
                    detail = FailureKind.TIMEOUT if state == "slow" else FailureKind.CONNECT
                    changed |= feeders[cell](now, False, detail)
            for s in policy.signals:
                if isinstance(s, CloudWatchAlarmSignal):
                    for region, names in s.alarms.items():
                        states = [self.alarms.get(n) for n in names]
                        if all(x is None for x in states):
                            continue
                        if "ALARM" in states:
                            ok, detail = False, FailureKind.ALARM.value
                        elif all(x == "OK" for x in states):
                            ok, detail = True, ""
                        else:
                            ok, detail = None, "insufficient_data"
                        changed |= self._feed(region, s.name, CLOUDWATCH_VANTAGE, now, ok, detail)
        for s in policy.signals:
            if isinstance(s, AwsHealthSignal) and t % max(1, ms(s.poll_interval)) == 0:
                if self.health_api is None:
                    continue
                wanted = {x.upper() for x in s.services}
                for region in policy.regions:
                    if self.health_api == "unavailable":
                        ok, detail = None, FailureKind.HEALTH_API_UNAVAILABLE.value
                    else:
                        hit = any((region, svc) in self.open_events for svc in wanted)
                        ok, detail = not hit, (FailureKind.EVENT.value if hit else "")
                    changed |= self._feed(region, s.name, AWS_HEALTH_VANTAGE, now, ok, detail)
        replication = policy.replication
        if replication is not None and t % max(1, ms(replication.interval)) == 0:
            for region, seconds in self.lag_values.items():
                if region not in self.lag_frozen:
                    old = self.lag.get(region)
                    # A fresh copy of the same reading changes nothing the engine sees,
                    # unless the old one had grown too old (its deadline was judged).
                    if (
                        old is None
                        or old.seconds != seconds
                        or now - old.observed_at > replication.max_age
                    ):
                        changed = True
                    self.lag[region] = LagReading(seconds, now - self.lag_age.get(region, 0.0))
        return changed

    def _feed(
        self, region: str, signal: str, vantage: str, at: float, ok: bool | None, detail: str
    ) -> bool:
        feed = self._feeders.get((region, signal, vantage))
        if feed is None:
            try:
                feed = self.book.feeder(region, signal, vantage)
            except KeyError:
                return False  # nothing in the policy expects it (an alarm of no region)
            self._feeders[(region, signal, vantage)] = feed
        return feed(at, ok, detail)

    # -- runbook -------------------------------------------------------------------------

    def _approve(self, t: int) -> None:
        ex = self.exec
        if ex is None:
            return
        for name, (_, outcome, started) in list(ex.running.items()):
            if outcome == "approval":
                ex.running[name] = (t, "succeed", started)
        self._progress(t)

    def _progress(self, t: int) -> None:
        ex = self.exec
        if ex is None or ex.done:
            return
        changed = True
        while changed and not ex.done:
            changed = False
            for name, (end, outcome, started) in list(ex.running.items()):
                if end > t:
                    continue
                changed = True
                del ex.running[name]
                step = ex.steps[name]
                ex.record.steps.append((name, started / 1000, end / 1000, outcome))
                if outcome == "succeed":
                    ex.status[name] = "succeeded"
                elif ex.attempts[name] <= step.retries:
                    if self.leader:
                        self._start_step(ex, step, end)
                    else:
                        ex.status[name] = "pending"  # retried once the lease is back
                else:
                    ex.status[name] = "failed"
                    if step.on_failure is OnFailure.CONTINUE:
                        ex.status[name] = "continued"
                    else:
                        ex.done, ex.ok = True, False
                        how = "failed" if outcome == "fail" else "timed out"
                        ex.error = f"step {name} {how} after {ex.attempts[name]} attempt(s)"
                        break
            if ex.done or not self.leader:
                break
            for name in ex.order:
                if ex.status[name] != "pending":
                    continue
                step = ex.steps[name]
                if all(ex.status[d] in ("succeeded", "continued") for d in step.after):
                    self._start_step(ex, step, t)
                    changed = True
        if not ex.done and all(s in ("succeeded", "continued") for s in ex.status.values()):
            ex.done, ex.ok = True, True
        self.state = set_waiting_approval(self.state, ex.waiting_approval())
        if ex.done:
            ex.record.finished_at = t / 1000
            ex.record.ok = ex.ok
            ex.record.error = ex.error
            self.state = finish_run(self.state, t / 1000, ex.ok, ex.error)
            self.exec = None

    def _start_step(self, ex: _RunExec, step: Step, t: int) -> None:
        """Start one attempt; its end is known now (virtual time), except an approval's,
        which ends when an operator approves or at the step timeout, whichever is first."""
        ex.status[step.name] = "running"
        ex.attempts[step.name] += 1
        fact = self.step_facts.get(step.name)
        timeout = ms(step.timeout)
        if fact is not None and fact.outcome == "hang":
            end, outcome = t + timeout, "timeout"
        elif fact is not None:
            end = t + ms(fact.duration)
            outcome = "succeed" if fact.outcome == "succeed" else "fail"
            if end - t > timeout:
                end, outcome = t + timeout, "timeout"
        elif step.action == APPROVAL_ACTION:
            end, outcome = t + timeout, "approval"
        elif step.action == "wait":
            end, outcome = t + min(ms(_wait_seconds(step)), timeout), "succeed"
        else:
            end, outcome = t, "succeed"
        ex.running[step.name] = (end, outcome, t)
        self._at(end)  # a step's end is judged


def _start_state(scenario: Scenario, policy: Policy) -> ServiceState:
    start = scenario.start
    if start is None:
        return ServiceState(service=policy.service, active_region=policy.primary)
    moves = tuple(
        Move(at=-m.ago, kind=Action(m.kind), target=m.to)
        for m in sorted(start.moves, key=lambda m: -m.ago)
    )
    last = start.last_automatic_move
    return ServiceState(
        service=policy.service,
        active_region=start.active_region or policy.primary,
        paused=start.paused,
        moves=moves,
        last_move_finished_at=None if last is None else -last,
    )


def _wait_seconds(step: Step) -> float:
    raw = step.params.get("duration", "0s")
    try:
        return parse_duration(raw)
    except ValueError:
        return 0.0
