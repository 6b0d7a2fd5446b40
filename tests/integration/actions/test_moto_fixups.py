"""Each moto fix-up (tests/fixtures/moto_fixups.py) closes a gap that moto itself shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.sandbox.aurora_global import EMULATOR, emulator_settings, find_global_cluster
from tests.fixtures.clock import VirtualClock
from tests.fixtures.moto_fixups import apply_moto_fixups, without_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import SOURCE, TARGET


@pytest.fixture(params=["moto as is", "fixed"])
def fixed(request: pytest.FixtureRequest, moto: MotoServer) -> Iterator[bool]:
    apply_moto_fixups()
    if request.param == "fixed":
        yield True
    else:
        with without_moto_fixups():
            yield False


def _replica(moto: MotoServer) -> tuple[Any, Any]:
    """A primary in SOURCE and its cross-region replica "replica" in TARGET; the clients."""
    source, target = moto.boto3_client("rds", SOURCE), moto.boto3_client("rds", TARGET)
    primary = source.create_db_instance(
        DBInstanceIdentifier="primary",
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
    )["DBInstance"]
    target.create_db_instance_read_replica(
        DBInstanceIdentifier="replica", SourceDBInstanceIdentifier=primary["DBInstanceArn"]
    )
    return source, target


def _promoted(moto: MotoServer) -> tuple[dict[str, Any], dict[str, Any]]:
    source, target = _replica(moto)
    target.promote_read_replica(DBInstanceIdentifier="replica")
    return (
        target.describe_db_instances(DBInstanceIdentifier="replica")["DBInstances"][0],
        source.describe_db_instances(DBInstanceIdentifier="primary")["DBInstances"][0],
    )


def test_rds_promote_clears_source(moto: MotoServer, fixed: bool) -> None:
    replica, primary = _promoted(moto)
    if fixed:
        assert "ReadReplicaSourceDBInstanceIdentifier" not in replica
        assert primary["ReadReplicaDBInstanceIdentifiers"] == []
    else:  # the gap: both links survive the promotion
        assert replica["ReadReplicaSourceDBInstanceIdentifier"].endswith(":db:primary")
        assert primary["ReadReplicaDBInstanceIdentifiers"] == [replica["DBInstanceArn"]]


def _global_database(moto: MotoServer) -> tuple[Any, str, str]:
    source, target = moto.boto3_client("rds", SOURCE), moto.boto3_client("rds", TARGET)
    primary = source.create_db_cluster(
        DBClusterIdentifier="prim",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
    )["DBCluster"]["DBClusterArn"]
    source.create_global_cluster(GlobalClusterIdentifier="glob", SourceDBClusterIdentifier=primary)
    secondary = target.create_db_cluster(
        DBClusterIdentifier="sec", Engine="aurora-postgresql", GlobalClusterIdentifier="glob"
    )["DBCluster"]["DBClusterArn"]
    return target, primary, secondary


def _members(client: Any) -> dict[str, bool]:
    [glob] = client.describe_global_clusters(GlobalClusterIdentifier="glob")["GlobalClusters"]
    return {m["DBClusterArn"]: m["IsWriter"] for m in glob["GlobalClusterMembers"]}


def test_rds_global_source_is_writer(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    assert _members(target) == {primary: fixed, secondary: False}


def test_rds_remove_from_global_any_region(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    target.remove_from_global_cluster(GlobalClusterIdentifier="glob", DbClusterIdentifier=secondary)
    detached = target.describe_db_clusters(DBClusterIdentifier="sec")["DBClusters"][0]
    if fixed:
        assert set(_members(target)) == {primary}
        assert not detached.get("GlobalClusterIdentifier")
    else:  # the gap: a call from the member's region does nothing, and says nothing
        assert set(_members(target)) == {primary, secondary}
        assert detached["GlobalClusterIdentifier"] == "glob"


def test_rds_global_failover_and_switchover(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    clock = VirtualClock()
    with emulator_settings(clock=clock, lag=5.0):
        gc = find_global_cluster("glob")
        EMULATOR.write(gc, 4)  # not replicated yet: 5 s of lag
        if not fixed:  # the gap: moto has neither call (HTTP 500)
            for call in (target.failover_global_cluster, target.switchover_global_cluster):
                with pytest.raises(Exception, match=r"500|Unable to parse"):
                    call(GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=secondary)
            return
        target.failover_global_cluster(
            GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=secondary, AllowDataLoss=True
        )
        [glob] = target.describe_global_clusters()["GlobalClusters"]
        assert glob["Status"] == "failing-over"
        assert glob["FailoverState"]["IsDataLossAllowed"] is True
        clock.advance(2.0)
        assert _members(target) == {primary: False, secondary: True}
        assert EMULATOR.state(gc)["lost_writes"] == 4  # AllowDataLoss: the tail is gone
        # And back, planned: writes made now wait for the old primary to catch up.
        EMULATOR.write(gc, 2)
        target.switchover_global_cluster(
            GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=primary
        )
        assert EMULATOR.write(gc, 1) == 2  # writes are blocked during a switchover
        clock.advance(4.0)
        [glob] = target.describe_global_clusters()["GlobalClusters"]
        assert glob["Status"] == "switching-over"  # the secondary is still catching up
        clock.advance(4.0)
        assert _members(target) == {primary: True, secondary: False}
        assert EMULATOR.state(gc)["lost_writes"] == 4  # nothing more lost
        assert EMULATOR.state(gc)["position"] == 2


@pytest.mark.parametrize(
    "batch",
    [
        # a CNAME at the zone apex
        [("CREATE", {"Name": "example.com", "Type": "CNAME", "Value": "lb.example.net"})],
        # a CNAME beside an A record of the same name
        [
            ("CREATE", {"Name": "www.example.com", "Type": "A", "Value": "192.0.2.1"}),
            ("CREATE", {"Name": "www.example.com", "Type": "CNAME", "Value": "x.example.net"}),
        ],
        # a simple record beside a weighted one of the same name and type
        [
            ("CREATE", {"Name": "api.example.com", "Type": "A", "Value": "192.0.2.1"}),
            (
                "CREATE",
                {
                    "Name": "api.example.com",
                    "Type": "A",
                    "Value": "192.0.2.2",
                    "SetIdentifier": "b",
                    "Weight": 10,
                },
            ),
        ],
    ],
    ids=["cname-at-apex", "cname-beside-a", "simple-beside-weighted"],
)
def test_route53_refuses_conflicting_records(
    moto: MotoServer, fixed: bool, batch: list[tuple[str, dict[str, Any]]]
) -> None:
    r53 = moto.boto3_client("route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference="z")["HostedZone"]["Id"]

    def send(action: str, record: dict[str, Any]) -> None:
        rrset = {k: v for k, v in record.items() if k != "Value"}
        rrset.update(TTL=60, ResourceRecords=[{"Value": record["Value"]}])
        r53.change_resource_record_sets(
            HostedZoneId=zone,
            ChangeBatch={"Changes": [{"Action": action, "ResourceRecordSet": rrset}]},
        )

    *before, last = batch
    for action, record in before:
        send(action, record)
    if fixed:
        with pytest.raises(r53.exceptions.InvalidChangeBatch):
            send(*last)
    else:  # the gap: moto stores what AWS refuses
        send(*last)


def test_ecs_scalable_target_bounds_desired_count(moto: MotoServer, fixed: bool) -> None:
    ecs, scaling = (
        moto.boto3_client("ecs", SOURCE),
        moto.boto3_client("application-autoscaling", SOURCE),
    )
    ecs.create_cluster(clusterName="c")
    ecs.register_task_definition(
        family="w", containerDefinitions=[{"name": "w", "image": "nginx", "memory": 128}]
    )
    ecs.create_service(cluster="c", serviceName="w", taskDefinition="w", desiredCount=0)
    scaling.register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId="service/c/w",
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=2,
        MaxCapacity=4,
    )

    def desired() -> int:
        return int(
            ecs.describe_services(cluster="c", services=["w"])["services"][0]["desiredCount"]
        )

    # Registering moves the count into the bounds; a count set outside them comes back.
    assert desired() == (2 if fixed else 0)
    ecs.update_service(cluster="c", service="w", desiredCount=0)  # a fence
    assert desired() == (2 if fixed else 0)  # the gap: moto's fence "holds"
    ecs.update_service(cluster="c", service="w", desiredCount=9)
    assert desired() == (4 if fixed else 9)


def _group(moto: MotoServer) -> Any:
    ec2, asg = moto.boto3_client("ec2", TARGET), moto.boto3_client("autoscaling", TARGET)
    ec2.create_launch_template(
        LaunchTemplateName="web-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="g",
        LaunchTemplate={"LaunchTemplateName": "web-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=0,
        AvailabilityZones=[f"{TARGET}a"],
    )
    return asg


def test_autoscaling_suspended_launch_starts_nothing(moto: MotoServer, fixed: bool) -> None:
    asg = _group(moto)
    asg.suspend_processes(AutoScalingGroupName="g", ScalingProcesses=["Launch"])
    asg.set_desired_capacity(AutoScalingGroupName="g", DesiredCapacity=3)
    [group] = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["g"])["AutoScalingGroups"]
    assert group["DesiredCapacity"] == 3
    assert len(group["Instances"]) == (0 if fixed else 3)  # the gap: moto launches anyway


def test_autoscaling_instance_refreshes(moto: MotoServer, fixed: bool) -> None:
    asg = _group(moto)
    if not fixed:  # the gap: neither call is implemented (HTTP 500)
        with pytest.raises(Exception, match=r"500|Unable to parse"):
            asg.describe_instance_refreshes(AutoScalingGroupName="g")
        return
    refresh = asg.start_instance_refresh(AutoScalingGroupName="g")["InstanceRefreshId"]
    [listed] = asg.describe_instance_refreshes(AutoScalingGroupName="g")["InstanceRefreshes"]
    assert (listed["InstanceRefreshId"], listed["Status"]) == (refresh, "InProgress")


def test_rds_promote_needs_available_replica(moto: MotoServer, fixed: bool) -> None:
    from moto.rds.models import rds_backends

    _, target = _replica(moto)
    rds_backends["123456789012"][TARGET].databases["replica"].status = "backing-up"
    if fixed:
        with pytest.raises(target.exceptions.ClientError, match="InvalidDBInstanceState"):
            target.promote_read_replica(DBInstanceIdentifier="replica")
    else:  # the gap: moto promotes a replica in the middle of its backup
        target.promote_read_replica(DBInstanceIdentifier="replica")


def test_sns_subject_rules(moto: MotoServer, fixed: bool) -> None:
    sns = moto.boto3_client("sns", TARGET)
    arn = sns.create_topic(Name="t")["TopicArn"]
    if fixed:
        with pytest.raises(sns.exceptions.InvalidParameterException):
            sns.publish(TopicArn=arn, Message="m", Subject="two\nlines")
    else:  # the gap: moto checks the length only
        sns.publish(TopicArn=arn, Message="m", Subject="two\nlines")


@pytest.mark.parametrize("state", ["missing", "Disabled", "PendingDeletion"])
def test_sns_publish_needs_a_usable_kms_key(moto: MotoServer, fixed: bool, state: str) -> None:
    sns, kms = moto.boto3_client("sns", TARGET), moto.boto3_client("kms", TARGET)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    if state == "Disabled":
        kms.disable_key(KeyId=key)
    elif state == "PendingDeletion":
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    else:
        key = "alias/no-such-key"
    arn = sns.create_topic(Name="t", Attributes={"KmsMasterKeyId": key})["TopicArn"]
    if fixed:
        expected = {
            "missing": sns.exceptions.KMSNotFoundException,
            "Disabled": sns.exceptions.KMSDisabledException,
            "PendingDeletion": sns.exceptions.KMSInvalidStateException,
        }[state]
        with pytest.raises(expected):
            sns.publish(TopicArn=arn, Message="m")
    else:  # the gap: moto publishes whatever the key
        sns.publish(TopicArn=arn, Message="m")


def test_cloudwatch_datapoints_arrive_late(moto: MotoServer, fixed: bool) -> None:
    import time
    from datetime import UTC, datetime

    from orchestrator.sandbox.moto_fixups import CLOUDWATCH_DELAY

    cw = moto.boto3_client("cloudwatch", TARGET)
    now = time.time()
    for age, value in ((150, 1.0), (10, 2.0)):  # one old datapoint, one just published
        cw.put_metric_data(
            Namespace="AWS/RDS",
            MetricData=[
                {
                    "MetricName": "ReplicaLag",
                    "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "r"}],
                    "Timestamp": datetime.fromtimestamp(now - age, UTC),
                    "Value": value,
                }
            ],
        )
    before = CLOUDWATCH_DELAY.seconds
    CLOUDWATCH_DELAY.seconds = 60.0
    try:
        [result] = cw.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "q",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/RDS",
                            "MetricName": "ReplicaLag",
                            "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "r"}],
                        },
                        "Period": 10,
                        "Stat": "Maximum",
                    },
                }
            ],
            StartTime=datetime.fromtimestamp(now - 600, UTC),
            EndTime=datetime.fromtimestamp(now + 60, UTC),
        )["MetricDataResults"]
    finally:
        CLOUDWATCH_DELAY.seconds = before
    # The gap: moto serves the datapoint published 10 s ago; AWS would not have it yet.
    assert sorted(result["Values"]) == ([1.0] if fixed else [1.0, 2.0])
