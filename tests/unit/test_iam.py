"""`failoverd iam-policy`: least privilege for exactly what the policies make failoverd do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.cli.main import main
from orchestrator.iam import iam_policy
from orchestrator.policy.loader import load_policy_set

ROOT = Path(__file__).resolve().parents[2]


def statements_for(doc: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in doc["Statement"] if action in s["Action"]]


def test_example_policies_get_scoped_permissions() -> None:
    doc = iam_policy(load_policy_set([ROOT / "policies" / "webapp"]))
    assert doc["Version"] == "2012-10-17"
    (promote,) = statements_for(doc, "rds:PromoteReadReplica")
    # Scoped to the replica in the standby region, not "*".
    assert promote["Resource"] == "arn:aws:rds:us-west-2:*:db:webapp-db-usw2" or (
        "arn:aws:rds:us-west-2:*:db:webapp-db-usw2" in promote["Resource"]
    )
    (records,) = statements_for(doc, "route53:ChangeResourceRecordSets")
    assert "hostedzone/Z0WEBAPPEXAMPLE" in json.dumps(records["Resource"])
    # Signals: AWS Health has no resource-level permissions.
    (health,) = statements_for(doc, "health:DescribeEvents")
    assert health["Resource"] == "*"
    # Nothing the webapp policy does not use.
    everything = {a for s in doc["Statement"] for a in s["Action"]}
    assert not any(a.startswith(("ecs:", "rds:FailoverGlobalCluster")) for a in everything)


def test_each_action_is_granted_once_and_output_is_stable() -> None:
    policies = load_policy_set([ROOT / "policies"])
    first = iam_policy(policies)
    assert first == iam_policy(policies)
    action_sets = [tuple(s["Action"]) for s in first["Statement"]]
    assert len(action_sets) == len(set(action_sets))
    for s in first["Statement"]:
        assert s["Action"] == sorted(s["Action"])


def test_cli_prints_json(capsys: Any) -> None:
    assert main(["iam-policy", "--policy", str(ROOT / "policies" / "reports")]) == 0
    doc = json.loads(capsys.readouterr().out)
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert "autoscaling:SetDesiredCapacity" in actions
    assert not any(a.startswith("sns:") for a in actions)  # reports publishes nothing


def test_routing_controls_are_covered_by_their_arns() -> None:
    doc = iam_policy(load_policy_set([ROOT / "policies" / "storefront"]))
    (flip,) = statements_for(doc, "route53-recovery-cluster:UpdateRoutingControlStates")
    assert "route53-recovery-cluster:GetRoutingControlState" in flip["Action"]
    resources = flip["Resource"] if isinstance(flip["Resource"], list) else [flip["Resource"]]
    assert sorted(resources) == [
        "arn:aws:route53-recovery-control::123456789012:controlpanel/"
        f"0c0ffee0c0ffee0c0ffee0c0ffee0c0f/routingcontrol/{cell}"
        for cell in ("use1use1use1use1", "usw2usw2usw2usw2")
    ]
    # No Route 53 API at all: the flip needs no record or health-check edit.
    assert not [s for s in doc["Statement"] if any(a.startswith("route53:") for a in s["Action"])]
