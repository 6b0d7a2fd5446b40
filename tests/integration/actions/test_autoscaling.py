"""autoscaling.set_capacity against a real moto server on loopback."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from typing import Any

import pytest
from moto.autoscaling.models import autoscaling_backends
from prometheus_client import REGISTRY
from pydantic import BaseModel

from orchestrator.actions.autoscaling import SetCapacity
from orchestrator.actions.base import ActionFailed, RetryableError, StepContext
from orchestrator.actions.registry import get_action
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.policy.actions import AutoscalingSetCapacity
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.clock import eventually
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import (
    rendered,
    run_in_source,
    verify_through_a_throttle,
)

SOURCE, TARGET = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"  # moto's default account
ASG = "web-standby"
ACTION = SetCapacity()


@functools.cache
def clients_for(moto: MotoServer) -> AwsClients:
    """One client factory per server, shared by the module's tests: its session loads each
    service model once instead of in every test."""
    return AwsClients(moto.client_config())


@functools.cache
def boto3_for(moto: MotoServer, service: str, region: str) -> Any:
    """Seeding and inspection clients, made once (making a boto3 client takes a while)."""
    return moto.boto3_client(service, region)


def make_ctx(moto: MotoServer, params: BaseModel, *, within: float = 20.0) -> StepContext:
    return StepContext(
        service="web",
        run_id="run-1",
        step="scale",
        attempt=1,
        kind="failover",
        source_region=SOURCE,
        target_region=TARGET,
        primary_region=SOURCE,
        params=params,
        aws=clients_for(moto),
        clock=SYSTEM_CLOCK,
        deadline=SYSTEM_CLOCK.monotonic() + within,
    )


def _create_group(moto: MotoServer, region: str, desired: int) -> None:
    ec2 = boto3_for(moto, "ec2", region)
    ec2.create_launch_template(
        LaunchTemplateName="web-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
    )
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    boto3_for(moto, "autoscaling", region).create_auto_scaling_group(
        AutoScalingGroupName=ASG,
        LaunchTemplate={"LaunchTemplateName": "web-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=2,
        DesiredCapacity=desired,
        AvailabilityZones=zones[:2],
    )


@pytest.fixture
def world(moto: MotoServer) -> Iterator[MotoServer]:
    """The standby ASG in the target region, scaled to zero (min 0, max 2)."""
    _create_group(moto, TARGET, 0)
    yield moto


def group(moto: MotoServer, region: str = TARGET) -> dict[str, object]:
    client = boto3_for(moto, "autoscaling", region)
    groups = client.describe_auto_scaling_groups(AutoScalingGroupNames=[ASG])["AutoScalingGroups"]
    result: dict[str, object] = groups[0]
    return result


def calls(operation: str) -> float:
    labels = {"aws_service": "autoscaling", "operation": operation, "outcome": "ok"}
    return REGISTRY.get_sample_value("failoverd_aws_api_calls_total", labels) or 0.0


def in_service(moto: MotoServer) -> int:
    instances = group(moto)["Instances"]
    assert isinstance(instances, list)
    return sum(1 for i in instances if i["LifecycleState"] == "InService")


def test_registered_under_its_policy_name() -> None:
    action = get_action("autoscaling.set_capacity")
    assert isinstance(action, SetCapacity)
    assert action.params_model is AutoscalingSetCapacity


async def test_check_ready_names_the_target_control_plane(world: MotoServer) -> None:
    report = await ACTION.check(
        make_ctx(world, AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2))
    )
    assert report.ready, report.findings
    assert report.control_plane_region == TARGET


async def test_check_reports_max_below_desired_unless_the_step_raises_it(world: MotoServer) -> None:
    too_many = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=5)
    report = await ACTION.check(make_ctx(world, too_many))
    assert not report.ready
    assert report.findings == ("ASG max below desired: max 2 < desired 5",)

    raised = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=5, max=6)
    assert (await ACTION.check(make_ctx(world, raised))).ready


async def test_check_reports_a_missing_group(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group="no-such-asg", desired=1)
    report = await ACTION.check(make_ctx(world, params))
    assert not report.ready
    assert report.findings == (f"ASG no-such-asg not found in {TARGET}",)


SCALE_DOWN_OLD = {"region": "{source_region}", "auto_scaling_group": ASG, "desired": 0}


async def test_a_source_region_step_scales_the_source_and_leaves_the_target_alone(
    world: MotoServer,
) -> None:
    _create_group(world, SOURCE, 2)  # the old region still runs 2
    boto3_for(world, "autoscaling", TARGET).set_desired_capacity(
        AutoScalingGroupName=ASG, DesiredCapacity=1
    )
    ctx = make_ctx(world, rendered("autoscaling.set_capacity", SCALE_DOWN_OLD))

    outcome = await run_in_source(ACTION, ctx)

    assert outcome.detail == "desired 2 -> 0"
    assert group(world, SOURCE)["DesiredCapacity"] == 0
    assert group(world, TARGET)["DesiredCapacity"] == 1  # never touched
    assert not (await ACTION.execute(ctx)).changed


async def test_a_source_region_steps_check_looks_in_the_source(world: MotoServer) -> None:
    # The group exists in the target only: a step meant for the source is not ready.
    report = await ACTION.check(
        make_ctx(world, rendered("autoscaling.set_capacity", SCALE_DOWN_OLD))
    )
    assert not report.ready
    assert report.findings == (f"ASG {ASG} not found in {SOURCE}",)


async def test_scale_out_with_new_bounds_changes_the_world_once(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=3, min=1, max=4)
    ctx = make_ctx(world, params)
    assert (await ACTION.check(ctx)).ready

    outcome = await ACTION.execute(ctx)
    await ACTION.verify(ctx)

    assert outcome.changed
    assert outcome.detail == "desired 0 -> 3, min -> 1, max -> 4"
    g = group(world)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (1, 4, 3)
    assert in_service(world) == 3

    updates = calls("UpdateAutoScalingGroup")
    again = await ACTION.execute(ctx)
    await ACTION.verify(ctx)
    assert not again.changed
    assert calls("UpdateAutoScalingGroup") == updates  # nothing was sent the second time
    assert group(world)["DesiredCapacity"] == 3


async def test_desired_alone_uses_set_desired_capacity(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2)
    ctx = make_ctx(world, params)
    updates, sets = calls("UpdateAutoScalingGroup"), calls("SetDesiredCapacity")

    assert (await ACTION.execute(ctx)).changed
    await ACTION.verify(ctx)
    assert not (await ACTION.execute(ctx)).changed

    assert calls("SetDesiredCapacity") == sets + 1
    assert calls("UpdateAutoScalingGroup") == updates
    g = group(world)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (0, 2, 2)
    assert in_service(world) == 2


async def test_execute_refuses_a_desired_above_max(world: MotoServer) -> None:
    # moto itself would accept SetDesiredCapacity above MaxSize (real AWS answers a
    # ValidationError): the action must not rely on the API to refuse it.
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=5)
    with pytest.raises(ActionFailed, match="ASG max below desired"):
        await ACTION.execute(make_ctx(world, params))
    assert group(world)["DesiredCapacity"] == 0


async def test_execute_on_a_missing_group_fails_for_good(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group="no-such-asg", desired=1)
    with pytest.raises(ActionFailed, match="not found"):
        await ACTION.execute(make_ctx(world, params))


def hold_pending(region: str = TARGET) -> list[Any]:
    """Real instances take minutes to pass their health checks; moto's are InService at
    once. Put the group's instances back to Pending so verify has something to wait for."""
    states = autoscaling_backends[ACCOUNT][region].autoscaling_groups[ASG].instance_states
    for state in states:
        state.lifecycle_state = "Pending"
    return list(states)


async def test_verify_waits_until_instances_are_in_service(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2)
    ctx = make_ctx(world, params)
    await ACTION.execute(ctx)
    states = hold_pending()
    looks = calls("DescribeAutoScalingGroups")

    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        verify = tg.create_task(ACTION.verify(ctx))
        await eventually(lambda: calls("DescribeAutoScalingGroups") > looks, "verify's first look")
        assert not verify.done()  # it has looked, seen Pending, and keeps waiting
        for state in states:
            state.lifecycle_state = "InService"


async def test_verify_gives_up_at_the_deadline_with_what_it_saw(world: MotoServer) -> None:
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2)
    await ACTION.execute(make_ctx(world, params))
    hold_pending()
    with pytest.raises(RetryableError, match=r"0 of 2 InService"):
        await ACTION.verify(make_ctx(world, params, within=0.3))


def test_iam_statements_scope_writes_to_the_group_in_each_region() -> None:
    params = AutoscalingSetCapacity(auto_scaling_group="web-{target_region}", desired=1)
    describe, write = ACTION.iam_statements(params, [SOURCE, TARGET], account=ACCOUNT)
    assert describe.actions == (
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeInstanceRefreshes",
    )
    assert describe.resources == ("*",)
    assert set(write.actions) == {
        "autoscaling:SetDesiredCapacity",
        "autoscaling:UpdateAutoScalingGroup",
    }
    assert write.resources == tuple(
        f"arn:aws:autoscaling:{r}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/web-{r}"
        for r in (SOURCE, TARGET)
    )


def test_iam_statements_of_a_source_region_step_name_the_source() -> None:
    params = rendered(
        "autoscaling.set_capacity", {**SCALE_DOWN_OLD, "auto_scaling_group": "web-{source_region}"}
    )
    _, write = ACTION.iam_statements(params, [TARGET], account=ACCOUNT)
    assert write.resources == (
        f"arn:aws:autoscaling:{SOURCE}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/web-{SOURCE}",
    )


# --- what else keeps a group from the capacity asked for --------------------------------------


async def test_a_suspended_launch_process_makes_a_scale_up_not_ready(world: MotoServer) -> None:
    boto3_for(world, "autoscaling", TARGET).suspend_processes(
        AutoScalingGroupName=ASG, ScalingProcesses=["Launch"]
    )
    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2)
    report = await ACTION.check(make_ctx(world, params))
    assert not report.ready
    assert report.findings == (
        f"the Launch process of ASG {ASG} is suspended: no instance would start (resume it first)",
    )
    with pytest.raises(ActionFailed, match="Launch process"):
        await ACTION.execute(make_ctx(world, params))
    assert group(world)["DesiredCapacity"] == 0


async def test_a_refresh_under_way_and_a_warm_pool_are_said_not_blocking(world: MotoServer) -> None:
    client = boto3_for(world, "autoscaling", TARGET)
    client.put_warm_pool(AutoScalingGroupName=ASG, MinSize=1)
    refresh = client.start_instance_refresh(AutoScalingGroupName=ASG)["InstanceRefreshId"]
    report = await ACTION.check(
        make_ctx(world, AutoscalingSetCapacity(auto_scaling_group=ASG, desired=2))
    )
    assert report.ready
    assert report.findings == (
        f"instance refresh {refresh} is InProgress: instances are being replaced, InService"
        " may dip while the step waits",
        "warm pool (Stopped, min 1): a scale-out takes its prepared instances first",
    )


async def test_a_throttled_look_while_verifying_is_not_a_failure() -> None:
    # One throttle in the middle of verify's polling is "not yet", as for Route 53 and RDS.
    ok = {
        "AutoScalingGroups": [
            {
                "AutoScalingGroupName": ASG,
                "MinSize": 0,
                "MaxSize": 2,
                "DesiredCapacity": 1,
                "DefaultCooldown": 300,
                "AvailabilityZones": ["us-west-2a"],
                "HealthCheckType": "EC2",
                "CreatedTime": "2024-01-01T00:00:00Z",
                "Instances": [
                    {
                        "InstanceId": "i-1",
                        "AvailabilityZone": "us-west-2a",
                        "LifecycleState": "InService",
                        "HealthStatus": "Healthy",
                        "ProtectedFromScaleIn": False,
                    }
                ],
            }
        ]
    }

    params = AutoscalingSetCapacity(auto_scaling_group=ASG, desired=1)
    await verify_through_a_throttle(
        ACTION, params, "describe_auto_scaling_groups", ok, "Throttling"
    )
