"""rds.promote_read_replica against a real moto server: a primary in us-east-1 and its
cross-region read replica in us-west-2 (created from the primary's ARN)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.actions.base import ActionError, ActionFailed
from orchestrator.actions.rds import PROMOTED_BY_TAG, PromoteReadReplica, same_source
from orchestrator.actions.registry import get_action
from orchestrator.policy.actions import RdsPromoteReadReplica
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.moto_fixups import apply_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import (
    ACCOUNT,
    SOURCE,
    TARGET,
    calls,
    make_ctx,
    on_virtual_time,
)

PRIMARY_ARN = f"arn:aws:rds:{SOURCE}:{ACCOUNT}:db:primary"
REPLICA_ARN = f"arn:aws:rds:{TARGET}:{ACCOUNT}:db:replica"


@pytest.fixture(autouse=True)
def _moto_fixups() -> None:
    apply_moto_fixups()


class World:
    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.source = moto.boto3_client("rds", SOURCE)
        self.target = moto.boto3_client("rds", TARGET)

    def aws(self) -> AwsClients:
        return AwsClients(self.moto.client_config())

    def create_primary(self, name: str) -> str:
        db = self.source.create_db_instance(
            DBInstanceIdentifier=name,
            Engine="postgres",
            DBInstanceClass="db.t3.micro",
            MasterUsername="admin",
            MasterUserPassword="not-a-secret-1",
            AllocatedStorage=20,
        )["DBInstance"]
        return str(db["DBInstanceArn"])

    def create_replica(self, name: str, source_arn: str) -> None:
        self.target.create_db_instance_read_replica(
            DBInstanceIdentifier=name, SourceDBInstanceIdentifier=source_arn
        )

    def instance(self, name: str, region: str = TARGET) -> dict[str, Any]:
        client = self.target if region == TARGET else self.source
        result: dict[str, Any] = client.describe_db_instances(DBInstanceIdentifier=name)[
            "DBInstances"
        ][0]
        return result


@pytest.fixture
def world(moto: MotoServer) -> World:
    w = World(moto)
    w.create_replica("replica", w.create_primary("primary"))
    return w


@pytest.mark.parametrize("expected", ["primary", PRIMARY_ARN, None])
async def test_promote_makes_a_standalone_writer_once(world: World, expected: str | None) -> None:
    action = get_action("rds.promote_read_replica")
    assert isinstance(action, PromoteReadReplica)
    ctx = make_ctx(
        world.aws(), RdsPromoteReadReplica(db_instance="replica", expected_source=expected)
    )
    report = await action.check(ctx)
    assert report.ready, report.findings
    assert report.control_plane_region == TARGET

    before = calls("rds", "PromoteReadReplica")
    outcome = await action.execute(ctx)
    assert outcome.changed
    assert "primary" in outcome.detail
    await action.verify(ctx)

    replica = world.instance("replica")
    assert "ReadReplicaSourceDBInstanceIdentifier" not in replica
    assert replica["DBInstanceStatus"] == "available"
    assert world.instance("primary", SOURCE)["ReadReplicaDBInstanceIdentifiers"] == []

    again = await action.execute(ctx)
    await action.verify(ctx)
    assert not again.changed
    assert calls("rds", "PromoteReadReplica") - before == 1


async def test_a_resumed_run_passes_check_but_readiness_flags_a_standalone_target(
    world: World,
) -> None:
    action = PromoteReadReplica()
    params = RdsPromoteReadReplica(db_instance=REPLICA_ARN, expected_source=PRIMARY_ARN)
    ctx = make_ctx(world.aws(), params, run_id="run-7")
    assert (await action.execute(ctx)).changed
    tags = {t["Key"]: t["Value"] for t in world.instance("replica")["TagList"]}
    assert tags[PROMOTED_BY_TAG] == "run-7"

    # The same run, re-entered after a crash: ready, and execute is a no-op.
    resumed = await action.check(ctx)
    assert resumed.ready
    assert "already promoted by this run" in resumed.findings[0]
    # Any other run (or the readiness report): the "replica" is no replica at all.
    other = await action.check(make_ctx(world.aws(), params, run_id="readiness"))
    assert not other.ready
    assert "not a read replica" in other.findings[0]


async def test_a_replica_of_another_source_is_refused(world: World) -> None:
    world.create_replica("stranger", world.create_primary("other"))
    action = PromoteReadReplica()
    ctx = make_ctx(
        world.aws(), RdsPromoteReadReplica(db_instance="stranger", expected_source="primary")
    )
    report = await action.check(ctx)
    assert not report.ready
    assert "replica of arn:aws:rds:us-east-1:123456789012:db:other" in report.findings[0]

    before = calls("rds", "PromoteReadReplica")
    with pytest.raises(ActionFailed, match=r"refusing to promote a replica of .*db:other"):
        await action.execute(ctx)
    assert calls("rds", "PromoteReadReplica") == before
    assert world.instance("stranger")["ReadReplicaSourceDBInstanceIdentifier"].endswith(":other")


async def test_a_missing_instance_is_a_finding_and_a_failure(world: World) -> None:
    action = PromoteReadReplica()
    ctx = make_ctx(world.aws(), RdsPromoteReadReplica(db_instance="nope"))
    report = await action.check(ctx)
    assert not report.ready
    assert "DBInstanceNotFound" in report.findings[0]
    with pytest.raises(ActionFailed, match="DBInstanceNotFound"):
        await action.execute(ctx)


async def test_verify_of_an_unpromoted_replica_ends_at_the_deadline(world: World) -> None:
    clock = VirtualClock()
    ctx = make_ctx(
        world.aws(), RdsPromoteReadReplica(db_instance="replica"), clock=clock, within=120.0
    )
    with pytest.raises(ActionError) as raised:  # at the deadline
        await on_virtual_time(clock, PromoteReadReplica().verify(ctx), step=5.0)
    assert "replica in us-west-2 standalone and available" in str(raised.value)
    assert "replica of arn:aws:rds:us-east-1" in str(raised.value)
    assert 120.0 <= clock.monotonic() < 140.0


def test_sources_compare_by_identifier_or_full_arn() -> None:
    assert same_source(PRIMARY_ARN, "primary")
    assert same_source(PRIMARY_ARN, "Primary")  # RDS identifiers ignore case
    assert not same_source(PRIMARY_ARN, "other")
    assert not same_source(PRIMARY_ARN, f"arn:aws:rds:eu-west-1:{ACCOUNT}:db:primary")


def test_iam_statements_name_the_instance_in_each_region() -> None:
    [statement] = PromoteReadReplica().iam_statements(
        RdsPromoteReadReplica(db_instance="replica"), [TARGET, SOURCE], ACCOUNT
    )
    assert "rds:PromoteReadReplica" in statement.actions
    assert statement.resources == (
        f"arn:aws:rds:{SOURCE}:{ACCOUNT}:db:replica",
        f"arn:aws:rds:{TARGET}:{ACCOUNT}:db:replica",
    )
    [by_arn] = PromoteReadReplica().iam_statements(
        RdsPromoteReadReplica(db_instance=REPLICA_ARN), [SOURCE]
    )
    assert by_arn.resources == (REPLICA_ARN,)


def _status(name: str, status: str) -> None:
    """A replica's status in moto's backend (a backup window, a modification...)."""
    from moto.rds.models import rds_backends

    rds_backends[ACCOUNT][TARGET].databases[name].status = status


async def test_a_replica_busy_backing_up_is_waited_for_then_promoted(world: World) -> None:
    _status("replica", "backing-up")
    action = PromoteReadReplica()
    params = RdsPromoteReadReplica(db_instance="replica", expected_source="primary")
    report = await action.check(make_ctx(world.aws(), params))
    # Ready: the backup ends by itself; the executor must not fail the run over it.
    assert report.ready, report.findings
    assert report.findings == (
        "replica is backing-up for now: the promotion waits for it to be available",
    )
    clock = VirtualClock()
    ctx = make_ctx(world.aws(), params, clock=clock, within=600.0)
    looks = calls("rds", "DescribeDBInstances")
    execute = asyncio.ensure_future(on_virtual_time(clock, action.execute(ctx), step=2.0))
    await eventually(lambda: calls("rds", "DescribeDBInstances") - looks >= 3, "a few looks")
    assert not execute.done()  # still backing up: nothing promoted yet
    assert world.instance("replica").get("ReadReplicaSourceDBInstanceIdentifier")
    _status("replica", "available")
    outcome = await execute
    assert outcome.changed
    await on_virtual_time(clock, action.verify(ctx))
    assert not world.instance("replica").get("ReadReplicaSourceDBInstanceIdentifier")


async def test_a_replica_in_a_status_that_will_not_pass_is_not_ready(world: World) -> None:
    _status("replica", "storage-full")
    action = PromoteReadReplica()
    ctx = make_ctx(world.aws(), RdsPromoteReadReplica(db_instance="replica"))
    report = await action.check(ctx)
    assert not report.ready and report.findings == ("replica is storage-full, not available",)
    with pytest.raises(ActionFailed, match="replica is storage-full: it cannot be promoted"):
        await action.execute(ctx)
