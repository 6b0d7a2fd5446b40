"""The one rule for graceful (no data loss) or ungraceful moves, from a run's facts."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.actions.moves import move_style, run_facts


@pytest.mark.parametrize(
    ("kind", "facts", "graceful"),
    [
        ("switchover", {}, True),
        ("failback", {}, True),
        ("failover", run_facts("failover", drill=True, source_verdict="down"), True),
        ("failover", run_facts("failover", source_verdict="down"), False),
        ("failover", run_facts("failover", source_verdict="unknown"), False),
        ("failover", {}, False),  # no facts: the source cannot be relied on
        ("failover", run_facts("failover", source_verdict="healthy"), True),
        ("failover", run_facts("failover", source_verdict="degraded"), True),
    ],
)
def test_planned_moves_are_graceful_and_failovers_from_a_lost_region_are_not(
    kind: str, facts: dict[str, Any], graceful: bool
) -> None:
    assert move_style(kind, facts).graceful is graceful


def test_the_reason_names_the_source_and_the_lag() -> None:
    facts = run_facts(
        "failover",
        source_region="eu-west-1",
        source_verdict="down",
        target_lag_seconds=1.5,
        target_lag_age_seconds=42,
    )
    assert move_style("failover", facts).reason == (
        "failover with eu-west-1 down: writes not yet replicated may be lost"
        " (the target's last lag reading: 1s500ms, 42s old)"
    )
    assert "lag was unknown" in move_style("failover", run_facts("failover")).reason
    assert move_style("switchover", {}).reason == (
        "a switchover is a planned move: no data may be lost"
    )


def test_facts_are_json_values() -> None:
    import json

    facts = run_facts("failover", source_verdict="down", target_lag_seconds=0.2)
    assert json.loads(json.dumps(facts)) == facts
    assert facts["source_down"] is True and facts["drill"] is False
