"""Throttling, 5xx and refusals from AWS, injected by a proxy in front of moto, reach the
executor through the real autoscaling action: transient ones are retried within the step's
budget, a refusal fails the run at once with a clear journal entry."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.state import Decision, ServiceState
from orchestrator.engine.vocabulary import Action as Kind
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.loader import load_policy_file
from orchestrator.policy.models import Policy, Runbooks, Step
from orchestrator.runbook import Backoff, Executor
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus, Lease
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures import sqlite_store
from tests.fixtures.moto_server import MotoServer
from tests.integration.runbook.fault_proxy import (
    ACCESS_DENIED,
    THROTTLING,
    UNAVAILABLE,
    FaultProxy,
    fault_proxy,
)

WEBAPP = Path(__file__).parents[3] / "policies" / "webapp" / "webapp.yaml"
TARGET = "us-west-2"
ASG = "webapp-us-west-2"
SET = "SetDesiredCapacity"


@pytest.fixture
def world(moto: MotoServer) -> Iterator[MotoServer]:
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
    yield moto


@pytest.fixture
async def proxy(world: MotoServer) -> AsyncIterator[FaultProxy]:
    async with fault_proxy(world.endpoint_url) as p:
        yield p


store = sqlite_store.store  # the fixture, bound here so pytest finds it


def policy(retries: int) -> Policy:
    steps = [
        Step(
            name="scale-up",
            action="autoscaling.set_capacity",
            params={"auto_scaling_group": "webapp-{target_region}", "desired": 3},
            timeout=20.0,
            retries=retries,
        ),
        Step(name="after", action="wait", params={"duration": "1ms"}, after=["scale-up"]),
    ]
    return load_policy_file(WEBAPP).model_copy(update={"runbooks": Runbooks(failover=steps)})


async def run(store: SqliteStore, proxy: FaultProxy, moto: MotoServer, retries: int) -> str:
    lease = await store.acquire_lease("node-a", 600.0)
    assert isinstance(lease, Lease)
    # One HTTP attempt per AWS call: the faults reach the action, and the executor's own
    # backoff is what retries them.
    aws = AwsClients(moto.client_config(endpoint_url=proxy.url, max_attempts=1))
    executor = Executor(
        store,
        aws,
        SYSTEM_CLOCK,
        token=lambda: lease.token,
        rng=random.Random(3),
        backoff=Backoff(base=0.05, cap=0.2),
    )
    now = SYSTEM_CLOCK.now()
    decision = Decision(
        service="webapp",
        at=now,
        phase=Phase.FAILING_OVER,
        action=Kind.FAILOVER,
        active_region="us-east-1",
        target=TARGET,
        policy_version="faults",
        detected_at=now,
    )
    return await executor.start_run(policy(retries), decision, ServiceState("webapp", "us-east-1"))


def desired(moto: MotoServer) -> Any:
    groups = moto.boto3_client("autoscaling", TARGET).describe_auto_scaling_groups(
        AutoScalingGroupNames=[ASG]
    )["AutoScalingGroups"]
    return groups[0]["DesiredCapacity"]


def step_records(records: list[JournalRecord] | Any, status: JournalStatus) -> list[JournalRecord]:
    return [r for r in records if r.step == "scale-up" and r.status is status]


async def test_throttling_and_5xx_are_retried_within_the_budget(
    store: SqliteStore, proxy: FaultProxy, world: MotoServer
) -> None:
    proxy.inject(SET, THROTTLING, UNAVAILABLE, THROTTLING)
    run_id = await run(store, proxy, world, retries=3)

    records = list(await store.read_run(run_id))
    failed = step_records(records, JournalStatus.STEP_FAILED)
    assert [(r.attempt, r.retryable) for r in failed] == [(1, True), (2, True), (3, True)]
    assert "Throttling" in failed[0].error and "(HTTP 400)" in failed[0].error
    assert "ServiceUnavailable" in failed[1].error and "(HTTP 503)" in failed[1].error
    succeeded = step_records(records, JournalStatus.STEP_SUCCEEDED)
    assert [(r.attempt, r.detail) for r in succeeded] == [(4, "changed: desired 0 -> 3")]
    assert records[-1].status is JournalStatus.RUN_SUCCEEDED
    assert proxy.seen[SET] == 4  # three refused, one applied: the change landed once
    assert desired(world) == 3


async def test_faults_beyond_the_budget_fail_the_run(
    store: SqliteStore, proxy: FaultProxy, world: MotoServer
) -> None:
    proxy.inject(SET, *[THROTTLING] * 5)
    run_id = await run(store, proxy, world, retries=1)

    records = list(await store.read_run(run_id))
    assert [r.attempt for r in step_records(records, JournalStatus.STEP_FAILED)] == [1, 2]
    assert proxy.seen[SET] == 2
    assert records[-1].status is JournalStatus.RUN_FAILED
    assert records[-1].error.startswith("step scale-up failed: ")
    assert "Throttling" in records[-1].error
    assert desired(world) == 0


async def test_a_refusal_aborts_at_once_with_a_clear_journal_entry(
    store: SqliteStore, proxy: FaultProxy, world: MotoServer
) -> None:
    proxy.inject(SET, ACCESS_DENIED)
    run_id = await run(store, proxy, world, retries=3)

    records = list(await store.read_run(run_id))
    [failed] = step_records(records, JournalStatus.STEP_FAILED)
    assert not failed.retryable
    assert "AccessDenied" in failed.error and "(HTTP 403)" in failed.error
    assert proxy.seen[SET] == 1  # not retried
    skipped = [r for r in records if r.status is JournalStatus.STEP_SKIPPED]
    assert [r.step for r in skipped] == ["after"]
    assert records[-1].status is JournalStatus.RUN_FAILED
    assert records[-1].error == f"step scale-up failed: {failed.error}"
    state = await store.load_state("webapp")
    assert state is not None and state.failed and state.active_region == "us-east-1"
    assert desired(world) == 0
