"""ecs.set_desired_count against a real moto server on loopback."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.ecs.models import ecs_backends
from prometheus_client import REGISTRY
from pydantic import BaseModel

from orchestrator.actions.base import ActionFailed, RetryableError, StepContext
from orchestrator.actions.ecs import SetDesiredCount
from orchestrator.actions.registry import get_action
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.policy.actions import EcsSetDesiredCount
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.clock import eventually
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import (
    rendered,
    run_in_source,
    verify_through_a_throttle,
)

ROOT = Path(__file__).resolve().parents[3]
SOURCE, TARGET = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"  # moto's default account
CLUSTER, SERVICE = "web-cluster", "web"
ACTION = SetDesiredCount()


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
        step="scale-ecs",
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


def _create_service(moto: MotoServer, region: str, desired: int) -> None:
    ecs = boto3_for(moto, "ecs", region)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family="web", containerDefinitions=[{"name": "web", "image": "nginx", "memory": 128}]
    )
    ecs.create_service(
        cluster=CLUSTER, serviceName=SERVICE, taskDefinition="web", desiredCount=desired
    )


@pytest.fixture
def world(moto: MotoServer) -> Iterator[MotoServer]:
    """The standby ECS service in the target region, at zero tasks."""
    _create_service(moto, TARGET, 0)
    yield moto


@pytest.fixture
def both_regions(world: MotoServer) -> Iterator[MotoServer]:
    """The service in both regions, each running 2 tasks (the old region not yet fenced)."""
    _create_service(world, SOURCE, 2)
    boto3_for(world, "ecs", TARGET).update_service(cluster=CLUSTER, service=SERVICE, desiredCount=2)
    yield world


def service(moto: MotoServer, region: str = TARGET) -> dict[str, Any]:
    found = boto3_for(moto, "ecs", region).describe_services(cluster=CLUSTER, services=[SERVICE])[
        "services"
    ]
    result: dict[str, Any] = found[0]
    return result


def calls(operation: str) -> float:
    labels = {"aws_service": "ecs", "operation": operation, "outcome": "ok"}
    return REGISTRY.get_sample_value("failoverd_aws_api_calls_total", labels) or 0.0


def test_registered_under_its_policy_name() -> None:
    action = get_action("ecs.set_desired_count")
    assert isinstance(action, SetDesiredCount)
    assert action.params_model is EcsSetDesiredCount


async def test_check_ready_names_the_target_control_plane(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    report = await ACTION.check(make_ctx(world, params))
    assert report.ready, report.findings
    assert report.control_plane_region == TARGET


@pytest.mark.parametrize(
    ("cluster", "name", "finding"),
    [
        ("nope", SERVICE, f"ECS cluster nope not found in {TARGET}"),
        (CLUSTER, "nope", f"ECS service nope not found in cluster {CLUSTER} in {TARGET}"),
    ],
)
async def test_check_reports_what_is_missing(
    world: MotoServer, cluster: str, name: str, finding: str
) -> None:
    params = EcsSetDesiredCount(cluster=cluster, service=name, desired=3)
    report = await ACTION.check(make_ctx(world, params))
    assert not report.ready
    assert report.findings == (finding,)


FENCE = {"region": "{source_region}", "cluster": CLUSTER, "service": SERVICE, "desired": 0}


async def test_a_source_region_step_scales_the_source_and_leaves_the_target_alone(
    both_regions: MotoServer,
) -> None:
    ctx = make_ctx(both_regions, rendered("ecs.set_desired_count", FENCE))

    outcome = await run_in_source(ACTION, ctx)

    assert outcome.detail == "desired 2 -> 0"
    source = service(both_regions, SOURCE)
    assert (source["desiredCount"], source["runningCount"]) == (0, 0)
    target = service(both_regions, TARGET)
    assert (target["desiredCount"], target["runningCount"]) == (2, 2)
    assert not (await ACTION.execute(ctx)).changed


async def test_a_source_region_steps_check_looks_in_the_source(world: MotoServer) -> None:
    # The service exists in the target only: a step meant for the source is not ready.
    params = rendered("ecs.set_desired_count", FENCE)
    report = await ACTION.check(make_ctx(world, params))
    assert not report.ready
    assert report.findings == (f"ECS cluster {CLUSTER} not found in {SOURCE}",)
    assert report.control_plane_region == SOURCE


async def test_scale_out_changes_the_world_once(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    ctx = make_ctx(world, params)

    outcome = await ACTION.execute(ctx)
    await ACTION.verify(ctx)

    assert outcome.changed
    assert outcome.detail == "desired 0 -> 3"
    s = service(world)
    assert (s["desiredCount"], s["runningCount"]) == (3, 3)

    updates = calls("UpdateService")
    again = await ACTION.execute(ctx)
    await ACTION.verify(ctx)
    assert not again.changed
    assert calls("UpdateService") == updates


async def test_execute_on_a_missing_service_fails_for_good(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service="nope", desired=1)
    with pytest.raises(ActionFailed, match="not found"):
        await ACTION.execute(make_ctx(world, params))


def _backend_service() -> Any:
    return ecs_backends[ACCOUNT][TARGET].services[f"{CLUSTER}:{SERVICE}"]


async def test_verify_waits_for_the_tasks_to_run(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    ctx = make_ctx(world, params)
    await ACTION.execute(ctx)
    # moto starts tasks the moment the count changes; real ECS takes a while. Hold them
    # back in moto's backend so verify has something to wait for.
    backend = _backend_service()
    backend.running_count = 1
    looks = calls("DescribeServices")

    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        verify = tg.create_task(ACTION.verify(ctx))
        await eventually(lambda: calls("DescribeServices") > looks, "verify's first look")
        assert not verify.done()
        backend.running_count = 3


async def test_verify_gives_up_at_the_deadline_with_what_it_saw(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    await ACTION.execute(make_ctx(world, params))
    _backend_service().running_count = 1
    with pytest.raises(RetryableError, match="1 running, desired 3"):
        await ACTION.verify(make_ctx(world, params, within=0.3))


async def test_verify_fails_at_once_on_a_failed_rollout(world: MotoServer) -> None:
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    await ACTION.execute(make_ctx(world, params))
    backend = _backend_service()
    backend.running_count = 0
    backend.deployments[0]["rolloutState"] = "FAILED"
    backend.deployments[0]["rolloutStateReason"] = "circuit breaker: tasks failed to start"
    with pytest.raises(ActionFailed, match="circuit breaker"):
        await ACTION.verify(make_ctx(world, params))


def test_iam_statements_name_the_service_in_each_region() -> None:
    params = EcsSetDesiredCount(cluster="c-{target_region}", service="{service}", desired=1)
    statement, targets = ACTION.iam_statements(params, [SOURCE, TARGET], account=ACCOUNT)
    assert statement.actions == ("ecs:DescribeServices", "ecs:UpdateService")
    assert statement.resources == tuple(
        f"arn:aws:ecs:{r}:{ACCOUNT}:service/c-{r}/*" for r in (SOURCE, TARGET)
    )
    assert targets.actions == ("application-autoscaling:DescribeScalableTargets",)
    adjust = EcsSetDesiredCount(cluster="c", service="s", desired=0, scalable_target="adjust")
    *_, register = ACTION.iam_statements(adjust, [TARGET], account=ACCOUNT)
    assert register.actions == ("application-autoscaling:RegisterScalableTarget",)
    assert register.resources == (
        f"arn:aws:application-autoscaling:{TARGET}:{ACCOUNT}:scalable-target/*",
    )


def test_iam_statements_of_a_source_region_step_name_the_source() -> None:
    params = rendered("ecs.set_desired_count", {**FENCE, "cluster": "c-{source_region}"})
    # As iam-policy asks: the move's target; the step names its own region.
    statement, _ = ACTION.iam_statements(params, [TARGET], account=ACCOUNT)
    assert statement.resources == (f"arn:aws:ecs:{SOURCE}:{ACCOUNT}:service/c-{SOURCE}/{SERVICE}",)


# --- Service Auto Scaling: a scalable target's bounds undo what a step asks ------------------


def _scalable_target(moto: MotoServer, region: str, low: int, high: int) -> None:
    boto3_for(moto, "application-autoscaling", region).register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId=f"service/{CLUSTER}/{SERVICE}",
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=low,
        MaxCapacity=high,
    )


async def test_a_fence_a_scalable_target_would_undo_is_not_ready_and_refused(
    both_regions: MotoServer,
) -> None:
    _scalable_target(both_regions, SOURCE, 2, 10)
    ctx = make_ctx(both_regions, rendered("ecs.set_desired_count", FENCE))
    report = await ACTION.check(ctx)
    assert not report.ready
    assert report.findings == (
        f"scalable target service/{CLUSTER}/{SERVICE} has MinCapacity 2: Application Auto"
        " Scaling would undo a fence to 0 (scalable_target: adjust lowers it first)",
    )
    before = calls("UpdateService")
    with pytest.raises(ActionFailed, match="MinCapacity 2"):
        await ACTION.execute(ctx)
    assert calls("UpdateService") == before
    assert service(both_regions, SOURCE)["desiredCount"] == 2


async def test_adjust_moves_the_bounds_so_that_the_fence_holds(both_regions: MotoServer) -> None:
    _scalable_target(both_regions, SOURCE, 2, 10)
    ctx = make_ctx(
        both_regions, rendered("ecs.set_desired_count", {**FENCE, "scalable_target": "adjust"})
    )
    report = await ACTION.check(ctx)
    assert report.ready
    assert report.findings == (
        f"will set scalable target service/{CLUSTER}/{SERVICE} to [0, 0] (was [2, 10])",
    )
    outcome = await run_in_source(ACTION, ctx)
    assert outcome.detail == "scalable target [2, 10] -> [0, 0]"
    source = service(both_regions, SOURCE)
    assert (source["desiredCount"], source["runningCount"]) == (0, 0)
    [target] = boto3_for(both_regions, "application-autoscaling", SOURCE).describe_scalable_targets(
        ServiceNamespace="ecs"
    )["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 0)


async def test_adjust_raises_a_max_capacity_below_a_scale_up(world: MotoServer) -> None:
    _scalable_target(world, TARGET, 0, 2)
    params = EcsSetDesiredCount(
        cluster=CLUSTER, service=SERVICE, desired=6, scalable_target="adjust"
    )
    ctx = make_ctx(world, params)
    outcome = await ACTION.execute(ctx)
    await ACTION.verify(ctx)
    assert outcome.detail == "desired 0 -> 6; scalable target [0, 2] -> [0, 6]"
    assert service(world)["desiredCount"] == 6


async def test_verify_of_a_fence_wants_exactly_zero(both_regions: MotoServer) -> None:
    # The fence was "done", and Service Auto Scaling brought the writers back (MinCapacity
    # 2): desired 2 is not "at least 0", it is a fence that did not hold.
    _scalable_target(both_regions, SOURCE, 2, 10)
    ctx = make_ctx(both_regions, rendered("ecs.set_desired_count", FENCE), within=0.5)
    boto3_for(both_regions, "ecs", SOURCE).update_service(
        cluster=CLUSTER, service=SERVICE, desiredCount=0
    )  # clamped back to 2 by the scalable target, as in AWS
    assert service(both_regions, SOURCE)["desiredCount"] == 2
    with pytest.raises(RetryableError, match="2 running, desired 2"):
        await ACTION.verify(ctx)


async def test_a_throttled_look_while_verifying_is_not_a_failure() -> None:
    # One throttle in the middle of verify's polling is "not yet", as for Route 53 and RDS.
    ok = {"services": [{"status": "ACTIVE", "desiredCount": 3, "runningCount": 3}]}
    params = EcsSetDesiredCount(cluster=CLUSTER, service=SERVICE, desired=3)
    await verify_through_a_throttle(ACTION, params, "describe_services", ok, "ThrottlingException")
