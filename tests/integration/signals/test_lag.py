"""Replication lag readers against a real moto server, through the real aiobotocore client.

Datapoints are written with explicit timestamps; the reader's clock is virtual and starts
30 s into a wall-clock minute, so every datapoint sits in a whole CloudWatch period.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.state import LagReading, ServiceState
from orchestrator.engine.vocabulary import Action, Reason, Verdict
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import Policy
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.signals.base import ListSink
from orchestrator.signals.lag import LagWatch, ReplicationLagSource
from tests.fixtures.binaries import free_port
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.moto_server import MotoServer

EAST, WEST = "us-east-1", "us-west-2"
MINUTE = 60.0
MAX_AGE = 300.0
INTERVAL = 60.0


@pytest.fixture
def now() -> float:
    """30 s into the current wall-clock minute (recent, so any emulator window accepts it)."""
    return math.floor(time.time() / MINUTE) * MINUTE + 30.0


def minute_ago(now: float, minutes: int) -> float:
    """The start of the minute ``minutes`` whole minutes before ``now``'s minute."""
    return math.floor(now / MINUTE) * MINUTE - minutes * MINUTE


def make_policy(source: dict[str, Any], *, max_age: str = "5m") -> Policy:
    data: dict[str, Any] = {
        "service": "shop",
        "regions": [EAST, WEST],
        "rto": "15m",
        "rpo": "1m",
        "vantage_points": ["local"],
        "detection": {"quorum": 1},
        "signals": [
            {
                "name": "api",
                "type": "http",
                "targets": {EAST: "http://127.0.0.1:9/e", WEST: "http://127.0.0.1:9/w"},
            }
        ],
        "replication": {"sources": {WEST: source}, "max_age": max_age, "interval": "1m"},
        "runbooks": {
            "failover": [
                {
                    "name": "flip",
                    "action": "route53.set_record",
                    "params": {"hosted_zone_id": "Z1", "name": "a.example.com", "value": "b"},
                }
            ]
        },
    }
    return load_policy_text(yaml.safe_dump(data), "<test policy>")


def put_points(
    moto: MotoServer,
    region: str,
    namespace: str,
    name: str,
    dimensions: dict[str, str],
    points: list[tuple[float, float]],
) -> None:
    cw = moto.boto3_client("cloudwatch", region)
    cw.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                "Timestamp": datetime.fromtimestamp(at, UTC),
                "Value": value,
            }
            for at, value in points
        ],
    )


async def read_once(moto: MotoServer, policy: Policy, now: float) -> LagReading | None:
    source = ReplicationLagSource([policy], AwsClients(moto.client_config()), VirtualClock(now))
    [watch] = source.watches
    async with source.clients.client("cloudwatch", watch.region) as client:
        return await source.read(client, watch)


def has_readings(sink: ListSink, count: int) -> bool:
    return len(sink.lag) >= count


def verdict(region: str, v: Verdict) -> RegionVerdict:
    failing = ("local",) if v is Verdict.DOWN else ()
    passing = ("local",) if v is Verdict.HEALTHY else ()
    return RegionVerdict(region, v, 0.0, 1, failing, passing, ())


def gauge(name: str, region: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": "shop", "region": region})


async def test_newest_datapoint_wins_and_keeps_its_own_timestamp(
    moto: MotoServer, now: float
) -> None:
    db = {"DBInstanceIdentifier": "shop-db-replica"}
    # Written out of order; the newest one is the reading, with its time, not the read's.
    put_points(
        moto,
        WEST,
        "AWS/RDS",
        "ReplicaLag",
        db,
        [(minute_ago(now, 2), 40.0), (minute_ago(now, 1), 3.0), (minute_ago(now, 4), 90.0)],
    )
    # Newer points of another instance, and of the same name in another region, do not count.
    put_points(
        moto, WEST, "AWS/RDS", "ReplicaLag", {"DBInstanceIdentifier": "other"}, [(now, 500.0)]
    )
    put_points(moto, EAST, "AWS/RDS", "ReplicaLag", db, [(now, 700.0)])
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "shop-db-replica"})
    assert await read_once(moto, policy, now) == LagReading(3.0, minute_ago(now, 1))


async def test_aurora_rpo_lag_is_milliseconds_and_preferred(moto: MotoServer, now: float) -> None:
    cluster = {"DBClusterIdentifier": "shop-west"}
    put_points(moto, WEST, "AWS/RDS", "AuroraGlobalDBRPOLag", cluster, [(minute_ago(now, 1), 1500)])
    put_points(
        moto, WEST, "AWS/RDS", "AuroraGlobalDBReplicationLag", cluster, [(minute_ago(now, 0), 9000)]
    )
    policy = make_policy({"type": "aurora_global_rpo_lag", "db_cluster": "shop-west"})
    assert await read_once(moto, policy, now) == LagReading(1.5, minute_ago(now, 1))


async def test_aurora_falls_back_to_replication_lag_when_rpo_lag_has_no_data(
    moto: MotoServer, now: float
) -> None:
    cluster = {"DBClusterIdentifier": "shop-west"}
    put_points(
        moto, WEST, "AWS/RDS", "AuroraGlobalDBReplicationLag", cluster, [(minute_ago(now, 2), 2500)]
    )
    policy = make_policy({"type": "aurora_global_rpo_lag", "db_cluster": "shop-west"})
    assert await read_once(moto, policy, now) == LagReading(2.5, minute_ago(now, 2))


async def test_custom_metric_uses_its_statistic_dimensions_and_unit(
    moto: MotoServer, now: float
) -> None:
    dims = {"Cluster": "orders", "Replica": "west"}
    at = minute_ago(now, 1)
    # Two values in one period: Average gives 3 (Maximum would give 4); in minutes.
    put_points(moto, WEST, "Shop/Replication", "LagMinutes", dims, [(at, 2.0), (at + 10, 4.0)])
    policy = make_policy(
        {
            "type": "cloudwatch_metric",
            "namespace": "Shop/Replication",
            "metric_name": "LagMinutes",
            "dimensions": dims,
            "statistic": "Average",
            "unit_seconds": 60,
        }
    )
    assert await read_once(moto, policy, now) == LagReading(180.0, at)


async def test_no_datapoint_is_unknown_lag_now(moto: MotoServer, now: float) -> None:
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "shop-db-replica"})
    assert await read_once(moto, policy, now) == LagReading(None, now)


async def test_replication_not_running_is_unknown_not_zero(moto: MotoServer, now: float) -> None:
    # RDS reports ReplicaLag -1 when replication is not active.
    db = {"DBInstanceIdentifier": "shop-db-replica"}
    put_points(moto, WEST, "AWS/RDS", "ReplicaLag", db, [(minute_ago(now, 1), -1.0)])
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "shop-db-replica"})
    assert await read_once(moto, policy, now) == LagReading(None, minute_ago(now, 1))


async def test_a_frozen_metric_ages_into_unknown_lag(moto: MotoServer, now: float) -> None:
    # The primary dies: the replica's lag metric stops at its last value. The reader keeps
    # reporting that value with its own timestamp, so decide() sees it go stale.
    db = {"DBInstanceIdentifier": "shop-db-replica"}
    last_point = minute_ago(now, 1)
    put_points(moto, WEST, "AWS/RDS", "ReplicaLag", db, [(minute_ago(now, 2), 4.0)])
    put_points(moto, WEST, "AWS/RDS", "ReplicaLag", db, [(last_point, 2.0)])
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "shop-db-replica"})
    clock, sink = VirtualClock(now), ListSink()
    source = ReplicationLagSource([policy], AwsClients(moto.client_config()), clock)
    state = ServiceState("shop", active_region=EAST)
    verdicts = {EAST: verdict(EAST, Verdict.DOWN), WEST: verdict(WEST, Verdict.HEALTHY)}

    task = asyncio.create_task(source.run(sink))
    try:
        await eventually(lambda: len(sink.lag) == 1 and clock.sleepers == 1, "first reading")
        fresh = sink.lag[-1]
        assert fresh == ("shop", WEST, LagReading(2.0, last_point))
        decision = decide(policy, state, verdicts, {WEST: fresh[2]}, clock.now())
        assert decision.action is Action.FAILOVER and decision.target == WEST
        assert Reason.LAG_UNKNOWN not in decision.reasons
        assert gauge("failoverd_replication_lag_seconds", WEST) == 2.0
        assert gauge("failoverd_replication_lag_timestamp_seconds", WEST) == last_point

        # Minutes pass with no new datapoint; each read still says "2 s, as of last_point".
        for tick in range(2, 7):
            clock.advance(INTERVAL)
            await eventually(partial(has_readings, sink, tick), f"reading {tick}")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert {reading for _, _, reading in sink.lag} == {LagReading(2.0, last_point)}
    stale = sink.lag[-1][2]
    assert clock.now() - stale.observed_at > MAX_AGE
    decision = decide(policy, state, verdicts, {WEST: stale}, clock.now())
    assert Reason.LAG_UNKNOWN in decision.reasons
    assert any("old" in note for note in decision.notes)
    assert gauge("failoverd_replication_lag_timestamp_seconds", WEST) == last_point


def get_metric_data_calls(outcome: str) -> float:
    labels = {"aws_service": "cloudwatch", "operation": "GetMetricData", "outcome": outcome}
    return REGISTRY.get_sample_value("failoverd_aws_api_calls_total", labels) or 0.0


async def test_a_failed_read_reports_nothing_and_the_reader_keeps_going(now: float) -> None:
    dead = AwsClientConfig(
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens here
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=0.5,
        max_attempts=1,
    )
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "shop-db-replica"})
    clock, sink = VirtualClock(now), ListSink()
    source = ReplicationLagSource([policy], AwsClients(dead), clock)
    before = get_metric_data_calls("error")
    task = asyncio.create_task(source.run(sink))
    try:
        await eventually(
            lambda: get_metric_data_calls("error") == before + 1 and clock.sleepers == 1,
            "the first, failed read",
        )
        clock.advance(INTERVAL)
        await eventually(
            lambda: get_metric_data_calls("error") == before + 2 and clock.sleepers == 1,
            "the second, failed read",
        )
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # An outage of the metrics API is no news about the replica: the last good reading
    # (none here) keeps its own age rather than being replaced by "unknown, now".
    assert sink.lag == []


def test_watches_cover_every_standby_source() -> None:
    policy = make_policy({"type": "aurora_global_rpo_lag", "db_cluster": "shop-west"})
    source = ReplicationLagSource([policy], AwsClients(), VirtualClock(0.0))
    [watch] = source.watches
    assert isinstance(watch, LagWatch)
    assert (watch.service, watch.region, watch.interval, watch.max_age) == (
        "shop",
        WEST,
        INTERVAL,
        MAX_AGE,
    )
    assert [q.metric_name for q in watch.queries] == [
        "AuroraGlobalDBRPOLag",
        "AuroraGlobalDBReplicationLag",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"period": 45}, "period must be 1, 5, 10, 20, 30 or a multiple of 60"),
        ({"period": 0}, "period must be"),
        ({"window": 0}, "window must be positive"),
        ({"call_timeout": -1.0}, "call_timeout must be positive"),
    ],
)
def test_bad_reader_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    policy = make_policy({"type": "rds_replica_lag", "db_instance": "db"})
    with pytest.raises(ValueError, match=message):
        ReplicationLagSource([policy], AwsClients(), VirtualClock(0.0), **kwargs)
