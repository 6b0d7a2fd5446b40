"""The CloudWatch alarm reader against a real moto server, through the real aiobotocore client.

Time is virtual: the reader sleeps on a clock the test advances, so "the next tick" happens
exactly when the test says and no test waits for an interval to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.vocabulary import View
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import CLOUDWATCH_VANTAGE, Policy
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.signals.base import ListSink
from orchestrator.signals.cloudwatch import CloudWatchAlarmSource
from tests.fixtures.binaries import free_port
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.moto_server import MotoServer

EAST, WEST = "us-east-1", "us-west-2"
START = 1_800_000_000.0
INTERVAL = 10.0


def make_policy(alarms: dict[str, list[str]], service: str = "shop") -> Policy:
    data: dict[str, Any] = {
        "service": service,
        "regions": [EAST, WEST],
        "rto": "15m",
        "rpo": "1m",
        "vantage_points": ["local"],
        "detection": {"interval": f"{INTERVAL:g}s", "quorum": 1},
        "signals": [
            # Not probed here; it gives every region a vantage point, as the loader requires.
            {
                "name": "api",
                "type": "http",
                "targets": {EAST: "http://127.0.0.1:9/e", WEST: "http://127.0.0.1:9/w"},
            },
            {"name": "alarms", "type": "cloudwatch_alarm", "alarms": alarms},
        ],
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


def put_alarm(moto: MotoServer, region: str, name: str, state: str = "OK") -> None:
    cw = moto.boto3_client("cloudwatch", region)
    cw.put_metric_alarm(
        AlarmName=name,
        Namespace="Shop",
        MetricName="Errors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cw.set_alarm_state(AlarmName=name, StateValue=state, StateReason="set by test")


def describe_calls(region_ok: str = "ok") -> float:
    value = REGISTRY.get_sample_value(
        "failoverd_aws_api_calls_total",
        {"aws_service": "cloudwatch", "operation": "DescribeAlarms", "outcome": region_ok},
    )
    return value or 0.0


@asynccontextmanager
async def running(
    source: CloudWatchAlarmSource, sink: ListSink
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def latest(sink: ListSink, region: str) -> Observation:
    return [o for o in sink.items if o.region == region][-1]


async def test_alarm_fails_only_its_region_and_the_health_book_agrees(moto: MotoServer) -> None:
    # The same alarm name in two regions: only the region whose alarm fires is failing.
    put_alarm(moto, EAST, "shop-5xx", "ALARM")
    put_alarm(moto, WEST, "shop-5xx", "OK")
    policy = make_policy({EAST: ["shop-5xx"], WEST: ["shop-5xx"]})
    clock, sink = VirtualClock(START), ListSink()
    source = CloudWatchAlarmSource([policy], AwsClients(moto.client_config()), clock)
    async with running(source, sink):
        await eventually(lambda: len(sink.items) == 2, "one observation per region")
    east, west = latest(sink, EAST), latest(sink, WEST)
    assert (east.ok, east.detail) == (False, FailureKind.ALARM)
    assert (west.ok, west.detail) == (True, "")
    assert {(o.service, o.signal, o.vantage, o.source) for o in sink.items} == {
        ("shop", "alarms", CLOUDWATCH_VANTAGE, "cloudwatch")
    }
    assert east.at == START and east.latency is not None and east.latency >= 0

    book = HealthBook(policy)
    book.observe_many(sink.items)
    views = {
        r: v.view
        for r in (EAST, WEST)
        for v in book.evidence(r, START)
        if v.vantage == "cloudwatch"
    }
    assert views == {EAST: View.FAILING, WEST: View.PASSING}


async def test_reads_again_each_interval_and_sees_the_alarm_fire(moto: MotoServer) -> None:
    put_alarm(moto, EAST, "db-cpu", "OK")
    put_alarm(moto, EAST, "api-5xx", "OK")
    policy = make_policy({EAST: ["db-cpu", "api-5xx"]})
    clock, sink = VirtualClock(START), ListSink()
    source = CloudWatchAlarmSource([policy], AwsClients(moto.client_config()), clock)
    async with running(source, sink):
        await eventually(lambda: len(sink.items) == 1 and clock.sleepers == 1, "first tick")
        assert sink.items[0].ok is True

        put_alarm(moto, EAST, "api-5xx", "ALARM")
        await asyncio.sleep(0.05)
        assert len(sink.items) == 1, "read again before the interval passed"
        clock.advance(INTERVAL - 0.001)
        await asyncio.sleep(0.05)
        assert len(sink.items) == 1, "read again before the interval passed"

        clock.advance(0.001)
        await eventually(lambda: len(sink.items) == 2, "the second tick")
    second = sink.items[1]
    assert (second.ok, second.detail, second.at) == (False, FailureKind.ALARM, START + INTERVAL)


async def test_insufficient_data_is_unknown_and_named(moto: MotoServer) -> None:
    put_alarm(moto, EAST, "db-cpu", "OK")
    put_alarm(moto, EAST, "queue-depth", "INSUFFICIENT_DATA")
    policy = make_policy({EAST: ["db-cpu", "queue-depth"]})
    source = CloudWatchAlarmSource([policy], AwsClients(moto.client_config()), VirtualClock(START))
    sink = ListSink()
    async with running(source, sink):
        await eventually(lambda: len(sink.items) == 1, "first tick")
    obs = sink.items[0]
    assert obs.ok is None
    assert obs.detail == "insufficient_data: queue-depth"


async def test_missing_alarm_is_unknown_and_named_but_a_firing_one_still_fails(
    moto: MotoServer,
) -> None:
    put_alarm(moto, EAST, "db-cpu", "OK")
    put_alarm(moto, WEST, "db-cpu", "ALARM")
    policy = make_policy({EAST: ["db-cpu", "typo-alarm"], WEST: ["db-cpu", "typo-alarm"]})
    source = CloudWatchAlarmSource([policy], AwsClients(moto.client_config()), VirtualClock(START))
    sink = ListSink()
    async with running(source, sink):
        await eventually(lambda: len(sink.items) == 2, "first tick")
    east, west = latest(sink, EAST), latest(sink, WEST)
    # Never healthy while an alarm it should watch cannot be seen...
    assert (east.ok, east.detail) == (None, "missing: typo-alarm")
    # ...but an alarm that is seen firing is a failure whatever else is unknown.
    assert (west.ok, west.detail) == (False, FailureKind.ALARM)


async def test_more_than_100_alarms_are_read_in_batches(moto: MotoServer) -> None:
    names = [f"alarm-{i:03d}" for i in range(150)]
    cw = moto.boto3_client("cloudwatch", EAST)
    for name in names:
        cw.put_metric_alarm(
            AlarmName=name,
            Namespace="Shop",
            MetricName="Errors",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1.0,
            ComparisonOperator="GreaterThanThreshold",
        )
        cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test")
    # Two policies share alarms in the region: one read serves both.
    shop = make_policy({EAST: names}, service="shop")
    cart = make_policy({EAST: names[140:]}, service="cart")
    clock, sink = VirtualClock(START), ListSink()
    source = CloudWatchAlarmSource([shop, cart], AwsClients(moto.client_config()), clock)
    before = describe_calls()
    async with running(source, sink):
        await eventually(lambda: len(sink.items) == 2 and clock.sleepers == 1, "first tick")
        assert describe_calls() - before == 2  # 150 names: 100 + 50
        assert [o.ok for o in sink.items] == [True, True]

        cw.set_alarm_state(AlarmName="alarm-149", StateValue="ALARM", StateReason="test")
        clock.advance(INTERVAL)
        await eventually(lambda: len(sink.items) == 4, "second tick")
    assert describe_calls() - before == 4
    assert {(o.service, o.ok) for o in sink.items[2:]} == {("shop", False), ("cart", False)}


async def test_unreachable_api_is_unknown_and_the_reader_keeps_going() -> None:
    dead = AwsClientConfig(
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens here
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=0.5,
        max_attempts=1,
    )
    policy = make_policy({EAST: ["db-cpu"]})
    clock, sink = VirtualClock(START), ListSink()
    source = CloudWatchAlarmSource([policy], AwsClients(dead), clock)
    async with running(source, sink) as task:
        await eventually(lambda: len(sink.items) == 1 and clock.sleepers == 1, "first tick")
        clock.advance(INTERVAL)
        await eventually(lambda: len(sink.items) == 2, "second tick")
        assert not task.done()
    assert [(o.ok, o.detail) for o in sink.items] == [
        (None, "api_error: EndpointConnectionError")
    ] * 2


async def test_a_hung_api_call_is_cut_off_by_the_timeout() -> None:
    # A server that accepts and never answers: without a bound the read would hang forever.
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = AwsClientConfig(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="testing",
        secret_access_key="testing",
        read_timeout=30.0,
        max_attempts=1,
    )
    policy = make_policy({EAST: ["db-cpu"]})
    source = CloudWatchAlarmSource(
        [policy], AwsClients(config), VirtualClock(START), call_timeout=0.3
    )
    async with server, AwsClients(config).client("cloudwatch", EAST) as client:
        started = asyncio.get_running_loop().time()
        [obs] = await source.poll(client, source.watches)
        elapsed = asyncio.get_running_loop().time() - started
    assert (obs.ok, obs.detail) == (None, "api_error: TimeoutError")
    assert elapsed < 5.0


async def test_with_no_alarm_signals_run_waits_until_cancelled() -> None:
    # The SignalSource contract: run() returns only by cancellation, even with nothing to do.
    policy = make_policy({EAST: ["db-cpu"]})
    no_alarms = policy.model_copy(update={"signals": policy.signals[:1]})
    source = CloudWatchAlarmSource([no_alarms], AwsClients(), VirtualClock(START))
    assert source.watches == []
    sink = ListSink()
    async with running(source, sink) as task:
        await asyncio.sleep(0.05)
        assert not task.done()
    assert sink.items == []
