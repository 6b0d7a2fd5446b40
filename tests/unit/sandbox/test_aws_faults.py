"""The proxy's chaos faults in front of a real moto, driven by boto3: a share of calls fails
with AWS's own throttling and server errors (botocore retries them), and a blackholed
region's calls get no answer while other regions and global services go on."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from orchestrator.sandbox.aws_faults import (
    AwsFaultError,
    ErrorRate,
    parse_error_rate,
    parse_region,
)
from tests.unit.sandbox import test_fault_proxy as _proxy_tests
from tests.unit.sandbox.test_fault_proxy import _Running

proxy = _proxy_tests.proxy  # its fixture, under the same name


def client(proxy: _Running, service: str, region: str, attempts: int = 1, read: float = 10) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=proxy.proxy.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"total_max_attempts": attempts, "mode": "standard"},
            read_timeout=read,
            connect_timeout=2,
        ),
    )


def apply(proxy: _Running, fn: Any, *args: Any) -> str:
    async def run() -> str:
        return str(fn(*args))

    return str(proxy.call(run()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30%", ErrorRate(0.3)),
        ("0.3", ErrorRate(0.3)),
        ("30%:5xx", ErrorRate(0.3, ("5xx",))),
        ("100%:throttle@7", ErrorRate(1.0, ("throttle",), 7)),
        ("off", None),
    ],
)
def test_error_rates_parse(text: str, expected: ErrorRate | None) -> None:
    assert parse_error_rate(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0.3:boom", "150%", "-1", "30%@x"])
def test_bad_error_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(AwsFaultError, match="aws-errors"):
        parse_error_rate(text)
    with pytest.raises(AwsFaultError, match="expected a region"):
        parse_region("moon", "blackhole")


def test_every_call_failing_gets_aws_server_errors_in_each_protocol(proxy: _Running) -> None:
    apply(proxy, proxy.proxy.chaos.set_errors, ErrorRate(1.0, ("5xx",), 1))
    for service, call in (
        ("rds", lambda c: c.describe_db_instances()),  # query protocol, XML errors
        ("ecs", lambda c: c.list_clusters()),  # JSON protocol
    ):
        with pytest.raises(ClientError) as err:
            call(client(proxy, service, "us-east-1"))
        meta = err.value.response["ResponseMetadata"]
        assert meta["HTTPStatusCode"] in (500, 503), service
        assert err.value.response["Error"]["Code"] in ("InternalFailure", "ServiceUnavailable")
    apply(proxy, proxy.proxy.chaos.set_errors, ErrorRate(1.0, ("throttle",), 1))
    with pytest.raises(ClientError) as err:
        client(proxy, "rds", "us-east-1").describe_db_instances()
    assert err.value.response["Error"]["Code"] == "Throttling"


def test_botocore_retries_through_a_30_percent_error_rate(proxy: _Running) -> None:
    apply(proxy, proxy.proxy.chaos.set_errors, ErrorRate(0.3, seed=42))
    rds = client(proxy, "rds", "us-east-1", attempts=5)
    retries = 0
    for _ in range(8):
        answer = rds.describe_db_instances()
        retries += answer["ResponseMetadata"]["RetryAttempts"]
    injected = proxy.proxy.chaos.injected
    assert injected["throttle"] + injected["5xx"] == retries > 0


def test_a_blackholed_region_does_not_answer_and_the_others_do(proxy: _Running) -> None:
    apply(proxy, proxy.proxy.chaos.set_blackhole, "us-west-2")
    with pytest.raises(ReadTimeoutError):
        client(proxy, "rds", "us-west-2", read=1).describe_db_instances()
    client(proxy, "rds", "us-east-1", read=1).describe_db_instances()
    apply(proxy, proxy.proxy.chaos.set_blackhole, "us-east-1")
    # Route 53 signs for us-east-1, but a global control plane's loss is another fault.
    client(proxy, "route53", "us-east-1", read=1).list_hosted_zones()
    apply(proxy, proxy.proxy.chaos.set_blackhole, None)
    client(proxy, "rds", "us-east-1", read=1).describe_db_instances()
    assert proxy.proxy.chaos.injected["blackhole"] == 1
