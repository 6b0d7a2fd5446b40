"""Each moto fix-up (tests/fixtures/moto_fixups.py) closes a gap that moto itself shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.sandbox.aurora_global import EMULATOR, emulator_settings, find_global_cluster
from tests.fixtures.clock import VirtualClock
from tests.fixtures.moto_fixups import apply_moto_fixups, without_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.actions.step_support import SOURCE, TARGET


@pytest.fixture(params=["moto as is", "fixed"])
def fixed(request: pytest.FixtureRequest, moto: MotoServer) -> Iterator[bool]:
    apply_moto_fixups()
    if request.param == "fixed":
        yield True
    else:
        with without_moto_fixups():
            yield False


def _promoted(moto: MotoServer) -> tuple[dict[str, Any], dict[str, Any]]:
    source, target = moto.boto3_client("rds", SOURCE), moto.boto3_client("rds", TARGET)
    primary = source.create_db_instance(
        DBInstanceIdentifier="primary",
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
    )["DBInstance"]
    target.create_db_instance_read_replica(
        DBInstanceIdentifier="replica", SourceDBInstanceIdentifier=primary["DBInstanceArn"]
    )
    target.promote_read_replica(DBInstanceIdentifier="replica")
    return (
        target.describe_db_instances(DBInstanceIdentifier="replica")["DBInstances"][0],
        source.describe_db_instances(DBInstanceIdentifier="primary")["DBInstances"][0],
    )


def test_rds_promote_clears_source(moto: MotoServer, fixed: bool) -> None:
    replica, primary = _promoted(moto)
    if fixed:
        assert "ReadReplicaSourceDBInstanceIdentifier" not in replica
        assert primary["ReadReplicaDBInstanceIdentifiers"] == []
    else:  # the gap: both links survive the promotion
        assert replica["ReadReplicaSourceDBInstanceIdentifier"].endswith(":db:primary")
        assert primary["ReadReplicaDBInstanceIdentifiers"] == [replica["DBInstanceArn"]]


def _global_database(moto: MotoServer) -> tuple[Any, str, str]:
    source, target = moto.boto3_client("rds", SOURCE), moto.boto3_client("rds", TARGET)
    primary = source.create_db_cluster(
        DBClusterIdentifier="prim",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
    )["DBCluster"]["DBClusterArn"]
    source.create_global_cluster(GlobalClusterIdentifier="glob", SourceDBClusterIdentifier=primary)
    secondary = target.create_db_cluster(
        DBClusterIdentifier="sec", Engine="aurora-postgresql", GlobalClusterIdentifier="glob"
    )["DBCluster"]["DBClusterArn"]
    return target, primary, secondary


def _members(client: Any) -> dict[str, bool]:
    [glob] = client.describe_global_clusters(GlobalClusterIdentifier="glob")["GlobalClusters"]
    return {m["DBClusterArn"]: m["IsWriter"] for m in glob["GlobalClusterMembers"]}


def test_rds_global_source_is_writer(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    assert _members(target) == {primary: fixed, secondary: False}


def test_rds_remove_from_global_any_region(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    target.remove_from_global_cluster(GlobalClusterIdentifier="glob", DbClusterIdentifier=secondary)
    detached = target.describe_db_clusters(DBClusterIdentifier="sec")["DBClusters"][0]
    if fixed:
        assert set(_members(target)) == {primary}
        assert not detached.get("GlobalClusterIdentifier")
    else:  # the gap: a call from the member's region does nothing, and says nothing
        assert set(_members(target)) == {primary, secondary}
        assert detached["GlobalClusterIdentifier"] == "glob"


def test_rds_global_failover_and_switchover(moto: MotoServer, fixed: bool) -> None:
    target, primary, secondary = _global_database(moto)
    clock = VirtualClock()
    with emulator_settings(clock=clock, lag=5.0):
        gc = find_global_cluster("glob")
        EMULATOR.write(gc, 4)  # not replicated yet: 5 s of lag
        if not fixed:  # the gap: moto has neither call (HTTP 500)
            for call in (target.failover_global_cluster, target.switchover_global_cluster):
                with pytest.raises(Exception, match=r"500|Unable to parse"):
                    call(GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=secondary)
            return
        target.failover_global_cluster(
            GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=secondary, AllowDataLoss=True
        )
        [glob] = target.describe_global_clusters()["GlobalClusters"]
        assert glob["Status"] == "failing-over"
        assert glob["FailoverState"]["IsDataLossAllowed"] is True
        clock.advance(2.0)
        assert _members(target) == {primary: False, secondary: True}
        assert EMULATOR.state(gc)["lost_writes"] == 4  # AllowDataLoss: the tail is gone
        # And back, planned: writes made now wait for the old primary to catch up.
        EMULATOR.write(gc, 2)
        target.switchover_global_cluster(
            GlobalClusterIdentifier="glob", TargetDbClusterIdentifier=primary
        )
        assert EMULATOR.write(gc, 1) == 2  # writes are blocked during a switchover
        clock.advance(4.0)
        [glob] = target.describe_global_clusters()["GlobalClusters"]
        assert glob["Status"] == "switching-over"  # the secondary is still catching up
        clock.advance(4.0)
        assert _members(target) == {primary: True, secondary: False}
        assert EMULATOR.state(gc)["lost_writes"] == 4  # nothing more lost
        assert EMULATOR.state(gc)["position"] == 2


@pytest.mark.parametrize(
    "batch",
    [
        # a CNAME at the zone apex
        [("CREATE", {"Name": "example.com", "Type": "CNAME", "Value": "lb.example.net"})],
        # a CNAME beside an A record of the same name
        [
            ("CREATE", {"Name": "www.example.com", "Type": "A", "Value": "192.0.2.1"}),
            ("CREATE", {"Name": "www.example.com", "Type": "CNAME", "Value": "x.example.net"}),
        ],
        # a simple record beside a weighted one of the same name and type
        [
            ("CREATE", {"Name": "api.example.com", "Type": "A", "Value": "192.0.2.1"}),
            (
                "CREATE",
                {
                    "Name": "api.example.com",
                    "Type": "A",
                    "Value": "192.0.2.2",
                    "SetIdentifier": "b",
                    "Weight": 10,
                },
            ),
        ],
    ],
    ids=["cname-at-apex", "cname-beside-a", "simple-beside-weighted"],
)
def test_route53_refuses_conflicting_records(
    moto: MotoServer, fixed: bool, batch: list[tuple[str, dict[str, Any]]]
) -> None:
    r53 = moto.boto3_client("route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference="z")["HostedZone"]["Id"]

    def send(action: str, record: dict[str, Any]) -> None:
        rrset = {k: v for k, v in record.items() if k != "Value"}
        rrset.update(TTL=60, ResourceRecords=[{"Value": record["Value"]}])
        r53.change_resource_record_sets(
            HostedZoneId=zone,
            ChangeBatch={"Changes": [{"Action": action, "ResourceRecordSet": rrset}]},
        )

    *before, last = batch
    for action, record in before:
        send(action, record)
    if fixed:
        with pytest.raises(r53.exceptions.InvalidChangeBatch):
            send(*last)
    else:  # the gap: moto stores what AWS refuses
        send(*last)
