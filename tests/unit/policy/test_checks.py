"""Cross-field rules of a policy, each reported at file:line with its field path."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.policy.actions import PLACEHOLDERS, Route53SetRecord
from orchestrator.policy.checks import check_policy, region_vantages
from orchestrator.policy.loader import load_policy_text

from .conftest import FILE, assert_error, dump

# ---------------------------------------------------------------------------------------
# Names used twice


def test_duplicate_signal_name(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"].append({**baseline["signals"][0], "target": "https://x.{region}.example"})
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (name): api", nth=1),
        "signals[2].name",
        "signal name 'api' is used twice",
    )


def test_duplicate_step_name(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"].append(
        {"name": "promote", "action": "wait", "params": {"duration": "5s"}}
    )
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  - (name): promote", nth=1),
        "runbooks.failover[2].name",
        "step name 'promote' is used twice",
    )


def test_the_same_step_name_in_two_runbooks_is_fine(baseline: dict[str, Any]) -> None:
    baseline["runbooks"]["failback"] = [
        {"name": "promote", "action": "approval"},
    ]
    assert load_policy_text(dump(baseline), FILE).runbooks.failback is not None


def test_duplicate_region(baseline: dict[str, Any], reject: Any) -> None:
    baseline["regions"].append("us-west-2")
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (us-west-2)$", nth=1),
        "regions[2]",
        "region 'us-west-2' is listed twice",
    )


def test_duplicate_primary_region_is_not_also_called_a_standby(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["regions"].append("us-east-1")
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (us-east-1)$", nth=1),
        "regions[2]",
        "listed twice",
    )


# ---------------------------------------------------------------------------------------
# Runbook order


def test_after_naming_a_missing_step(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][1]["after"] = ["promot"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    - (promot)$"),
        "runbooks.failover[1].after[0]",
        "no step named 'promot'",
        "expected one of: promote, dns",
    )


def test_after_cycle_names_the_steps_in_order(baseline: dict[str, Any], reject: Any) -> None:
    steps = baseline["runbooks"]["failover"]
    steps.append({"name": "notify", "action": "sns.publish", "after": ["dns"]})
    steps[-1]["params"] = {"topic_arn": "arn:aws:sns:us-east-1:1:t", "message": "moved"}
    steps[0]["after"] = ["notify"]  # promote -> notify -> dns -> promote
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (after):", nth=0),  # promote's, the first step
        "runbooks.failover[0].after",
        "cycle",
        "promote -> notify -> dns -> promote",
    )


def test_after_cycle_in_the_failback_runbook(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failback"] = [
        {"name": "a", "action": "approval", "after": ["b"]},
        {"name": "b", "action": "approval", "after": ["a"]},
    ]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (after):", nth=1),  # dns's in failover, then a's in failback
        "runbooks.failback[0].after",
        "steps wait for each other in a cycle: a -> b -> a",
    )


def test_a_step_waiting_for_itself(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][0]["after"] = ["promote"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    - (promote)$", nth=0),
        "runbooks.failover[0].after[0]",
        "cannot wait for itself",
    )


# ---------------------------------------------------------------------------------------
# Detection


def test_quorum_larger_than_the_vantage_points(baseline: dict[str, Any], reject: Any) -> None:
    baseline["detection"]["quorum"] = 3
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (quorum): 3"),
        "detection.quorum",
        "quorum 3 is larger than the 2 vantage point(s)",
        "us-east-1 (agent-eu, local)",
    )


def test_quorum_counts_aws_health_as_a_vantage_point(baseline: dict[str, Any]) -> None:
    baseline["detection"]["quorum"] = 3
    baseline["signals"].append({"name": "aws", "type": "aws_health", "services": ["EC2"]})
    policy = load_policy_text(dump(baseline), FILE)
    assert region_vantages(policy, "us-west-2") == {"local", "agent-eu", "aws_health"}


def test_region_vantages_follow_each_signal_and_region(baseline: dict[str, Any]) -> None:
    baseline["signals"][0]["vantage"] = ["agent-eu"]
    baseline["signals"].append(
        {"name": "alarms", "type": "cloudwatch_alarm", "alarms": {"us-west-2": ["5xx"]}}
    )
    baseline["detection"]["quorum"] = 1
    policy = load_policy_text(dump(baseline), FILE)
    assert region_vantages(policy, "us-east-1") == {"agent-eu", "local"}
    assert region_vantages(policy, "us-west-2") == {"agent-eu", "local", "cloudwatch"}


def test_staleness_equal_to_the_interval(baseline: dict[str, Any], reject: Any) -> None:
    baseline["detection"]["staleness"] = "10s"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (staleness): 10s"),
        "detection.staleness",
        "staleness 10s must be longer than the interval 10s",
    )


def test_staleness_shorter_than_the_interval(baseline: dict[str, Any], reject: Any) -> None:
    baseline["detection"]["staleness"] = "5s"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (staleness): 5s"),
        "detection.staleness",
        "staleness 5s must be longer than the interval 10s",
    )


def test_timeout_longer_than_the_interval(baseline: dict[str, Any], reject: Any) -> None:
    baseline["detection"]["timeout"] = "15s"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (timeout): 15s"),
        "detection.timeout",
        "timeout 15s is longer than the interval 10s",
    )


def test_timeout_equal_to_the_interval_is_fine(baseline: dict[str, Any]) -> None:
    baseline["detection"]["timeout"] = "10s"
    assert load_policy_text(dump(baseline), FILE).detection.timeout == 10.0


def test_signal_timeout_longer_than_the_interval(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][1]["timeout"] = "1m"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (timeout): 1m"),
        "signals[1].timeout",
        "timeout 1m is longer than the interval 10s",
    )


def test_failure_ratio_window_too_short_for_min_samples(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["detection"].update(failure_ratio=0.5, window="20s", min_samples=3)
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (window): 20s"),
        "detection.window",
        "min_samples=3",
    )


def test_rto_not_longer_than_detection(baseline: dict[str, Any], reject: Any) -> None:
    baseline["rto"] = "30s"  # 3 consecutive failures x 10s
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^(rto): 30s"),
        "rto",
        "detection alone takes 30s",
        "RTO 30s",
    )


def test_rto_longer_than_detection_is_fine(baseline: dict[str, Any]) -> None:
    baseline["rto"] = "31s"
    assert load_policy_text(dump(baseline), FILE).rto == 31.0


# ---------------------------------------------------------------------------------------
# Signals, vantage points and targets


def test_targets_missing_for_a_listed_region(baseline: dict[str, Any], reject: Any) -> None:
    del baseline["signals"][1]["targets"]["us-west-2"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (targets):"),
        "signals[1].targets",
        "no target for region(s) us-west-2",
    )


def test_no_target_at_all(baseline: dict[str, Any], reject: Any) -> None:
    del baseline["signals"][1]["targets"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (name): db"),
        "signals[1]",
        "no target for region(s) us-east-1, us-west-2",
    )


def test_target_for_a_region_not_in_the_policy(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][1]["targets"]["eu-west-1"] = "db.euw1.internal:5432"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (eu-west-1):"),
        "signals[1].targets.eu-west-1",
        "region 'eu-west-1' is not one of the policy's regions",
    )


def test_target_without_region_placeholder(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][0]["target"] = "https://api.example.com/healthz"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (target):"),
        "signals[0].target",
        "{region}",
    )


def test_tcp_target_needs_a_port(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][1]["targets"]["us-west-2"] = "db.usw2.internal"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (us-west-2): db.usw2.internal$"),
        "signals[1].targets.us-west-2",
        "expected host:port, got 'db.usw2.internal'",
    )


def test_reserved_vantage_name(baseline: dict[str, Any], reject: Any) -> None:
    baseline["vantage_points"].append("aws_health")
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (aws_health)$"),
        "vantage_points[2]",
        "'aws_health' is reserved",
    )


def test_duplicate_vantage_point(baseline: dict[str, Any], reject: Any) -> None:
    baseline["vantage_points"].append("local")
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (local)$", nth=1),
        "vantage_points[2]",
        "'local' is listed twice",
    )


def test_signal_vantage_not_in_vantage_points(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][1]["vantage"] = ["local", "agent-ap"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  - (agent-ap)$"),
        "signals[1].vantage[1]",
        "unknown vantage point 'agent-ap'",
        "local, agent-eu",
    )


def test_vantage_on_an_aws_health_signal(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"].append(
        {"name": "aws", "type": "aws_health", "services": ["EC2"], "vantage": ["local"]}
    )
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (vantage):", nth=1),
        "signals[2].vantage",
        "remove `vantage`",
    )


def test_alarms_for_a_region_not_in_the_policy(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"].append(
        {"name": "cw", "type": "cloudwatch_alarm", "alarms": {"eu-west-1": ["5xx"]}}
    )
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (eu-west-1):"),
        "signals[2].alarms.eu-west-1",
        "not one of the policy's regions",
    )


# ---------------------------------------------------------------------------------------
# Replication


def test_replication_source_missing_for_a_standby_region(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["regions"].append("eu-west-1")
    baseline["signals"][1]["targets"]["eu-west-1"] = "db.euw1.internal:5432"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (sources):"),
        "replication.sources",
        "no lag source for standby region(s) eu-west-1",
    )


def test_replication_source_for_a_region_not_in_the_policy(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["replication"]["sources"]["eu-west-1"] = {
        "type": "rds_replica_lag",
        "db_instance": "db-euw1",
    }
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (eu-west-1):"),
        "replication.sources.eu-west-1",
        "not one of the policy's regions",
    )


def test_no_replication_section_is_fine(baseline: dict[str, Any]) -> None:
    del baseline["replication"]
    assert load_policy_text(dump(baseline), FILE).replication is None


# ---------------------------------------------------------------------------------------
# Action parameters


def test_unknown_action_parameter(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][0]["params"]["db_instanse"] = "x"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (db_instanse):"),
        "runbooks.failover[0].params.db_instanse",
        "unknown parameter 'db_instanse' for rds.promote_read_replica",
        "expected one of: db_instance, expected_source",
    )


def test_missing_required_action_parameter(baseline: dict[str, Any], reject: Any) -> None:
    del baseline["runbooks"]["failover"][1]["params"]["hosted_zone_id"]
    rejected = reject(baseline)
    # The key is absent: the error points at the step's `params:`.
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (params):", nth=1),
        "runbooks.failover[1].params.hosted_zone_id",
        "missing required parameter for route53.set_record",
    )


def test_every_missing_parameter_is_reported(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][1]["params"] = {}
    rejected = reject(baseline)
    required = [n for n, f in Route53SetRecord.model_fields.items() if f.is_required()]
    assert sorted(e.path for e in rejected.errors) == sorted(
        f"runbooks.failover[1].params.{n}" for n in required
    )


def test_missing_params_of_an_action_that_needs_some(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"].append({"name": "pause", "action": "wait"})
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  - (name): pause"),
        "runbooks.failover[2].params.duration",
        "missing required parameter for wait",
    )


def test_unknown_placeholder_in_params(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][1]["params"]["value"] = "api.{target}.example.com"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (value): api.\{target\}"),
        "runbooks.failover[1].params.value",
        "unknown placeholder {target}",
        ", ".join("{" + p + "}" for p in PLACEHOLDERS),
    )


def test_unknown_placeholder_nested_in_params(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"].append(
        {"name": "hook", "action": "webhook", "params": {"url": "https://x", "body": {"r": "{rg}"}}}
    )
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (body):"),
        "runbooks.failover[2].params.body",
        "unknown placeholder {rg}",
    )


@pytest.mark.parametrize(
    ("value", "brace"),
    [
        ("api.{target_region.example.com", "{"),
        ("api.target_region}.example.com", "}"),
        ("{service}-{target_region", "{"),
    ],
)
def test_a_brace_without_its_partner_in_params(
    baseline: dict[str, Any], reject: Any, value: str, brace: str
) -> None:
    # Filled in by plain replacement, `{target_region` would reach AWS as written.
    baseline["runbooks"]["failover"][1]["params"]["value"] = value
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (value): "),
        "runbooks.failover[1].params.value",
        f"a {brace} without its partner",
    )


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("https://api.{regoin}.example.com/healthz", "unknown placeholder {regoin}"),
        ("https://api.{region.example.com/healthz", "a { without its partner"),
        ("https://api.{target_region}.example.com/", "unknown placeholder {target_region}"),
    ],
)
def test_placeholders_in_a_target_template(
    baseline: dict[str, Any], reject: Any, target: str, words: str
) -> None:
    baseline["signals"][0]["target"] = target
    rejected = reject(baseline)
    error = rejected.at("signals[0].target")
    assert_error(error, FILE, rejected.where(r"^  (target): https"), "signals[0].target", words)
    assert "{region}" in error.message


def test_known_placeholders_are_accepted(baseline: dict[str, Any]) -> None:
    baseline["runbooks"]["failover"][1]["params"]["value"] = (
        "{service}.{target_region}.{source_region}.{primary_region}.example.com"
    )
    load_policy_text(dump(baseline), FILE)


def test_parameter_of_the_wrong_type(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][1]["params"]["ttl"] = "sixty"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (ttl): sixty"),
        "runbooks.failover[1].params.ttl",
        "integer",
    )


def test_bad_duration_parameter_reads_like_other_duration_errors(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["runbooks"]["failover"].append(
        {"name": "pause", "action": "wait", "params": {"duration": "5"}}
    )
    rejected = reject(baseline)
    error = rejected.only()
    assert_error(
        error,
        FILE,
        rejected.where(r"^      (duration): '5'"),
        "runbooks.failover[2].params.duration",
        "500ms, 30s, 5m",
    )
    assert error.message.startswith("expected a duration"), error.message


# ---------------------------------------------------------------------------------------
# All problems at once


def test_every_cross_field_problem_of_a_file_is_reported(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["rto"] = "20s"
    baseline["detection"]["quorum"] = 5
    baseline["detection"]["staleness"] = "10s"
    baseline["signals"][1]["vantage"] = ["agent-ap"]
    baseline["runbooks"]["failover"][1]["after"] = ["promot"]
    baseline["runbooks"]["failover"][1]["params"]["value"] = "{target}"
    rejected = reject(baseline)
    found = {(e.path, e.line) for e in rejected.errors}
    assert found == {
        ("rto", rejected.where(r"^(rto):")[0]),
        ("detection.quorum", rejected.where(r"^  (quorum):")[0]),
        ("detection.staleness", rejected.where(r"^  (staleness):")[0]),
        ("signals[1].vantage[0]", rejected.where(r"^  - (agent-ap)$")[0]),
        ("runbooks.failover[1].after[0]", rejected.where(r"^    - (promot)$")[0]),
        ("runbooks.failover[1].params.value", rejected.where(r"^      (value):")[0]),
    }, rejected.listing()


def test_check_policy_returns_data_paths_and_messages(baseline: dict[str, Any]) -> None:
    policy = load_policy_text(dump(baseline), FILE)
    assert check_policy(policy) == []
    cyclic = policy.runbooks.failover[0].model_copy(update={"after": ["dns"]})
    broken = policy.model_copy(
        update={
            "runbooks": policy.runbooks.model_copy(
                update={"failover": [cyclic, *policy.runbooks.failover[1:]]}
            )
        }
    )
    problems = check_policy(broken)
    assert problems == [
        (
            ("runbooks", "failover", 0, "after"),
            "steps wait for each other in a cycle: promote -> dns -> promote",
        )
    ]
