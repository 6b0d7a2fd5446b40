"""The sandbox's emulated AWS world: a moto server on loopback, the webapp example seeded
into it, and the sandbox copy of the webapp policy aimed at the local region endpoints.

Seeded (moto's account 123456789012 is the one the example's topic ARN names):

* Route 53 zone ``webapp.example.com``, ``api.webapp.example.com`` CNAME to us-east-1;
* RDS primary ``webapp-db-use1`` (us-east-1) and its cross-region read replica
  ``webapp-db-usw2`` (us-west-2);
* Auto Scaling group ``webapp-us-west-2`` at 0 (max 10);
* SNS topic ``webapp-oncall`` in us-west-2;
* CloudWatch ``AWS/RDS ReplicaLag`` for the replica, re-published by :class:`World` so the
  daemon's lag reading never goes stale (the ``lag`` fault changes its value).

moto is a test-and-sandbox dependency: it is imported only when a world starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.world")

POLICY_FILE = Path(__file__).parents[2] / "policies" / "webapp" / "webapp.yaml"
EXAMPLE_ZONE_ID = "Z0WEBAPPEXAMPLE"
SERVICE = "webapp"
PRIMARY, STANDBY = "us-east-1", "us-west-2"
REGIONS = (PRIMARY, STANDBY)
ACCOUNT = "123456789012"
ZONE = "webapp.example.com"
RECORD = "api.webapp.example.com"
PRIMARY_DB = "webapp-db-use1"
REPLICA_DB = "webapp-db-usw2"
ASG = f"webapp-{STANDBY}"
DESIRED = 6
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
START_DEADLINE = 20.0  # seconds for moto to bind and answer
DEFAULT_LAG = 5.0  # seconds; well within the example's 1 m RPO
# CloudWatch datapoints reach GetMetricData this late in the sandbox (the
# cloudwatch_datapoints_arrive_late fix-up); the sandbox's policies declare the same delay,
# and their max_age follows from it (2 periods + the delay + the read interval).
METRIC_DELAY = 30.0
LAG_INTERVAL = 5.0
# Seconds back the seeded lag datapoints are stamped: past METRIC_DELAY, so readable at once,
# and young enough that the reading (its one-minute bucket starts up to 60 s earlier) stays
# within max_age (2 min + METRIC_DELAY + LAG_INTERVAL) until the datapoint stamped at seeding
# is readable, METRIC_DELAY later. (120 s left a window in which every lag was unknown, and a
# failover waited.)
BACKFILL = 60.0


def sandbox_replication(replication: dict[str, Any]) -> None:
    """A policy's ``replication`` section as the sandbox runs it: read every few seconds,
    every source declaring the sandbox's metric delay, max_age what validate asks for."""
    from orchestrator.policy.durations import format_duration

    replication["interval"] = format_duration(LAG_INTERVAL)
    for source in replication["sources"].values():
        source["delay"] = format_duration(METRIC_DELAY)
    replication["max_age"] = format_duration(2 * 60 + METRIC_DELAY + LAG_INTERVAL)


def endpoint_name(region: str) -> str:
    return f"api.{region}.webapp.example.com"


class SandboxError(RuntimeError):
    """A part of the sandbox could not start or be used; the message says which."""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


class MotoWorld:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 (kernel-chosen port), with the fix-ups
    that make it report what AWS reports after a promotion. ``start`` is bounded by
    :data:`START_DEADLINE`; ``stop`` is idempotent."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise SandboxError(
                "the sandbox needs moto in server mode: pip install 'moto[server]>=5.1,<6'"
            ) from None
        from orchestrator.sandbox.moto_fixups import apply_moto_fixups

        # moto's werkzeug logs every request to stderr: the sandbox's own output must stay readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        failure: list[BaseException] = []

        def target() -> None:
            try:
                server.start()
            except BaseException as exc:  # reported below, in the caller's thread
                failure.append(exc)

        # ThreadedMotoServer.start() waits forever when the bind fails: bound it.
        starter = threading.Thread(target=target, name="moto-start", daemon=True)
        starter.start()
        starter.join(START_DEADLINE)
        if failure or starter.is_alive():
            raise SandboxError(f"moto did not start: {failure[0]!r}" if failure else "moto hung")
        self._server = server
        apply_moto_fixups()
        from orchestrator.sandbox.moto_fixups import CLOUDWATCH_DELAY

        CLOUDWATCH_DELAY.seconds = METRIC_DELAY
        host, port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        deadline = time.monotonic() + START_DEADLINE
        while not _answers(f"{self.endpoint_url}/moto-api/"):
            if time.monotonic() > deadline:
                raise SandboxError(f"moto on {self.endpoint_url} did not answer in time")
            time.sleep(0.05)
        log.info("sandbox_moto_started", endpoint=self.endpoint_url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def client(self, service: str, region: str) -> Any:
        """A boto3 client against this server, fake credentials, bounded calls."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2})
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint_url,
            config=config,
            **FAKE_CREDENTIALS,
        )


@dataclass(frozen=True)
class Seeded:
    zone_id: str  # bare, as a policy names it (moto says /hostedzone/<id>)


def seed_webapp(world: MotoWorld) -> Seeded:
    """Create the webapp's two regions as they are before a failover. Blocking (boto3)."""
    r53 = world.client("route53", PRIMARY)
    zone_id = r53.create_hosted_zone(Name=ZONE, CallerReference="webapp-zone")["HostedZone"]["Id"]
    record = {
        "Name": RECORD,
        "Type": "CNAME",
        "TTL": 60,
        "ResourceRecords": [{"Value": endpoint_name(PRIMARY)}],
    }
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": record}]},
    )
    seed_replica(world, PRIMARY, PRIMARY_DB, STANDBY, REPLICA_DB, user=SERVICE)
    seed_standby_group(world, STANDBY, ASG, template=f"{SERVICE}-lt")
    world.client("sns", STANDBY).create_topic(Name="webapp-oncall")
    # Backdated first, so that a reading is there at once despite the metric delay.
    publish_lag(world, DEFAULT_LAG, age=BACKFILL)
    publish_lag(world, DEFAULT_LAG)
    bare = zone_id.rsplit("/", 1)[-1]
    log.info("sandbox_world_seeded", service=SERVICE, zone_id=bare)
    return Seeded(zone_id=bare)


def seed_replica(
    world: MotoWorld, primary: str, primary_db: str, standby: str, replica_db: str, *, user: str
) -> None:
    """A PostgreSQL primary and its cross-region read replica. Blocking."""
    created = world.client("rds", primary).create_db_instance(
        DBInstanceIdentifier=primary_db,
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        MasterUsername=user,
        MasterUserPassword="sandbox-only-1",  # an emulator's throw-away instance
        AllocatedStorage=20,
    )["DBInstance"]
    # A cross-region replica is created from the primary's ARN, as AWS requires.
    world.client("rds", standby).create_db_instance_read_replica(
        DBInstanceIdentifier=replica_db, SourceDBInstanceIdentifier=created["DBInstanceArn"]
    )


def seed_standby_group(
    world: MotoWorld, region: str, name: str, *, template: str, max_size: int = 10
) -> None:
    """An Auto Scaling group at 0 (a warm standby's), on a launch template of its own."""
    ec2 = world.client("ec2", region)
    ec2.create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
    )
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    world.client("autoscaling", region).create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        MinSize=0,
        MaxSize=max_size,
        DesiredCapacity=0,
        AvailabilityZones=zones[:2],
    )


def publish_lag(world: MotoWorld, seconds: float, *, age: float = 0.0) -> None:
    """Put one ``ReplicaLag`` datapoint for the standby replica, stamped ``age`` seconds
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


def sandbox_policy(
    zone_id: str,
    targets: dict[str, int],
    vantage_points: list[str],
    *,
    source: Path = POLICY_FILE,
) -> str:
    """The webapp example with the seeded zone id, its probes (``api`` over HTTP, ``db`` over
    TCP) on the loopback endpoints (region → port), the given vantage points and detection
    fast enough to watch; runbooks and guards unchanged."""
    text = source.read_text(encoding="utf-8")
    if EXAMPLE_ZONE_ID not in text:
        raise SandboxError(f"{source} no longer names the zone {EXAMPLE_ZONE_ID}")
    policy = yaml.safe_load(text.replace(EXAMPLE_ZONE_ID, zone_id))
    if set(targets) != set(policy["regions"]):
        raise SandboxError(f"endpoints for {sorted(targets)}, policy has {policy['regions']}")
    policy["vantage_points"] = vantage_points
    policy["detection"] = {
        "interval": "1s",
        "timeout": "500ms",
        "consecutive_failures": 3,
        # Kept (on a shorter window) so that a flapping region is still caught.
        "failure_ratio": 0.5,
        "window": "20s",
        "min_samples": 6,
        "quorum": 2 if len(vantage_points) > 1 else 1,
        "staleness": "5s",
    }
    for signal in policy["signals"]:
        if signal["type"] == "http":
            signal.pop("target", None)
            signal["targets"] = {r: f"http://127.0.0.1:{p}/healthz" for r, p in targets.items()}
        elif signal["type"] == "tcp":
            signal["targets"] = {r: f"127.0.0.1:{p}" for r, p in targets.items()}
    # Readings are read every few seconds in the sandbox; the daemon should not wait 30 s.
    sandbox_replication(policy["replication"])
    return yaml.safe_dump(policy, sort_keys=False)


# -- reading the world back ----------------------------------------------------------------
def dns_values(world: MotoWorld, zone_id: str) -> list[str]:
    listed = world.client("route53", PRIMARY).list_resource_record_sets(HostedZoneId=zone_id)
    return [
        r["Value"]
        for s in listed["ResourceRecordSets"]
        if s["Name"] == RECORD + "." and s["Type"] == "CNAME"
        for r in s["ResourceRecords"]
    ]


def failover_problems(world: MotoWorld, zone_id: str, target: str = STANDBY) -> list[str]:
    """What, in moto, is not as it should be after a failover to ``target`` (empty: all
    is). Blocking."""
    problems: list[str] = []
    values = dns_values(world, zone_id)
    if values != [endpoint_name(target)]:
        problems.append(f"Route 53 {RECORD} points at {values}, not {endpoint_name(target)}")
    problems.extend(standby_problems(world, target, REPLICA_DB, ASG, DESIRED))
    return problems


def standby_problems(
    world: MotoWorld, region: str, replica_db: str, asg: str, desired: int
) -> list[str]:
    """What is not as a failover leaves it in ``region``: the replica promoted (no source
    any more), the Auto Scaling group at ``desired``. Blocking."""
    problems: list[str] = []
    replica = world.client("rds", region).describe_db_instances(DBInstanceIdentifier=replica_db)[
        "DBInstances"
    ][0]
    if replica.get("ReadReplicaSourceDBInstanceIdentifier"):
        problems.append(f"{replica_db} is still a read replica")
    groups = world.client("autoscaling", region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[asg]
    )["AutoScalingGroups"]
    found = int(groups[0]["DesiredCapacity"]) if groups else None
    if found != desired:
        problems.append(f"{asg} desired capacity is {found}, not {desired}")
    return problems


async def feed_lag(
    world: MotoWorld,
    current: Callable[[], float],
    every: float = 5.0,
    also: Sequence[Callable[[MotoWorld], None]] = (),
) -> None:
    """Re-publish the replica's lag (``current()``) every ``every`` seconds until cancelled,
    so the daemon's reading stays fresh. A failed put is logged and retried next time: the
    feed never ends on its own. The other examples' lag is re-published at its steady value,
    and ``also`` publishes more (blocking, each given the world)."""
    # seed.py builds on this module: imported here, not at the top, to avoid a cycle.
    from orchestrator.sandbox import region_switch_world
    from orchestrator.sandbox.seed import publish_example_lag

    while True:
        try:
            await asyncio.to_thread(publish_lag, world, current())
            await asyncio.to_thread(publish_example_lag, world)
            await asyncio.to_thread(region_switch_world.publish_lag, world)
            for publish in also:
                await asyncio.to_thread(publish, world)
        except Exception as exc:  # moto restarting or slow: the next round tries again
            log.warning("sandbox_lag_publish_failed", error=repr(exc))
        await asyncio.sleep(every)
