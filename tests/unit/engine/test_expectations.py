"""Scenario expectations: what holds, what does not, and failure messages an on-call engineer
can read (expected vs actual, with the runs and a compact phase timeline)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.engine.expectations import Failure, check, phase_timeline
from orchestrator.engine.report import format_failure
from orchestrator.engine.simulator import SimulationResult
from tests.unit.engine.conftest import PRIMARY, STANDBY, all_up, sim_policy_data, simulate

UP = all_up([PRIMARY, STANDBY])
OUTAGE = [
    *UP,
    {"at": "2m", "probes": {"region": PRIMARY, "state": "down"}},  # failover at 2m20s
    {"at": "6m", "probes": {"region": PRIMARY, "state": "up"}},
    {"at": "8m", "operator": {"command": "failback"}},  # waits for an approval that never comes
]
FAILOVER_RUN = "2m20s: failover us-east-1 -> us-west-2 started automatically, completed at 2m20s"
FAILBACK_RUN = (
    "8m: failback us-west-2 -> us-east-1 started by an operator, failed at 18m"
    " (step approve-failback timed out after 1 attempt(s))"
)


def outcome(*expect: dict[str, Any], timeline: list[dict[str, Any]] | None = None) -> list[Failure]:
    result = simulate(sim_policy_data(), OUTAGE if timeline is None else timeline, expect=expect)
    return check(result)


def one_failure(*expect: dict[str, Any], timeline: list[dict[str, Any]] | None = None) -> Failure:
    failures = outcome(*expect, timeline=timeline)
    assert len(failures) == 1, failures
    return failures[0]


@pytest.mark.parametrize(
    "expectation",
    [
        {"failover": {"to": STANDBY, "between": ["2m", "2m20s"]}},
        {"failover": {"between": ["2m20s", "3m"]}},
        {"failover": {}},
        {"no_failover": {"before": "2m20s"}},  # before is exclusive
        {"no_failover": {"after": "2m21s"}},
        {"no_failover": {"after": "3m", "before": "20m"}},
        {"failovers": {"count": 1}},
        {"failovers": {"max": 1}},
        {"failback": {"between": ["8m", "8m"]}},
        {"phase": {"at": "2m10s", "is": "suspect"}},
        {"phase": {"at": "2m20s", "is": "failing_over", "reason": "active_down"}},
        {"phase": {"at": "9m", "is": "awaiting_approval", "reason": "approval_required"}},
        {"phase": {"at": "19m", "is": "failed", "reason": "step_failed"}},
        {"active_region": {"at": "2m19s", "is": PRIMARY}},
        {"active_region": {"at": "2m20s", "is": STANDBY}},
        {"active_region": {"at": "20m", "is": STANDBY}},
    ],
)
def test_expectations_that_hold(expectation: dict[str, Any]) -> None:
    assert outcome(expectation) == []


def test_a_failover_outside_its_window_shows_the_run_and_the_timeline() -> None:
    f = one_failure({"failover": {"to": STANDBY, "between": ["1m", "2m"]}})
    assert f.expected == "failover to us-west-2 starting between 1m and 2m"
    assert f.actual[0] == FAILOVER_RUN
    assert f.actual[1] == "timeline:"
    assert "0s steady (active us-east-1)" in f.actual
    assert "2m20s failing_over [active_down] (active us-west-2)" in f.actual


def test_a_failover_to_the_wrong_region() -> None:
    f = one_failure({"failover": {"to": PRIMARY}})
    assert f.expected == "failover to us-east-1 starting between 0s and 20m"
    assert f.actual[0] == FAILOVER_RUN


def test_a_missing_failover_says_none_started() -> None:
    f = one_failure({"failover": {}}, timeline=UP)
    assert f.expected == "failover starting between 0s and 20m"
    assert f.actual[0] == "no failover run started"


@pytest.mark.parametrize(
    ("expectation", "expected"),
    [
        ({}, "no failover ever"),
        ({"after": "1m", "before": "5m"}, "no failover from 1m until 5m"),
        ({"after": "2m20s"}, "no failover from 2m20s"),
        ({"before": "3m"}, "no failover from 0s until 3m"),
    ],
)
def test_an_unwanted_failover_names_it(expectation: dict[str, Any], expected: str) -> None:
    f = one_failure({"no_failover": expectation})
    assert f.expected == expected
    assert f.actual[0] == FAILOVER_RUN
    assert "timeline:" in f.actual


@pytest.mark.parametrize(
    ("expectation", "expected"),
    [({"count": 0}, "exactly 0 failover run(s)"), ({"max": 0}, "at most 0 failover run(s)")],
)
def test_a_wrong_failover_count_lists_the_runs(expectation: dict[str, Any], expected: str) -> None:
    f = one_failure({"failovers": expectation})
    assert f.expected == expected
    assert f.actual == ["1 started:", FAILOVER_RUN]


def test_an_unwanted_failback_names_it() -> None:
    f = one_failure({"failback": {}})
    assert f.expected == "no failback ever"
    assert f.actual == [FAILBACK_RUN]


def test_a_failback_outside_its_window() -> None:
    f = one_failure({"failback": {"between": ["1m", "2m"]}})
    assert f.expected == "failback starting between 1m and 2m"
    assert f.actual[0] == FAILBACK_RUN


def test_a_wrong_phase_shows_phase_reasons_and_active_region() -> None:
    f = one_failure({"phase": {"at": "3m", "is": "suspect", "reason": "no_quorum"}})
    assert f.expected == "phase suspect at 3m with reason no_quorum"
    assert f.actual[0] == "3m: phase steady, reasons [none], active us-west-2"
    assert "timeline:" in f.actual


def test_the_right_phase_without_the_reason_fails() -> None:
    f = one_failure({"phase": {"at": "9m", "is": "awaiting_approval", "reason": "cooldown"}})
    assert f.expected == "phase awaiting_approval at 9m with reason cooldown"
    assert f.actual[0] == (
        "9m: phase awaiting_approval, reasons [run_in_progress, approval_required],"
        " active us-west-2"
    )


def test_a_wrong_active_region() -> None:
    f = one_failure({"active_region": {"at": "1m", "is": STANDBY}})
    assert f.expected == "active region us-west-2 at 1m"
    assert f.actual == ["1m: active us-east-1", FAILOVER_RUN, FAILBACK_RUN]


def test_every_failing_expectation_is_reported_in_order() -> None:
    failures = outcome(
        {"no_failover": {}},
        {"failovers": {"count": 1}},  # holds
        {"failback": {}},
    )
    assert [f.expected for f in failures] == ["no failover ever", "no failback ever"]


def test_operator_runs_count_and_a_run_to_the_primary_is_a_failback() -> None:
    timeline = [
        *UP,
        {"at": "1m", "operator": {"command": "switchover", "to": STANDBY}},
        {"at": "3m", "operator": {"command": "failover", "to": PRIMARY}},
    ]
    expect = [{"failovers": {"count": 1}}, {"failback": {"between": ["3m", "3m"]}}]
    result = simulate(sim_policy_data(), timeline, expect=expect)
    assert check(result) == []
    assert [r.is_failback for r in result.runs] == [False, True]


def test_format_failure_lines_up_expected_and_actual() -> None:
    lines = format_failure(Failure("no failover ever", ["first", "second"]))
    assert lines == [
        "    expected: no failover ever",
        "    actual:   first",
        "              second",
    ]


def test_phase_timeline_lists_changes_only_and_is_capped() -> None:
    result: SimulationResult = simulate(sim_policy_data(), OUTAGE)
    lines = phase_timeline(result, limit=40)
    assert lines[0] == "0s steady (active us-east-1)"
    assert len(lines) == len(set(lines))
    assert len(lines) < len(result.moments)
    capped = phase_timeline(result, limit=4)
    assert len(capped) == 5
    assert capped[2].startswith("... ") and capped[2].endswith(" more changes ...")
    assert capped[:2] == lines[:2] and capped[-2:] == lines[-2:]
