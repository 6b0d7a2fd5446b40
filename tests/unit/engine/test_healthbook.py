"""The health book: detection rules, hysteresis, staleness, quorum, and the evidence behind a
verdict (DESIGN.md, "Verdict semantics"). Every call takes ``now``: no clock is read."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from orchestrator.engine.healthbook import (
    BURST_TOLERANCE,
    NO_DATA,
    RECENT_FAILURE,
    STALE,
    HealthBook,
    Intake,
)
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.vocabulary import Reason, Verdict, View
from tests.unit.engine.conftest import (
    PRIMARY,
    SERVICE,
    STANDBY,
    VANTAGES,
    make_policy,
    obs,
)

INTERVAL = 10.0


def book(**detection: object) -> HealthBook:
    return HealthBook(make_policy(detection=detection) if detection else make_policy())


def feed(
    hb: HealthBook,
    pattern: str,
    *,
    region: str = PRIMARY,
    vantages: Iterable[str] = VANTAGES,
    start: float = 0.0,
    signal: str = "api",
) -> float:
    """Feed one observation per character at the probe interval: F fail, T ok, ? unknown,
    . silent. Returns the time of the last slot."""
    t = start
    for i, ch in enumerate(pattern):
        t = start + i * INTERVAL
        if ch == ".":
            continue
        ok = {"F": False, "T": True, "?": None}[ch]
        for v in vantages:
            assert hb.observe(obs(region, v, ok, t, signal=signal)) is Intake.ACCEPTED
    return t


def view(hb: HealthBook, now: float, region: str = PRIMARY, vantage: str = "local") -> View:
    for vv in hb.evidence(region, now):
        if vv.vantage == vantage:
            return vv.view
    raise AssertionError(f"no vantage {vantage} for {region}")


def verdict(hb: HealthBook, now: float, region: str = PRIMARY) -> Verdict:
    return hb.verdicts(now)[region].verdict


# -- detection: consecutive failures ------------------------------------------------------


def test_no_observation_at_all_is_unknown_never_healthy_or_down() -> None:
    hb = book()
    verdicts = hb.verdicts(0.0)
    assert {v.verdict for v in verdicts.values()} == {Verdict.UNKNOWN}
    signal = hb.evidence(PRIMARY, 0.0)[0].signals[0]
    assert (signal.view, signal.detail) == (View.UNKNOWN, NO_DATA)


def test_region_is_down_only_on_the_consecutive_failures_th_failure() -> None:
    hb = book()
    feed(hb, "TT")
    assert verdict(hb, 10.0) is Verdict.HEALTHY
    t = feed(hb, "FF", start=20.0)
    # Two failures in a row (rule needs 3): evidence, not yet a verdict.
    v = hb.verdicts(t)[PRIMARY]
    assert v.verdict is Verdict.UNKNOWN
    assert v.recent_failures
    assert view(hb, t) is View.UNKNOWN
    assert hb.evidence(PRIMARY, t)[0].signals[0].detail == RECENT_FAILURE
    t = feed(hb, "F", start=40.0)
    v = hb.verdicts(t)[PRIMARY]
    assert v.verdict is Verdict.DOWN
    assert set(v.failing) == set(VANTAGES)


def test_a_success_between_failures_resets_the_count() -> None:
    hb = book()
    t = feed(hb, "FFTFFTFF")
    assert verdict(hb, t) is not Verdict.DOWN
    assert hb.evidence(PRIMARY, t)[0].signals[0].consecutive_failures == 2


def test_consecutive_failures_one_fails_at_the_first_failure() -> None:
    hb = book(consecutive_failures=1, quorum=2)
    feed(hb, "T")
    t = feed(hb, "F", start=10.0, vantages=VANTAGES[:2])
    assert verdict(hb, t) is Verdict.DOWN


# -- detection: failure ratio --------------------------------------------------------------


def ratio_book(**extra: object) -> HealthBook:
    detection: dict[str, object] = {
        "consecutive_failures": 10,
        "failure_ratio": 0.5,
        "min_samples": 4,
        "window": "2m",
    }
    detection.update(extra)
    return book(**detection)


def test_failure_ratio_waits_for_min_samples() -> None:
    hb = ratio_book()
    t = feed(hb, "FTF")  # 2 of 3 failed, but only 3 samples (< min_samples 4)
    assert view(hb, t) is View.UNKNOWN
    assert verdict(hb, t) is not Verdict.DOWN
    t = feed(hb, "T", start=30.0)  # 2 of 4 = 0.5 >= 0.5
    assert view(hb, t) is View.FAILING
    assert verdict(hb, t) is Verdict.DOWN
    signal = hb.evidence(PRIMARY, t)[0].signals[0]
    assert signal.failure_ratio == pytest.approx(0.5)
    assert signal.consecutive_failures == 0  # the ratio rule, not the consecutive one


def test_failure_ratio_below_threshold_does_not_fail() -> None:
    hb = ratio_book()
    t = feed(hb, "FTTTFTTT")  # 2 of 8: below the ratio, never failing
    assert view(hb, t) is not View.FAILING
    assert verdict(hb, t) not in (Verdict.DOWN, Verdict.DEGRADED)
    # ... and passing again once recovery_successes successes follow the last failure.
    t = feed(hb, "T" * 10, start=t + 10.0)
    assert view(hb, t) is View.PASSING
    assert verdict(hb, t) is Verdict.HEALTHY


def test_failures_leave_the_ratio_window() -> None:
    hb = ratio_book(window="1m", min_samples=4, recovery_successes=3)
    t = feed(hb, "FFFF")  # 4/4 at 30s: the ratio rule trips (10 in a row would be needed)
    assert view(hb, t) is View.FAILING
    t = feed(hb, "TTT", start=40.0)  # at 60s the window (0s, 60s] holds F F F T T T: 0.5
    assert view(hb, t) is View.FAILING
    t = feed(hb, "T", start=70.0)  # (10s, 70s]: 2 of 6 failed, the 0s failure has left
    signal = hb.evidence(PRIMARY, t)[0].signals[0]
    assert signal.failure_ratio == pytest.approx(2 / 6)
    assert view(hb, t) is View.PASSING


# -- hysteresis ---------------------------------------------------------------------------


def test_recovery_takes_recovery_successes_in_a_row() -> None:
    hb = book(consecutive_failures=3, recovery_successes=5)
    t = feed(hb, "TFFF")
    assert verdict(hb, t) is Verdict.DOWN
    t = feed(hb, "TTTT", start=t + INTERVAL)
    assert view(hb, t) is View.FAILING  # four successes are not five
    assert verdict(hb, t) is Verdict.DOWN
    t = feed(hb, "T", start=t + INTERVAL)
    assert view(hb, t) is View.PASSING
    assert verdict(hb, t) is Verdict.HEALTHY


def test_recovery_defaults_to_consecutive_failures() -> None:
    hb = book(consecutive_failures=3)
    t = feed(hb, "FFFTT")
    assert verdict(hb, t) is Verdict.DOWN
    t = feed(hb, "T", start=t + INTERVAL)
    assert verdict(hb, t) is Verdict.HEALTHY


def test_a_failure_during_recovery_starts_the_count_again() -> None:
    hb = book(consecutive_failures=3)
    t = feed(hb, "FFFTTFTT")
    assert view(hb, t) is View.FAILING
    assert verdict(hb, t) is Verdict.DOWN


def test_recovery_needs_the_ratio_rule_to_stop_holding() -> None:
    hb = ratio_book(consecutive_failures=3, recovery_successes=2, window="2m", min_samples=4)
    # 6 failures then 2 successes: 2 in a row is enough by count, but 6/8 still >= 0.5.
    t = feed(hb, "FFFFFFTT")
    assert view(hb, t) is View.FAILING
    # Keep succeeding until the failures are at most half of the window.
    t = feed(hb, "TTTT", start=t + INTERVAL)  # 6/12 = 0.5: still holds
    assert view(hb, t) is View.FAILING
    t = feed(hb, "T", start=t + INTERVAL)  # window (2m) now holds 12 samples, 5 failed
    assert view(hb, t) is View.PASSING


@pytest.mark.parametrize(
    ("detection", "pattern"),
    [
        # Ratio rule: a 50/50 flap keeps the ratio at the threshold, so it never recovers.
        (
            {"consecutive_failures": 3, "failure_ratio": 0.5, "min_samples": 4, "window": "2m"},
            "FFTT" * 10,
        ),
        (
            {"consecutive_failures": 3, "failure_ratio": 0.5, "min_samples": 4, "window": "2m"},
            "FT" * 20,
        ),
        # Consecutive rule with slower recovery: the up half of the flap is too short.
        ({"consecutive_failures": 3, "recovery_successes": 5}, "FFFFTTTT" * 5),
    ],
)
def test_a_flapping_target_never_becomes_passing_or_healthy(
    detection: dict[str, object], pattern: str
) -> None:
    hb = book(**detection)
    tripped = False
    for i, ch in enumerate(pattern):
        t = i * INTERVAL
        for v in VANTAGES:
            hb.observe(obs(STANDBY, v, ch == "T", t))
        tripped = tripped or verdict(hb, t, STANDBY) is Verdict.DOWN
        if tripped:
            assert view(hb, t, STANDBY) is not View.PASSING, f"passing at {t}s"
            assert verdict(hb, t, STANDBY) is not Verdict.HEALTHY, f"healthy at {t}s"
    assert tripped


def test_a_target_flapping_at_the_probe_interval_is_never_healthy() -> None:
    hb = book(consecutive_failures=3)
    for i in range(20):
        t = i * INTERVAL
        for v in VANTAGES:
            hb.observe(obs(STANDBY, v, i % 2 == 1, t))  # F, T, F, T, ...
        if i >= 2:
            assert verdict(hb, t, STANDBY) is not Verdict.HEALTHY, f"healthy at {t}s"


# -- staleness and unknown data -----------------------------------------------------------


def test_stale_data_is_unknown_never_healthy() -> None:
    hb = book(staleness="45s")
    feed(hb, "TTT")  # last at 20s
    assert verdict(hb, 65.0) is Verdict.HEALTHY  # 45s old: not yet stale
    v = hb.verdicts(65.5)[PRIMARY]
    assert v.verdict is Verdict.UNKNOWN
    assert Reason.STALE_DATA in v.reasons
    assert set(v.unknown) == set(VANTAGES)
    signal = hb.evidence(PRIMARY, 65.5)[0].signals[0]
    assert (signal.view, signal.detail) == (View.UNKNOWN, STALE)


def test_stale_data_is_unknown_never_down() -> None:
    hb = book(staleness="45s")
    t = feed(hb, "FFFF")
    assert verdict(hb, t) is Verdict.DOWN
    v = hb.verdicts(t + 46.0)[PRIMARY]
    assert v.verdict is Verdict.UNKNOWN
    assert Reason.STALE_DATA in v.reasons
    assert not v.failing


def test_one_silent_vantage_turns_unknown_but_the_others_still_count() -> None:
    hb = book(staleness="45s")
    feed(hb, "T", vantages=["local"])
    feed(hb, "TTTTTT", vantages=["agent-eu", "agent-ap"])
    v = hb.verdicts(50.0)[PRIMARY]
    assert v.verdict is Verdict.HEALTHY  # two fresh, passing vantages reach the quorum of 2
    assert v.unknown == ("local",)
    assert Reason.STALE_DATA in v.reasons


def test_ok_none_observations_are_unknown() -> None:
    hb = book()
    t = feed(hb, "???")
    v = hb.verdicts(t)[PRIMARY]
    assert v.verdict is Verdict.UNKNOWN
    assert not v.failing and not v.passing
    t = feed(hb, "TT", start=t + INTERVAL)
    assert verdict(hb, t) is Verdict.HEALTHY
    t = feed(hb, "?", start=t + INTERVAL)
    assert verdict(hb, t) is Verdict.UNKNOWN  # the latest word was "cannot tell"


def test_ok_none_hides_a_failing_view_it_does_not_make_it_down() -> None:
    hb = book()
    t = feed(hb, "FFF")
    assert verdict(hb, t) is Verdict.DOWN
    t = feed(hb, "?", start=t + INTERVAL)
    assert verdict(hb, t) is Verdict.UNKNOWN


# -- AWS Health ---------------------------------------------------------------------------


def aws_book() -> HealthBook:
    return HealthBook(
        make_policy(
            signals=[
                {
                    "name": "api",
                    "type": "http",
                    "target": "https://api.{region}.shop.example.com/healthz",
                },
                {"name": "aws", "type": "aws_health", "services": ["EC2"]},
            ]
        )
    )


def health(region: str, ok: bool | None, at: float) -> Observation:
    detail = {True: "", False: FailureKind.EVENT, None: FailureKind.HEALTH_API_UNAVAILABLE}[ok]
    return Observation(SERVICE, region, "aws", "aws_health", ok, at, detail=str(detail))


def test_health_api_unavailable_is_a_region_reason_and_unknown() -> None:
    hb = aws_book()
    feed(hb, "TT")
    hb.observe(health(PRIMARY, None, 10.0))
    v = hb.verdicts(10.0)[PRIMARY]
    assert Reason.HEALTH_API_UNAVAILABLE in v.reasons
    assert "aws_health" in v.unknown
    assert v.verdict is Verdict.HEALTHY  # the probes still make a quorum


def test_an_open_health_event_counts_as_one_vantage_at_once() -> None:
    hb = aws_book()
    feed(hb, "TT")
    hb.observe(health(PRIMARY, False, 10.0))
    v = hb.verdicts(10.0)[PRIMARY]
    assert v.failing == ("aws_health",)
    assert v.verdict is Verdict.DEGRADED  # one vantage, quorum is 2
    t = feed(hb, "FFF", vantages=["local"], start=20.0)
    v = hb.verdicts(t)[PRIMARY]
    assert set(v.failing) == {"local", "aws_health"}
    assert v.verdict is Verdict.DOWN
    hb.observe(health(PRIMARY, True, t))  # event closed: passing at once
    assert hb.verdicts(t)[PRIMARY].verdict is Verdict.DEGRADED


def test_health_signal_staleness_follows_its_poll_interval() -> None:
    hb = aws_book()  # poll_interval 60s: stale after 2.5 x 60s, not after 45s
    hb.observe(health(PRIMARY, True, 0.0))
    ev = {vv.vantage: vv for vv in hb.evidence(PRIMARY, 100.0)}
    assert ev["aws_health"].view is View.PASSING
    ev = {vv.vantage: vv for vv in hb.evidence(PRIMARY, 151.0)}
    assert ev["aws_health"].view is View.UNKNOWN


# -- quorum -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quorum", "failing", "expected"),
    [
        (2, 0, Verdict.HEALTHY),
        (2, 1, Verdict.DEGRADED),
        (2, 2, Verdict.DOWN),
        (2, 3, Verdict.DOWN),
        (3, 2, Verdict.DEGRADED),
        (3, 3, Verdict.DOWN),
        (1, 1, Verdict.DOWN),
    ],
)
def test_down_needs_a_quorum_of_failing_vantages(
    quorum: int, failing: int, expected: Verdict
) -> None:
    hb = book(quorum=quorum)
    feed(hb, "TTTTTT", vantages=VANTAGES[failing:])
    t = feed(hb, "FFFFFF", vantages=VANTAGES[:failing])
    v = hb.verdicts(t)[PRIMARY]
    assert v.verdict is expected
    assert len(v.failing) == failing
    assert v.quorum == quorum


@pytest.mark.parametrize(
    ("passing", "expected"),
    [(3, Verdict.HEALTHY), (2, Verdict.HEALTHY), (1, Verdict.UNKNOWN), (0, Verdict.UNKNOWN)],
)
def test_healthy_needs_a_quorum_of_passing_vantages(passing: int, expected: Verdict) -> None:
    hb = book(quorum=2)
    t = feed(hb, "TTT", vantages=VANTAGES[:passing])
    assert verdict(hb, t) is expected


def test_healthy_needs_no_vantage_failing() -> None:
    hb = book(quorum=2)
    feed(hb, "TTTT", vantages=VANTAGES[:2])
    t = feed(hb, "FFFF", vantages=VANTAGES[2:])
    v = hb.verdicts(t)[PRIMARY]
    assert v.verdict is Verdict.DEGRADED
    assert len(v.passing) == 2


def test_a_vantage_is_failing_if_any_signal_fails_and_passing_only_if_all_pass() -> None:
    policy = make_policy(
        signals=[
            {"name": "api", "type": "http", "target": "https://api.{region}.shop.example.com/"},
            {
                "name": "db",
                "type": "tcp",
                "target": "db.{region}.shop.internal:5432",
                "vantage": ["local"],
            },
        ]
    )
    hb = HealthBook(policy)
    assert (PRIMARY, "db", "agent-eu") not in hb.cells()
    feed(hb, "TTT", signal="api")
    t = feed(hb, "FFF", signal="db", vantages=["local"])
    ev = {vv.vantage: vv.view for vv in hb.evidence(PRIMARY, t)}
    assert ev == {"local": View.FAILING, "agent-eu": View.PASSING, "agent-ap": View.PASSING}
    assert verdict(hb, t) is Verdict.DEGRADED
    # local's api passes but its db has no data yet in another region: not passing.
    feed(hb, "TTT", signal="api", region=STANDBY)
    ev = {vv.vantage: vv.view for vv in hb.evidence(STANDBY, t)}
    assert ev["local"] is View.UNKNOWN


# -- bookkeeping --------------------------------------------------------------------------


def test_late_observations_are_ignored() -> None:
    hb = book()
    feed(hb, "FF")  # 0s, 10s
    for at in (30.0, 40.0, 50.0):  # recovery: 3 successes in a row
        for v in VANTAGES:
            hb.observe(obs(PRIMARY, v, True, at))
    for v in VANTAGES:  # a slow observer's failure from 20s arrives after the 50s success
        assert hb.observe(obs(PRIMARY, v, False, 20.0)) is Intake.OUT_OF_ORDER
    signal = hb.evidence(PRIMARY, 50.0)[0].signals[0]
    assert signal.last_at == 50.0
    assert signal.last_ok is True
    assert signal.consecutive_failures == 0
    assert verdict(hb, 50.0) is Verdict.HEALTHY


def test_late_failures_cannot_complete_a_detection() -> None:
    hb = book()
    feed(hb, "FF")  # 0s, 10s
    for v in VANTAGES:
        hb.observe(obs(PRIMARY, v, False, 5.0))  # older than the newest: ignored
    assert verdict(hb, 10.0) is not Verdict.DOWN


def test_a_duplicated_observation_counts_once() -> None:
    hb = book(consecutive_failures=3)
    for at in (0.0, 10.0, 10.0):  # two probes; the second delivered twice
        for v in VANTAGES:
            hb.observe(obs(PRIMARY, v, False, at))
    assert hb.evidence(PRIMARY, 10.0)[0].signals[0].consecutive_failures == 2
    assert verdict(hb, 10.0) is not Verdict.DOWN


@pytest.mark.parametrize(
    "observation",
    [
        obs("eu-west-1", "local", False, 0.0),  # region not in the policy
        obs(PRIMARY, "local", False, 0.0, signal="nope"),  # signal not in the policy
        obs(PRIMARY, "agent-xx", False, 0.0),  # vantage not in the policy
        Observation(SERVICE, PRIMARY, "api", "aws_health", False, 0.0),  # not this signal's
    ],
)
def test_observations_the_policy_does_not_expect_are_rejected(observation: Observation) -> None:
    hb = book(consecutive_failures=1, quorum=1)
    assert hb.observe(observation) is Intake.UNEXPECTED
    hb.observe_many([observation])
    assert {v.verdict for v in hb.verdicts(0.0).values()} == {Verdict.UNKNOWN}


# -- one probe, one count ---------------------------------------------------------------------


def test_a_burst_of_failures_does_not_meet_consecutive_failures() -> None:
    """Three failures 0.1 s apart from every vantage point are one probe each, not three:
    the region is not down, and the two extra ones are refused as too soon."""
    hb = book(consecutive_failures=3, quorum=2)
    feed(hb, "T")
    outcomes = [
        hb.observe(obs(PRIMARY, v, False, 10.0 + i * 0.1)) for i in range(3) for v in VANTAGES
    ]
    assert outcomes.count(Intake.ACCEPTED) == len(VANTAGES)
    assert outcomes.count(Intake.TOO_SOON) == 2 * len(VANTAGES)
    signal = hb.evidence(PRIMARY, 10.2)[0].signals[0]
    assert signal.consecutive_failures == 1
    assert signal.last_at == 10.0
    assert verdict(hb, 10.2) is not Verdict.DOWN


def test_probes_at_the_interval_still_detect_on_time() -> None:
    hb = book(consecutive_failures=3, quorum=2)
    last = feed(hb, "TFFF")
    assert verdict(hb, last) is Verdict.DOWN


def test_the_gap_is_measured_from_the_last_counted_observation() -> None:
    """A refused observation does not move the cell's clock: the next one on time counts."""
    hb = book(consecutive_failures=2, quorum=1)
    gap = INTERVAL * BURST_TOLERANCE
    assert hb.observe(obs(PRIMARY, "local", False, 0.0)) is Intake.ACCEPTED
    assert hb.observe(obs(PRIMARY, "local", False, gap - 0.01)) is Intake.TOO_SOON
    assert hb.observe(obs(PRIMARY, "local", False, gap)) is Intake.ACCEPTED
    assert view(hb, gap) is View.FAILING


def test_a_slow_answer_then_a_fast_one_both_count() -> None:
    """A probe's time is when its answer came: with the default 5 s timeout of a 10 s
    interval, a timeout at 0+5 s and an instant answer at 10 s are 5 s apart, and count."""
    hb = book(consecutive_failures=2, quorum=1)
    assert hb.observe(obs(PRIMARY, "local", False, 5.0)) is Intake.ACCEPTED
    assert hb.observe(obs(PRIMARY, "local", False, 10.001)) is Intake.ACCEPTED
    assert view(hb, 10.001) is View.FAILING


def test_state_signals_take_every_report() -> None:
    """AWS Health is a state (failing at the first report): no burst rule applies."""
    hb = aws_book()
    hb.observe(health(PRIMARY, True, 10.0))
    assert hb.observe(health(PRIMARY, False, 10.1)) is Intake.ACCEPTED


def test_cells_lists_every_expected_region_signal_vantage() -> None:
    hb = book()
    assert set(hb.cells()) == {(r, "api", v) for r in (PRIMARY, STANDBY) for v in VANTAGES}


def test_observe_many_is_observe_in_order() -> None:
    one, many = book(), book()
    observations = [
        obs(r, v, ok, float(t * 10))
        for t, ok in enumerate([True, False, False, False, True, None, False])
        for r in (PRIMARY, STANDBY)
        for v in VANTAGES
    ]
    for o in observations:
        one.observe(o)
    many.observe_many(observations)
    assert one.verdicts(60.0) == many.verdicts(60.0)
    assert one.evidence(PRIMARY, 60.0) == many.evidence(PRIMARY, 60.0)


def test_since_is_when_the_verdict_began() -> None:
    hb = book()
    t = feed(hb, "TT")
    assert hb.verdicts(t)[PRIMARY].since == 10.0
    t = feed(hb, "TTT", start=20.0)
    assert hb.verdicts(t)[PRIMARY].since == 10.0  # unchanged verdict keeps its start
    t = feed(hb, "FFF", start=50.0)
    v = hb.verdicts(t)[PRIMARY]
    assert (v.verdict, v.since) == (Verdict.DOWN, 70.0)
    assert hb.verdicts(t + 5.0)[PRIMARY].since == 70.0


def test_evidence_names_targets_counters_and_failing_since() -> None:
    hb = book()
    feed(hb, "T")
    t = feed(hb, "FFFF", start=10.0, vantages=["local"])
    ev = hb.evidence(PRIMARY, t)
    assert [vv.vantage for vv in ev] == list(VANTAGES)
    local = ev[0].signals[0]
    assert local.signal == "api"
    assert local.target == "https://api.us-east-1.shop.example.com/healthz"
    assert local.view is View.FAILING
    assert local.detail == "connect"
    assert local.consecutive_failures == 4
    assert local.failing_since == 30.0
    assert local.last_at == 40.0 and local.last_ok is False
    assert ev[1].view is View.PASSING  # agent-eu: one success at 0s, still fresh at 40s
    assert verdict(hb, t) is Verdict.DEGRADED
    assert hb.evidence("eu-west-1", t) == ()


def test_the_same_observations_give_the_same_verdicts() -> None:
    a, b = book(), book()
    for hb in (a, b):
        feed(hb, "TFFTFFF?T")
    assert a.verdicts(80.0) == b.verdicts(80.0)
