"""The AWS client factory: configuration errors, and every call counted once by outcome.

Responses come from botocore's Stubber (aiobotocore's AioStubber), which checks our request
shapes against the service model; the "no response at all" case uses a closed loopback port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.stub import AioStubber
from aiohttp import web
from prometheus_client import REGISTRY

from orchestrator.signals.aws_clients import (
    AwsClientConfig,
    AwsClients,
    classify_outcome,
    error_code,
)
from tests.fixtures.binaries import free_port

FAKE: dict[str, Any] = {"access_key_id": "testing", "secret_access_key": "testing"}
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def calls(operation: str, outcome: str, service: str = "cloudwatch") -> float:
    labels = {"aws_service": service, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("failoverd_aws_api_calls_total", labels) or 0.0


def snapshot(operation: str) -> dict[str, float]:
    return {o: calls(operation, o) for o in ("ok", "error", "throttled")}


def delta(operation: str, before: dict[str, float]) -> dict[str, float]:
    return {o: calls(operation, o) - v for o, v in before.items()}


async def test_success_and_error_responses_are_counted_once_by_outcome() -> None:
    clients = AwsClients(AwsClientConfig(**FAKE))
    before = snapshot("DescribeAlarms")
    async with clients.client("cloudwatch", "us-east-1") as client:
        with AioStubber(client) as stub:
            stub.add_response("describe_alarms", {"MetricAlarms": []}, {"AlarmNames": ["a"]})
            stub.add_client_error("describe_alarms", "Throttling", http_status_code=400)
            stub.add_client_error("describe_alarms", "SlowDown", http_status_code=503)
            stub.add_client_error("describe_alarms", "Whatever", http_status_code=429)
            stub.add_client_error("describe_alarms", "AccessDenied", http_status_code=403)
            assert await client.describe_alarms(AlarmNames=["a"]) == {"MetricAlarms": []}
            for expected in ("Throttling", "SlowDown", "Whatever", "AccessDenied"):
                with pytest.raises(client.exceptions.ClientError) as caught:
                    await client.describe_alarms()
                assert error_code(caught.value) == expected
            stub.assert_no_pending_responses()
    assert delta("DescribeAlarms", before) == {"ok": 1, "throttled": 3, "error": 1}


async def test_calls_through_another_client_are_not_counted_twice() -> None:
    clients = AwsClients(AwsClientConfig(**FAKE))
    before = snapshot("GetMetricData")
    async with (
        clients.client("cloudwatch", "us-east-1") as east,
        clients.client("cloudwatch", "us-west-2") as west,
    ):
        with AioStubber(east) as stub_east, AioStubber(west) as stub_west:
            stub_east.add_response("get_metric_data", {"MetricDataResults": []})
            stub_west.add_response("get_metric_data", {"MetricDataResults": []})
            params: dict[str, Any] = {
                "MetricDataQueries": [],
                "StartTime": 0,
                "EndTime": 60,
            }
            await east.get_metric_data(**params)
            await west.get_metric_data(**params)
    assert delta("GetMetricData", before) == {"ok": 2, "throttled": 0, "error": 0}


async def test_no_response_at_all_is_an_error() -> None:
    config = AwsClientConfig(
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens here
        connect_timeout=0.5,
        max_attempts=1,
        **FAKE,
    )
    before = snapshot("DescribeAlarms")
    async with AwsClients(config).client("cloudwatch", "us-east-1") as client:
        with pytest.raises(Exception) as caught:
            await client.describe_alarms()
    assert error_code(caught.value) == "EndpointConnectionError"
    assert delta("DescribeAlarms", before) == {"ok": 0, "throttled": 0, "error": 1}


async def test_a_transient_failure_is_retried_up_to_max_attempts_and_counted_once(
    unavailable_endpoint: tuple[str, list[int]],
) -> None:
    # A loopback server that is always unavailable: the standard retry mode tries again
    # (after a jittered backoff), and the call is counted once, with its final outcome.
    url, hits = unavailable_endpoint
    config = AwsClientConfig(endpoint_url=url, max_attempts=2, read_timeout=2.0, **FAKE)
    before = snapshot("DescribeAlarms")
    async with AwsClients(config).client("cloudwatch", "us-east-1") as client:
        with pytest.raises(client.exceptions.ClientError):
            await client.describe_alarms()
    assert hits[0] == 2
    assert delta("DescribeAlarms", before) == {"ok": 0, "throttled": 0, "error": 1}


async def test_clients_carry_the_configured_timeouts_retries_and_endpoint() -> None:
    config = AwsClientConfig(
        endpoint_url="http://127.0.0.1:4566",
        connect_timeout=1.5,
        read_timeout=4.0,
        max_attempts=2,
        **FAKE,
    )
    async with AwsClients(config).client("rds", "eu-west-1") as client:
        cfg = client.meta.config
        assert (cfg.connect_timeout, cfg.read_timeout) == (1.5, 4.0)
        # Two attempts in all, the first included (botocore's "max_attempts" would mean
        # two RETRIES, i.e. three attempts).
        assert cfg.retries == {"mode": "standard", "total_max_attempts": 2}
        assert client.meta.region_name == "eu-west-1"
        assert client.meta.endpoint_url == "http://127.0.0.1:4566"


async def test_a_service_endpoint_wins_over_the_shared_one_for_that_service_only() -> None:
    config = AwsClientConfig(
        endpoint_url="http://127.0.0.1:4566",
        service_endpoints={"arc-region-switch": "http://127.0.0.1:4999"},
        **FAKE,
    )
    async with AwsClients(config).client("arc-region-switch", "us-west-2") as client:
        assert client.meta.endpoint_url == "http://127.0.0.1:4999"
    async with AwsClients(config).client("rds", "us-west-2") as client:
        assert client.meta.endpoint_url == "http://127.0.0.1:4566"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be a positive number"),
        ({"read_timeout": float("inf")}, "read_timeout must be a positive number"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 10"),
        ({"access_key_id": "AKIA"}, "needs both access_key_id and secret_access_key"),
        ({"secret_access_key": "s"}, "needs both access_key_id and secret_access_key"),
        ({"session_token": "t"}, "session_token needs access_key_id"),
        ({"endpoint_url": "127.0.0.1:5000"}, "endpoint_url must start with http://"),
        (
            {"service_endpoints": {"arc-region-switch": "127.0.0.1:1"}},
            "service_endpoints\\['arc-region-switch'\\] must start with http://",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AwsClientConfig(**kwargs)


async def test_bad_region_or_service_is_refused_before_any_call() -> None:
    clients = AwsClients(AwsClientConfig(**FAKE))
    with pytest.raises(ValueError, match="not an AWS region: 'us_east_1'"):
        async with clients.client("cloudwatch", "us_east_1"):
            pass
    with pytest.raises(ValueError, match="not an AWS service name: 'Cloud Watch'"):
        async with clients.client("Cloud Watch", "us-east-1"):
            pass


def test_secrets_stay_out_of_the_config_repr() -> None:
    text = repr(AwsClientConfig(access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t-value"))
    assert "s3cr3t-value" not in text


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (200, None, "ok"),
        (400, "ThrottlingException", "throttled"),
        (400, "RequestLimitExceeded", "throttled"),
        (429, None, "throttled"),
        (400, "ValidationError", "error"),
        (500, "InternalFailure", "error"),
    ],
)
def test_outcome_classification(status: int, code: str | None, outcome: str) -> None:
    assert classify_outcome(status, code) == outcome


@pytest.fixture
async def unavailable_endpoint() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback AWS endpoint that answers every request 503; yields (url, [hits])."""
    hits = [0]

    async def unavailable(_: web.Request) -> web.Response:
        hits[0] += 1
        return web.Response(status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


def _settings_file(tmp_path: Path, endpoint: str, attempts: int) -> Path:
    path = tmp_path / "failoverd.yaml"
    path.write_text(
        f"aws:\n  endpoint_url: {endpoint}\n  max_attempts: {attempts}\n"
        "  connect_timeout: 1s\n  read_timeout: 2s\n",
        encoding="utf-8",
    )
    return path


def _daemon_clients(path: Path) -> AwsClients:
    from orchestrator.daemon.main import Daemon, load_settings

    return Daemon(load_settings(str(path), {})).aws


def _cli_clients(path: Path) -> AwsClients:
    from orchestrator.cli.main import cli_aws_clients

    clients = cli_aws_clients(str(path), None)
    assert clients is not None
    return clients


@pytest.mark.parametrize("attempts", [1, 4])
@pytest.mark.parametrize("build", [_daemon_clients, _cli_clients], ids=["daemon", "cli"])
async def test_aws_max_attempts_setting_reaches_the_clients(
    tmp_path: Path,
    unavailable_endpoint: tuple[str, list[int]],
    attempts: int,
    build: Callable[[Path], AwsClients],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in FAKE_ENV.items():  # the standard chain, as in production
        monkeypatch.setenv(name, value)
    # aws.max_attempts in the settings file: the daemon's clients and the CLI's (readiness,
    # drill) make exactly that many attempts at a call that keeps failing with a 503.
    url, hits = unavailable_endpoint
    clients = build(_settings_file(tmp_path, url, attempts))
    async with clients.client("cloudwatch", "us-east-1") as client:
        assert client.meta.config.retries["total_max_attempts"] == attempts
        assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (1, 2)
        with pytest.raises(client.exceptions.ClientError):
            await client.describe_alarms()
    assert hits[0] == attempts
