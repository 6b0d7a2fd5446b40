"""The sandbox's fault proxy in front of a real moto server, driven by boto3: calls pass
through unchanged until a service is throttled, then fail the way AWS throttling fails."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from orchestrator.sandbox.fault_proxy import (
    FaultProxy,
    ThrottleSpec,
    ThrottleSpecError,
    parse_throttle,
)
from tests.fixtures.moto_server import MotoServer

START_DEADLINE = 10.0


class _Running:
    """The proxy on its own event loop in a thread, so blocking boto3 calls can use it."""

    def __init__(self, upstream: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxy = FaultProxy(upstream)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_DEADLINE)

    def set(self, spec: ThrottleSpec) -> str:
        async def apply() -> str:
            return self.proxy.set_throttle(spec)

        return str(self.call(apply()))


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[_Running]:
    running = _Running(moto.endpoint_url)
    running.thread.start()
    try:
        running.call(running.proxy.start())
        yield running
    finally:
        running.call(running.proxy.stop())
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(START_DEADLINE)
        running.loop.close()


def _client(proxy: _Running, service: str) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=proxy.proxy.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # One attempt: the test sees each throttled answer instead of botocore's retries.
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10),
    )


def _zone(r53: Any) -> str:
    zone = r53.create_hosted_zone(Name="example.test.", CallerReference="t1")
    return str(zone["HostedZone"]["Id"])


def test_calls_pass_through_to_moto_unchanged(proxy: _Running) -> None:
    r53 = _client(proxy, "route53")
    zone_id = _zone(r53)
    assert r53.get_hosted_zone(Id=zone_id)["HostedZone"]["Name"] == "example.test."
    sqs = _client(proxy, "sqs")  # a JSON-protocol service passes through too
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    assert url in sqs.list_queues()["QueueUrls"]
    with pytest.raises(ClientError) as raised:  # moto's own errors are relayed as they are
        r53.get_hosted_zone(Id="ZNOSUCHZONE")
    assert raised.value.response["Error"]["Code"] == "NoSuchHostedZone"
    assert proxy.proxy.throttled_calls == 0


def test_a_throttled_service_gets_throttling_errors_for_the_count(proxy: _Running) -> None:
    r53 = _client(proxy, "route53")
    zone_id = _zone(r53)
    sqs = _client(proxy, "sqs")
    assert "next 2 calls" in proxy.set(parse_throttle("route53:2"))
    for _ in range(2):
        with pytest.raises(ClientError) as raised:
            r53.get_hosted_zone(Id=zone_id)
        assert raised.value.response["Error"]["Code"] == "Throttling"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        sqs.list_queues()  # another service is not throttled
    assert r53.get_hosted_zone(Id=zone_id)["HostedZone"]["Id"].endswith(zone_id.split("/")[-1])
    assert proxy.proxy.throttled_calls == 2


def test_throttle_until_off_and_json_protocol_error(proxy: _Running) -> None:
    sqs = _client(proxy, "sqs")
    proxy.set(parse_throttle("sqs"))
    for _ in range(3):
        with pytest.raises(ClientError) as raised:
            sqs.list_queues()
        assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    proxy.set(parse_throttle("off"))
    assert sqs.list_queues()["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert proxy.proxy.throttled_calls == 3


@pytest.mark.parametrize(
    ("arg", "spec"),
    [
        ("route53", ThrottleSpec("route53")),
        ("Route53:5", ThrottleSpec("route53", 5)),
        ("off", ThrottleSpec(None)),
        ("none", ThrottleSpec(None)),
    ],
)
def test_parse_throttle(arg: str, spec: ThrottleSpec) -> None:
    assert parse_throttle(arg) == spec


@pytest.mark.parametrize("arg", ["", "route53:0", "route53:x", "route 53", "r53:-1"])
def test_parse_throttle_refuses_bad_input(arg: str) -> None:
    with pytest.raises(ThrottleSpecError, match="throttle:"):
        parse_throttle(arg)
