"""The storefront example in the sandbox: its world in moto and the ARC cluster emulator, its
sandbox policy copy, and what the world must look like after a failover.

Seeded (moto's account 123456789012, the one the example's ARNs name):

* ARC: control panel ``storefront`` with routing controls ``storefront-us-east-1`` (On) and
  ``storefront-us-west-2`` (Off), and the assertion rule ``storefront-one-region-on``
  (at least one of them On), on the sandbox's five-endpoint cluster;
* Route 53: zone ``storefront.example.com``, two ``RECOVERY_CONTROL`` health checks (one per
  routing control) and the failover records ``www.storefront.example.com`` (PRIMARY ->
  ``www.us-east-1.storefront.example.com``, SECONDARY -> ``www.us-west-2...``), each on its
  region's health check: traffic follows the routing controls, as clients see it in DNS;
* RDS primary ``storefront-db-use1`` and its cross-region read replica
  ``storefront-db-usw2``; Auto Scaling group ``storefront-us-west-2`` at 0 (max 10); SNS
  topic ``storefront-oncall`` in us-west-2; the replica's ``ReplicaLag``
  (:func:`publish_storefront_lag`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.sandbox.world import (
    BACKFILL,
    MotoWorld,
    SandboxError,
    sandbox_replication,
    seed_replica,
    seed_standby_group,
    standby_problems,
)
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.seed")

SERVICE = "storefront"
POLICY_FILE = Path(__file__).parents[2] / "policies" / SERVICE / f"{SERVICE}.yaml"
PRIMARY, STANDBY = "us-east-1", "us-west-2"
REGIONS = (PRIMARY, STANDBY)
ZONE = "storefront.example.com"
NAME = f"www.{ZONE}"
PRIMARY_DB, REPLICA_DB = "storefront-db-use1", "storefront-db-usw2"
ASG = f"storefront-{STANDBY}"
DESIRED = 6
LAG_SECONDS = 5.0


def endpoint_name(region: str) -> str:
    """The name the failover record of ``region`` answers: what a client is sent to."""
    return f"www.{region}.{ZONE}"


@dataclass(frozen=True)
class SeededStorefront:
    zone_id: str
    routing_controls: dict[str, str]  # region -> routing control ARN
    health_checks: dict[str, str]  # region -> health check id
    safety_rule: str


def seed_storefront(world: MotoWorld, arc: ArcClusterEmulator) -> SeededStorefront:
    """Create the storefront as it is before a failover. Blocking (boto3)."""
    panel = arc.create_control_panel(SERVICE)
    controls = {
        region: arc.create_routing_control(
            panel, f"{SERVICE}-{region}", state="On" if region == PRIMARY else "Off"
        )
        for region in REGIONS
    }
    rule = arc.create_assertion_rule(
        panel, f"{SERVICE}-one-region-on", list(controls.values()), "ATLEAST", threshold=1
    )
    r53 = world.client("route53", "us-east-1")
    zone_id = r53.create_hosted_zone(Name=ZONE, CallerReference=f"{SERVICE}-zone")["HostedZone"][
        "Id"
    ]
    checks: dict[str, str] = {}
    changes: list[dict[str, Any]] = []
    for region, arn in controls.items():
        checks[region] = r53.create_health_check(
            CallerReference=f"{SERVICE}-{region}",
            HealthCheckConfig={"Type": "RECOVERY_CONTROL", "RoutingControlArn": arn},
        )["HealthCheck"]["Id"]
        record = {
            "Name": NAME,
            "Type": "CNAME",
            "TTL": 60,
            "SetIdentifier": region,
            "Failover": "PRIMARY" if region == PRIMARY else "SECONDARY",
            "HealthCheckId": checks[region],
            "ResourceRecords": [{"Value": endpoint_name(region)}],
        }
        changes.append({"Action": "UPSERT", "ResourceRecordSet": record})
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    seed_replica(world, PRIMARY, PRIMARY_DB, STANDBY, REPLICA_DB, user=SERVICE)
    seed_standby_group(world, STANDBY, ASG, template=f"{SERVICE}-lt")
    world.client("sns", STANDBY).create_topic(Name="storefront-oncall")
    # Backdated first, so that a reading is there at once despite the sandbox's metric delay.
    publish_storefront_lag(world, age=BACKFILL)
    publish_storefront_lag(world)
    bare = str(zone_id).rsplit("/", 1)[-1]
    log.info("sandbox_world_seeded", service=SERVICE, zone_id=bare)
    return SeededStorefront(bare, controls, checks, rule)


def publish_storefront_lag(
    world: MotoWorld, seconds: float = LAG_SECONDS, *, age: float = 0.0
) -> None:
    """One ``ReplicaLag`` datapoint for the storefront's replica, stamped ``age`` seconds
    ago. Blocking."""
    world.client("cloudwatch", STANDBY).put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            {
                "MetricName": "ReplicaLag",
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": REPLICA_DB}],
                "Timestamp": datetime.fromtimestamp(time.time() - age, UTC),
                "Value": seconds,
                "Unit": "Seconds",
            }
        ],
    )


def storefront_policy(
    seeded: SeededStorefront,
    cluster_endpoints: dict[str, str],
    targets: dict[str, int],
    vantage_points: list[str],
    detection: dict[str, Any],
) -> str:
    """The example with the sandbox's routing controls and cluster endpoints, its probe on the
    loopback endpoints (region -> port), the given vantage points and detection; runbooks and
    guards unchanged otherwise."""
    policy = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    missing = [r for r in policy["regions"] if r not in targets]
    if missing:
        raise SandboxError(f"no sandbox endpoint for {SERVICE}'s regions {missing}")
    policy["vantage_points"] = vantage_points
    policy["detection"] = detection
    for signal in policy["signals"]:
        if signal["type"] == "http":
            signal.pop("target", None)
            signal["targets"] = {r: f"http://127.0.0.1:{targets[r]}/healthz" for r in REGIONS}
    sandbox_replication(policy["replication"])
    flips = 0
    for steps in policy["runbooks"].values():
        for step in steps:
            if step["action"] == "arc.set_routing_controls":
                step["params"] = {
                    **step["params"],
                    "cluster_endpoints": dict(cluster_endpoints),
                    "routing_controls": dict(seeded.routing_controls),
                }
                flips += 1
    if not flips:
        raise SandboxError(f"{POLICY_FILE} no longer flips routing controls")
    return yaml.safe_dump(policy, sort_keys=False)


def write_storefront_policy(folder: Path, text: str) -> Path:
    """Validate the sandbox copy with the real loader, then write it into ``folder``."""
    path = folder / f"{SERVICE}.yaml"
    try:
        load_policy_text(text, str(path))
    except SourceErrors as exc:
        raise SandboxError(f"sandbox copy of {SERVICE} is invalid: {exc}") from exc
    path.write_text(text, encoding="utf-8")
    return path


def failover_problems(
    world: MotoWorld, arc: ArcClusterEmulator, seeded: SeededStorefront, target: str = STANDBY
) -> list[str]:
    """What is not as it should be after a failover to ``target`` (empty: all is). Reads
    moto directly (not through the fault proxy) and the cluster's state. Blocking."""
    problems: list[str] = []
    states = {region: arc.state(arn) for region, arn in seeded.routing_controls.items()}
    wanted = {region: "On" if region == target else "Off" for region in seeded.routing_controls}
    if states != wanted:
        problems.append(f"routing controls are {states}, not {wanted}")
    problems.extend(standby_problems(world, target, REPLICA_DB, ASG, DESIRED))
    return problems
