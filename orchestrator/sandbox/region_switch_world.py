"""The orders example in the sandbox: its ARC Region switch plan in the emulator, its AWS
world in moto, and its sandbox policy copy.

* Region switch (:mod:`orchestrator.sandbox.region_switch_api`): the plan ``orders``
  (us-east-2, us-west-2; the ARN ``policies/orders/orders.yaml`` names) with one activate
  workflow: ``scale-standby`` (EC2 Auto Scaling, 2 s), ``approve-promotion`` (a manual
  approval: ``failoverd approve orders``), ``promote-aurora`` (Aurora global database, 3 s),
  ``flip-routing`` (ARC routing controls, 2 s);
* moto: SNS topics ``orders-oncall`` in both regions, and the Aurora global database's RPO
  lag of ``orders-usw2`` in us-west-2 (re-published by the sandbox's lag feed).

The ``region-down`` fault takes the region's Region switch endpoint down with its service
endpoint (the emulator drops calls addressed to it); failoverd, which calls Region switch in
the region it recovers into, never needs it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.sandbox.region_switch_api import (
    RegionSwitchEmulator,
    block_config,
    plan_document,
)
from orchestrator.sandbox.world import BACKFILL, MotoWorld, SandboxError
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.region_switch_world")

SERVICE = "orders"
PRIMARY, STANDBY = "us-east-2", "us-west-2"
REGIONS = (PRIMARY, STANDBY)
APPROVAL_STEP = "approve-promotion"
# Plan step -> (execution block type, seconds it takes in the sandbox; None: an approval).
PLAN_STEPS: dict[str, tuple[str, float | None]] = {
    "scale-standby": ("EC2AutoScaling", 2.0),
    APPROVAL_STEP: ("ManualApproval", None),
    "promote-aurora": ("AuroraGlobalDatabase", 3.0),
    "flip-routing": ("ARCRoutingControl", 2.0),
}
LAG_CLUSTER = "orders-usw2"
LAG_MS = 2000.0  # well within the example's 30 s RPO
POLL_INTERVAL = "1s"  # the sandbox's step reads the execution every second


def plan(account: str = "123456789012") -> dict[str, object]:
    steps = [
        {
            "name": name,
            "executionBlockType": block,
            "executionBlockConfiguration": block_config(block),
            "description": f"{name} ({block})",
        }
        for name, (block, _) in PLAN_STEPS.items()
    ]
    return plan_document(
        SERVICE,
        REGIONS,
        steps=steps,
        account=account,
        rto_minutes=15,
        description="orders: scale the standby, approve, promote Aurora, flip routing controls",
    )


def seed_plan(emulator: RegionSwitchEmulator) -> str:
    """Seed the orders plan with the sandbox's step durations; its ARN."""
    behaviours = {
        name: {"duration": seconds}
        for name, (_, seconds) in PLAN_STEPS.items()
        if seconds is not None
    }
    arn = emulator.add_plan(plan(emulator.account_id), behaviours)
    log.info("sandbox_region_switch_seeded", plan=arn)
    return arn


def seed_moto(world: MotoWorld) -> None:
    """The orders example's AWS resources in moto. Blocking (boto3)."""
    for region in REGIONS:
        world.client("sns", region).create_topic(Name=f"{SERVICE}-oncall")
    # Backdated first: CloudWatch datapoints reach readers late in the sandbox (as in AWS).
    publish_lag(world, age=BACKFILL)
    publish_lag(world)
    log.info("sandbox_world_seeded", service=SERVICE)


def publish_lag(world: MotoWorld, *, age: float = 0.0) -> None:
    """One AuroraGlobalDBRPOLag datapoint for the secondary cluster, stamped ``age``
    seconds ago. Blocking."""
    world.client("cloudwatch", STANDBY).put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            {
                "MetricName": "AuroraGlobalDBRPOLag",
                "Dimensions": [{"Name": "DBClusterIdentifier", "Value": LAG_CLUSTER}],
                "Timestamp": datetime.fromtimestamp(datetime.now(UTC).timestamp() - age, UTC),
                "Value": LAG_MS,
                "Unit": "Milliseconds",
            }
        ],
    )


def write_policy(folder: Path, targets: dict[str, int], vantage_points: list[str]) -> Path:
    """The sandbox copy of policies/orders/orders.yaml in ``folder``: probes on the local
    region endpoints, fast detection and lag reads, the step reading the execution every
    second. Validated with the real loader first."""
    from orchestrator.sandbox.seed import example_policy

    policy = yaml.safe_load(example_policy(SERVICE, {}, targets, vantage_points))
    for steps in policy["runbooks"].values():
        for step in steps:
            if step["action"] == "arc.region_switch":
                step["params"]["poll_interval"] = POLL_INTERVAL
    text = yaml.safe_dump(policy, sort_keys=False)
    path = folder / f"{SERVICE}.yaml"
    try:
        load_policy_text(text, str(path))
    except SourceErrors as exc:
        raise SandboxError(f"sandbox copy of {SERVICE} is invalid: {exc}") from exc
    path.write_text(text, encoding="utf-8")
    return path
