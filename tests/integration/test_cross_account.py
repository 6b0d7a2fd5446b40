"""A policy acting in a workload account through its role (moto's STS maps the assumed
role's credentials to that account): readiness sees the workload's resources only through
the role, and a CloudWatch alarm signal reads the workload account's alarms."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.policy.loader import load_policy_text
from orchestrator.readiness import check_step, moves
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.signals.base import ListSink
from orchestrator.signals.cloudwatch import CloudWatchAlarmSource
from tests.fixtures.clock import eventually
from tests.fixtures.moto_server import MotoServer

ROLE = "arn:aws:iam::111111111111:role/failoverd"
POLICY = """\
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{interval: 10s, quorum: 1}}
{aws}
signals:
  - {{name: api, type: http, target: "http://127.0.0.1:9/{{region}}"}}
  - {{name: alarms, type: cloudwatch_alarm, alarms: {{us-west-2: [shop-down]}}}}
runbooks:
  failover:
    - name: scale
      action: ecs.set_desired_count
      params: {{cluster: shop, service: web, desired: 2}}
"""


def _as_workload(moto: MotoServer, service: str, region: str) -> Any:
    creds = moto.boto3_client("sts", region).assume_role(RoleArn=ROLE, RoleSessionName="seed")[
        "Credentials"
    ]
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=moto.endpoint_url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def _workload(moto: MotoServer) -> None:
    ecs = _as_workload(moto, "ecs", "us-west-2")
    ecs.create_cluster(clusterName="shop")
    ecs.register_task_definition(
        family="web", containerDefinitions=[{"name": "web", "image": "nginx", "memory": 128}]
    )
    ecs.create_service(cluster="shop", serviceName="web", taskDefinition="web", desiredCount=0)
    _as_workload(moto, "cloudwatch", "us-west-2").put_metric_alarm(
        AlarmName="shop-down",
        Namespace="AWS/ApplicationELB",
        MetricName="HTTPCode_Target_5XX_Count",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=10.0,
        ComparisonOperator="GreaterThanThreshold",
    )


async def test_readiness_sees_the_workload_account_through_the_role(moto: MotoServer) -> None:
    _workload(moto)
    aws = AwsClients(moto.client_config())
    for aws_section, ready in ((f'aws: {{role_arn: "{ROLE}"}}', True), ("", False)):
        policy = load_policy_text(POLICY.format(aws=aws_section), "shop.yaml")
        move, steps = next(iter(moves(policy)))
        result = await check_step(policy, move, steps[0], aws, SYSTEM_CLOCK)
        assert result.ready is ready, result.findings
        if not ready:  # the tooling account has no such service
            assert result.findings == ("ECS cluster shop not found in us-west-2",)


async def _first_alarm_observation(moto: MotoServer, aws_section: str) -> Any:
    policy = load_policy_text(POLICY.format(aws=aws_section), "shop.yaml")
    source = CloudWatchAlarmSource([policy], AwsClients(moto.client_config()))
    sink = ListSink()
    task = asyncio.create_task(source.run(sink))
    try:
        await eventually(lambda: bool(sink.items), "the first alarm observation")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return sink.items[0]


async def test_an_alarm_signal_reads_the_workload_accounts_alarm(moto: MotoServer) -> None:
    _workload(moto)
    seen = await _first_alarm_observation(moto, f'aws: {{role_arn: "{ROLE}"}}')
    # moto's new alarms start OK: found and passing.
    assert (seen.region, seen.ok) == ("us-west-2", True), seen
    # As the tooling identity, the alarm is not there: unknown, never passing.
    missing = await _first_alarm_observation(moto, "")
    assert missing.ok is None and "missing" in missing.detail, missing
