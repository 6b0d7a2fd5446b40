"""failoverd_aws_api_calls_total counts every AWS call once: also one its caller abandons at
a deadline (no response, no botocore event), paginated calls, and clients made outside
AwsClients (the Health poller's own session, wrapped in counted_client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from aiohttp import web

from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients, counted_client
from orchestrator.signals.aws_health import HealthEndpoint, aiobotocore_client_factory
from tests.fixtures.health_emulator import client_settings
from tests.unit.signals.test_aws_clients import FAKE, calls, delta, snapshot

ALARMS_PAGE = (
    '<DescribeAlarmsResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/">'
    "<DescribeAlarmsResult><MetricAlarms/><CompositeAlarms/></DescribeAlarmsResult>"
    "</DescribeAlarmsResponse>"
)


@dataclass
class Endpoint:
    """A loopback AWS endpoint: answers an empty DescribeAlarms page, or, while ``hang`` is
    set, holds each request until ``release`` is set (a region that stopped answering)."""

    url: str = ""
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()

    async def handle(_: web.Request) -> web.Response:
        if ep.hang:
            await ep.release.wait()
        return web.Response(text=ALARMS_PAGE, content_type="text/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        ep.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield ep
    finally:
        ep.release.set()
        await runner.cleanup()


async def test_a_call_abandoned_at_its_callers_deadline_is_counted_once_as_an_error(
    endpoint: Endpoint,
) -> None:
    config = AwsClientConfig(endpoint_url=endpoint.url, read_timeout=30.0, max_attempts=1, **FAKE)
    async with AwsClients(config).client("cloudwatch", "us-east-1") as client:
        before = snapshot("DescribeAlarms")
        await client.describe_alarms()
        assert delta("DescribeAlarms", before) == {"ok": 1, "throttled": 0, "error": 0}

        endpoint.hang = True
        before = snapshot("DescribeAlarms")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.describe_alarms()
        assert delta("DescribeAlarms", before) == {"ok": 0, "throttled": 0, "error": 1}
        endpoint.hang = False
        endpoint.release.set()


async def test_paginated_calls_are_counted(endpoint: Endpoint) -> None:
    url = endpoint.url
    config = AwsClientConfig(endpoint_url=url, max_attempts=1, **FAKE)
    before = snapshot("DescribeAlarms")
    async with AwsClients(config).client("cloudwatch", "us-east-1") as client:
        pages = [page async for page in client.get_paginator("describe_alarms").paginate()]
    assert len(pages) == 1
    assert delta("DescribeAlarms", before) == {"ok": 1, "throttled": 0, "error": 0}


async def test_a_client_from_another_session_is_counted_through_counted_client(
    endpoint: Endpoint,
) -> None:
    url = endpoint.url
    session = AioSession()
    creator = session.create_client(
        "cloudwatch",
        region_name="us-east-1",
        endpoint_url=url,
        config=AioConfig(retries={"mode": "standard", "total_max_attempts": 1}),
        aws_access_key_id=FAKE["access_key_id"],
        aws_secret_access_key=FAKE["secret_access_key"],
    )
    before = snapshot("DescribeAlarms")
    async with counted_client(creator, "cloudwatch") as client:
        await client.describe_alarms()
    assert delta("DescribeAlarms", before) == {"ok": 1, "throttled": 0, "error": 0}


async def test_the_health_pollers_calls_are_counted_with_the_others(
    health_emulator: HealthApiEmulator,
) -> None:
    settings = client_settings(health_emulator)
    endpoint = HealthEndpoint(settings.region, health_emulator.endpoint_url)
    before = snapshot_of("health", "DescribeEvents")
    async with aiobotocore_client_factory(settings)(endpoint) as client:
        await client.describe_events(filter={})
    assert delta_of("health", "DescribeEvents", before) == {"ok": 1, "throttled": 0, "error": 0}


def snapshot_of(service: str, operation: str) -> dict[str, float]:
    return {o: calls(operation, o, service) for o in ("ok", "error", "throttled")}


def delta_of(service: str, operation: str, before: dict[str, float]) -> dict[str, float]:
    return {o: calls(operation, o, service) - v for o, v in before.items()}
