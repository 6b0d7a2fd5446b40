"""`failoverd iam-policy` with roles to assume (cross-account) and in other partitions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.iam import iam_policies, iam_policy
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors

WORKLOAD = "arn:aws:iam::111111111111:role/failoverd"
DNS = "arn:aws:iam::222222222222:role/failoverd-dns"

POLICY = f"""\
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
aws: {{role_arn: "{WORKLOAD}", external_id: ops-2024}}
signals:
  - {{name: api, type: http, target: "https://api.{{region}}.example.com/healthz"}}
  - {{name: aws, type: aws_health, services: [EC2]}}
runbooks:
  failover:
    - name: scale
      action: ecs.set_desired_count
      params: {{cluster: "shop-{{target_region}}", service: web, desired: 4}}
    - name: flip
      action: route53.set_record
      after: [scale]
      aws: {{role_arn: "{DNS}"}}
      params:
        hosted_zone_id: Z0SHOP
        name: api.example.com
        value: "api.{{target_region}}.example.com"
"""


def actions(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] for a in s["Action"]}


def test_the_tooling_identity_may_only_assume_the_roles() -> None:
    policy = load_policy_text(POLICY, "shop.yaml")
    tooling = iam_policy([policy])
    assert tooling["Statement"] == [
        {
            "Sid": "Failoverd1",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole"],
            "Resource": [WORKLOAD, DNS],
        }
    ]


def test_each_role_gets_what_is_done_as_it() -> None:
    policy = load_policy_text(POLICY, "shop.yaml")
    both = iam_policies([policy], principal="arn:aws:iam::999999999999:role/failoverd-tooling")
    workload = both["roles"][WORKLOAD]
    dns = both["roles"][DNS]
    assert {"ecs:UpdateService", "health:DescribeEvents"} <= actions(workload["policy"])
    assert not any(a.startswith("route53:") for a in actions(workload["policy"]))
    assert "route53:ChangeResourceRecordSets" in actions(dns["policy"])
    assert not any(a.startswith(("ecs:", "health:")) for a in actions(dns["policy"]))
    assert workload["trust_policy"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:role/failoverd-tooling"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "ops-2024"}},
        }
    ]
    assert "Condition" not in dns["trust_policy"]["Statement"][0]


def test_cli_prints_both_halves(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(POLICY, encoding="utf-8")
    assert main(["iam-policy", "--policy", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"tooling_identity", "roles"}
    assert set(doc["roles"]) == {WORKLOAD, DNS}
    assert "trust_policy" not in doc["roles"][DNS]  # no --principal given


CHINA = """\
service: shop
regions: [cn-north-1, cn-northwest-1]
rto: 15m
rpo: 1m
detection: {quorum: 1}
signals:
  - {name: api, type: http, target: "https://api.{region}.example.cn/healthz"}
  - {name: alarms, type: cloudwatch_alarm, alarms: {cn-north-1: [shop-down]}}
runbooks:
  failover:
    - name: flip
      action: route53.set_record
      params:
        hosted_zone_id: Z0SHOP
        name: api.example.cn
        value: "api.{target_region}.example.cn"
    - name: db
      action: rds.promote_read_replica
      params: {db_instance: shop-db}
"""


def test_arns_follow_the_partition_of_the_regions() -> None:
    doc = iam_policy([load_policy_text(CHINA, "shop.yaml")])
    resources = json.dumps([s["Resource"] for s in doc["Statement"]])
    assert "arn:aws-cn:route53:::hostedzone/Z0SHOP" in resources
    assert "arn:aws-cn:rds:cn-northwest-1:*:db:shop-db" in resources
    assert "arn:aws-cn:cloudwatch:cn-north-1:*:alarm:shop-down" in resources
    assert '"arn:aws:' not in resources


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            CHINA.replace("[cn-north-1, cn-northwest-1]", "[cn-north-1, us-east-1]").replace(
                "cn-north-1: [shop-down]", "us-east-1: [shop-down]"
            ),
            "regions",
            "regions in different AWS partitions: cn-north-1 (aws-cn), us-east-1 (aws)",
        ),
        (
            CHINA.replace("detection:", f'aws: {{role_arn: "{WORKLOAD}"}}\ndetection:'),
            "aws.role_arn",
            f"role {WORKLOAD} is in partition aws, the policy's regions in aws-cn",
        ),
    ],
)
def test_a_policy_lives_in_one_partition(text: str, where: str, message: str) -> None:
    with pytest.raises(SourceErrors) as caught:
        load_policy_text(text, "shop.yaml")
    assert [(e.path, e.message) for e in caught.value.errors] == [(where, message)]
