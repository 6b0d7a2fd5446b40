"""The pure part of ``failoverd diff``: the first moment two versions decide differently,
the runs each started, and the summary."""

from __future__ import annotations

from typing import Any

from orchestrator.engine.diff import (
    Outcome,
    Status,
    compare_results,
    first_difference,
    summarize,
)
from orchestrator.engine.expectations import check
from tests.unit.engine.conftest import PRIMARY, STANDBY, _merge, all_up, sim_policy_data, simulate

OUTAGE = [*all_up([PRIMARY, STANDBY]), {"at": "2m", "probes": {"region": PRIMARY, "state": "down"}}]
EXPECT = [{"failover": {"to": STANDBY, "between": ["2m20s", "2m21s"]}}]


def slower(data: dict[str, Any]) -> dict[str, Any]:
    return _merge(data, {"detection": {"consecutive_failures": 5}})


def test_the_same_policy_makes_no_difference() -> None:
    a = simulate(sim_policy_data(), OUTAGE, expect=EXPECT)
    b = simulate(sim_policy_data(), OUTAGE, expect=EXPECT)
    assert first_difference(a, b) is None
    d = compare_results("f.yaml", "outage", "shop", a, b, check(a), check(b))
    assert d.status is Status.SAME and not d.changed and not d.failing
    assert (d.old_outcome, d.new_outcome) == (Outcome.PASS, Outcome.PASS)


def test_a_longer_detection_rule_shows_the_failover_moment_and_the_later_run() -> None:
    # 3 failures in a row at 10s: down at 2m20s; with 5: at 2m40s.
    old = simulate(sim_policy_data(), OUTAGE, expect=EXPECT)
    new = simulate(slower(sim_policy_data()), OUTAGE, expect=EXPECT)
    diff = first_difference(old, new)
    assert diff is not None
    assert diff.at == 140.0
    assert diff.old is not None and diff.new is not None
    assert (diff.old.phase, diff.old.action, diff.old.target) == (
        "failing_over",
        "failover",
        STANDBY,
    )
    assert "active_down" in diff.old.reasons
    assert (diff.new.phase, diff.new.action, diff.new.target) == ("suspect", "none", None)
    d = compare_results("f.yaml", "outage", "shop", old, new, check(old), check(new))
    assert d.status is Status.CHANGED and d.failing
    assert [r.started_at for r in d.old_runs] == [140.0]
    assert [r.started_at for r in d.new_runs] == [160.0]
    assert d.new_failures and "failover to us-west-2" in d.new_failures[0].expected
    body = d.as_dict()
    assert body["first_difference"]["at_text"] == "2m20s"
    assert body["expectations"] == {"old": "pass", "new": "fail"}


def test_the_difference_is_found_between_judged_moments_of_either_run() -> None:
    # The dense and the skipping simulations of the same change agree on the moment.
    old = simulate(sim_policy_data(), OUTAGE, every_tick=True)
    new = simulate(slower(sim_policy_data()), OUTAGE)
    diff = first_difference(old, new)
    assert diff is not None and diff.at == 140.0


def test_the_summary_counts_scenarios_changes_and_failures() -> None:
    old = simulate(sim_policy_data(), OUTAGE, expect=EXPECT)
    new = simulate(slower(sim_policy_data()), OUTAGE, expect=EXPECT)
    same = compare_results("a", "a", "shop", old, old, [], [])
    changed = compare_results("b", "b", "shop", old, new, check(old), check(new))
    summary = summarize([same, changed], skipped=1)
    assert (summary.scenarios, summary.changed, summary.now_failing) == (2, 1, 1)
    assert summary.text().startswith("2 scenarios, 1 changed, 1 now failing")
