"""``decide()``: each phase, each reason code, each guard, operator commands, failback, target
choice and the RTO clock. Inputs are built directly (verdicts, state, lag); ``now`` is
explicit everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.state import (
    Command,
    Decision,
    Initiator,
    LagReading,
    Move,
    OperatorCommand,
    RunStatus,
    ServiceState,
    apply_command,
    apply_decision,
    finish_run,
    set_waiting_approval,
)
from orchestrator.engine.vocabulary import REASON_TEXT, Action, Phase, Reason, Verdict
from orchestrator.policy.models import Policy
from tests.unit.engine.conftest import (
    HOUR,
    MINUTE,
    PRIMARY,
    STANDBY,
    THIRD,
    lag,
    make_policy,
    run_info,
    rv,
    state,
)

NOW = 10 * HOUR
H, D, U, G = Verdict.HEALTHY, Verdict.DOWN, Verdict.UNKNOWN, Verdict.DEGRADED


def cmd(command: str, to: str | None = None, force: bool = False) -> OperatorCommand:
    return OperatorCommand(Command(command), to=to, force=force, by="alice")


def run(
    policy: Policy,
    verdicts: Mapping[str, Verdict] | Mapping[str, RegionVerdict],
    st: ServiceState | None = None,
    *,
    lags: Mapping[str, LagReading] | None = None,
    now: float = NOW,
    operator: OperatorCommand | None = None,
    leader: bool = True,
) -> Decision:
    vs: dict[str, RegionVerdict] = {}
    for region, v in verdicts.items():
        vs[region] = v if isinstance(v, RegionVerdict) else rv(region, v)
    return decide(
        policy,
        st or state(),
        vs,
        lags or {},
        now,
        operator,
        leader=leader,
        policy_version="v1",
    )


def permissive(regions: int = 2, **guards: Any) -> Policy:
    """No cooldown or max-failovers in the way unless asked for."""
    g: dict[str, Any] = {"cooldown": "0s", "max_failovers": {"count": 10, "window": "1h"}}
    g.update(guards)
    return make_policy(regions, guards=g)


def lag_policy(**guards: Any) -> Policy:
    g: dict[str, Any] = {"cooldown": "0s"}
    g.update(guards)
    return make_policy(2, replication=True, guards=g)


FRESH_OK = {STANDBY: lag(5.0, NOW - 10)}


def assert_no_run(d: Decision) -> None:
    assert not d.starts_run
    assert d.action not in (Action.FAILOVER, Action.SWITCHOVER, Action.FAILBACK)


# -- steady and suspect -------------------------------------------------------------------


def test_steady_when_the_active_region_is_healthy() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H})
    assert d.phase is Phase.STEADY
    assert d.action is Action.NONE
    assert d.reasons == ()
    assert d.target is None
    assert (d.detected_at, d.rto_remaining) == (None, None)
    assert (d.service, d.at, d.active_region, d.policy_version) == ("shop", NOW, PRIMARY, "v1")


def test_suspect_with_no_quorum_when_the_active_region_is_degraded() -> None:
    d = run(permissive(), {PRIMARY: G, STANDBY: H})
    assert d.phase is Phase.SUSPECT
    assert Reason.NO_QUORUM in d.reasons
    assert_no_run(d)


def test_unknown_active_is_never_a_failover() -> None:
    d = run(permissive(), {PRIMARY: U, STANDBY: H})
    assert d.phase is Phase.STEADY
    assert Reason.ACTIVE_UNKNOWN in d.reasons
    assert_no_run(d)


def test_stale_active_says_stale_data() -> None:
    verdicts = {PRIMARY: rv(PRIMARY, U, reasons=[Reason.STALE_DATA]), STANDBY: rv(STANDBY, H)}
    d = run(permissive(), verdicts)
    assert {Reason.ACTIVE_UNKNOWN, Reason.STALE_DATA} <= set(d.reasons)
    assert_no_run(d)


def test_recent_failures_below_the_rule_are_suspect_not_down() -> None:
    verdicts = {PRIMARY: rv(PRIMARY, U, recent_failures=True), STANDBY: rv(STANDBY, H)}
    d = run(permissive(), verdicts)
    assert d.phase is Phase.SUSPECT
    assert_no_run(d)


def test_missing_verdicts_count_as_unknown() -> None:
    d = run(permissive(), {})
    assert Reason.ACTIVE_UNKNOWN in d.reasons
    assert_no_run(d)


def test_health_api_unavailable_is_reported_from_any_region() -> None:
    verdicts = {
        PRIMARY: rv(PRIMARY, H),
        STANDBY: rv(STANDBY, H, reasons=[Reason.HEALTH_API_UNAVAILABLE]),
    }
    d = run(permissive(), verdicts)
    assert d.phase is Phase.STEADY
    assert Reason.HEALTH_API_UNAVAILABLE in d.reasons


# -- automatic failover -------------------------------------------------------------------


def test_active_down_and_standby_healthy_fails_over() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: H})
    assert d.phase is Phase.FAILING_OVER
    assert d.action is Action.FAILOVER
    assert d.starts_run
    assert d.target == STANDBY
    assert d.initiated_by is Initiator.POLICY
    assert d.reasons[0] is Reason.ACTIVE_DOWN


def test_cooldown_blocks_an_automatic_failover() -> None:
    policy = make_policy(guards={"cooldown": "30m"})
    st = state(last_move_finished_at=NOW - 10 * MINUTE)
    d = run(policy, {PRIMARY: D, STANDBY: H}, st)
    assert d.phase is Phase.BLOCKED
    assert d.action is Action.NONE
    assert d.target == STANDBY
    assert Reason.COOLDOWN in d.reasons
    assert any("cooldown ends in 20m" in n for n in d.notes)


def test_cooldown_ends_after_the_cooldown() -> None:
    policy = make_policy(guards={"cooldown": "30m"})
    st = state(last_move_finished_at=NOW - 30 * MINUTE)
    d = run(policy, {PRIMARY: D, STANDBY: H}, st)
    assert d.action is Action.FAILOVER


def test_max_failovers_blocks_within_the_window() -> None:
    policy = permissive(max_failovers={"count": 2, "window": "6h"})
    moves = [
        Move(NOW - 5 * HOUR, Action.FAILOVER, STANDBY),
        Move(NOW - HOUR, Action.FAILOVER, PRIMARY),
    ]
    d = run(policy, {PRIMARY: D, STANDBY: H}, state(moves=moves))
    assert d.phase is Phase.BLOCKED
    assert Reason.MAX_FAILOVERS in d.reasons
    assert_no_run(d)


def test_max_failovers_forgets_moves_outside_the_window_and_failbacks() -> None:
    policy = permissive(max_failovers={"count": 2, "window": "6h"})
    moves = [
        Move(NOW - 7 * HOUR, Action.FAILOVER, STANDBY),  # outside the window
        Move(NOW - 6 * HOUR, Action.FAILOVER, STANDBY),  # exactly at the edge: outside
        Move(NOW - 2 * HOUR, Action.FAILBACK, PRIMARY),  # not a failover
        Move(NOW - HOUR, Action.FAILOVER, STANDBY),
    ]
    d = run(policy, {PRIMARY: D, STANDBY: H}, state(moves=moves))
    assert d.action is Action.FAILOVER


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (lag(120.0, NOW - 10), Reason.RPO_EXCEEDED),
        (lag(None, NOW - 10), Reason.LAG_UNKNOWN),
        (lag(1.0, NOW - 4 * MINUTE), Reason.LAG_UNKNOWN),  # older than max_age 3m
        (None, Reason.LAG_UNKNOWN),
    ],
)
def test_lag_guard_under_wait_blocks(reading: LagReading | None, reason: Reason) -> None:
    policy = lag_policy(on_lag_above_rpo="wait", on_lag_unknown="wait")
    lags = {STANDBY: reading} if reading is not None else {}
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags=lags)
    assert d.phase is Phase.BLOCKED
    assert reason in d.reasons
    assert d.target == STANDBY
    assert d.notes  # says which reading and why
    assert_no_run(d)


def test_lag_within_rpo_and_fresh_does_not_stand_in_the_way() -> None:
    policy = lag_policy(on_lag_above_rpo="wait", on_lag_unknown="wait")
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags={STANDBY: lag(60.0, NOW - 3 * MINUTE)})
    assert d.action is Action.FAILOVER
    assert Reason.RPO_EXCEEDED not in d.reasons and Reason.LAG_UNKNOWN not in d.reasons


@pytest.mark.parametrize(
    ("reading", "reason"),
    [(lag(120.0, NOW), Reason.RPO_EXCEEDED), (lag(None, NOW), Reason.LAG_UNKNOWN)],
)
def test_lag_guard_under_require_approval_waits_for_an_operator(
    reading: LagReading, reason: Reason
) -> None:
    policy = lag_policy(on_lag_above_rpo="require_approval", on_lag_unknown="require_approval")
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags={STANDBY: reading})
    assert d.phase is Phase.AWAITING_APPROVAL
    assert d.action is Action.AWAIT_APPROVAL
    assert {reason, Reason.APPROVAL_REQUIRED} <= set(d.reasons)
    assert_no_run(d)
    approved = run(
        policy, {PRIMARY: D, STANDBY: H}, lags={STANDBY: reading}, operator=cmd("approve")
    )
    assert approved.phase is Phase.FAILING_OVER
    assert approved.action is Action.FAILOVER
    assert reason in approved.reasons


def test_lag_guard_under_proceed_fails_over_and_says_so() -> None:
    policy = lag_policy(on_lag_above_rpo="proceed", on_lag_unknown="proceed")
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags={STANDBY: lag(600.0, NOW)})
    assert d.action is Action.FAILOVER
    assert Reason.RPO_EXCEEDED in d.reasons


def test_require_approval_waits_then_an_approval_starts_the_run() -> None:
    policy = permissive(require_approval=True)
    d = run(policy, {PRIMARY: D, STANDBY: H})
    assert (d.phase, d.action) == (Phase.AWAITING_APPROVAL, Action.AWAIT_APPROVAL)
    assert Reason.APPROVAL_REQUIRED in d.reasons
    d = run(policy, {PRIMARY: D, STANDBY: H}, operator=cmd("approve"))
    assert (d.phase, d.action, d.target) == (Phase.FAILING_OVER, Action.FAILOVER, STANDBY)


def test_an_approval_does_not_override_a_blocking_guard() -> None:
    policy = make_policy(guards={"cooldown": "30m", "require_approval": True})
    st = state(last_move_finished_at=NOW - MINUTE)
    d = run(policy, {PRIMARY: D, STANDBY: H}, st, operator=cmd("approve"))
    assert d.phase is Phase.BLOCKED
    assert Reason.COOLDOWN in d.reasons
    assert_no_run(d)


def test_every_guard_standing_in_the_way_is_reported() -> None:
    policy = make_policy(
        replication=True,
        guards={
            "cooldown": "30m",
            "max_failovers": {"count": 1, "window": "6h"},
            "on_lag_above_rpo": "wait",
        },
    )
    st = state(
        moves=[Move(NOW - HOUR, Action.FAILOVER, PRIMARY)], last_move_finished_at=NOW - MINUTE
    )
    d = run(policy, {PRIMARY: D, STANDBY: H}, st, lags={STANDBY: lag(300.0, NOW)})
    assert d.phase is Phase.BLOCKED
    assert {Reason.COOLDOWN, Reason.MAX_FAILOVERS, Reason.RPO_EXCEEDED} <= set(d.reasons)


def test_standby_unhealthy_with_two_regions_means_no_healthy_target() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: G})
    assert d.phase is Phase.BLOCKED
    assert {Reason.ACTIVE_DOWN, Reason.STANDBY_UNHEALTHY, Reason.NO_HEALTHY_TARGET} <= set(
        d.reasons
    )
    assert d.target is None
    assert_no_run(d)


def test_standby_unhealthy_with_a_healthy_third_region_fails_over_there() -> None:
    d = run(permissive(3), {PRIMARY: D, STANDBY: G, THIRD: H})
    assert (d.action, d.target) == (Action.FAILOVER, THIRD)
    assert Reason.STANDBY_UNHEALTHY in d.reasons


@pytest.mark.parametrize(
    "others", [(D,), (D, D), (D, D, D)], ids=["2 regions", "3 regions", "4 regions"]
)
def test_all_regions_down_does_nothing(others: tuple[Verdict, ...]) -> None:
    from tests.unit.engine.conftest import REGIONS

    n = len(others) + 1
    verdicts = {REGIONS[0]: D, **dict(zip(REGIONS[1:n], others, strict=True))}
    d = run(permissive(n), verdicts)
    assert d.phase is Phase.BLOCKED
    assert Reason.ALL_REGIONS_DOWN in d.reasons
    assert d.target is None
    assert_no_run(d)


def test_active_down_and_standby_unknown_does_nothing_and_says_why() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: U})
    assert d.phase is Phase.BLOCKED
    assert Reason.ALL_REGIONS_DOWN in d.reasons
    assert Reason.STALE_DATA in d.reasons
    assert_no_run(d)


def test_paused_takes_no_action_and_says_what_it_sees() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: H}, state(paused=True))
    assert d.phase is Phase.PAUSED
    assert_no_run(d)
    assert d.reasons[0] is Reason.PAUSED
    assert Reason.ACTIVE_DOWN in d.reasons


def test_not_leader_blocks_an_automatic_failover() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: H}, leader=False)
    assert d.phase is Phase.BLOCKED
    assert Reason.NOT_LEADER in d.reasons
    assert_no_run(d)


def test_not_leader_is_said_even_when_steady() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, leader=False)
    assert d.phase is Phase.STEADY
    assert d.reasons == (Reason.NOT_LEADER,)


def test_a_failed_run_holds_everything_until_an_operator_looks() -> None:
    failed = run_info(status=RunStatus.FAILED, error="step flip-dns failed after 1 attempt(s)")
    d = run(permissive(), {PRIMARY: D, STANDBY: H}, state(run=failed))
    assert d.phase is Phase.FAILED
    assert d.reasons[0] is Reason.STEP_FAILED
    assert Reason.ACTIVE_DOWN in d.reasons
    assert any("flip-dns failed" in n for n in d.notes)
    assert_no_run(d)


@pytest.mark.parametrize("waiting", [False, True])
def test_a_run_in_progress_starts_nothing_else(waiting: bool) -> None:
    st = state(run=run_info(target=STANDBY, waiting_approval=waiting))
    d = run(permissive(3), {PRIMARY: D, STANDBY: D, THIRD: H}, st)
    assert_no_run(d)
    assert d.target == STANDBY
    assert Reason.RUN_IN_PROGRESS in d.reasons
    if waiting:
        assert d.phase is Phase.AWAITING_APPROVAL
        assert Reason.APPROVAL_REQUIRED in d.reasons
    else:
        assert d.phase is Phase.FAILING_OVER


def test_advisory_mode_recommends_and_never_starts_a_run() -> None:
    policy = make_policy(mode="advisory", guards={"cooldown": "0s"})
    d = run(policy, {PRIMARY: D, STANDBY: H})
    assert d.action is Action.RECOMMEND
    assert d.phase is Phase.BLOCKED
    assert d.target == STANDBY
    assert Reason.ADVISORY_MODE in d.reasons
    assert_no_run(d)


def test_advisory_mode_also_lists_the_guards_a_human_would_meet() -> None:
    policy = make_policy(mode="advisory", guards={"cooldown": "30m"})
    d = run(policy, {PRIMARY: D, STANDBY: H}, state(last_move_finished_at=NOW - MINUTE))
    assert d.action is Action.RECOMMEND
    assert {Reason.ADVISORY_MODE, Reason.COOLDOWN} <= set(d.reasons)


def test_advisory_mode_still_obeys_an_operator() -> None:
    policy = make_policy(mode="advisory", guards={"cooldown": "0s"})
    d = run(policy, {PRIMARY: D, STANDBY: H}, operator=cmd("failover"))
    assert (d.action, d.initiated_by) == (Action.FAILOVER, Initiator.OPERATOR)


# -- target choice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("active", "verdicts", "target"),
    [
        (PRIMARY, {PRIMARY: D, STANDBY: H, THIRD: H}, STANDBY),
        (PRIMARY, {PRIMARY: D, STANDBY: D, THIRD: H}, THIRD),
        (PRIMARY, {PRIMARY: D, STANDBY: U, THIRD: H}, THIRD),
        (STANDBY, {PRIMARY: H, STANDBY: D, THIRD: H}, PRIMARY),
        (STANDBY, {PRIMARY: G, STANDBY: D, THIRD: H}, THIRD),
        (THIRD, {PRIMARY: U, STANDBY: H, THIRD: D}, STANDBY),
    ],
)
def test_three_regions_fail_over_to_the_first_healthy_in_priority_order(
    active: str, verdicts: dict[str, Verdict], target: str
) -> None:
    d = run(permissive(3), verdicts, state(active))
    # A move to the primary is a failback whatever prompted it (its own runbook, and not a
    # failover for max_failovers).
    kind = Action.FAILBACK if target == PRIMARY else Action.FAILOVER
    assert (d.action, d.target) == (kind, target)
    assert Reason.ACTIVE_DOWN in d.reasons


def test_a_move_back_to_the_primary_does_not_count_against_max_failovers() -> None:
    policy = permissive(2, max_failovers={"count": 1, "window": "6h"})
    st = state(STANDBY, moves=[Move(NOW - HOUR, Action.FAILOVER, STANDBY)])
    d = run(policy, {PRIMARY: H, STANDBY: D}, st)
    assert (d.action, d.target) == (Action.FAILBACK, PRIMARY)
    d = run(policy, {PRIMARY: H, STANDBY: H}, st, operator=cmd("failover", PRIMARY))
    assert (d.action, d.target, d.initiated_by) == (Action.FAILBACK, PRIMARY, Initiator.OPERATOR)


@pytest.mark.parametrize(
    ("verdicts", "target"),
    [
        ({PRIMARY: D, STANDBY: U, THIRD: H}, THIRD),  # healthy still wins
        ({PRIMARY: D, STANDBY: U, THIRD: D}, STANDBY),  # unknown allowed
        ({PRIMARY: D, STANDBY: G, THIRD: U}, THIRD),  # degraded never
        ({PRIMARY: D, STANDBY: G, THIRD: D}, None),  # down/degraded never
        ({PRIMARY: D, STANDBY: D, THIRD: D}, None),
    ],
)
def test_require_healthy_target_false_allows_unknown_never_down_or_degraded(
    verdicts: dict[str, Verdict], target: str | None
) -> None:
    policy = permissive(3, require_healthy_target=False)
    d = run(policy, verdicts)
    if target is None:
        assert_no_run(d)
        assert d.phase is Phase.BLOCKED
    else:
        assert (d.action, d.target) == (Action.FAILOVER, target)
        if verdicts[target] is not H:
            assert any("require_healthy_target is off" in n for n in d.notes)


def test_require_healthy_target_true_never_picks_unknown() -> None:
    d = run(permissive(3), {PRIMARY: D, STANDBY: U, THIRD: U})
    assert_no_run(d)


# -- operator commands --------------------------------------------------------------------


def test_operator_failover_without_to_picks_the_healthy_standby() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, operator=cmd("failover"))
    assert (d.phase, d.action, d.target) == (Phase.FAILING_OVER, Action.FAILOVER, STANDBY)
    assert d.initiated_by is Initiator.OPERATOR
    assert Reason.OPERATOR_COMMAND in d.reasons
    assert any("alice" in n for n in d.notes)


def test_operator_failover_with_to() -> None:
    d = run(permissive(3), {PRIMARY: D, STANDBY: H, THIRD: H}, operator=cmd("failover", THIRD))
    assert (d.action, d.target) == (Action.FAILOVER, THIRD)
    assert Reason.ACTIVE_DOWN in d.reasons


@pytest.mark.parametrize("verdict", [U, G, D])
def test_operator_failover_to_an_unhealthy_target_is_refused_unless_forced(
    verdict: Verdict,
) -> None:
    verdicts = {PRIMARY: D, STANDBY: verdict}
    d = run(permissive(), verdicts, operator=cmd("failover", STANDBY))
    assert d.phase is Phase.BLOCKED
    assert {Reason.OPERATOR_REFUSED, Reason.STANDBY_UNHEALTHY} <= set(d.reasons)
    assert_no_run(d)
    forced = run(permissive(), verdicts, operator=cmd("failover", STANDBY, force=True))
    assert (forced.action, forced.target) == (Action.FAILOVER, STANDBY)
    assert Reason.FORCED in forced.reasons
    assert forced.initiated_by is Initiator.OPERATOR


def test_operator_failover_without_to_and_no_healthy_target_is_refused() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: G}, operator=cmd("failover"))
    assert {Reason.OPERATOR_REFUSED, Reason.NO_HEALTHY_TARGET} <= set(d.reasons)
    assert_no_run(d)
    d = run(permissive(), {PRIMARY: D, STANDBY: D}, operator=cmd("failover", force=True))
    assert Reason.OPERATOR_REFUSED in d.reasons  # force needs a named target
    assert_no_run(d)


def test_operator_without_to_is_never_sent_to_an_unknown_region() -> None:
    policy = permissive(2, require_healthy_target=False)
    d = run(policy, {PRIMARY: D, STANDBY: U}, operator=cmd("failover"))
    assert Reason.OPERATOR_REFUSED in d.reasons
    assert_no_run(d)


def test_operator_failover_bypasses_the_cooldown() -> None:
    policy = make_policy(guards={"cooldown": "30m"})
    st = state(last_move_finished_at=NOW - MINUTE)
    d = run(policy, {PRIMARY: D, STANDBY: H}, st, operator=cmd("failover"))
    assert d.action is Action.FAILOVER


def test_operator_failover_does_not_bypass_max_failovers_even_forced() -> None:
    policy = permissive(max_failovers={"count": 1, "window": "6h"})
    st = state(moves=[Move(NOW - HOUR, Action.FAILOVER, PRIMARY)])
    for force in (False, True):
        d = run(policy, {PRIMARY: D, STANDBY: H}, st, operator=cmd("failover", STANDBY, force))
        assert {Reason.OPERATOR_REFUSED, Reason.MAX_FAILOVERS} <= set(d.reasons)
        assert_no_run(d)


def test_operator_failover_to_the_active_region_is_refused() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, operator=cmd("failover", PRIMARY))
    assert {Reason.OPERATOR_REFUSED, Reason.ALREADY_ACTIVE} <= set(d.reasons)
    assert_no_run(d)


def test_operator_failover_to_a_region_outside_the_policy_is_refused() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, operator=cmd("failover", "eu-west-1"))
    assert {Reason.OPERATOR_REFUSED, Reason.NO_HEALTHY_TARGET} <= set(d.reasons)
    assert any("not one of the policy's regions" in n for n in d.notes)
    assert_no_run(d)


@pytest.mark.parametrize("lag_unknown", ["wait", "require_approval", "proceed"])
def test_switchover_is_refused_on_unknown_lag_whatever_the_policy(lag_unknown: str) -> None:
    policy = lag_policy(on_lag_unknown=lag_unknown)
    d = run(policy, {PRIMARY: H, STANDBY: H}, operator=cmd("switchover"))
    assert {Reason.OPERATOR_REFUSED, Reason.LAG_UNKNOWN} <= set(d.reasons)
    assert_no_run(d)


def test_switchover_with_fresh_lag_within_rpo_starts() -> None:
    policy = lag_policy()
    d = run(policy, {PRIMARY: H, STANDBY: H}, lags=FRESH_OK, operator=cmd("switchover"))
    assert (d.action, d.target, d.initiated_by) == (
        Action.SWITCHOVER,
        STANDBY,
        Initiator.OPERATOR,
    )


def test_forced_switchover_goes_ahead_on_unknown_lag_and_says_so() -> None:
    policy = lag_policy()
    d = run(policy, {PRIMARY: H, STANDBY: H}, operator=cmd("switchover", STANDBY, force=True))
    assert d.action is Action.SWITCHOVER
    assert Reason.LAG_UNKNOWN in d.reasons


def test_operator_failover_is_the_approval_a_lag_policy_asks_for() -> None:
    policy = lag_policy(on_lag_above_rpo="require_approval")
    lags = {STANDBY: lag(300.0, NOW)}
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags=lags, operator=cmd("failover"))
    assert d.action is Action.FAILOVER
    assert Reason.RPO_EXCEEDED in d.reasons


def test_operator_failover_is_refused_on_a_lag_the_policy_waits_out() -> None:
    policy = lag_policy(on_lag_above_rpo="wait")
    lags = {STANDBY: lag(300.0, NOW)}
    d = run(policy, {PRIMARY: D, STANDBY: H}, lags=lags, operator=cmd("failover"))
    assert {Reason.OPERATOR_REFUSED, Reason.RPO_EXCEEDED} <= set(d.reasons)
    assert_no_run(d)


def test_operator_failback_moves_back_to_the_primary() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, state(STANDBY), operator=cmd("failback"))
    assert (d.action, d.target, d.initiated_by) == (Action.FAILBACK, PRIMARY, Initiator.OPERATOR)


def test_operator_failback_is_refused_when_the_primary_is_active_or_unhealthy() -> None:
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, state(PRIMARY), operator=cmd("failback"))
    assert {Reason.OPERATOR_REFUSED, Reason.ALREADY_ACTIVE} <= set(d.reasons)
    assert_no_run(d)
    d = run(permissive(), {PRIMARY: G, STANDBY: H}, state(STANDBY), operator=cmd("failback"))
    assert {Reason.OPERATOR_REFUSED, Reason.STANDBY_UNHEALTHY} <= set(d.reasons)
    assert_no_run(d)


@pytest.mark.parametrize("command", ["failover", "switchover", "failback"])
def test_operator_moves_are_refused_while_paused(command: str) -> None:
    st = state(STANDBY if command == "failback" else PRIMARY, paused=True)
    d = run(permissive(), {PRIMARY: H, STANDBY: H}, st, operator=cmd(command, force=True))
    assert d.phase is Phase.PAUSED
    assert {Reason.PAUSED, Reason.OPERATOR_REFUSED} <= set(d.reasons)
    assert_no_run(d)


@pytest.mark.parametrize("command", ["failover", "switchover", "failback"])
def test_operator_moves_are_refused_without_the_leader_lease(command: str) -> None:
    st = state(STANDBY if command == "failback" else PRIMARY)
    d = run(
        permissive(), {PRIMARY: H, STANDBY: H}, st, operator=cmd(command, force=True), leader=False
    )
    assert d.phase is Phase.BLOCKED
    assert {Reason.OPERATOR_REFUSED, Reason.NOT_LEADER} <= set(d.reasons)
    assert_no_run(d)


def test_operator_move_while_a_run_is_in_progress_starts_nothing() -> None:
    st = state(run=run_info(target=STANDBY))
    d = run(permissive(3), {PRIMARY: D, STANDBY: H, THIRD: H}, st, operator=cmd("failover", THIRD))
    assert_no_run(d)
    assert Reason.RUN_IN_PROGRESS in d.reasons


def test_operator_move_after_a_failed_run_is_the_operator_taking_over() -> None:
    st = state(run=run_info(target=STANDBY, status=RunStatus.FAILED, error="boom"))
    d = run(permissive(3), {PRIMARY: D, STANDBY: D, THIRD: H}, st, operator=cmd("failover", THIRD))
    assert (d.action, d.target) == (Action.FAILOVER, THIRD)


def test_pause_resume_and_approve_are_not_moves() -> None:
    for c in ("pause", "resume", "approve"):
        d = run(permissive(), {PRIMARY: H, STANDBY: H}, operator=cmd(c))
        assert d.phase is Phase.STEADY
        assert_no_run(d)


# -- automatic failback -------------------------------------------------------------------


def failback_policy(**guards: Any) -> Policy:
    g: dict[str, Any] = {
        "cooldown": "0s",
        "failback": {"mode": "automatic", "stable_period": "10m"},
    }
    g.update(guards)
    return make_policy(guards=g)


def test_automatic_failback_after_the_stable_period() -> None:
    policy = failback_policy()
    since = NOW - 10 * MINUTE
    verdicts = {PRIMARY: rv(PRIMARY, H, since=since + 1), STANDBY: rv(STANDBY, H)}
    d = run(policy, verdicts, state(STANDBY))
    assert d.phase is Phase.STEADY
    assert_no_run(d)
    verdicts = {PRIMARY: rv(PRIMARY, H, since=since), STANDBY: rv(STANDBY, H)}
    d = run(policy, verdicts, state(STANDBY))
    assert (d.phase, d.action, d.target) == (Phase.FAILING_OVER, Action.FAILBACK, PRIMARY)
    assert Reason.PRIMARY_RECOVERED in d.reasons


def test_manual_failback_never_moves_by_itself() -> None:
    policy = make_policy(guards={"cooldown": "0s", "failback": {"mode": "manual"}})
    verdicts = {PRIMARY: rv(PRIMARY, H, since=0.0), STANDBY: rv(STANDBY, H)}
    d = run(policy, verdicts, state(STANDBY))
    assert d.phase is Phase.STEADY
    assert_no_run(d)


def test_a_held_back_failback_is_steady_not_an_incident() -> None:
    policy = failback_policy(cooldown="1h")
    verdicts = {PRIMARY: rv(PRIMARY, H, since=0.0), STANDBY: rv(STANDBY, H)}
    d = run(policy, verdicts, state(STANDBY, last_move_finished_at=NOW - MINUTE))
    assert d.phase is Phase.STEADY
    assert Reason.COOLDOWN in d.reasons
    assert_no_run(d)


@pytest.mark.parametrize("active_verdict", [G, U])
def test_no_automatic_failback_unless_the_active_region_is_healthy(active_verdict: Verdict) -> None:
    policy = failback_policy()
    verdicts = {PRIMARY: rv(PRIMARY, H, since=0.0), STANDBY: rv(STANDBY, active_verdict)}
    d = run(policy, verdicts, state(STANDBY))
    assert_no_run(d)


def test_automatic_failback_asks_for_approval_when_the_policy_does() -> None:
    policy = failback_policy(require_approval=True)
    verdicts = {PRIMARY: rv(PRIMARY, H, since=0.0), STANDBY: rv(STANDBY, H)}
    d = run(policy, verdicts, state(STANDBY))
    assert d.action is Action.AWAIT_APPROVAL
    d = run(policy, verdicts, state(STANDBY), operator=cmd("approve"))
    assert d.action is Action.FAILBACK


# -- RTO ----------------------------------------------------------------------------------


def test_detection_starts_the_rto_clock() -> None:
    policy = make_policy(rto="15m", guards={"cooldown": "30m"})
    st = state(last_move_finished_at=NOW - MINUTE)  # blocked, so the outage goes on
    d = run(policy, {PRIMARY: D, STANDBY: H}, st)
    assert d.detected_at == NOW
    assert d.rto_remaining == 15 * MINUTE
    st = apply_decision(st, d, "run-x")
    later = run(policy, {PRIMARY: D, STANDBY: H}, st, now=NOW + 4 * MINUTE)
    assert later.detected_at == NOW
    assert later.rto_remaining == 11 * MINUTE
    overdue = run(policy, {PRIMARY: D, STANDBY: H}, st, now=NOW + 20 * MINUTE)
    assert overdue.rto_remaining == -5 * MINUTE


def test_the_rto_clock_keeps_running_during_the_run_and_stops_when_healthy() -> None:
    policy = permissive()
    st = state(detected_at=NOW - MINUTE, run=run_info(target=STANDBY))
    d = run(policy, {PRIMARY: U, STANDBY: H}, st)
    assert d.detected_at == NOW - MINUTE
    assert d.rto_remaining == policy.rto - MINUTE
    done = state(STANDBY, detected_at=None)
    d = run(policy, {PRIMARY: D, STANDBY: H}, done)
    assert d.detected_at is None and d.rto_remaining is None  # the active region is fine


def test_losing_sight_of_a_down_region_does_not_restart_the_rto_clock() -> None:
    policy = make_policy(rto="15m", guards={"cooldown": "30m"})
    st = state(last_move_finished_at=NOW - MINUTE)  # the failover is blocked by the cooldown
    first = run(policy, {PRIMARY: D, STANDBY: H}, st)
    st = apply_decision(st, first, "r")
    stale = {PRIMARY: rv(PRIMARY, U, reasons=[Reason.STALE_DATA]), STANDBY: rv(STANDBY, H)}
    blind = run(policy, stale, st, now=NOW + 60)
    st = apply_decision(st, blind, "r")
    again = run(policy, {PRIMARY: D, STANDBY: H}, st, now=NOW + 120)
    assert again.detected_at == NOW
    assert again.rto_remaining == 13 * MINUTE


# -- state transitions --------------------------------------------------------------------


def test_apply_decision_records_the_run_and_the_move() -> None:
    policy = permissive()
    d = run(policy, {PRIMARY: D, STANDBY: H})
    st = apply_decision(state(), d, "run-7")
    assert st.running
    assert st.run is not None
    assert (st.run.id, st.run.source, st.run.target, st.run.started_at) == (
        "run-7",
        PRIMARY,
        STANDBY,
        NOW,
    )
    assert st.moves == (Move(NOW, Action.FAILOVER, STANDBY),)
    assert st.detected_at == NOW


def test_apply_decision_without_a_run_changes_only_the_rto_clock() -> None:
    d = run(permissive(), {PRIMARY: G, STANDBY: H})
    before = state(detected_at=5.0)
    after = apply_decision(before, d, "run-1")
    assert after.run is None and after.moves == ()
    assert after.detected_at is None


def test_finish_run_success_moves_the_active_region() -> None:
    st = apply_decision(state(), run(permissive(), {PRIMARY: D, STANDBY: H}), "run-1")
    done = finish_run(st, NOW + 30, ok=True)
    assert done.active_region == STANDBY
    assert done.run is None
    assert done.last_move_finished_at == NOW + 30
    assert done.detected_at is None


def test_finish_run_failure_keeps_the_region_and_remembers_the_failure() -> None:
    st = apply_decision(state(), run(permissive(), {PRIMARY: D, STANDBY: H}), "run-1")
    failed = finish_run(st, NOW + 30, ok=False, error="flip-dns timed out")
    assert failed.active_region == PRIMARY
    assert failed.failed and not failed.running
    assert failed.run is not None and failed.run.error == "flip-dns timed out"
    assert finish_run(state(), NOW, ok=True) == state()  # no run: nothing to finish


def test_pause_and_resume_and_resume_acknowledges_a_failed_run() -> None:
    failed = state(run=run_info(status=RunStatus.FAILED))
    paused = apply_command(failed, cmd("pause"))
    assert paused.paused and paused.failed
    resumed = apply_command(paused, cmd("resume"))
    assert not resumed.paused
    assert resumed.run is None
    running = state(run=run_info())
    assert apply_command(running, cmd("resume")).run == running.run
    assert apply_command(running, cmd("failover")) == running


def test_set_waiting_approval() -> None:
    st = state(run=run_info())
    waiting = set_waiting_approval(st, True)
    assert waiting.run is not None and waiting.run.waiting_approval
    assert set_waiting_approval(waiting, True) is waiting
    assert set_waiting_approval(state(), True) == state()


def test_decision_key_and_every_reason_has_words() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: H})
    assert d.key() == (d.phase, d.action, d.target, d.reasons)
    assert set(REASON_TEXT) == set(Reason)


def test_reasons_are_deduplicated_in_order() -> None:
    d = run(permissive(), {PRIMARY: D, STANDBY: H}, leader=False)
    assert len(d.reasons) == len(set(d.reasons))
    assert d.reasons.count(Reason.NOT_LEADER) == 1


# -- RPO-aware target choice (issue 16) ---------------------------------------------------


def three_region_lag_policy(**guards: Any) -> Policy:
    g: dict[str, Any] = {"cooldown": "0s", "on_lag_above_rpo": "wait", "on_lag_unknown": "wait"}
    g.update(guards)
    return make_policy(3, replication=True, guards=g)


@pytest.mark.parametrize(
    ("behind", "why"),
    [
        (lag(600.0, NOW - 10), "lag of us-west-2 10m > RPO 1m"),
        (lag(None, NOW - 10), "no lag reading for us-west-2"),
        (lag(5.0, NOW - 4 * MINUTE), "the lag reading for us-west-2 is 4m old"),
        (None, "no lag reading for us-west-2"),
    ],
)
def test_the_target_is_the_first_healthy_standby_within_the_rpo(
    behind: LagReading | None, why: str
) -> None:
    # us-west-2 is preferred and healthy but behind (or unknown, or stale); eu-west-1 is
    # current: the move that loses no data wins, and the decision says whom it passed over.
    policy = three_region_lag_policy()
    lags = {THIRD: lag(2.0, NOW - 10)}
    if behind is not None:
        lags[STANDBY] = behind
    d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: H}, lags=lags)
    assert d.action is Action.FAILOVER
    assert d.target == THIRD
    assert Reason.STANDBY_LAGGING in d.reasons
    assert Reason.RPO_EXCEEDED not in d.reasons and Reason.LAG_UNKNOWN not in d.reasons
    assert f"passed over {STANDBY}: {why}" in d.notes
    assert f"chose {THIRD}: lag 2s within RPO 1m" in d.notes


def test_a_lagging_standby_first_in_line_no_longer_waits_when_another_is_current() -> None:
    # The policy says wait (or ask) on lag: before, the engine waited for us-west-2 while
    # eu-west-1 could take the service without losing data.
    for on_lag in ("wait", "require_approval"):
        policy = three_region_lag_policy(on_lag_above_rpo=on_lag)
        lags = {STANDBY: lag(600.0, NOW), THIRD: lag(1.0, NOW)}
        d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: H}, lags=lags)
        assert (d.phase, d.action, d.target) == (Phase.FAILING_OVER, Action.FAILOVER, THIRD)


def test_the_preferred_standby_within_the_rpo_is_still_the_first_choice() -> None:
    policy = three_region_lag_policy()
    lags = {STANDBY: lag(30.0, NOW), THIRD: lag(1.0, NOW)}
    d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: H}, lags=lags)
    assert d.target == STANDBY
    assert Reason.STANDBY_LAGGING not in d.reasons
    assert not d.notes


def test_with_no_standby_within_the_rpo_the_first_healthy_one_and_its_lag_guard_decide() -> None:
    policy = three_region_lag_policy()
    lags = {STANDBY: lag(600.0, NOW), THIRD: lag(300.0, NOW)}
    d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: H}, lags=lags)
    assert (d.phase, d.target) == (Phase.BLOCKED, STANDBY)
    assert Reason.RPO_EXCEEDED in d.reasons
    assert Reason.STANDBY_LAGGING not in d.reasons


def test_an_unhealthy_standby_within_the_rpo_is_never_chosen_over_a_healthy_lagging_one() -> None:
    policy = three_region_lag_policy(on_lag_above_rpo="proceed")
    lags = {STANDBY: lag(600.0, NOW), THIRD: lag(1.0, NOW)}
    for third in (D, U, G):
        d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: third}, lags=lags)
        assert d.target == STANDBY
        assert Reason.RPO_EXCEEDED in d.reasons


def test_a_standby_without_a_lag_source_counts_as_within_the_rpo() -> None:
    # Only us-west-2 replicates (eu-west-1 serves from a store of its own): it has no lag that
    # could stand in the way.
    data = three_region_lag_policy().model_dump(mode="json", exclude_none=True)
    data["replication"]["sources"].pop(THIRD)
    policy = Policy.model_validate(data, context={"from_file": True})
    d = run(policy, {PRIMARY: D, STANDBY: H, THIRD: H}, lags={STANDBY: lag(600.0, NOW)})
    assert d.target == THIRD
    assert f"chose {THIRD}: not replicated" in d.notes


def test_without_replication_the_first_healthy_standby_is_the_target() -> None:
    d = run(permissive(3), {PRIMARY: D, STANDBY: H, THIRD: H})
    assert d.target == STANDBY
    assert not d.notes


def test_an_operator_failover_without_to_is_rpo_aware_and_with_to_is_obeyed() -> None:
    policy = three_region_lag_policy(on_lag_above_rpo="require_approval")
    lags = {STANDBY: lag(600.0, NOW), THIRD: lag(1.0, NOW)}
    verdicts = {PRIMARY: D, STANDBY: H, THIRD: H}
    picked = run(policy, verdicts, lags=lags, operator=cmd("failover"))
    assert (picked.action, picked.target) == (Action.FAILOVER, THIRD)
    assert Reason.STANDBY_LAGGING in picked.reasons
    assert any(n.startswith(f"passed over {STANDBY}") for n in picked.notes)
    named = run(policy, verdicts, lags=lags, operator=cmd("failover", to=STANDBY))
    assert (named.action, named.target) == (Action.FAILOVER, STANDBY)
    assert Reason.RPO_EXCEEDED in named.reasons


def test_an_operator_switchover_without_to_goes_to_the_standby_that_loses_nothing() -> None:
    policy = three_region_lag_policy()
    lags = {STANDBY: lag(600.0, NOW), THIRD: lag(1.0, NOW)}
    d = run(policy, {PRIMARY: H, STANDBY: H, THIRD: H}, lags=lags, operator=cmd("switchover"))
    assert (d.action, d.target) == (Action.SWITCHOVER, THIRD)


# -- the cooldown counts from the last automatic move (issue 16) ---------------------------


def _finished(st: ServiceState, d: Decision, at: float, ok: bool = True) -> ServiceState:
    started = apply_decision(st, d, "run-x")
    assert started.running, d
    return finish_run(started, at, ok=ok)


@pytest.mark.parametrize("ok", [True, False])
def test_an_operator_run_starts_no_cooldown(ok: bool) -> None:
    policy = make_policy(guards={"cooldown": "30m"})
    before = state(active=STANDBY, last_move_finished_at=NOW - 2 * HOUR)
    d = run(policy, {PRIMARY: H, STANDBY: H}, before, operator=cmd("failback"))
    after = _finished(before, d, NOW + 60, ok=ok)
    assert after.last_move_finished_at == NOW - 2 * HOUR


@pytest.mark.parametrize("ok", [True, False])
def test_an_automatic_run_starts_the_cooldown(ok: bool) -> None:
    policy = make_policy(guards={"cooldown": "30m"})
    d = run(policy, {PRIMARY: D, STANDBY: H}, state())
    assert d.initiated_by is Initiator.POLICY
    assert _finished(state(), d, NOW + 60, ok=ok).last_move_finished_at == NOW + 60


def test_after_an_operator_failback_a_new_outage_fails_over_at_once() -> None:
    # Automatic failover at T, finished at T+1m; an operator fails back at T+40m; the primary
    # dies again at T+50m. The cooldown (30m) ended at T+31m: the engine moves at once (it
    # used to block until T+1h10m, 30m after the operator's move).
    policy = make_policy(guards={"cooldown": "30m", "max_failovers": {"count": 3, "window": "1d"}})
    t = NOW
    st = _finished(state(), run(policy, {PRIMARY: D, STANDBY: H}, state(), now=t), t + MINUTE)
    back = run(policy, {PRIMARY: H, STANDBY: H}, st, now=t + 40 * MINUTE, operator=cmd("failback"))
    assert back.action is Action.FAILBACK
    st = _finished(st, back, t + 41 * MINUTE)
    assert st.active_region == PRIMARY
    again = run(policy, {PRIMARY: D, STANDBY: H}, st, now=t + 50 * MINUTE)
    assert (again.action, again.target) == (Action.FAILOVER, STANDBY), again.reasons
    assert Reason.COOLDOWN not in again.reasons


def test_an_operator_failback_does_not_shorten_an_automatic_cooldown_either() -> None:
    policy = make_policy(guards={"cooldown": "30m", "max_failovers": {"count": 3, "window": "1d"}})
    t = NOW
    st = _finished(state(), run(policy, {PRIMARY: D, STANDBY: H}, state(), now=t), t + MINUTE)
    back = run(policy, {PRIMARY: H, STANDBY: H}, st, now=t + 5 * MINUTE, operator=cmd("failback"))
    st = _finished(st, back, t + 6 * MINUTE)
    again = run(policy, {PRIMARY: D, STANDBY: H}, st, now=t + 10 * MINUTE)
    assert again.phase is Phase.BLOCKED
    assert Reason.COOLDOWN in again.reasons
    assert any("cooldown ends in 21m" in n for n in again.notes)


def test_an_operator_move_still_counts_against_max_failovers() -> None:
    policy = make_policy(guards={"cooldown": "0s", "max_failovers": {"count": 1, "window": "1d"}})
    st = state()
    moved = run(policy, {PRIMARY: H, STANDBY: H}, st, operator=cmd("switchover"))
    st = _finished(st, moved, NOW + MINUTE)
    back = run(policy, {PRIMARY: H, STANDBY: H}, st, now=NOW + 2 * MINUTE, operator=cmd("failback"))
    st = _finished(st, back, NOW + 3 * MINUTE)
    d = run(policy, {PRIMARY: D, STANDBY: H}, st, now=NOW + 4 * MINUTE)
    assert d.phase is Phase.BLOCKED
    assert Reason.MAX_FAILOVERS in d.reasons
