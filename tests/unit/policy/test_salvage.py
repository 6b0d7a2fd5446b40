"""Every error of a file in one run: the cross-field checks run on the part that did parse,
beside the field errors, at the right place, and say nothing that only the removal of a
broken part would cause."""

from __future__ import annotations

from typing import Any

from orchestrator.policy.checks import Damage
from orchestrator.policy.salvage import salvage

from .conftest import FILE, assert_error, dump


def test_a_typo_in_one_step_and_a_bad_after_in_another_are_both_reported(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["runbooks"]["failover"][0]["acton"] = "x"
    baseline["runbooks"]["failover"][1]["after"] = ["promot"]
    rejected = reject(baseline)
    assert [e.path for e in rejected.errors] == [
        "runbooks.failover[0].acton",
        "runbooks.failover[1].after[0]",
    ], rejected.listing()
    assert_error(
        rejected.errors[1],
        FILE,
        rejected.where(r"^    - (promot)$"),
        "runbooks.failover[1].after[0]",
        "no step named 'promot'",
    )


def test_quorum_above_the_vantage_points_beside_a_field_error(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["rto"] = "soon"
    baseline["detection"]["quorum"] = 5
    rejected = reject(baseline)
    assert "expected a duration" in rejected.at("rto").message
    quorum = rejected.at("detection.quorum").message
    assert "quorum 5 is larger than the 2 vantage point(s)" in quorum


def test_replication_regions_beside_a_field_error(baseline: dict[str, Any], reject: Any) -> None:
    baseline["mode"] = "sometimes"
    baseline["replication"]["sources"]["eu-west-1"] = {
        "type": "rds_replica_lag",
        "db_instance": "db-euw1",
    }
    rejected = reject(baseline)
    assert rejected.at("mode")
    assert "not one of the policy's regions" in rejected.at("replication.sources.eu-west-1").message


def test_a_quorum_no_policy_could_reach_is_reported_even_when_a_signal_is_broken(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["signals"][0]["type"] = "htp"
    baseline["detection"]["quorum"] = 9
    rejected = reject(baseline)
    assert "unknown type 'htp'" in rejected.at("signals[0].type").message
    # vantage_points (2) plus aws_health and cloudwatch: never 9.
    assert "larger than the 4 vantage points" in rejected.at("detection.quorum").message


def test_a_problem_after_a_removed_list_item_is_shown_at_its_place_in_the_file(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["signals"].insert(0, {"name": "broken", "type": "tcp", "timeout": "often"})
    baseline["signals"][2]["targets"]["us-west-2"] = "db.usw2.internal"  # no port
    rejected = reject(baseline)
    assert rejected.at("signals[0].timeout")
    assert_error(
        rejected.at("signals[2].targets.us-west-2"),
        FILE,
        rejected.where(r"(us-west-2): db.usw2.internal$"),
        "signals[2].targets.us-west-2",
        "expected host:port",
    )


def test_after_naming_a_step_that_is_broken_is_not_called_missing(
    baseline: dict[str, Any], reject: Any
) -> None:
    # `promote` is taken out (its action is unknown), but the file does name it.
    baseline["runbooks"]["failover"][0]["action"] = "rds.promote"
    rejected = reject(baseline)
    assert [e.path for e in rejected.errors] == ["runbooks.failover[0].action"], rejected.listing()


def test_checks_that_read_a_removed_part_stay_quiet(baseline: dict[str, Any], reject: Any) -> None:
    # interval taken out would fall back to 10s: timeout 30s would look too long.
    baseline["detection"]["interval"] = "a minute"
    baseline["detection"]["timeout"] = "30s"
    baseline["detection"]["staleness"] = "2m"
    # a vantage point taken out would make the signal's look unknown.
    baseline["vantage_points"] = ["local", "Agent EU"]
    baseline["signals"][1]["vantage"] = ["local", "agent-eu"]
    # a target taken out would look missing.
    baseline["signals"][1]["targets"]["us-west-2"] = 5432
    rejected = reject(baseline)
    assert sorted(e.path for e in rejected.errors) == [
        "detection.interval",
        "signals[1].targets.us-west-2",
        "vantage_points[1]",
    ], rejected.listing()


def test_nothing_to_salvage_without_regions(baseline: dict[str, Any], reject: Any) -> None:
    del baseline["regions"]
    baseline["detection"]["quorum"] = 5
    rejected = reject(baseline)
    assert [e.path for e in rejected.errors] == ["regions"]


def test_salvage_reports_what_it_damaged_in_the_files_indices(baseline: dict[str, Any]) -> None:
    baseline["signals"].insert(0, {"name": "Bad Name", "type": "tcp", "target": "x:1"})
    baseline["rto"] = 15
    found = salvage(baseline)
    assert found is not None
    policy, damage = found
    assert [s.name for s in policy.signals] == ["api", "db"]
    # The bad name first, then the signal that lacked one.
    assert damage.damaged == {("signals", 0, "name"), ("signals", 0), ("rto",)}
    assert damage.to_file(("signals", 1, "targets")) == ("signals", 2, "targets")
    assert not damage.intact(("signals",)) and damage.intact(("signals", 1, "targets"))
    assert damage.replaced(("rto",)) and not damage.replaced(("rpo",))
    assert damage.step_names["failover"] == frozenset({"promote", "dns"})


def test_a_file_that_salvage_cannot_read_is_left_alone() -> None:
    assert salvage(["not", "a", "mapping"]) is None
    assert salvage({"service": "x"}) is None  # no regions: nothing to check against


def test_no_damage_is_intact_everywhere() -> None:
    assert Damage().intact(("signals",), ()) and not Damage().replaced(("rto",))


def test_the_examples_give_the_same_answer_with_a_broken_field(
    baseline: dict[str, Any], reject: Any
) -> None:
    # A field error alone adds no cross-field noise.
    baseline["detection"]["consecutive_failures"] = 0
    rejected = reject(dump(baseline))
    assert [e.path for e in rejected.errors] == ["detection.consecutive_failures"]
