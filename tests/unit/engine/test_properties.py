"""Property tests (hypothesis) for the engine's invariants (DESIGN.md, principles 1, 4, 7 and
"Engine"): random guard settings, verdict maps over 2-4 regions, states, lag readings,
operator commands and leader flags; a health book + decide() loop on a virtual clock; and the
whole scenario simulator on random timelines. Bounded (<= 200 examples, no deadline) so that
the file runs in well under 20 s."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import HealthBook, RegionVerdict
from orchestrator.engine.state import (
    Command,
    Decision,
    Initiator,
    LagReading,
    Move,
    OperatorCommand,
    RunInfo,
    RunStatus,
    ServiceState,
    apply_decision,
    finish_run,
)
from orchestrator.engine.vocabulary import RUN_ACTIONS, Action, Phase, Reason, Verdict
from orchestrator.policy.durations import parse_duration as parse
from orchestrator.policy.models import (
    Failback,
    FailbackMode,
    Guards,
    LagPolicy,
    MaxFailovers,
    Mode,
    Policy,
)
from tests.unit.engine.conftest import (
    HOUR,
    REGIONS,
    SERVICE,
    VANTAGES,
    all_up,
    load,
    make_policy,
    obs,
    policy_data,
    sim_policy_data,
    simulate,
)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
H, D = Verdict.HEALTHY, Verdict.DOWN
NOW = 3 * 24 * HOUR  # far enough from 0 that every window fits before it


# -- strategies ---------------------------------------------------------------------------


# Strategies are built once (per region list) at import: building them per example would
# cost more than drawing from them.

RARELY = st.sampled_from([False, False, False, False, True])
MOSTLY = st.sampled_from([True, True, True, True, False])

GUARDS = st.builds(
    Guards,
    cooldown=st.sampled_from([0.0, 0.0, 60.0, 1800.0]),
    max_failovers=st.builds(
        MaxFailovers,
        count=st.integers(1, 3),
        window=st.sampled_from([600.0, 6 * HOUR, 24 * HOUR]),
    ),
    require_healthy_target=st.booleans(),
    on_lag_above_rpo=st.sampled_from(list(LagPolicy)),
    on_lag_unknown=st.sampled_from(list(LagPolicy)),
    require_approval=RARELY,
    failback=st.builds(
        Failback,
        mode=st.sampled_from(list(FailbackMode)),
        stable_period=st.sampled_from([60.0, 1800.0]),
    ),
)
MODES = st.sampled_from(list(Mode))
REASONS = st.lists(
    st.sampled_from([Reason.STALE_DATA, Reason.HEALTH_API_UNAVAILABLE]), unique=True, max_size=2
).map(tuple)
SOME_TIME_TODAY = st.one_of(st.none(), st.none(), st.floats(NOW - 24 * HOUR, NOW))
SOME_TIME_THIS_HOUR = st.none() | st.floats(NOW - HOUR, NOW)


@cache
def base_policy(n_regions: int, replication: bool) -> Policy:
    return make_policy(n_regions, replication=replication)


def policies(n: int) -> st.SearchStrategy[Policy]:
    return st.builds(
        lambda replication, guards, mode: base_policy(n, replication).model_copy(
            update={"guards": guards, "mode": mode}
        ),
        st.booleans(),
        GUARDS,
        MODES,
    )


def region_verdicts(regions: tuple[str, ...]) -> st.SearchStrategy[dict[str, RegionVerdict]]:
    def one(region: str) -> st.SearchStrategy[RegionVerdict]:
        return st.builds(
            RegionVerdict,
            region=st.just(region),
            verdict=st.sampled_from([H, D, H, D, Verdict.DEGRADED, Verdict.UNKNOWN]),
            since=st.floats(0.0, NOW),
            quorum=st.just(2),
            failing=st.just(()),
            passing=st.just(()),
            unknown=st.just(()),
            reasons=REASONS,
            recent_failures=st.booleans(),
        )

    return st.fixed_dictionaries({r: one(r) for r in regions})


def runs(regions: tuple[str, ...]) -> st.SearchStrategy[RunInfo | None]:
    def make(status: RunStatus, **kw: Any) -> RunInfo:
        done = status is not RunStatus.RUNNING
        return RunInfo(
            id="run-1",
            started_at=NOW - 60.0,
            status=status,
            finished_at=NOW - 30.0 if done else None,
            error="step x failed" if done else "",
            **kw,
        )

    return st.one_of(
        st.none(),
        st.none(),
        st.builds(
            make,
            status=st.sampled_from([RunStatus.RUNNING, RunStatus.FAILED]),
            kind=st.sampled_from(sorted(RUN_ACTIONS)),
            source=st.sampled_from(regions),
            target=st.sampled_from(regions),
            initiated_by=st.sampled_from(list(Initiator)),
            waiting_approval=st.booleans(),
        ),
    )


def states(regions: tuple[str, ...]) -> st.SearchStrategy[ServiceState]:
    moves = st.lists(
        st.builds(
            Move,
            at=st.floats(NOW - 2 * 24 * HOUR, NOW),
            kind=st.sampled_from([Action.FAILOVER, Action.SWITCHOVER, Action.FAILBACK]),
            target=st.sampled_from(regions),
        ),
        max_size=6,
    ).map(lambda ms: tuple(sorted(ms, key=lambda m: m.at)))
    return st.builds(
        ServiceState,
        service=st.just(SERVICE),
        active_region=st.sampled_from(regions),
        paused=RARELY,
        run=runs(regions),
        moves=moves,
        last_move_finished_at=SOME_TIME_TODAY,
        detected_at=SOME_TIME_THIS_HOUR,
    )


def lags(regions: tuple[str, ...]) -> st.SearchStrategy[dict[str, LagReading]]:
    # Half of the readings fresh and within the RPO of the test policies (1m, max_age 3m),
    # so that the choice between a lagging and a current standby comes up often.
    reading = st.builds(
        LagReading,
        seconds=st.none() | st.floats(0.0, 600.0),
        observed_at=st.floats(NOW - 600.0, NOW),
    ) | st.builds(LagReading, seconds=st.floats(0.0, 60.0), observed_at=st.floats(NOW - 120, NOW))
    return st.dictionaries(st.sampled_from(regions), reading)


def commands(regions: tuple[str, ...]) -> st.SearchStrategy[OperatorCommand | None]:
    return st.none() | st.builds(
        OperatorCommand,
        command=st.sampled_from(list(Command)),  # pause/resume/approve included
        to=st.none() | st.sampled_from([*regions, "sa-east-1"]),
        force=st.booleans(),
    )


@dataclass(frozen=True)
class Case:
    policy: Policy
    state: ServiceState
    verdicts: dict[str, RegionVerdict]
    lag: dict[str, LagReading]
    operator: OperatorCommand | None
    leader: bool

    def decide(self) -> Decision:
        return decide(
            self.policy,
            self.state,
            self.verdicts,
            self.lag,
            NOW,
            self.operator,
            leader=self.leader,
        )

    def verdict(self, region: str) -> Verdict:
        v = self.verdicts.get(region)
        return v.verdict if v is not None else Verdict.UNKNOWN


def _cases(n: int) -> st.SearchStrategy[Case]:
    regions = REGIONS[:n]
    return st.builds(
        Case,
        policy=policies(n),
        state=states(regions),
        verdicts=region_verdicts(regions),
        lag=lags(regions),
        operator=commands(regions),
        leader=MOSTLY,
    )


CASES = {n: _cases(n) for n in (2, 3, 4)}


def cases() -> st.SearchStrategy[Case]:
    """A policy over 2-4 regions with random guards and mode, a state, verdicts, lag
    readings, an operator command (or none) and a leader flag."""
    return st.sampled_from(sorted(CASES)).flatmap(CASES.__getitem__)


def automatic(d: Decision) -> bool:
    return d.starts_run and d.initiated_by is Initiator.POLICY


# -- invariants of one decision -----------------------------------------------------------


@SETTINGS
@given(cases())
def test_a_run_targets_a_healthy_region_unless_forced_or_allowed_unknown(case: Case) -> None:
    d = case.decide()
    if not d.starts_run:
        return
    assert d.target is not None
    assert d.target in case.policy.regions
    assert d.target != case.state.active_region
    target = case.verdict(d.target)
    if target is Verdict.HEALTHY:
        return
    forced = (
        case.operator is not None
        and case.operator.force
        and d.initiated_by is Initiator.OPERATOR
        and Reason.FORCED in d.reasons
    )
    if forced:
        return
    assert not case.policy.guards.require_healthy_target, f"{d.target} is {target}: {d}"
    assert d.initiated_by is Initiator.POLICY
    assert target is Verdict.UNKNOWN, f"{d.target} is {target}: {d}"


@SETTINGS
@given(cases())
def test_nothing_starts_while_paused_not_leader_or_running(case: Case) -> None:
    d = case.decide()
    if case.state.paused or not case.leader or case.state.running:
        assert not d.starts_run, d
    if not case.leader:
        assert Reason.NOT_LEADER in d.reasons
    if case.state.running:
        assert Reason.RUN_IN_PROGRESS in d.reasons
    elif case.state.paused:
        assert d.phase is Phase.PAUSED
        assert Reason.PAUSED in d.reasons


@SETTINGS
@given(cases())
def test_a_started_failover_stays_within_max_failovers(case: Case) -> None:
    d = case.decide()
    if d.action is not Action.FAILOVER:
        return
    limit = case.policy.guards.max_failovers
    before = sum(
        1 for m in case.state.moves if m.kind is Action.FAILOVER and m.at > NOW - limit.window
    )
    assert before + 1 <= limit.count, d


@SETTINGS
@given(cases())
def test_decide_is_deterministic_and_does_not_mutate_its_inputs(case: Case) -> None:
    policy_before = case.policy.model_dump()
    state_before = copy.deepcopy(case.state)
    verdicts_before = dict(case.verdicts)
    lag_before = dict(case.lag)
    first = case.decide()
    second = case.decide()
    assert first == second
    assert case.policy.model_dump() == policy_before
    assert case.state == state_before
    assert case.verdicts == verdicts_before
    assert case.lag == lag_before


@SETTINGS
@given(cases())
def test_advisory_mode_never_starts_an_automatic_run(case: Case) -> None:
    d = case.decide()
    if case.policy.mode is Mode.ADVISORY:
        assert not automatic(d), d


@SETTINGS
@given(cases())
def test_when_every_region_is_down_no_automatic_run_starts(case: Case) -> None:
    every_down = {
        r: RegionVerdict(r, Verdict.DOWN, 0.0, 2, (), (), ()) for r in case.policy.regions
    }
    d = Case(case.policy, case.state, every_down, case.lag, case.operator, case.leader).decide()
    assert not automatic(d), d
    if d.starts_run:  # only an operator forcing a named region can move now
        assert case.operator is not None and case.operator.force
        assert Reason.FORCED in d.reasons


@SETTINGS
@given(cases())
def test_decisions_are_self_consistent(case: Case) -> None:
    d = case.decide()
    assert len(d.reasons) == len(set(d.reasons))
    assert (d.detected_at is None) == (d.rto_remaining is None)
    if d.detected_at is not None:
        assert d.rto_remaining == case.policy.rto - (NOW - d.detected_at)
    if case.verdict(case.state.active_region) is Verdict.DOWN:
        assert d.detected_at is not None
    if d.starts_run:
        assert d.phase is Phase.FAILING_OVER
        assert d.target is not None
    if d.action is Action.AWAIT_APPROVAL:
        assert d.phase is Phase.AWAITING_APPROVAL
    if d.action is Action.RECOMMEND:
        assert case.policy.mode is Mode.ADVISORY


def within_rpo(case: Case, region: str) -> bool:
    """An oracle written apart from the engine: the region's lag cannot stand in the way
    of a move (known, fresh and within the RPO, or not replicated at all)."""
    replication = case.policy.replication
    if replication is None or region not in replication.sources:
        return True
    reading = case.lag.get(region)
    return (
        reading is not None
        and reading.seconds is not None
        and NOW - reading.observed_at <= replication.max_age
        and reading.seconds <= case.policy.rpo
    )


def engine_chose_the_target(case: Case, d: Decision) -> bool:
    """A decision naming a target the engine picked (a move, one waiting for approval or
    for a guard, a recommendation): not an operator's named region or failback, not an
    automatic failback, not the target of a run already under way."""
    if d.target is None:
        return False
    if d.initiated_by is Initiator.OPERATOR:
        op = case.operator
        assert op is not None
        return op.command is not Command.FAILBACK and op.to is None
    settled = (Reason.PRIMARY_RECOVERED, Reason.RUN_IN_PROGRESS, Reason.OPERATOR_REFUSED)
    return not any(r in d.reasons for r in settled)


def _replicated_cases(n: int) -> st.SearchStrategy[Case]:
    """Three or four regions, every standby replicated with a reading, the active region
    mostly down and the others mostly healthy, no run, no pause: where the engine chooses
    between a lagging and a current standby."""
    regions = REGIONS[:n]
    reading = st.builds(
        LagReading,
        seconds=st.none() | st.floats(0.0, 600.0),
        observed_at=st.floats(NOW - 600.0, NOW),
    ) | st.builds(LagReading, seconds=st.floats(0.0, 60.0), observed_at=st.floats(NOW - 120, NOW))

    def case(
        active: str,
        picks: tuple[Verdict, ...],
        active_down: bool,
        policy: Policy,
        lag: dict[str, LagReading],
        operator: OperatorCommand | None,
        leader: bool,
    ) -> Case:
        vs = {
            r: RegionVerdict(r, v, 0.0, 2, (), (), ()) for r, v in zip(regions, picks, strict=True)
        }
        if active_down:
            vs[active] = RegionVerdict(active, D, 0.0, 2, (), (), ())
        return Case(policy, ServiceState(SERVICE, active), vs, lag, operator, leader)

    return st.builds(
        case,
        active=st.sampled_from(regions),
        picks=st.tuples(*[st.sampled_from([H, H, H, D, Verdict.DEGRADED, Verdict.UNKNOWN])] * n),
        active_down=MOSTLY,
        policy=st.builds(
            lambda guards, mode: base_policy(n, True).model_copy(
                update={"guards": guards, "mode": mode}
            ),
            GUARDS,
            MODES,
        ),
        lag=st.fixed_dictionaries({r: reading for r in regions[1:]}),
        operator=commands(regions),
        leader=MOSTLY,
    )


REPLICATED = {n: _replicated_cases(n) for n in (3, 4)}


@SETTINGS
@given(cases() | st.sampled_from([3, 4]).flatmap(REPLICATED.__getitem__))
def test_never_a_target_beyond_the_rpo_while_a_healthy_one_within_it_exists(case: Case) -> None:
    d = case.decide()
    if not engine_chose_the_target(case, d):
        return
    assert d.target is not None
    if within_rpo(case, d.target):
        return
    better = [
        r
        for r in case.policy.regions
        if r not in (case.state.active_region, d.target)
        and case.verdict(r) is Verdict.HEALTHY
        and within_rpo(case, r)
    ]
    assert not better, f"{d.target} is beyond the RPO while {better} are within: {d}"


@SETTINGS
@given(cases(), st.floats(0.0, 3600.0), st.booleans())
def test_an_operator_move_never_starts_a_cooldown(case: Case, after: float, ok: bool) -> None:
    d = case.decide()
    if not d.starts_run:
        return
    finished = finish_run(apply_decision(case.state, d, "run-x"), NOW + after, ok=ok)
    if d.initiated_by is Initiator.OPERATOR:
        assert finished.last_move_finished_at == case.state.last_move_finished_at
    else:
        assert finished.last_move_finished_at == NOW + after


@SETTINGS
@given(
    events=st.lists(
        st.sampled_from(["down", "up", "up", "failover", "failback", "switchover"]),
        min_size=1,
        max_size=40,
    )
)
def test_the_cooldown_holds_only_after_an_automatic_move(events: list[str]) -> None:
    """Outages and operator moves in any order, every run finishing 30s after its start:
    the cooldown reason appears exactly while the last automatic run ended less than the
    cooldown ago."""
    cooldown = 600.0
    policy = make_policy(
        2, guards={"cooldown": "10m", "max_failovers": {"count": 20, "window": "1h"}}
    )
    other = {policy.regions[0]: policy.regions[1], policy.regions[1]: policy.regions[0]}
    svc = ServiceState(SERVICE, policy.primary)
    last_automatic_end: float | None = None
    for i, event in enumerate(events):
        now = i * 120.0
        active = svc.active_region
        down = event == "down"
        verdicts = {
            active: RegionVerdict(active, D if down else H, 0.0, 2, (), (), ()),
            other[active]: RegionVerdict(other[active], H, 0.0, 2, (), (), ()),
        }
        operator = None if event in ("down", "up") else OperatorCommand(Command(event))
        d = decide(policy, svc, verdicts, {}, now, operator)
        cooling = last_automatic_end is not None and now - last_automatic_end < cooldown
        if down and operator is None:
            assert (Reason.COOLDOWN in d.reasons) == cooling, (i, events, d)
        svc = apply_decision(svc, d, f"run-{i}")
        if svc.running:
            svc = finish_run(svc, now + 30.0, ok=True)
            if d.initiated_by is Initiator.POLICY:
                last_automatic_end = now + 30.0


# -- invariants over sequences ------------------------------------------------------------


@SETTINGS
@given(
    count=st.integers(1, 3),
    window=st.sampled_from([600.0, 3600.0]),
    flips=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_a_loop_of_decisions_never_exceeds_max_failovers(
    count: int, window: float, flips: list[bool]
) -> None:
    """Whatever the active region does, the failovers started in any window are <= count."""
    policy = make_policy(
        2, guards={"cooldown": "0s", "max_failovers": {"count": count, "window": f"{int(window)}s"}}
    )
    other = {policy.regions[0]: policy.regions[1], policy.regions[1]: policy.regions[0]}
    st_ = ServiceState(SERVICE, policy.primary)
    starts: list[float] = []
    for i, down in enumerate(flips):
        now = i * 60.0
        active = st_.active_region
        verdicts = {
            active: RegionVerdict(
                active, Verdict.DOWN if down else Verdict.HEALTHY, 0.0, 2, (), (), ()
            ),
            other[active]: RegionVerdict(other[active], Verdict.HEALTHY, 0.0, 2, (), (), ()),
        }
        d = decide(policy, st_, verdicts, {}, now)
        st_ = apply_decision(st_, d, f"run-{i}")
        if d.action is Action.FAILOVER:
            starts.append(now)
            assert sum(1 for s in starts if s > now - window) <= count
        if st_.running:
            st_ = finish_run(st_, now, ok=True)


def test_max_failovers_holds_at_its_largest_count() -> None:
    # The primary stays down; the service moves between the two standbys, every move a
    # failover. The guard allows exactly `count` of them in the window, even at the largest
    # count a policy may set (the state keeps a bounded history of moves).
    count = 20
    policy = make_policy(
        3, guards={"cooldown": "0s", "max_failovers": {"count": count, "window": "24h"}}
    )
    primary, b, c = policy.regions
    svc = ServiceState(SERVICE, primary)
    started = 0
    for i in range(count + 5):
        now = float(i)
        active = svc.active_region
        other = c if active == b else b
        verdicts = {
            r: RegionVerdict(r, Verdict.HEALTHY if r == other else Verdict.DOWN, 0.0, 2, (), (), ())
            for r in policy.regions
        }
        d = decide(policy, svc, verdicts, {}, now)
        if i < count:
            assert d.action is Action.FAILOVER, (i, d)
        svc = apply_decision(svc, d, f"run-{i}")
        if d.action is Action.FAILOVER:
            started += 1
        if svc.running:
            svc = finish_run(svc, now, ok=True)
    assert started == count


# -- the health book and decide() together, on a virtual clock ----------------------------

INTERVAL = 10.0
CHOICES = ("fail", "ok", "fail", "ok", "silent", "unknown")  # fail/ok twice as likely


@cache
def loop_policy(
    quorum: int, consecutive: int, ratio: float | None, require_healthy: bool
) -> Policy:
    detection: dict[str, Any] = {
        "interval": "10s",
        "consecutive_failures": consecutive,
        "quorum": quorum,
        "staleness": "25s",
        "window": "1m",
        "min_samples": 3,
    }
    if ratio is not None:
        detection["failure_ratio"] = ratio
    return load(
        policy_data(
            2,
            detection=detection,
            guards={
                "cooldown": "0s",
                "max_failovers": {"count": 20, "window": "1h"},
                "require_healthy_target": require_healthy,
            },
        )
    )


tick = st.tuples(*[st.sampled_from(CHOICES)] * (2 * len(VANTAGES)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    quorum=st.integers(1, 3),
    consecutive=st.integers(1, 3),
    ratio=st.none() | st.just(0.5),
    require_healthy=st.booleans(),
    ticks=st.lists(tick, min_size=6, max_size=40),
)
def test_no_failover_unless_a_quorum_of_vantages_was_fed_failures(
    quorum: int,
    consecutive: int,
    ratio: float | None,
    require_healthy: bool,
    ticks: list[tuple[str, ...]],
) -> None:
    policy = loop_policy(quorum, consecutive, ratio, require_healthy)
    regions = list(policy.regions)
    staleness = policy.detection.staleness
    book = HealthBook(policy)
    svc = ServiceState(SERVICE, policy.primary)
    failed_ever: dict[str, set[str]] = {r: set() for r in regions}
    last_fed: dict[tuple[str, str], tuple[float, str]] = {}
    for i, choices in enumerate(ticks):
        now = i * INTERVAL
        for j, choice in enumerate(choices):
            region, vantage = regions[j // len(VANTAGES)], VANTAGES[j % len(VANTAGES)]
            if choice == "silent":
                continue
            ok = {"ok": True, "fail": False, "unknown": None}[choice]
            book.observe(obs(region, vantage, ok, now))
            last_fed[(region, vantage)] = (now, choice)
            if choice == "fail":
                failed_ever[region].add(vantage)
        verdicts = book.verdicts(now)
        d = decide(policy, svc, verdicts, {}, now)
        if d.starts_run:
            source, target = svc.active_region, d.target
            assert target is not None
            fresh = {
                v for (r, v), (at, _) in last_fed.items() if r == source and now - at <= staleness
            }
            witnesses = failed_ever[source] & fresh
            assert len(witnesses) >= quorum, (
                f"failover from {source} at {now}s with failures fed from only"
                f" {sorted(witnesses)} (quorum {quorum}); verdicts {verdicts}"
            )
            passing = {
                v
                for (r, v), (at, choice) in last_fed.items()
                if r == target and choice == "ok" and now - at <= staleness
            }
            if require_healthy:
                assert len(passing) >= quorum, f"target {target} at {now}s: {verdicts[target]}"
            assert verdicts[target].verdict in (Verdict.HEALTHY, Verdict.UNKNOWN)
        svc = apply_decision(svc, d, f"run-{i}")
        if svc.running:
            svc = finish_run(svc, now, ok=True)


@SETTINGS
@given(ticks=st.lists(tick, min_size=1, max_size=30))
def test_the_health_book_is_deterministic(ticks: list[tuple[str, ...]]) -> None:
    policy = loop_policy(2, 3, 0.5, True)
    regions = list(policy.regions)
    books = [HealthBook(policy), HealthBook(policy)]
    for i, choices in enumerate(ticks):
        now = i * INTERVAL
        observations = [
            obs(regions[j // 3], VANTAGES[j % 3], {"ok": True, "fail": False}.get(c), now)
            for j, c in enumerate(choices)
            if c != "silent"
        ]
        for b in books:
            b.observe_many(observations)
        first, second = (b.verdicts(now) for b in books)
        assert first == second
        for v in first.values():
            # unknown data never makes a verdict: down needs quorum failing, healthy quorum
            # passing and nothing failing
            if v.verdict is Verdict.DOWN:
                assert len(v.failing) >= v.quorum
            if v.verdict is Verdict.HEALTHY:
                assert len(v.passing) >= v.quorum and not v.failing


# -- the whole simulator on random timelines ----------------------------------------------

SIM_SECONDS = 600


@cache
def sim_policy(regions: int) -> dict[str, Any]:
    # retries 0: a retry that ignores the lease is a known bug with its own xfail test
    # (test_simulator.py::test_no_retry_starts_while_the_leader_lease_is_lost).
    data = sim_policy_data(
        regions, guards={"max_failovers": {"count": 2, "window": "5m"}, "cooldown": "1m"}
    )
    for step in data["runbooks"]["failover"]:
        step["retries"] = 0
    return data


def _fact(regions: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    at = st.integers(1, SIM_SECONDS // 5).map(lambda n: f"{n * 5}s")
    probe_state = st.sampled_from(["down", "up", "down", "slow", "unknown"]) | st.builds(
        lambda s: {"flap": f"{s}s"}, st.sampled_from([10, 20, 30])
    )
    probes = st.builds(
        lambda r, s, v: {"region": r, "state": s, **({"vantage": v} if v else {})},
        st.sampled_from(regions),
        probe_state,
        st.sampled_from([None, None, *VANTAGES]),
    )
    operator = st.builds(
        lambda c, to, force: {
            "command": c,
            **({"to": to} if to else {}),
            **({"force": True} if force else {}),
        },
        st.sampled_from(["failover", "approve", "failback", "pause", "resume", "switchover"]),
        st.none() | st.sampled_from(regions),
        RARELY,
    )
    step = st.builds(
        lambda name, outcome, d: {"name": name, "outcome": outcome, "duration": f"{d}s"},
        st.sampled_from(["notify", "promote-db", "flip-dns", "approve-failback"]),
        st.sampled_from(["fail", "hang", "succeed"]),
        st.sampled_from([0, 10, 45]),
    )
    outage = st.builds(
        lambda r: {"region": r, "state": "down"}, st.sampled_from(regions[:2])
    )  # a whole region down, seen from everywhere
    return st.one_of(
        st.builds(lambda t, p: {"at": t, "probes": p}, at, probes),
        st.builds(lambda t, p: {"at": t, "probes": p}, at, outage),
        st.builds(lambda t, s: {"at": t, "step": s}, at, step),
        st.builds(lambda t, b: {"at": t, "leader": b}, at, st.booleans()),
        st.builds(lambda t, o: {"at": t, "operator": o}, at, operator),
        st.builds(lambda t, s: {"at": t, "step": s}, at, step),
    )


TIMELINES = {
    n: st.lists(_fact(REGIONS[:n]), min_size=3, max_size=20).map(
        lambda facts, n=n: [*all_up(REGIONS[:n]), *sorted(facts, key=lambda f: parse(f["at"]))]
    )
    for n in (2, 3)
}


def _state_at(timeline: list[dict[str, Any]], t: float, key: str, default: Any) -> Any:
    value = default
    for f in timeline:
        if parse(f["at"]) <= t and key in f:
            value = f[key]
    return value


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([2, 3]).flatmap(lambda n: st.tuples(st.just(n), TIMELINES[n])))
def test_simulated_timelines_keep_the_invariants(case: tuple[int, list[dict[str, Any]]]) -> None:
    n, timeline = case
    policy_data_ = sim_policy(n)
    result = simulate(policy_data_, timeline, duration=f"{SIM_SECONDS}s")
    primary = REGIONS[0]
    quorum = 2
    window, count = 300.0, 2
    previous_end = -1.0
    failover_starts: list[float] = []
    for run in result.runs:
        # one run at a time
        assert run.started_at >= previous_end, result.runs
        previous_end = run.finished_at if run.finished_at is not None else float("inf")
        # never without the lease
        assert _state_at(timeline, run.started_at, "leader", True), run
        # no step attempt starts without the lease
        for name, start, _, _ in run.steps:
            assert _state_at(timeline, start, "leader", True), (name, start, run)
        if run.kind is Action.FAILOVER:
            failover_starts.append(run.started_at)
            inside = [s for s in failover_starts if s > run.started_at - window]
            assert len(inside) <= count, failover_starts
        if run.initiated_by != "policy":
            continue
        # automatic runs: not paused, and (failback being manual) only when a quorum of
        # vantage points was fed failures for the region being left
        paused = False
        for f in timeline:
            if parse(f["at"]) > run.started_at:
                break
            cmd = f.get("operator", {}).get("command")
            paused = {"pause": True, "resume": False}.get(cmd, paused)
        assert not paused, run
        witnesses = {
            v
            for f in timeline
            if "probes" in f
            and parse(f["at"]) <= run.started_at
            and f["probes"]["region"] == run.source
            and f["probes"]["state"] != "up"
            and f["probes"]["state"] != "unknown"
            for v in ([f["probes"]["vantage"]] if "vantage" in f["probes"] else VANTAGES)
        }
        assert len(witnesses) >= quorum, (run, witnesses)
        assert run.target != primary or run.kind is Action.FAILBACK
