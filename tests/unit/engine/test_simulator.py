"""The scenario simulator: the real health book and decide() on a virtual clock, with the
policy's runbook simulated step by step (DAG, timeouts, retries, on_failure, approvals,
leadership). Scenarios here carry their policy inline, as a mapping."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.engine.simulator import RunRecord, SimulationResult
from orchestrator.engine.vocabulary import Action, Phase, Reason
from tests.unit.engine.conftest import (
    PRIMARY,
    REGIONS,
    STANDBY,
    THIRD,
    all_up,
    sim_policy_data,
    simulate,
    with_replication,
)

UP = all_up([PRIMARY, STANDBY])
PRIMARY_DOWN_AT_2M = {"at": "2m", "probes": {"region": PRIMARY, "state": "down"}}
DETECTED = 140.0  # down at 2m; probes at 2m, 2m10s, 2m20s: the third failure in a row


def phase_at(result: SimulationResult, t: float) -> Phase:
    m = result.moment_at(t)
    assert m is not None
    return m.decision.phase


def reasons_at(result: SimulationResult, t: float) -> tuple[Reason, ...]:
    m = result.moment_at(t)
    assert m is not None
    return m.decision.reasons


def active_at(result: SimulationResult, t: float) -> str:
    m = result.moment_at(t)
    assert m is not None
    return m.active_region


def only_run(result: SimulationResult) -> RunRecord:
    assert len(result.runs) == 1, result.runs
    return result.runs[0]


def attempts(run: RunRecord, step: str) -> list[tuple[float, float, str]]:
    return [(start, end, outcome) for name, start, end, outcome in run.steps if name == step]


def step_fact(name: str, at: str = "0s", **fact: Any) -> dict[str, Any]:
    return {"at": at, "step": {"name": name, **fact}}


# -- detection and the failover -----------------------------------------------------------


@pytest.mark.parametrize("consecutive", [1, 2, 3, 5])
def test_detection_takes_consecutive_failures_probe_intervals(consecutive: int) -> None:
    policy = sim_policy_data(detection={"consecutive_failures": consecutive})
    result = simulate(policy, [*UP, PRIMARY_DOWN_AT_2M])
    run = only_run(result)
    # The first failing probe runs at 2m itself, so the rule holds (n - 1) intervals later.
    assert run.started_at == 120.0 + (consecutive - 1) * 10.0
    assert run.started_at - 120.0 < consecutive * 10.0
    assert (run.kind, run.source, run.target) == (Action.FAILOVER, PRIMARY, STANDBY)
    assert phase_at(result, run.started_at - 1) is not Phase.FAILING_OVER


def test_detection_of_a_fault_between_probes_waits_for_the_next_probe() -> None:
    result = simulate(sim_policy_data(), [*UP, {**PRIMARY_DOWN_AT_2M, "at": "2m5s"}])
    run = only_run(result)
    assert run.started_at == 150.0  # probes at 2m10s, 2m20s, 2m30s
    assert run.started_at - 125.0 <= 3 * 10.0


def test_a_failover_run_completes_and_moves_the_active_region() -> None:
    result = simulate(sim_policy_data(), [*UP, PRIMARY_DOWN_AT_2M])
    run = only_run(result)
    assert run.ok is True
    assert run.finished_at == DETECTED
    assert [name for name, *_ in run.steps] == ["notify", "promote-db", "flip-dns"]
    assert active_at(result, DETECTED - 1) == PRIMARY
    assert active_at(result, DETECTED) == STANDBY
    assert result.state.active_region == STANDBY
    assert phase_at(result, 5 * 60) is Phase.STEADY
    assert result.runs[0].initiated_by == "policy"


def test_the_phase_before_detection_is_steady_then_suspect() -> None:
    result = simulate(sim_policy_data(), [*UP, PRIMARY_DOWN_AT_2M])
    assert phase_at(result, 100) is Phase.STEADY
    assert phase_at(result, 125) is Phase.SUSPECT  # failed, not yet the rule


def test_an_observer_partition_does_not_fail_over() -> None:
    timeline = [
        *UP,
        {"at": "2m", "probes": {"region": PRIMARY, "vantage": "local", "state": "down"}},
    ]
    result = simulate(sim_policy_data(), timeline)
    assert result.runs == []
    assert phase_at(result, 5 * 60) is Phase.SUSPECT
    assert Reason.NO_QUORUM in reasons_at(result, 5 * 60)


def test_every_region_down_does_nothing() -> None:
    timeline = [
        *UP,
        PRIMARY_DOWN_AT_2M,
        {"at": "2m", "probes": {"region": STANDBY, "state": "down"}},
    ]
    result = simulate(sim_policy_data(), timeline)
    assert result.runs == []
    assert phase_at(result, 5 * 60) is Phase.BLOCKED
    assert Reason.ALL_REGIONS_DOWN in reasons_at(result, 5 * 60)


def test_silence_is_unknown_and_never_a_failover() -> None:
    timeline = [*UP, {"at": "2m", "probes": {"region": PRIMARY, "state": "unknown"}}]
    result = simulate(sim_policy_data(), timeline)
    assert result.runs == []
    assert Reason.STALE_DATA in reasons_at(result, 5 * 60)


def test_a_slow_probe_counts_as_a_failure() -> None:
    timeline = [*UP, {"at": "2m", "probes": {"region": PRIMARY, "state": "slow"}}]
    result = simulate(sim_policy_data(), timeline)
    assert only_run(result).started_at == DETECTED


def test_three_regions_skip_a_down_standby() -> None:
    timeline = [
        *all_up(REGIONS[:3]),
        {"at": "1m", "probes": {"region": STANDBY, "state": "down"}},
        PRIMARY_DOWN_AT_2M,
    ]
    result = simulate(sim_policy_data(3), timeline)
    assert only_run(result).target == THIRD


def test_a_flapping_standby_is_never_chosen_over_a_healthy_one() -> None:
    timeline = [
        *all_up(REGIONS[:3]),
        {"at": "0s", "probes": {"region": STANDBY, "state": {"flap": "10s"}}},
        {"at": "2m10s", "probes": {"region": PRIMARY, "state": "down"}},
    ]
    result = simulate(sim_policy_data(3), timeline)
    assert only_run(result).target == THIRD


# -- AWS Health and lag -------------------------------------------------------------------


def health_policy() -> dict[str, Any]:
    return sim_policy_data(
        signals=[
            {"name": "api", "type": "http", "target": "https://api.{region}.shop.example.com/"},
            {"name": "aws", "type": "aws_health", "services": ["EC2"]},
        ]
    )


def test_an_open_health_event_and_one_vantage_make_a_quorum() -> None:
    timeline = [
        *UP,
        {"at": "0s", "aws_health_api": "available"},
        {"at": "2m", "aws_health": {"region": PRIMARY, "service": "ec2", "status": "open"}},
        {"at": "2m", "probes": {"region": PRIMARY, "vantage": "local", "state": "down"}},
    ]
    result = simulate(health_policy(), timeline)
    assert only_run(result).started_at == DETECTED


def test_the_health_api_being_unavailable_is_a_reason_never_a_failover() -> None:
    timeline = [
        *UP,
        {"at": "0s", "aws_health_api": "available"},
        {"at": "2m", "aws_health_api": "unavailable"},
    ]
    result = simulate(health_policy(), timeline)
    assert result.runs == []
    assert Reason.HEALTH_API_UNAVAILABLE not in reasons_at(result, 60)
    assert Reason.HEALTH_API_UNAVAILABLE in reasons_at(result, 3 * 60)
    assert phase_at(result, 3 * 60) is Phase.STEADY


def test_unknown_lag_waits_then_a_reading_lets_the_failover_go() -> None:
    policy = with_replication(sim_policy_data(guards={"on_lag_unknown": "wait"}))
    timeline = [
        *UP,
        {"at": "0s", "lag": {"region": STANDBY, "seconds": None}},
        PRIMARY_DOWN_AT_2M,
        {"at": "5m", "lag": {"region": STANDBY, "seconds": 3}},
    ]
    result = simulate(policy, timeline)
    assert phase_at(result, 4 * 60) is Phase.BLOCKED
    assert Reason.LAG_UNKNOWN in reasons_at(result, 4 * 60)
    assert only_run(result).started_at == 300.0


# -- runbook steps ------------------------------------------------------------------------


def test_a_failed_step_stops_the_run_and_the_service_is_failed() -> None:
    timeline = [*UP, step_fact("flip-dns", outcome="fail"), PRIMARY_DOWN_AT_2M]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert run.ok is False
    assert run.error == "step flip-dns failed after 1 attempt(s)"
    assert active_at(result, 5 * 60) == PRIMARY
    assert phase_at(result, 5 * 60) is Phase.FAILED
    assert Reason.STEP_FAILED in reasons_at(result, 5 * 60)


def test_retries_then_give_up() -> None:
    timeline = [*UP, step_fact("promote-db", outcome="fail", duration="10s"), PRIMARY_DOWN_AT_2M]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert attempts(run, "promote-db") == [
        (140.0, 150.0, "fail"),
        (150.0, 160.0, "fail"),
        (160.0, 170.0, "fail"),
    ]
    assert attempts(run, "flip-dns") == []  # after promote-db: never started
    assert (run.ok, run.finished_at) == (False, 170.0)
    assert run.error == "step promote-db failed after 3 attempt(s)"
    assert phase_at(result, 165) is Phase.FAILING_OVER


def test_a_retry_can_succeed() -> None:
    timeline = [
        *UP,
        step_fact("promote-db", outcome="fail", duration="10s"),
        PRIMARY_DOWN_AT_2M,
        step_fact("promote-db", at="2m35s", outcome="succeed"),
    ]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert [o for *_, o in attempts(run, "promote-db")] == ["fail", "fail", "succeed"]
    assert (run.ok, run.finished_at) == (True, 160.0)
    assert active_at(result, 160) == STANDBY


def test_a_hanging_step_times_out() -> None:
    timeline = [*UP, step_fact("flip-dns", outcome="hang"), PRIMARY_DOWN_AT_2M]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert attempts(run, "flip-dns") == [(140.0, 200.0, "timeout")]  # timeout 1m
    assert (run.ok, run.finished_at) == (False, 200.0)
    assert run.error == "step flip-dns timed out after 1 attempt(s)"
    assert phase_at(result, 199) is Phase.FAILING_OVER
    assert phase_at(result, 200) is Phase.FAILED


def test_a_step_slower_than_its_timeout_times_out() -> None:
    timeline = [*UP, step_fact("flip-dns", duration="90s"), PRIMARY_DOWN_AT_2M]
    run = only_run(simulate(sim_policy_data(), timeline))
    assert attempts(run, "flip-dns") == [(140.0, 200.0, "timeout")]
    assert run.ok is False


def test_steps_wait_for_their_after_and_take_their_duration() -> None:
    timeline = [*UP, step_fact("promote-db", duration="45s"), PRIMARY_DOWN_AT_2M]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert attempts(run, "notify") == [(140.0, 140.0, "succeed")]  # ran concurrently
    assert attempts(run, "promote-db") == [(140.0, 185.0, "succeed")]
    assert attempts(run, "flip-dns") == [(185.0, 185.0, "succeed")]
    assert active_at(result, 184) == PRIMARY
    assert active_at(result, 185) == STANDBY


def test_on_failure_continue_lets_the_run_go_on() -> None:
    timeline = [*UP, step_fact("notify", outcome="fail"), PRIMARY_DOWN_AT_2M]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert attempts(run, "notify") == [(140.0, 140.0, "fail")]
    assert run.ok is True
    assert result.state.active_region == STANDBY


# -- approvals, operators, leadership -----------------------------------------------------

FAILED_OVER_THEN_PRIMARY_BACK = [
    *UP,
    PRIMARY_DOWN_AT_2M,
    {"at": "5m", "probes": {"region": PRIMARY, "state": "up"}},
]


def test_an_approval_step_waits_for_the_operator() -> None:
    timeline = [
        *FAILED_OVER_THEN_PRIMARY_BACK,
        {"at": "6m", "operator": {"command": "failback"}},
        {"at": "7m", "operator": {"command": "approve"}},
    ]
    result = simulate(sim_policy_data(), timeline)
    failover, failback = result.runs
    assert failback.is_failback and failback.kind is Action.FAILBACK
    assert failback.initiated_by == "operator"
    assert failback.started_at == 360.0
    assert phase_at(result, 6 * 60 + 30) is Phase.AWAITING_APPROVAL
    assert Reason.APPROVAL_REQUIRED in reasons_at(result, 6 * 60 + 30)
    assert active_at(result, 6 * 60 + 59) == STANDBY
    assert attempts(failback, "approve-failback") == [(360.0, 420.0, "succeed")]
    assert attempts(failback, "flip-dns") == [(420.0, 420.0, "succeed")]
    assert active_at(result, 7 * 60) == PRIMARY
    assert failover.target == STANDBY


def test_an_unanswered_approval_times_out_and_fails_the_run() -> None:
    timeline = [*FAILED_OVER_THEN_PRIMARY_BACK, {"at": "6m", "operator": {"command": "failback"}}]
    result = simulate(sim_policy_data(), timeline)
    failback = result.runs[1]
    assert (failback.ok, failback.finished_at) == (False, 960.0)  # approval timeout 10m
    assert failback.error == "step approve-failback timed out after 1 attempt(s)"
    assert result.state.active_region == STANDBY


def test_automatic_failback_after_the_stable_period() -> None:
    policy = sim_policy_data(
        guards={"failback": {"mode": "automatic", "stable_period": "5m"}},
        runbooks={"failback": None},  # the failover runbook, no approval step
    )
    result = simulate(policy, FAILED_OVER_THEN_PRIMARY_BACK)
    failover, failback = result.runs
    # Primary healthy again at 5m20s (3 successes in a row), stable for 5m.
    assert failback.started_at == pytest.approx(320.0 + 300.0)
    assert failback.is_failback and failback.kind is Action.FAILBACK
    assert result.state.active_region == PRIMARY
    assert failover.finished_at == DETECTED


def test_no_run_starts_without_the_leader_lease() -> None:
    timeline = [
        *UP,
        {"at": "1m", "leader": False},
        PRIMARY_DOWN_AT_2M,
        {"at": "5m", "leader": True},
    ]
    result = simulate(sim_policy_data(), timeline)
    assert phase_at(result, 4 * 60) is Phase.BLOCKED
    assert Reason.NOT_LEADER in reasons_at(result, 4 * 60)
    assert only_run(result).started_at == 300.0


def test_no_step_starts_while_the_leader_lease_is_lost() -> None:
    timeline = [
        *UP,
        step_fact("promote-db", duration="30s"),
        PRIMARY_DOWN_AT_2M,
        {"at": "2m30s", "leader": False},
        {"at": "4m", "leader": True},
    ]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert attempts(run, "promote-db") == [(140.0, 170.0, "succeed")]  # already in flight
    assert attempts(run, "flip-dns") == [(240.0, 240.0, "succeed")]  # not at 2m50s
    assert Reason.NOT_LEADER in reasons_at(result, 200)
    assert (run.ok, run.finished_at) == (True, 240.0)


def test_no_retry_starts_while_the_leader_lease_is_lost() -> None:
    timeline = [
        *UP,
        step_fact("promote-db", outcome="fail", duration="30s"),
        PRIMARY_DOWN_AT_2M,
        {"at": "2m30s", "leader": False},
    ]
    run = only_run(simulate(sim_policy_data(), timeline))
    started = [start for start, _, _ in attempts(run, "promote-db")]
    assert all(start < 150.0 for start in started), started


def test_pause_holds_the_failover_until_resume() -> None:
    timeline = [
        *UP,
        {"at": "1m", "operator": {"command": "pause"}},
        PRIMARY_DOWN_AT_2M,
        {"at": "5m", "operator": {"command": "resume"}},
    ]
    result = simulate(sim_policy_data(), timeline)
    assert phase_at(result, 4 * 60) is Phase.PAUSED
    assert {Reason.PAUSED, Reason.ACTIVE_DOWN} <= set(reasons_at(result, 4 * 60))
    assert only_run(result).started_at == 300.0


def test_resume_acknowledges_a_failed_run_and_the_engine_tries_again() -> None:
    timeline = [
        *UP,
        step_fact("flip-dns", outcome="fail"),
        PRIMARY_DOWN_AT_2M,
        step_fact("flip-dns", at="4m", outcome="succeed"),
        {"at": "5m", "operator": {"command": "resume"}},
    ]
    result = simulate(sim_policy_data(), timeline)
    first, second = result.runs
    assert first.ok is False and second.ok is True
    assert second.started_at == 300.0
    assert result.state.active_region == STANDBY


@pytest.mark.parametrize("command", ["failover", "switchover"])
def test_operator_moves_start_runs_counted_as_failovers(command: str) -> None:
    timeline = [*UP, {"at": "3m", "operator": {"command": command, "to": STANDBY}}]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert (run.started_at, run.kind, run.target) == (180.0, Action(command), STANDBY)
    assert run.initiated_by == "operator"
    assert not run.is_failback
    assert result.state.active_region == STANDBY


def test_operator_force_to_an_unhealthy_region() -> None:
    timeline = [
        *UP,
        {"at": "1m", "probes": {"region": STANDBY, "state": "unknown"}},
        {"at": "3m", "operator": {"command": "failover", "to": STANDBY}},
        {"at": "4m", "operator": {"command": "failover", "to": STANDBY, "force": True}},
    ]
    result = simulate(sim_policy_data(), timeline)
    run = only_run(result)
    assert run.started_at == 240.0


# -- the simulation itself ----------------------------------------------------------------


def test_the_same_scenario_gives_the_same_result() -> None:
    timeline = [*UP, step_fact("promote-db", duration="10s"), PRIMARY_DOWN_AT_2M]
    a = simulate(sim_policy_data(), timeline)
    b = simulate(sim_policy_data(), timeline)
    assert a.moments == b.moments
    assert a.runs == b.runs


def test_run_until_stops_early_and_moment_at_finds_the_last_moment() -> None:
    result = simulate(sim_policy_data(), [*UP, PRIMARY_DOWN_AT_2M], until=60.0, every_tick=True)
    assert result.moments[-1].at == 60.0
    assert result.moments[0].at == 0.0
    m = result.moment_at(30.5)
    assert m is not None and m.at == 30.0
    assert result.moment_at(-1.0) is None
    assert all(m.decision.at == m.at for m in result.moments)
    skipping = simulate(sim_policy_data(), [*UP, PRIMARY_DOWN_AT_2M], until=60.0)
    assert skipping.moments[-1].at == 60.0  # the last tick is always judged
    found = skipping.moment_at(30.5)
    assert found is not None and found.at <= 30.5
    assert found.decision.key() == m.decision.key()


def test_every_tick_judges_every_second() -> None:
    result = simulate(sim_policy_data(), UP, duration="1m", every_tick=True)
    assert [m.at for m in result.moments] == [float(t) for t in range(61)]


def test_idle_ticks_are_skipped_and_moment_at_answers_for_any_time() -> None:
    # An hour where nothing happens: a handful of moments are judged (the start, the ticks
    # after the first observations, the end), not 3,601; the phase is known at any time.
    result = simulate(sim_policy_data(), UP, duration="1h")
    assert len(result.moments) < 20, [m.at for m in result.moments]
    assert result.moments[-1].at == 3600.0
    for t in (0.0, 59.5, 1234.0, 3600.0):
        m = result.moment_at(t)
        assert m is not None
    assert phase_at(result, 1800) is Phase.STEADY


def test_a_refused_operator_command_is_what_its_moment_shows() -> None:
    timeline = [
        *UP,
        {"at": "1m", "probes": {"region": STANDBY, "state": "down"}},
        {"at": "3m", "operator": {"command": "failover", "to": STANDBY}},
    ]
    result = simulate(sim_policy_data(), timeline)
    assert result.runs == []
    assert phase_at(result, 180) is Phase.BLOCKED
    assert {Reason.OPERATOR_REFUSED, Reason.STANDBY_UNHEALTHY} <= set(reasons_at(result, 180))
    assert phase_at(result, 181) is Phase.STEADY


# -- start: the service's state when the scenario begins (failoverd extension) -------------


def simulate_from(start: dict[str, Any], timeline: list[dict[str, Any]], **guards: Any) -> Any:
    from orchestrator.engine.scenario import Scenario
    from orchestrator.engine.simulator import Simulation
    from tests.unit.engine.conftest import _merge, load, scenario_data

    policy = _merge(sim_policy_data(3), {"guards": guards}) if guards else sim_policy_data(3)
    data = {**scenario_data(policy, timeline), "start": start}
    return Simulation(Scenario.model_validate(data), load(policy)).run()


def test_start_puts_the_service_on_a_standby_with_its_cooldown_and_moves() -> None:
    timeline = [
        *all_up([PRIMARY, STANDBY, THIRD]),
        {"at": "2m", "probes": {"region": STANDBY, "state": "down"}},
    ]
    cooling = {"active_region": STANDBY, "last_automatic_move": "25m"}
    result = simulate_from(cooling, timeline, cooldown="30m")
    assert result.moment_at(0) is not None and result.moment_at(0).active_region == STANDBY
    assert Reason.COOLDOWN in reasons_at(result, 200)  # 25m + 3m20s < 30m
    run = only_run(result)  # the cooldown ends at 5m: off to the primary, a failback
    assert (run.started_at, run.target, run.kind) == (300.0, PRIMARY, Action.FAILBACK)
    # The primary is down too: the move would be a failover to eu-west-1, and the earlier
    # move (1h ago) uses up max_failovers (1 in 2h).
    counted = {
        "active_region": STANDBY,
        "moves": [{"ago": "1h", "kind": "failover", "to": STANDBY}],
    }
    primary_down = [*timeline, {"at": "0s", "probes": {"region": PRIMARY, "state": "down"}}]
    result = simulate_from(
        counted, primary_down, cooldown="0s", max_failovers={"count": 1, "window": "2h"}
    )
    assert result.runs == []
    assert {Reason.ACTIVE_DOWN, Reason.MAX_FAILOVERS} <= set(reasons_at(result, 300))
    paused = simulate_from(
        {"paused": True}, [*all_up([PRIMARY, STANDBY, THIRD]), PRIMARY_DOWN_AT_2M]
    )
    assert paused.runs == [] and phase_at(paused, 300) is Phase.PAUSED


def test_start_names_only_the_policy_s_regions(tmp_path: Any) -> None:
    import yaml

    from orchestrator.engine.scenario_loader import load_scenario
    from orchestrator.policy.yamlsource import SourceErrors
    from tests.unit.engine.conftest import scenario_data

    data = {**scenario_data(sim_policy_data(), UP), "start": {"active_region": "sa-east-1"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SourceErrors, match=r"start\.active_region: unknown region 'sa-east-1'"):
        load_scenario(path)


def test_a_lag_reading_already_old_when_read_keeps_its_age_and_runs_out_when_frozen() -> None:
    # max_age 3m: a reading 2m30s old when read is known while it is read again and again;
    # frozen, it runs out 30s later (before, every reading was taken as brand new).
    policy = with_replication(sim_policy_data(), max_age="3m")
    timeline = [
        *UP,
        {"at": "0s", "lag": {"region": STANDBY, "seconds": 5, "age": "2m30s"}},
        {"at": "1m", "lag": {"region": STANDBY, "seconds": 5, "age": "2m30s", "frozen": True}},
        PRIMARY_DOWN_AT_2M,
    ]
    result = simulate(policy, timeline, duration="5m")
    assert result.runs == []  # unknown lag: the policy waits (on_lag_unknown: wait)
    assert Reason.LAG_UNKNOWN in reasons_at(result, 150)
    fresh = [*UP, {"at": "0s", "lag": {"region": STANDBY, "seconds": 5, "age": "2m30s"}}]
    result = simulate(policy, [*fresh, PRIMARY_DOWN_AT_2M], duration="5m")
    assert only_run(result).started_at == DETECTED
