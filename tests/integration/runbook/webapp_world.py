"""The example webapp policy's world, in moto: what its failover runbook acts on, seeded
before a run and read back after it, and a tally of the changes that reached moto.

Seeded (moto's account is 123456789012, the account the policy's topic ARN names):

* Route 53 zone ``webapp.example.com`` with ``api.webapp.example.com`` CNAME to us-east-1;
* RDS primary ``webapp-db-use1`` in us-east-1 and its cross-region read replica
  ``webapp-db-usw2`` in us-west-2 (created from the primary's ARN, as AWS requires);
* Auto Scaling group ``webapp-us-west-2`` at 0 (max 10);
* SNS topic ``webapp-oncall`` in us-west-2, with an SQS queue subscribed, so that the
  notifications can be read back.

moto generates zone ids, so :func:`webapp_policy` loads the policy file with the seeded
zone's id in place of the example's ``Z0WEBAPPEXAMPLE``. The crash worker imports this
module too, so moto itself is imported only where the test process needs it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.engine.state import Decision
from orchestrator.engine.vocabulary import Action as Kind
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import Policy

if TYPE_CHECKING:
    from tests.fixtures.moto_server import MotoServer

ROOT = Path(__file__).parents[3]
POLICY_FILE = ROOT / "policies" / "webapp" / "webapp.yaml"
EXAMPLE_ZONE_ID = "Z0WEBAPPEXAMPLE"

SERVICE = "webapp"
SOURCE, TARGET = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"  # moto's default account
ZONE = "webapp.example.com"
RECORD = "api.webapp.example.com"
SOURCE_ENDPOINT = f"api.{SOURCE}.webapp.example.com"
TARGET_ENDPOINT = f"api.{TARGET}.webapp.example.com"
PRIMARY_DB = "webapp-db-use1"
REPLICA_DB = "webapp-db-usw2"
PRIMARY_ARN = f"arn:aws:rds:{SOURCE}:{ACCOUNT}:db:{PRIMARY_DB}"
ASG = f"webapp-{TARGET}"
DESIRED = 6
TOPIC_ARN = f"arn:aws:sns:{TARGET}:{ACCOUNT}:webapp-oncall"
START_MESSAGE = f"failoverd: moving webapp from {SOURCE} to {TARGET}"
DONE_MESSAGE = f"failoverd: webapp now served from {TARGET}"


@dataclass(frozen=True)
class Seeded:
    zone_id: str  # bare, as the policy names it (moto says /hostedzone/<id>)
    queue_url: str  # subscribed to the topic


def seed_world(moto: MotoServer) -> Seeded:
    """Create the webapp's two regions in moto as they are before a failover."""
    r53 = moto.boto3_client("route53", SOURCE)
    zone_id = r53.create_hosted_zone(Name=ZONE, CallerReference="webapp-zone")["HostedZone"]["Id"]
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": RECORD,
                        "Type": "CNAME",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": SOURCE_ENDPOINT}],
                    },
                }
            ]
        },
    )

    primary = moto.boto3_client("rds", SOURCE).create_db_instance(
        DBInstanceIdentifier=PRIMARY_DB,
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        MasterUsername="webapp",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
    )["DBInstance"]
    assert primary["DBInstanceArn"] == PRIMARY_ARN, primary["DBInstanceArn"]
    moto.boto3_client("rds", TARGET).create_db_instance_read_replica(
        DBInstanceIdentifier=REPLICA_DB, SourceDBInstanceIdentifier=PRIMARY_ARN
    )

    ec2 = moto.boto3_client("ec2", TARGET)
    ec2.create_launch_template(
        LaunchTemplateName="webapp-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
    )
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    moto.boto3_client("autoscaling", TARGET).create_auto_scaling_group(
        AutoScalingGroupName=ASG,
        LaunchTemplate={"LaunchTemplateName": "webapp-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=10,
        DesiredCapacity=0,
        AvailabilityZones=zones[:2],
    )

    sns = moto.boto3_client("sns", TARGET)
    assert sns.create_topic(Name="webapp-oncall")["TopicArn"] == TOPIC_ARN
    sqs = moto.boto3_client("sqs", TARGET)
    queue_url = sqs.create_queue(QueueName="webapp-oncall-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=TOPIC_ARN, Protocol="sqs", Endpoint=queue_arn)
    return Seeded(zone_id=zone_id.rsplit("/", 1)[-1], queue_url=queue_url)


def webapp_policy(zone_id: str) -> Policy:
    """The example policy file, with ``zone_id`` for the example's hosted zone id."""
    text = POLICY_FILE.read_text()
    assert EXAMPLE_ZONE_ID in text, f"{POLICY_FILE} no longer names {EXAMPLE_ZONE_ID}"
    return load_policy_text(text.replace(EXAMPLE_ZONE_ID, zone_id), str(POLICY_FILE))


def failover_decision(now: float, policy_version: str) -> Decision:
    """The engine's decision to move webapp to us-west-2, 30 s after detecting the outage."""
    return Decision(
        service=SERVICE,
        at=now,
        phase=Phase.FAILING_OVER,
        action=Kind.FAILOVER,
        active_region=SOURCE,
        target=TARGET,
        policy_version=policy_version,
        detected_at=now - 30.0,
    )


# -- reading the world back ----------------------------------------------------------------
def dns_values(moto: MotoServer, zone_id: str) -> list[str]:
    listed = moto.boto3_client("route53", SOURCE).list_resource_record_sets(HostedZoneId=zone_id)
    return [
        r["Value"]
        for s in listed["ResourceRecordSets"]
        if s["Name"] == RECORD + "." and s["Type"] == "CNAME"
        for r in s["ResourceRecords"]
    ]


def db_instance(moto: MotoServer, name: str, region: str) -> dict[str, Any]:
    found = moto.boto3_client("rds", region).describe_db_instances(DBInstanceIdentifier=name)
    return dict(found["DBInstances"][0])


def asg_desired(moto: MotoServer) -> int:
    groups = moto.boto3_client("autoscaling", TARGET).describe_auto_scaling_groups(
        AutoScalingGroupNames=[ASG]
    )["AutoScalingGroups"]
    return int(groups[0]["DesiredCapacity"])


def notifications(moto: MotoServer, queue_url: str) -> list[dict[str, Any]]:
    """Every SNS notification delivered to the subscribed queue so far (consumed)."""
    sqs = moto.boto3_client("sqs", TARGET)
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        for m in got:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def assert_failed_over(moto: MotoServer, seeded: Seeded, run_id: str) -> None:
    """The world after the webapp's failover: DNS on us-west-2, the replica a standalone
    writer (tagged by this run), the standby ASG scaled up."""
    assert dns_values(moto, seeded.zone_id) == [TARGET_ENDPOINT]
    replica = db_instance(moto, REPLICA_DB, TARGET)
    assert "ReadReplicaSourceDBInstanceIdentifier" not in replica, replica
    assert replica["DBInstanceStatus"] == "available"
    tags = {t["Key"]: t["Value"] for t in replica.get("TagList", [])}
    assert tags.get("failoverd:promoted-by") == run_id, tags
    assert db_instance(moto, PRIMARY_DB, SOURCE)["ReadReplicaDBInstanceIdentifiers"] == []
    assert asg_desired(moto) == DESIRED


# -- the changes that reached moto -----------------------------------------------------------
def _mutations() -> dict[str, tuple[type[Any], str]]:
    """The API operations the webapp runbook changes the world with, as moto's backends
    take them."""
    from moto.autoscaling.models import AutoScalingBackend
    from moto.rds.models import RDSBackend
    from moto.route53.models import Route53Backend
    from moto.sns.models import SNSBackend

    return {
        "AddTagsToResource": (RDSBackend, "add_tags_to_resource"),
        "PromoteReadReplica": (RDSBackend, "promote_read_replica"),
        "SetDesiredCapacity": (AutoScalingBackend, "set_desired_capacity"),
        "UpdateAutoScalingGroup": (AutoScalingBackend, "update_auto_scaling_group"),
        "ChangeResourceRecordSets": (Route53Backend, "change_resource_record_sets"),
        "Publish": (SNSBackend, "publish"),
    }


@contextmanager
def moto_mutations() -> Iterator[Counter[str]]:
    """Count, by API operation, the mutating calls moto's in-process backends carry out
    inside the block, whoever sends them (this process or a worker over HTTP). Counted in
    the server, so a call whose sender died before reading the reply still counts."""
    mutations = _mutations()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    originals = {op: getattr(cls, attr) for op, (cls, attr) in mutations.items()}

    def counting(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            with lock:
                counts[op] += 1
            return result

        return wrapper

    for op, (cls, attr) in mutations.items():
        setattr(cls, attr, counting(op, originals[op]))
    try:
        yield counts
    finally:
        for op, (cls, attr) in mutations.items():
            setattr(cls, attr, originals[op])
