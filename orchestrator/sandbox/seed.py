"""The other example services (ledger, catalog, reports) seeded into the sandbox's moto, and
their sandbox policy copies aimed at the local region endpoints.

The webapp stays in :mod:`orchestrator.sandbox.world` (the demo depends on it); this module
adds, per example:

* ledger (eu-west-1 → eu-central-1): Aurora global database ``ledger-global`` with member
  clusters ``ledger-<region>`` (one instance each; writes committed by
  :func:`feed_ledger_writes`, replicated by the emulator of
  :mod:`orchestrator.sandbox.aurora_global`), ECS ``ledger-<region>``/``ledger-writer``,
  CloudWatch alarms ``ledger-<region>-unhealthy`` in OK, SNS ``ledger-oncall``, zone
  ``payments.example.com``; the primary's writers under a scalable target [2, 12];
* catalog (us-east-1 → us-west-2 → eu-west-1): ECS ``catalog-<region>``/``catalog-api``,
  Route 53 health checks tagged ``Name=catalog-<region>`` (ids generated), SNS
  ``catalog-oncall`` per region;
* reports (us-west-2 → us-east-1, advisory): ASG ``reports-web-<region>``, zone
  ``example.com``.

Lag metrics for every replication source are published by :func:`publish_example_lag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.sandbox.world import (
    ACCOUNT,
    BACKFILL,
    EXAMPLE_ZONE_ID,
    MotoWorld,
    SandboxError,
    sandbox_policy,
    sandbox_replication,
    seed_webapp,
)
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.seed")

POLICIES = Path(__file__).parents[2] / "policies"
SERVICES = ("webapp", "ledger", "catalog", "reports")
REGIONS_OF = {
    "webapp": ("us-east-1", "us-west-2"),
    "ledger": ("eu-west-1", "eu-central-1"),
    "catalog": ("us-east-1", "us-west-2", "eu-west-1"),
    "reports": ("us-west-2", "us-east-1"),
}
ALL_REGIONS = tuple(dict.fromkeys(r for regions in REGIONS_OF.values() for r in regions))
PLACEHOLDER_ZONES = {"webapp": EXAMPLE_ZONE_ID, "ledger": "Z0LEDGEREXAMPLE"}
PLACEHOLDER_ZONES["reports"] = "Z0REPORTSEXAMPLE"
# Lag values well within each example's RPO, in the metric's own unit.
AURORA_RPO_LAG_MS = 1000.0
DYNAMODB_LATENCY_MS = 500.0
S3_REPLICATION_S = 60.0


@dataclass(frozen=True)
class SeededWorld:
    zones: dict[str, str]  # service -> bare zone id (catalog has none)


def seed_world(world: MotoWorld) -> SeededWorld:
    """Seed every example into moto as it is before a failover. Blocking (boto3)."""
    zones = {"webapp": seed_webapp(world).zone_id}
    zones["ledger"] = _seed_ledger(world)
    _seed_catalog(world)
    zones["reports"] = _seed_reports(world)
    publish_example_lag(world, age=BACKFILL)  # readable at once despite the metric delay
    publish_example_lag(world)
    return SeededWorld(zones=zones)


def _zone(world: MotoWorld, name: str, record: str, value: str) -> str:
    r53 = world.client("route53", "us-east-1")
    zone_id = r53.create_hosted_zone(Name=name, CallerReference=f"{name}-zone")["HostedZone"]["Id"]
    rrset = {"Name": record, "Type": "CNAME", "TTL": 60, "ResourceRecords": [{"Value": value}]}
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]},
    )
    return str(zone_id).rsplit("/", 1)[-1]


def _ecs(world: MotoWorld, region: str, cluster: str, service: str, desired: int) -> None:
    ecs = world.client("ecs", region)
    ecs.create_cluster(clusterName=cluster)
    arn = ecs.register_task_definition(
        family=service,
        containerDefinitions=[{"name": service, "image": "nginx", "memory": 256}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=cluster, serviceName=service, taskDefinition=arn, desiredCount=desired
    )


def _seed_ledger(world: MotoWorld) -> str:
    primary, standby = REGIONS_OF["ledger"]
    # An empty global database first, then its members: moto's CreateGlobalCluster looks for a
    # SourceDBClusterIdentifier in us-east-1 only, and ledger's primary is in eu-west-1. The
    # first member is the writer, as in AWS.
    world.client("rds", primary).create_global_cluster(
        GlobalClusterIdentifier="ledger-global", Engine="aurora-postgresql"
    )
    world.client("rds", primary).create_db_cluster(
        DBClusterIdentifier=f"ledger-{primary}",
        Engine="aurora-postgresql",
        GlobalClusterIdentifier="ledger-global",
        MasterUsername="ledger",
        MasterUserPassword="sandbox-only-1",  # an emulator's throw-away cluster
    )
    world.client("rds", standby).create_db_cluster(
        DBClusterIdentifier=f"ledger-{standby}",
        Engine="aurora-postgresql",
        GlobalClusterIdentifier="ledger-global",
    )
    for region in (primary, standby):
        # An instance in each cluster: a headless secondary could not serve as the writer.
        world.client("rds", region).create_db_instance(
            DBInstanceIdentifier=f"ledger-{region}-1",
            DBClusterIdentifier=f"ledger-{region}",
            Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )
    for region, desired in ((primary, 6), (standby, 0)):
        _ecs(world, region, f"ledger-{region}", "ledger-writer", desired)
        if desired:
            # Service Auto Scaling keeps the writers between 2 and 12 (the standby's, at 0,
            # has no target yet): a fence must move these bounds (scalable_target: adjust).
            world.client("application-autoscaling", region).register_scalable_target(
                ServiceNamespace="ecs",
                ResourceId=f"service/ledger-{region}/ledger-writer",
                ScalableDimension="ecs:service:DesiredCount",
                MinCapacity=2,
                MaxCapacity=12,
            )
        cw = world.client("cloudwatch", region)
        name = f"ledger-{region}-unhealthy"
        cw.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_Target_5XX_Count",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=10.0,
            ComparisonOperator="GreaterThanThreshold",
        )
        cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="sandbox: healthy")
    world.client("sns", standby).create_topic(Name="ledger-oncall")
    zone = _zone(
        world,
        "payments.example.com",
        "ledger.payments.example.com",
        f"ledger.{primary}.payments.example.com",
    )
    log.info("sandbox_world_seeded", service="ledger", zone_id=zone)
    return zone


def _seed_catalog(world: MotoWorld) -> None:
    r53 = world.client("route53", "us-east-1")
    for i, region in enumerate(REGIONS_OF["catalog"]):
        _ecs(world, region, f"catalog-{region}", "catalog-api", 24 if i == 0 else 4)
        world.client("sns", region).create_topic(Name="catalog-oncall")
        created = r53.create_health_check(
            CallerReference=f"catalog-{region}",
            HealthCheckConfig={
                "Type": "HTTPS",
                "FullyQualifiedDomainName": f"catalog.{region}.shop.example.com",
                "ResourcePath": "/healthz",
            },
        )["HealthCheck"]["Id"]
        # Route 53 generates the id; the policy finds the check by its Name tag, as in AWS.
        r53.change_tags_for_resource(
            ResourceType="healthcheck",
            ResourceId=created,
            AddTags=[{"Key": "Name", "Value": f"catalog-{region}"}],
        )
    log.info("sandbox_world_seeded", service="catalog")


def _seed_reports(world: MotoWorld) -> str:
    for region in REGIONS_OF["reports"]:
        ec2 = world.client("ec2", region)
        ec2.create_launch_template(
            LaunchTemplateName="reports-lt",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        world.client("autoscaling", region).create_auto_scaling_group(
            AutoScalingGroupName=f"reports-web-{region}",
            LaunchTemplate={"LaunchTemplateName": "reports-lt", "Version": "$Latest"},
            MinSize=0,
            MaxSize=12,
            DesiredCapacity=0,
            AvailabilityZones=zones[:2],
        )
    primary = REGIONS_OF["reports"][0]
    zone = _zone(world, "example.com", "reports.example.com", f"reports.{primary}.example.com")
    log.info("sandbox_world_seeded", service="reports", zone_id=zone)
    return zone


def _datapoint(
    name: str, dims: dict[str, str], value: float, unit: str, age: float = 0.0
) -> dict[str, Any]:
    return {
        "MetricName": name,
        # Sorted by name, as the daemon queries them: moto matches dimension lists in order.
        "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(dims.items())],
        "Timestamp": datetime.fromtimestamp(datetime.now(UTC).timestamp() - age, UTC),
        "Value": value,
        "Unit": unit,
    }


def commit_ledger_writes(n: int = 1) -> int:
    """The ledger application's writes: ``n`` committed on ledger-global's writer (nothing
    while the writer's region is down, or during a switchover). The emulator ships them to
    the secondary after its lag, so a failover with AllowDataLoss loses the newest ones."""
    from orchestrator.sandbox.aurora_global import EMULATOR, find_global_cluster

    try:
        return EMULATOR.write(find_global_cluster("ledger-global", ACCOUNT), n)
    except KeyError:
        return 0


async def feed_ledger_writes(every: float = 0.5) -> None:
    """Commit a ledger write every ``every`` seconds until cancelled (the sandbox's
    "application"), so a failover's lost writes show in the control endpoint's state."""
    import asyncio

    while True:
        try:
            await asyncio.to_thread(commit_ledger_writes)
        except Exception as exc:  # moto restarting: the next round tries again
            log.warning("sandbox_ledger_write_failed", error=repr(exc))
        await asyncio.sleep(every)


def publish_example_lag(world: MotoWorld, *, age: float = 0.0) -> None:
    """One datapoint (stamped ``age`` seconds ago) for every replication source of ledger,
    catalog and reports (the webapp's lag is :func:`~orchestrator.sandbox.world.publish_lag`'s).
    Blocking."""
    world.client("cloudwatch", "eu-central-1").put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            _datapoint(
                "AuroraGlobalDBRPOLag",
                {"DBClusterIdentifier": "ledger-eu-central-1"},
                AURORA_RPO_LAG_MS,
                "Milliseconds",
                age,
            )
        ],
    )
    for region in REGIONS_OF["catalog"][1:]:
        world.client("cloudwatch", region).put_metric_data(
            Namespace="AWS/DynamoDB",
            MetricData=[
                _datapoint(
                    "ReplicationLatency",
                    {"TableName": "catalog-items", "ReceivingRegion": region},
                    DYNAMODB_LATENCY_MS,
                    "Milliseconds",
                    age,
                )
            ],
        )
    dims = {
        "SourceBucket": "reports-data-us-west-2",
        "DestinationBucket": "reports-data-us-east-1",
        "RuleId": "reports-crr",
    }
    world.client("cloudwatch", "us-east-1").put_metric_data(
        Namespace="AWS/S3",
        MetricData=[_datapoint("ReplicationLatency", dims, S3_REPLICATION_S, "Seconds", age)],
    )


# -- the sandbox policy copies ---------------------------------------------------------------
def _fast_detection(vantage_points: list[str]) -> dict[str, Any]:
    return {
        "interval": "1s",
        "timeout": "500ms",
        "consecutive_failures": 3,
        "failure_ratio": 0.5,
        "window": "20s",
        "min_samples": 6,
        "quorum": 2 if len(vantage_points) > 1 else 1,
        "staleness": "5s",
    }


def example_policy(
    service: str, zones: dict[str, str], targets: dict[str, int], vantage_points: list[str]
) -> str:
    """The sandbox copy of ``policies/<service>/<service>.yaml`` (not webapp: see
    :func:`~orchestrator.sandbox.world.sandbox_policy`): seeded zone id, every probe on the
    loopback endpoint of its region (``targets``: region → port), the given vantage points,
    fast detection and replication reads. Runbooks and guards unchanged (ledger's Aurora steps
    run against the emulated FailoverGlobalCluster/SwitchoverGlobalCluster)."""
    source = POLICIES / service / f"{service}.yaml"
    text = source.read_text(encoding="utf-8")
    placeholder = PLACEHOLDER_ZONES.get(service)
    if placeholder is not None:
        if placeholder not in text:
            raise SandboxError(f"{source} no longer names the zone {placeholder}")
        text = text.replace(placeholder, zones[service])
    policy = yaml.safe_load(text)
    regions = policy["regions"]
    missing = [r for r in regions if r not in targets]
    if missing:
        raise SandboxError(f"no sandbox endpoint for {service}'s regions {missing}")
    policy["vantage_points"] = vantage_points
    policy["detection"] = _fast_detection(vantage_points)
    for signal in policy["signals"]:
        if signal["type"] == "http":
            # The region endpoints serve /healthz answering {"status":"ok"} only: every HTTP
            # probe (ledger's writer/reader regex, catalog's search) checks that instead.
            for key in ("target", "body_regex", "body_contains", "expect_status", "timeout"):
                signal.pop(key, None)
            signal["targets"] = {r: f"http://127.0.0.1:{targets[r]}/healthz" for r in regions}
            signal["body_contains"] = '"status":"ok"'
        elif signal["type"] == "tcp":
            signal["targets"] = {r: f"127.0.0.1:{targets[r]}" for r in regions}
    sandbox_replication(policy["replication"])
    return yaml.safe_dump(policy, sort_keys=False)


def write_sandbox_policies(
    folder: Path, zones: dict[str, str], targets: dict[str, int], vantage_points: list[str]
) -> list[Path]:
    """Write every example's sandbox copy into ``folder``, each validated with the real
    loader first (SandboxError names the file and the problem). Overwrites."""
    written: list[Path] = []
    for service in SERVICES:
        if service == "webapp":
            text = sandbox_policy(
                zones["webapp"], {r: targets[r] for r in REGIONS_OF["webapp"]}, vantage_points
            )
        else:
            text = example_policy(service, zones, targets, vantage_points)
        path = folder / f"{service}.yaml"
        try:
            load_policy_text(text, str(path))
        except SourceErrors as exc:  # the loader's own errors name the field; keep them
            raise SandboxError(f"sandbox copy of {service} is invalid: {exc}") from exc
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
