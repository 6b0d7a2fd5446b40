"""`control-plane-down` and `arc-endpoint-down`: every AWS API of a region fails as it did in
the us-east-1 events of 2021 and 2025 (the fault proxy in front of a real moto, driven by
aiobotocore), the ARC cluster loses endpoints, and `off` undoes it all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.sandbox.control import FaultError, Faults
from orchestrator.sandbox.fault_proxy import FaultProxy
from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.sandbox.region_endpoints import RegionEndpoints
from tests.fixtures.moto_server import MotoServer


@pytest.fixture
async def proxy(moto: MotoServer) -> AsyncIterator[FaultProxy]:
    running = FaultProxy(moto.endpoint_url)
    await running.start()
    try:
        yield running
    finally:
        running.set_control_plane_down(None)
        await running.stop()


@asynccontextmanager
async def client(
    proxy: FaultProxy, service: str, region: str, read: float = 5
) -> AsyncIterator[Any]:
    config = AioConfig(retries={"mode": "standard", "total_max_attempts": 1},
                       connect_timeout=2, read_timeout=read)  # fmt: skip
    async with AioSession().create_client(
        service, region_name=region, endpoint_url=proxy.endpoint_url, config=config,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ) as c:  # fmt: skip
        yield c


def code(exc: ClientError) -> tuple[str, int]:
    return str(exc.response["Error"]["Code"]), int(
        exc.response["ResponseMetadata"]["HTTPStatusCode"]
    )


async def test_every_api_of_the_region_fails_the_way_aws_did(proxy: FaultProxy) -> None:
    assert "Route 53's API and IAM included" in proxy.set_control_plane_down("us-east-1")
    async with client(proxy, "rds", "us-east-1") as rds:
        with pytest.raises(ClientError) as failed:
            await rds.describe_db_instances()
        assert code(failed.value) == ("ServiceUnavailable", 503)
    async with client(proxy, "ecs", "us-east-1") as ecs:  # a JSON protocol
        with pytest.raises(ClientError) as failed:
            await ecs.list_clusters()
        assert code(failed.value) == ("ServiceUnavailable", 503)
    async with client(proxy, "ec2", "us-east-1") as ec2:
        with pytest.raises(ClientError) as failed:
            await ec2.describe_instances()
        assert code(failed.value) == ("RequestLimitExceeded", 503)
    for service in ("iam", "sts"):  # global endpoints, signed for us-east-1
        async with client(proxy, service, "us-east-1") as c:
            with pytest.raises(ClientError) as failed:
                await (c.list_users() if service == "iam" else c.get_caller_identity())
            assert code(failed.value) == ("ServiceUnavailable", 503), service
    async with client(proxy, "dynamodb", "us-east-1") as ddb:
        with pytest.raises(ConnectionClosedError):
            await ddb.list_tables()
    async with client(proxy, "route53", "us-east-1", read=0.5) as r53:
        with pytest.raises(ReadTimeoutError):
            await r53.list_hosted_zones()
    # Elsewhere the control planes answer.
    async with client(proxy, "rds", "us-west-2") as rds:
        assert (await rds.describe_db_instances())["DBInstances"] == []
    assert proxy.refused_calls == 7


async def test_a_held_route53_call_goes_through_when_the_fault_ends(proxy: FaultProxy) -> None:
    proxy.set_control_plane_down("us-east-1")
    async with client(proxy, "route53", "us-east-1", read=20) as r53:
        pending = asyncio.ensure_future(r53.list_hosted_zones())
        await asyncio.sleep(0)  # the request is on its way; no answer can come while down
        done, _ = await asyncio.wait([pending], timeout=1.0)
        assert not done
        assert proxy.set_control_plane_down(None).startswith("control planes up")
        answer = await asyncio.wait_for(pending, timeout=10)
        assert answer["HostedZones"] == []


async def test_another_regions_outage_leaves_the_global_control_planes_up(
    proxy: FaultProxy,
) -> None:
    proxy.set_control_plane_down("us-west-2")
    async with client(proxy, "route53", "us-east-1") as r53:
        assert (await r53.list_hosted_zones())["HostedZones"] == []
    async with client(proxy, "rds", "us-west-2") as rds:
        with pytest.raises(ClientError):
            await rds.describe_db_instances()


async def test_the_sandbox_faults_and_their_off(
    proxy: FaultProxy, arc_cluster: ArcClusterEmulator, health_emulator: HealthApiEmulator
) -> None:
    faults = Faults(RegionEndpoints(["us-east-1", "us-west-2"]), health_emulator,
                    lambda _: None, proxy=proxy, arc=arc_cluster)  # fmt: skip
    said = await faults.apply("control-plane-down", "us-east-1")
    assert "blackholed" in said and "Health" in said
    assert proxy.control_plane_down == "us-east-1"
    assert arc_cluster.endpoint_mode("us-east-1") == "blackhole"
    assert health_emulator.mode == "unavailable"
    said = await faults.apply("arc-endpoint-down", "us-west-2,eu-west-1")
    assert "2 of 5 endpoints answer" in said
    await faults.apply("arc-endpoint-down", "ap-northeast-1")
    assert faults.state()["arc_endpoints"]["ap-northeast-1"] == "blackhole"
    # `arc-endpoint-down off` leaves the endpoint control-plane-down took.
    await faults.apply("arc-endpoint-down", "off")
    modes = faults.state()["arc_endpoints"]
    assert modes["us-east-1"] == "blackhole"
    assert {r for r, m in modes.items() if m == "up"} == set(arc_cluster.regions) - {"us-east-1"}
    await faults.apply("control-plane-down", "off")
    assert proxy.control_plane_down is None and health_emulator.mode == "normal"
    assert set(faults.state()["arc_endpoints"].values()) == {"up"}
    for fault, arg in (("control-plane-down", "useast1"), ("arc-endpoint-down", "mars-1")):
        with pytest.raises(FaultError):
            await faults.apply(fault, arg)
