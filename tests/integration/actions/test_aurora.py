"""aurora.global_failover. moto serves global clusters, DescribeGlobalClusters and
RemoveFromGlobalCluster (with the fix-ups in tests/fixtures/moto_fixups.py): those run for
real. It does not implement FailoverGlobalCluster or SwitchoverGlobalCluster, so those
paths run against botocore's Stubber, which checks every request against the RDS service
model and the exact parameters we expect."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiobotocore.stub import AioStubber

from orchestrator.actions.aurora import GlobalFailover
from orchestrator.actions.base import ActionError, ActionFailed, RetryableError
from orchestrator.actions.rds import PROMOTED_BY_TAG
from orchestrator.actions.registry import get_action
from orchestrator.policy.actions import AuroraGlobal
from orchestrator.sandbox.aurora_global import EMULATOR, emulator_settings, find_global_cluster
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.clock import VirtualClock
from tests.fixtures.moto_fixups import apply_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import (
    ACCOUNT,
    SOURCE,
    TARGET,
    StubbedAws,
    calls,
    make_ctx,
    on_virtual_time,
)

PRIMARY = f"arn:aws:rds:{SOURCE}:{ACCOUNT}:cluster:prim"
SECONDARY = f"arn:aws:rds:{TARGET}:{ACCOUNT}:cluster:sec"
GLOBAL = "glob"


@pytest.fixture(autouse=True)
def _moto_fixups() -> None:
    apply_moto_fixups()


class World:
    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.source = moto.boto3_client("rds", SOURCE)
        self.target = moto.boto3_client("rds", TARGET)
        self.source.create_db_cluster(
            DBClusterIdentifier="prim",
            Engine="aurora-postgresql",
            MasterUsername="admin",
            MasterUserPassword="not-a-secret-1",
        )
        self.source.create_global_cluster(
            GlobalClusterIdentifier=GLOBAL, SourceDBClusterIdentifier=PRIMARY
        )
        self.target.create_db_cluster(
            DBClusterIdentifier="sec", Engine="aurora-postgresql", GlobalClusterIdentifier=GLOBAL
        )
        # Each cluster has an instance: a headless secondary is no target (readiness says so).
        for client, cluster in ((self.source, "prim"), (self.target, "sec")):
            client.create_db_instance(
                DBInstanceIdentifier=f"{cluster}-1",
                DBClusterIdentifier=cluster,
                Engine="aurora-postgresql",
                DBInstanceClass="db.r6g.large",
            )

    def aws(self) -> AwsClients:
        return AwsClients(self.moto.client_config())

    def members(self) -> dict[str, bool]:
        [glob] = self.target.describe_global_clusters(GlobalClusterIdentifier=GLOBAL)[
            "GlobalClusters"
        ]
        return {m["DBClusterArn"]: m["IsWriter"] for m in glob["GlobalClusterMembers"]}

    def cluster(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.target.describe_db_clusters(DBClusterIdentifier=name)[
            "DBClusters"
        ][0]
        return result


@pytest.fixture
def world(moto: MotoServer) -> World:
    return World(moto)


async def test_detach_and_promote_leaves_a_standalone_writer_once(world: World) -> None:
    action = get_action("aurora.global_failover")
    assert isinstance(action, GlobalFailover)
    params = AuroraGlobal(
        global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="detach_and_promote"
    )
    ctx = make_ctx(world.aws(), params, run_id="run-3")
    report = await action.check(ctx)
    assert report.ready, report.findings
    assert report.control_plane_region == TARGET

    before = calls("rds", "RemoveFromGlobalCluster")
    assert (await action.execute(ctx)).changed
    await action.verify(ctx)
    assert world.members() == {PRIMARY: True}
    detached = world.cluster("sec")
    assert not detached.get("GlobalClusterIdentifier")
    assert detached["Status"] == "available"
    assert {t["Key"]: t["Value"] for t in detached["TagList"]}[PROMOTED_BY_TAG] == "run-3"

    again = await action.execute(ctx)
    await action.verify(ctx)
    assert not again.changed
    assert calls("rds", "RemoveFromGlobalCluster") - before == 1
    assert (await action.check(ctx)).ready  # a resumed run goes on
    other = await action.check(make_ctx(world.aws(), params, run_id="readiness"))
    assert not other.ready
    assert "already standalone" in other.findings[0]


async def test_a_target_that_already_writes_needs_no_failover(world: World) -> None:
    # moto cannot fail over; it does not have to: the read comes first and finds nothing to do.
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=PRIMARY, mode="failover")
    ctx = make_ctx(world.aws(), params)
    outcome = await GlobalFailover().execute(ctx)
    assert not outcome.changed and "already the writer" in outcome.detail
    await GlobalFailover().verify(ctx)
    report = await GlobalFailover().check(ctx)
    assert not report.ready
    assert "already the writer" in report.findings[0]


async def test_check_reports_a_missing_global_cluster_or_membership(world: World) -> None:
    action = GlobalFailover()
    missing = AuroraGlobal(global_cluster="nope", target_cluster_arn=SECONDARY)
    report = await action.check(make_ctx(world.aws(), missing))
    assert not report.ready
    assert "global cluster nope not found" in report.findings
    with pytest.raises(ActionFailed, match="global cluster nope not found"):
        await action.execute(make_ctx(world.aws(), missing))

    world.target.create_db_cluster(
        DBClusterIdentifier="lonely",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
    )
    lonely = AuroraGlobal(
        global_cluster=GLOBAL, target_cluster_arn=f"arn:aws:rds:{TARGET}:{ACCOUNT}:cluster:lonely"
    )
    report = await action.check(make_ctx(world.aws(), lonely))
    assert not report.ready
    assert any("is not a member of global cluster glob" in f for f in report.findings)

    bad = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn="sec")
    report = await action.check(make_ctx(world.aws(), bad))
    assert not report.ready and "must be an Aurora cluster ARN" in report.findings[0]


async def test_verify_without_a_failover_ends_at_the_deadline(world: World) -> None:
    clock = VirtualClock()
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="failover")
    ctx = make_ctx(world.aws(), params, clock=clock, within=90.0)
    with pytest.raises(ActionError) as raised:  # at the deadline
        await on_virtual_time(clock, GlobalFailover().verify(ctx), step=5.0)
    assert f"{SECONDARY} the writer of glob" in str(raised.value)
    assert f"writer {PRIMARY}" in str(raised.value)
    assert 90.0 <= clock.monotonic() < 110.0


# --- Switchover and failover in the emulated world (the fix-up), with replicated positions ---


@pytest.fixture
def emulated(world: World) -> Iterator[VirtualClock]:
    """The Aurora emulator on virtual time, writes reaching the secondary 5 s after commit."""
    clock = VirtualClock()
    with emulator_settings(clock=clock, lag=5.0):
        yield clock


def _commit_with_a_tail(clock: VirtualClock) -> Any:
    """10 writes long replicated, then 3 the secondary has not seen yet."""
    gc = find_global_cluster(GLOBAL)
    EMULATOR.write(gc, 10)
    clock.advance(10.0)
    EMULATOR.write(gc, 3)
    assert EMULATOR.state(gc)["replicated"] == 10
    return gc


async def test_a_switchover_run_waits_for_the_secondary_and_loses_no_write(
    world: World, emulated: VirtualClock
) -> None:
    gc = _commit_with_a_tail(emulated)
    # mode auto, no facts at all: the run's kind alone says "planned".
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY)
    ctx = make_ctx(world.aws(), params, clock=emulated, kind="switchover", within=600.0)
    outcome = await GlobalFailover().execute(ctx)
    started = emulated.monotonic()
    await on_virtual_time(emulated, GlobalFailover().verify(ctx), step=1.0)
    state = EMULATOR.state(gc)
    assert (state["writer"], state["position"], state["lost_writes"]) == (SECONDARY, 13, 0)
    # It waited for the 3 writes to arrive, then for the swap.
    assert emulated.monotonic() - started >= 5.0
    assert world.members() == {PRIMARY: False, SECONDARY: True}
    # The journal says which call was made, and why.
    assert outcome.detail.startswith(f"SwitchoverGlobalCluster of {GLOBAL} to {SECONDARY}")
    assert "a switchover is a planned move: no data may be lost" in outcome.detail


async def test_a_failover_with_the_source_down_loses_what_was_not_replicated(
    world: World, emulated: VirtualClock
) -> None:
    gc = _commit_with_a_tail(emulated)
    EMULATOR.region_down(SOURCE)
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY)
    ctx = make_ctx(world.aws(), params, clock=emulated, facts=DOWN, within=600.0)
    outcome = await GlobalFailover().execute(ctx)
    assert outcome.detail.startswith("FailoverGlobalCluster(AllowDataLoss)")
    assert f"failover with {SOURCE} down: writes not yet replicated may be lost" in (outcome.detail)
    await on_virtual_time(emulated, GlobalFailover().verify(ctx), step=1.0)
    state = EMULATOR.state(gc)
    assert (state["writer"], state["position"], state["lost_writes"]) == (SECONDARY, 10, 3)


async def test_a_switchover_cannot_hand_over_from_a_region_that_is_down(
    world: World, emulated: VirtualClock
) -> None:
    _commit_with_a_tail(emulated)
    EMULATOR.region_down(SOURCE)
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="switchover")
    ctx = make_ctx(world.aws(), params, clock=emulated, facts=DOWN)
    with pytest.raises(ActionFailed, match="InvalidGlobalClusterStateFault"):
        await GlobalFailover().execute(ctx)


async def test_check_says_which_call_a_move_would_make_and_flags_a_headless_target(
    world: World,
) -> None:
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY)
    report = await GlobalFailover().check(make_ctx(world.aws(), params, kind="failback"))
    assert report.ready
    assert report.findings == (
        "a failback would call SwitchoverGlobalCluster: a failback is a"
        " planned move: no data may be lost",
    )
    world.target.delete_db_instance(DBInstanceIdentifier="sec-1")
    report = await GlobalFailover().check(make_ctx(world.aws(), params))
    assert not report.ready
    assert any("has no DB instances" in f for f in report.findings), report.findings


# --- FailoverGlobalCluster / SwitchoverGlobalCluster: not in moto, checked with Stubber ---


def global_cluster(writer: str, *, failover: str | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "GlobalClusterIdentifier": GLOBAL,
        "GlobalClusterArn": f"arn:aws:rds::{ACCOUNT}:global-cluster:{GLOBAL}",
        "Status": "failing-over" if failover else "available",
        "Engine": "aurora-postgresql",
        "GlobalClusterMembers": [
            {"DBClusterArn": PRIMARY, "IsWriter": writer == PRIMARY},
            {"DBClusterArn": SECONDARY, "IsWriter": writer == SECONDARY},
        ],
    }
    if failover:
        cluster["FailoverState"] = {
            "Status": "failing-over",
            "FromDbClusterArn": PRIMARY,
            "ToDbClusterArn": failover,
            "IsDataLossAllowed": True,
        }
    return {"GlobalClusters": [cluster]}


def describe(stubber: AioStubber, response: dict[str, Any]) -> None:
    stubber.add_response("describe_global_clusters", response, {"GlobalClusterIdentifier": GLOBAL})


def execute_script(operation: str, expected: dict[str, Any]) -> Any:
    def script(stubber: AioStubber) -> None:
        describe(stubber, global_cluster(PRIMARY))
        stubber.add_response(
            "add_tags_to_resource",
            {},
            {"ResourceName": SECONDARY, "Tags": [{"Key": PROMOTED_BY_TAG, "Value": "run-1"}]},
        )
        stubber.add_response(
            operation, {"GlobalCluster": {"GlobalClusterIdentifier": GLOBAL}}, expected
        )

    return script


def verify_script(stubber: AioStubber) -> None:
    describe(stubber, global_cluster(PRIMARY, failover=SECONDARY))  # under way
    describe(stubber, global_cluster(SECONDARY))  # done


FAILOVER_CALL = (
    "failover_global_cluster",
    {
        "GlobalClusterIdentifier": GLOBAL,
        "TargetDbClusterIdentifier": SECONDARY,
        "AllowDataLoss": True,
    },
)
SWITCHOVER_CALL = (
    "switchover_global_cluster",
    {"GlobalClusterIdentifier": GLOBAL, "TargetDbClusterIdentifier": SECONDARY},
)


DOWN = {"source_region": SOURCE, "source_verdict": "down", "target_lag_seconds": 0.4}
HEALTHY = {"source_region": SOURCE, "source_verdict": "healthy", "target_lag_seconds": 0.4}


@pytest.mark.parametrize(
    ("mode", "kind", "facts", "call"),
    [
        ("failover", "failover", DOWN, FAILOVER_CALL),
        ("switchover", "failover", DOWN, SWITCHOVER_CALL),
        ("auto", "failover", DOWN, FAILOVER_CALL),
        ("auto", "failover", {}, FAILOVER_CALL),  # nothing known: the source may be gone
        ("auto", "failover", HEALTHY, SWITCHOVER_CALL),  # moving away from a healthy region
        ("auto", "switchover", {}, SWITCHOVER_CALL),
        ("auto", "failback", {}, SWITCHOVER_CALL),
        ("auto", "failover", {**DOWN, "drill": True}, SWITCHOVER_CALL),
        # A failover runbook reused for a planned move never loses data.
        ("failover", "switchover", {}, SWITCHOVER_CALL),
        ("failover", "failback", {}, SWITCHOVER_CALL),
    ],
)
async def test_the_writer_moves_with_the_request_aws_expects(
    mode: str, kind: str, facts: dict[str, Any], call: tuple[str, dict[str, Any]]
) -> None:
    clock = VirtualClock()
    aws = StubbedAws(execute_script(*call), verify_script)
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode=mode)  # type: ignore[arg-type]
    ctx = make_ctx(aws, params, clock=clock, facts=facts, kind=kind, within=300.0)
    outcome = await GlobalFailover().execute(ctx)
    assert outcome.changed
    expected = "FailoverGlobalCluster(AllowDataLoss)" if call is FAILOVER_CALL else "Switchover"
    assert outcome.detail.startswith(expected), outcome.detail
    await on_virtual_time(clock, GlobalFailover().verify(ctx))
    assert aws.opened == [("rds", TARGET), ("rds", TARGET)]
    assert not aws.scripts


async def test_a_failover_already_under_way_to_the_target_is_not_started_again() -> None:
    aws = StubbedAws(lambda s: describe(s, global_cluster(PRIMARY, failover=SECONDARY)))
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="failover")
    outcome = await GlobalFailover().execute(make_ctx(aws, params))
    assert not outcome.changed and "under way" in outcome.detail


async def test_a_failover_to_another_cluster_under_way_is_waited_out() -> None:
    elsewhere = f"arn:aws:rds:eu-west-1:{ACCOUNT}:cluster:third"
    aws = StubbedAws(lambda s: describe(s, global_cluster(PRIMARY, failover=elsewhere)))
    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="failover")
    with pytest.raises(RetryableError, match="cluster:third"):
        await GlobalFailover().execute(make_ctx(aws, params))


async def test_throttling_is_retryable_and_access_denied_is_not() -> None:
    def throttled(stubber: AioStubber) -> None:
        stubber.add_client_error(
            "describe_global_clusters", "Throttling", "Rate exceeded", http_status_code=400
        )

    def denied(stubber: AioStubber) -> None:
        describe(stubber, global_cluster(PRIMARY))
        stubber.add_response("add_tags_to_resource", {})
        stubber.add_client_error(
            "failover_global_cluster", "AccessDenied", "not authorized", http_status_code=403
        )

    params = AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY, mode="failover")
    with pytest.raises(RetryableError, match="DescribeGlobalClusters failed: Throttling"):
        await GlobalFailover().execute(make_ctx(StubbedAws(throttled), params))
    with pytest.raises(ActionFailed, match="FailoverGlobalCluster failed: AccessDenied"):
        await GlobalFailover().execute(make_ctx(StubbedAws(denied), params))


def test_iam_statements_cover_the_global_cluster_and_the_target() -> None:
    statements = GlobalFailover().iam_statements(
        AuroraGlobal(global_cluster=GLOBAL, target_cluster_arn=SECONDARY), [SOURCE, TARGET], ACCOUNT
    )
    by_action = {a: set(s.resources) for s in statements for a in s.actions}
    global_arn = f"arn:aws:rds::{ACCOUNT}:global-cluster:{GLOBAL}"
    assert by_action["rds:DescribeGlobalClusters"] == {global_arn}
    assert by_action["rds:FailoverGlobalCluster"] == {global_arn, SECONDARY}
    assert by_action["rds:SwitchoverGlobalCluster"] == {global_arn, SECONDARY}
    assert "rds:RemoveFromGlobalCluster" not in by_action
