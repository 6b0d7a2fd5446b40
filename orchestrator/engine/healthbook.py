"""The health book: sliding windows of observations, turned into region verdicts.

One :class:`HealthBook` per service. It is the only stateful part of the brain, and it is
deterministic: the same observations fed in the same order, queried at the same ``now``,
give the same verdicts. It never reads a clock; callers pass ``now``.

Semantics (DESIGN.md, "Verdict semantics"):

* per (signal, vantage) cell: *failing* once the detection rule holds (last
  ``consecutive_failures`` observations failed, or the failure ratio over the window is
  reached); it recovers only after ``recovery_successes`` successes in a row with the ratio
  rule no longer holding; *passing* when not failing and the last ``recovery_successes``
  observations since any failure succeeded (hysteresis for failures below the rule too, so a
  target flapping faster than the rule can trip never looks healthy); *unknown* when the
  latest observation is older than ``staleness``, was itself unknown, or came too soon
  after a failure;
* per vantage: failing if any of its signals is failing, passing if all are passing;
* one probe, one count: a probe cell takes an observation only when it comes at least
  ``BURST_TOLERANCE`` x ``detection.interval`` after the last one it took (see
  :class:`Intake`); a burst (a buggy or hostile agent, a replay, a scheduler hiccup) is
  refused, so three failures 0.1 s apart never meet ``consecutive_failures: 3``. The rule
  lives here, not in one source, because every source (local probes, agents over MQTT, the
  scenario simulator) feeds this book and only this book knows the policy's interval;
* per region: ``down`` when at least ``quorum`` vantage points see it failing, ``healthy``
  when at least ``quorum`` see it passing and none failing, ``degraded`` when some (fewer
  than quorum) see it failing, ``unknown`` otherwise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.vocabulary import Reason, Verdict, View
from orchestrator.policy.models import (
    AWS_HEALTH_VANTAGE,
    CLOUDWATCH_VANTAGE,
    AwsHealthSignal,
    CloudWatchAlarmSignal,
    Policy,
)

# Enum members bound once: on Python 3.11 each `View.X` attribute lookup goes through the
# Enum metaclass and costs ~100 ns, which adds up over 36 cells per service per tick.
_FAILING = View.FAILING
_PASSING = View.PASSING
_UNKNOWN = View.UNKNOWN
_DOWN = Verdict.DOWN
_DEGRADED = Verdict.DEGRADED
_HEALTHY = Verdict.HEALTHY
_UNKNOWN_VERDICT = Verdict.UNKNOWN

# Two observations of one probe cell closer together than this share of the detection
# interval are not two probes. Half the interval: a probe's time is when its answer came, so
# a slow answer (up to the probe timeout, itself at most the interval) followed by a fast
# one can legitimately arrive less than an interval apart; half an interval between two
# answers is what a timeout up to half the interval (the default is 5 s of 10 s) always
# leaves. With a longer timeout, the fast answer after a slow one may be refused: detection
# is then one interval later, never earlier.
BURST_TOLERANCE = 0.5


class Intake(StrEnum):
    """What the book did with an observation (a fixed vocabulary, safe as a metric label)."""

    ACCEPTED = "accepted"
    UNEXPECTED = "unexpected"  # no cell of the policy expects it (service, region, signal, vantage)
    OUT_OF_ORDER = "out_of_order"  # not newer than the cell's latest: late, or a redelivery
    TOO_SOON = "too_soon"  # closer to the cell's latest than a probe interval allows


# Unknown-cell details, shown as evidence.
STALE = "stale"
NO_DATA = "no_data"
RECENT_FAILURE = "recent_failure"


@dataclass(frozen=True, slots=True)
class SignalView:
    """Evidence: one signal as seen from one vantage point."""

    signal: str
    vantage: str
    view: View
    detail: str  # failure kind, or why unknown
    last_at: float | None
    last_ok: bool | None
    consecutive_failures: int
    consecutive_successes: int
    failure_ratio: float | None
    failing_since: float | None
    target: str


@dataclass(frozen=True, slots=True)
class VantageView:
    vantage: str
    view: View
    signals: tuple[SignalView, ...]


@dataclass(frozen=True, slots=True)
class RegionVerdict:
    """A region's verdict, with the vantage points behind it and since when it holds."""

    region: str
    verdict: Verdict
    since: float
    quorum: int
    failing: tuple[str, ...]  # vantage points seeing the region failing
    passing: tuple[str, ...]
    unknown: tuple[str, ...]
    reasons: tuple[Reason, ...] = ()  # stale_data, health_api_unavailable
    recent_failures: bool = False  # some signal failed lately without the rule holding yet


class _Cell:
    """One (region, signal, vantage) window. Counters are kept incrementally so that a
    query costs O(1) and an observation amortised O(1)."""

    __slots__ = (
        "consec_fail",
        "consec_ok",
        "failing",
        "failing_since",
        "fails_in_window",
        "last_at",
        "last_detail",
        "last_ok",
        "min_gap",
        "min_samples",
        "need_fail",
        "need_ok",
        "ratio",
        "recovering",
        "region",
        "signal",
        "staleness",
        "target",
        "vantage",
        "window",
        "window_len",
    )

    def __init__(
        self,
        region: str,
        signal: str,
        vantage: str,
        target: str,
        *,
        need_fail: int,
        need_ok: int,
        ratio: float | None,
        window_len: float,
        min_samples: int,
        staleness: float,
        min_gap: float = 0.0,
    ) -> None:
        self.region = region
        self.signal = signal
        self.vantage = vantage
        self.target = target
        self.need_fail = need_fail
        self.need_ok = need_ok
        self.ratio = ratio
        self.window_len = window_len
        self.min_samples = min_samples
        self.staleness = staleness
        self.min_gap = min_gap
        self.window: deque[tuple[float, bool]] = deque()
        self.fails_in_window = 0
        self.consec_fail = 0
        self.consec_ok = 0
        self.failing = False
        # Any failure, even one below the rule, must be followed by `need_ok` successes in a
        # row before the cell passes again: so a target flapping faster than the rule can
        # trip is never healthy (DESIGN: hysteresis).
        self.recovering = False
        self.failing_since: float | None = None
        self.last_at: float | None = None
        self.last_ok: bool | None = None
        self.last_detail = ""

    def observe(self, at: float, ok: bool | None, detail: str) -> Intake:
        last_at = self.last_at
        if last_at is not None:
            if at <= last_at:
                # A late arrival (the newer view already counts) or a redelivery (MQTT QoS 1
                # is at-least-once): counting it again would make a failure count twice.
                return Intake.OUT_OF_ORDER
            if at - last_at < self.min_gap:
                return Intake.TOO_SOON
        self.last_at = at
        self.last_ok = ok
        self.last_detail = detail
        if ok is None:
            return Intake.ACCEPTED
        if self.ratio is not None:
            window = self.window
            window.append((at, ok))
            if not ok:
                self.fails_in_window += 1
            horizon = at - self.window_len
            while window and window[0][0] <= horizon:
                _, old_ok = window.popleft()
                if not old_ok:
                    self.fails_in_window -= 1
        if ok:
            self.consec_ok += 1
            self.consec_fail = 0
            if self.recovering and self.consec_ok >= self.need_ok:
                self.recovering = False
        else:
            self.consec_fail += 1
            self.consec_ok = 0
            self.recovering = True
        rule = self.consec_fail >= self.need_fail or self._ratio_holds()
        if not self.failing:
            if rule:
                self.failing = True
                self.failing_since = at
        elif self.consec_ok >= self.need_ok and not rule:
            self.failing = False
            self.failing_since = None
        return Intake.ACCEPTED

    def observe_changed(self, at: float, ok: bool | None, detail: str) -> bool:
        """``observe``, answering whether the cell's view may have changed: data after a
        silence (or the first), or a change of what decides the view (failing, recovering,
        what the latest observation said). False means every view of the cell is the same
        after the observation as before it, at any time (the scenario simulator then skips
        the engine)."""
        last_at = self.last_at
        before = (self.failing, self.recovering, self.last_ok, self.last_detail)
        if self.observe(at, ok, detail) is not Intake.ACCEPTED:
            return False  # late, a redelivery or too soon: not counted, nothing changed
        return (
            last_at is None
            or at - last_at > self.staleness
            or before != (self.failing, self.recovering, self.last_ok, self.last_detail)
        )

    def _ratio_holds(self) -> bool:
        if self.ratio is None:
            return False
        n = len(self.window)
        return n >= self.min_samples and self.fails_in_window >= self.ratio * n

    def view(self, now: float) -> tuple[View, str]:
        last_at = self.last_at
        if last_at is None:
            return _UNKNOWN, NO_DATA
        if now - last_at > self.staleness:
            return _UNKNOWN, STALE
        if self.last_ok is None:
            return _UNKNOWN, self.last_detail or NO_DATA
        if self.failing:
            return _FAILING, self.last_detail
        if self.last_ok and not self.recovering:
            return _PASSING, ""
        return _UNKNOWN, RECENT_FAILURE

    def evidence(self, now: float) -> SignalView:
        view, detail = self.view(now)
        n = len(self.window)
        return SignalView(
            signal=self.signal,
            vantage=self.vantage,
            view=view,
            detail=detail,
            last_at=self.last_at,
            last_ok=self.last_ok,
            consecutive_failures=self.consec_fail,
            consecutive_successes=self.consec_ok,
            failure_ratio=(self.fails_in_window / n) if (self.ratio is not None and n) else None,
            failing_since=self.failing_since,
            target=self.target,
        )


class HealthBook:
    """Per-service sliding windows and the verdicts they give."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.service = policy.service
        self.quorum = policy.detection.quorum
        self._cells: dict[tuple[str, str, str], _Cell] = {}
        # region -> [(vantage, [cells])]
        self._layout: dict[str, list[tuple[str, list[_Cell]]]] = {}
        self._last: dict[str, tuple[Verdict, float]] = {}
        d = policy.detection
        for region in policy.regions:
            by_vantage: dict[str, list[_Cell]] = {}
            for signal in policy.signals:
                specs: list[tuple[str, int, int, float | None]]
                # State signals (one observation says it all: failing at the first) need
                # no burst rule; counted probe signals do.
                min_gap = 0.0
                if isinstance(signal, AwsHealthSignal):
                    # A state signal: failing while an event is open, at once, no hysteresis.
                    specs = [(AWS_HEALTH_VANTAGE, 1, 1, None)]
                    stale = max(d.staleness, 2.5 * signal.poll_interval)
                elif isinstance(signal, CloudWatchAlarmSignal):
                    if not signal.alarms.get(region):
                        continue
                    specs = [(CLOUDWATCH_VANTAGE, 1, 1, None)]
                    stale = d.staleness
                else:
                    vantages = signal.vantage or policy.vantage_points
                    specs = [
                        (v, d.consecutive_failures, d.recovery, d.failure_ratio) for v in vantages
                    ]
                    stale = d.staleness
                    min_gap = d.interval * BURST_TOLERANCE
                for vantage, need_fail, need_ok, ratio in specs:
                    cell = _Cell(
                        region,
                        signal.name,
                        vantage,
                        signal.region_target(region),
                        need_fail=need_fail,
                        need_ok=need_ok,
                        ratio=ratio,
                        window_len=d.window,
                        min_samples=d.min_samples,
                        staleness=stale,
                        min_gap=min_gap,
                    )
                    self._cells[(region, signal.name, vantage)] = cell
                    by_vantage.setdefault(vantage, []).append(cell)
            self._layout[region] = list(by_vantage.items())

    def cells(self) -> list[tuple[str, str, str]]:
        """Every (region, signal, vantage) this book expects observations for."""
        return list(self._cells)

    def stale_times(self, now: float) -> list[tuple[tuple[str, str, str], float]]:
        """When each (region, signal, vantage) cell with data turns stale unless observed
        again, for those at or after ``now`` (within half a millisecond): the only way a
        verdict changes with time alone."""
        horizon = now - 0.0005
        out: list[tuple[tuple[str, str, str], float]] = []
        for key, cell in self._cells.items():
            last = cell.last_at
            if last is not None and last + cell.staleness >= horizon:
                out.append((key, last + cell.staleness))
        return out

    def feeder(
        self, region: str, signal: str, vantage: str
    ) -> Callable[[float, bool | None, str], bool]:
        """A direct line to one cell for the scenario simulator's hot loop: ``feed(at, ok,
        detail)`` observes and answers whether the cell's view may have changed."""
        return self._cells[(region, signal, vantage)].observe_changed

    def observe(
        self, obs: Observation, note: Callable[[Observation, float | None], None] | None = None
    ) -> Intake:
        """Take one observation; what became of it (only ``ACCEPTED`` counts). ``note`` (the
        flight recorder's) is called with an accepted observation and the cell's previous
        one's time when it says something new: the first of its cell, a change of ``ok`` or
        ``detail``, or one after a silence long enough to have made the view stale."""
        cell = self._cells.get((obs.region, obs.signal, obs.vantage))
        if cell is None:
            return Intake.UNEXPECTED
        if note is None:
            return cell.observe(obs.at, obs.ok, obs.detail)
        last_at, last_ok, last_detail = cell.last_at, cell.last_ok, cell.last_detail
        intake = cell.observe(obs.at, obs.ok, obs.detail)
        if intake is Intake.ACCEPTED and (
            last_at is None
            or obs.ok is not last_ok
            or obs.detail != last_detail
            or obs.at - last_at > cell.staleness
        ):
            note(obs, last_at)
        return intake

    def last_observations(
        self,
    ) -> list[tuple[str, str, str, float, bool | None, str]]:
        """(region, signal, vantage, at, ok, detail) of every cell's latest observation: a
        snapshot for the flight recorder."""
        return [
            (region, signal, vantage, cell.last_at, cell.last_ok, cell.last_detail)
            for (region, signal, vantage), cell in self._cells.items()
            if cell.last_at is not None
        ]

    def staleness(self, region: str, signal: str, vantage: str) -> float:
        return self._cells[(region, signal, vantage)].staleness

    def observe_many(self, observations: Iterable[Observation]) -> None:
        cells = self._cells
        for obs in observations:
            cell = cells.get((obs.region, obs.signal, obs.vantage))
            if cell is not None:
                cell.observe(obs.at, obs.ok, obs.detail)

    def verdicts(self, now: float) -> dict[str, RegionVerdict]:
        """Every region's verdict at ``now``. Also remembers since when each verdict holds."""
        out: dict[str, RegionVerdict] = {}
        quorum = self.quorum
        for region, vantages in self._layout.items():
            failing: list[str] = []
            passing: list[str] = []
            unknown: list[str] = []
            stale = api_down = recent = False
            for vantage, cells in vantages:
                any_failing = False
                all_passing = True
                for cell in cells:
                    view, detail = cell.view(now)
                    if view is _FAILING:
                        any_failing = True
                    elif view is _UNKNOWN:
                        all_passing = False
                        if detail == STALE:
                            stale = True
                        elif detail == RECENT_FAILURE:
                            recent = True
                        elif detail == FailureKind.HEALTH_API_UNAVAILABLE:
                            api_down = True
                if any_failing:
                    failing.append(vantage)
                elif all_passing:
                    passing.append(vantage)
                else:
                    unknown.append(vantage)
            if len(failing) >= quorum:
                verdict = _DOWN
            elif failing:
                verdict = _DEGRADED
            elif len(passing) >= quorum:
                verdict = _HEALTHY
            else:
                verdict = _UNKNOWN_VERDICT
            last = self._last.get(region)
            if last is None or last[0] is not verdict:
                since = now
                self._last[region] = (verdict, now)
            else:
                since = last[1]
            reasons: tuple[Reason, ...] = ()
            if stale or api_down:
                reasons = tuple(
                    r
                    for r, on in (
                        (Reason.STALE_DATA, stale),
                        (Reason.HEALTH_API_UNAVAILABLE, api_down),
                    )
                    if on
                )
            out[region] = RegionVerdict(
                region,
                verdict,
                since,
                quorum,
                tuple(failing),
                tuple(passing),
                tuple(unknown),
                reasons,
                recent,
            )
        return out

    def evidence(self, region: str, now: float) -> tuple[VantageView, ...]:
        """Per-vantage, per-signal evidence for one region (for explain, API, status page)."""
        out: list[VantageView] = []
        for vantage, cells in self._layout.get(region, []):
            signals = tuple(c.evidence(now) for c in cells)
            views = {s.view for s in signals}
            if View.FAILING in views:
                view = View.FAILING
            elif views == {View.PASSING}:
                view = View.PASSING
            else:
                view = View.UNKNOWN
            out.append(VantageView(vantage, view, signals))
        return tuple(out)


def verdict_map(verdicts: Mapping[str, RegionVerdict]) -> dict[str, Verdict]:
    return {r: v.verdict for r, v in verdicts.items()}
