"""The AWS Health API emulator, driven by the real SDKs (boto3 and aiobotocore) over HTTP.

What the sandbox and the poller rely on: filters and pagination behave as the real API
documents them, botocore parses every answer into the shapes and exception classes its
service model names, and the control API (Python and HTTP) opens, updates and closes events
and injects faults.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from orchestrator.sandbox.health_api import HealthApiEmulator
from tests.fixtures.binaries import port_open
from tests.fixtures.health_emulator import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    boto3_client,
)

EAST, EAST2, WEST = "us-east-1", "us-east-2", "us-west-2"


@asynccontextmanager
async def aio_client(emulator: HealthApiEmulator) -> AsyncIterator[Any]:
    session = AioSession()
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2, read_timeout=5
    )
    async with session.create_client(
        "health",
        region_name=EAST,
        endpoint_url=emulator.endpoint_url,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        config=config,
    ) as client:
        yield client


def raw_call(
    emulator: HealthApiEmulator,
    body: bytes,
    *,
    target: str | None = "AWSHealth_20160804.DescribeEvents",
    content_type: str = "application/x-amz-json-1.1",
    signed: bool = True,
) -> tuple[int, dict[str, Any]]:
    """One API request without an SDK: status and parsed JSON body."""
    headers = {"Content-Type": content_type}
    if target is not None:
        headers["X-Amz-Target"] = target
    if signed:
        headers["Authorization"] = (
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/health/aws4_request,"
            " SignedHeaders=host, Signature=0"
        )
    request = urllib.request.Request(
        emulator.endpoint_url + "/", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def control(
    emulator: HealthApiEmulator, path: str, body: Any = None, method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{emulator.endpoint_url}/_emulator/{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def arns(events: list[dict[str, Any]]) -> set[str]:
    return {e["arn"] for e in events}


# --- DescribeEvents ------------------------------------------------------------------------


def test_describe_events_filters_by_region_service_category_and_status(
    health_emulator: HealthApiEmulator,
) -> None:
    emu = health_emulator
    ec2_east = emu.open_event("EC2", EAST)
    rds_east = emu.open_event("RDS", EAST)
    ec2_west = emu.open_event("EC2", WEST)
    maintenance = emu.open_event(
        "EC2", EAST, category="scheduledChange", status="upcoming",
        event_type_code="AWS_EC2_SYSTEM_MAINTENANCE_EVENT",
    )  # fmt: skip
    closed = emu.open_event("EC2", EAST)
    emu.close_event(closed)
    client = boto3_client(emu)

    def query(**f: Any) -> set[str]:
        return arns(client.describe_events(filter=f, maxResults=100)["events"])

    assert query(regions=[EAST]) == {ec2_east, rds_east, maintenance, closed}
    assert query(regions=[EAST], services=["EC2"]) == {ec2_east, maintenance, closed}
    assert query(services=["EC2"], eventStatusCodes=["open"]) == {ec2_east, ec2_west}
    assert query(eventTypeCategories=["issue"], eventStatusCodes=["open", "upcoming"]) == {
        ec2_east,
        rds_east,
        ec2_west,
    }
    assert query(eventStatusCodes=["upcoming"]) == {maintenance}
    assert query(regions=[EAST2]) == set()
    assert query(services=["ec2"]) == set()  # service codes match exactly, as AWS does
    assert query() == {ec2_east, rds_east, ec2_west, maintenance, closed}


def test_events_carry_the_model_fields_with_timestamps(health_emulator: HealthApiEmulator) -> None:
    arn = health_emulator.open_event("EC2", EAST, availability_zone="us-east-1a")
    status, body = raw_call(health_emulator, b'{"filter": {"eventArns": ["%s"]}}' % arn.encode())
    assert status == 200
    (raw,) = body["events"]
    # JSON 1.1 sends timestamps as epoch seconds; botocore turns them into datetimes.
    assert isinstance(raw["startTime"], float)
    assert isinstance(raw["lastUpdatedTime"], float)
    assert "endTime" not in raw
    (event,) = boto3_client(health_emulator).describe_events(filter={"eventArns": [arn]})["events"]
    assert event["arn"] == arn
    assert arn.startswith("arn:aws:health:us-east-1::event/EC2/AWS_EC2_OPERATIONAL_ISSUE/")
    assert event["service"] == "EC2"
    assert event["eventTypeCode"] == "AWS_EC2_OPERATIONAL_ISSUE"
    assert event["eventTypeCategory"] == "issue"
    assert event["region"] == EAST
    assert event["availabilityZone"] == "us-east-1a"
    assert event["statusCode"] == "open"
    assert event["eventScopeCode"] == "PUBLIC"
    assert isinstance(event["startTime"], datetime)


def test_pagination_returns_every_event_once_newest_update_first(
    health_emulator: HealthApiEmulator,
) -> None:
    opened = [health_emulator.open_event("EC2", EAST) for _ in range(230)]
    health_emulator.open_event("RDS", EAST)  # filtered out on every page
    client = boto3_client(health_emulator)
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"filter": {"services": ["EC2"]}, "maxResults": 100}
        if token:
            kwargs["nextToken"] = token
        page = client.describe_events(**kwargs)
        pages += 1
        seen += [e["arn"] for e in page["events"]]
        token = page.get("nextToken")
        if not token:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 230
    assert seen == list(reversed(opened))  # sorted by lastUpdatedTime, newest first
    # Without maxResults a page holds the default size (10).
    first = client.describe_events(filter={"services": ["EC2"]})
    assert len(first["events"]) == health_emulator.default_page_size
    assert "nextToken" in first


def test_an_updated_event_moves_to_the_front(health_emulator: HealthApiEmulator) -> None:
    older = health_emulator.open_event("EC2", EAST)
    health_emulator.open_event("EC2", EAST)
    health_emulator.update_event(older, description="Recovering")
    events = boto3_client(health_emulator).describe_events()["events"]
    assert events[0]["arn"] == older


async def test_aiobotocore_paginator_walks_every_page(health_emulator: HealthApiEmulator) -> None:
    opened = {health_emulator.open_event("RDS", WEST) for _ in range(40)}
    async with aio_client(health_emulator) as client:
        paginator = client.get_paginator("describe_events")
        seen: list[str] = []
        pages = 0
        async for page in paginator.paginate(
            filter={"regions": [WEST]}, PaginationConfig={"PageSize": 7}
        ):
            pages += 1
            seen += [e["arn"] for e in page["events"]]
    assert pages == 6
    assert sorted(seen) == sorted(opened)


def test_a_token_from_another_query_is_an_invalid_pagination_token(
    health_emulator: HealthApiEmulator,
) -> None:
    for _ in range(3):
        health_emulator.open_event("EC2", EAST)
    client = boto3_client(health_emulator)
    token = client.describe_events(filter={"regions": [EAST]}, maxResults=1)["nextToken"]
    # Same token, other filter: rejected, as the real API ties a token to its query.
    with pytest.raises(client.exceptions.InvalidPaginationToken) as info:
        client.describe_events(filter={"regions": [WEST]}, maxResults=1, nextToken=token)
    assert info.value.response["Error"]["Code"] == "InvalidPaginationToken"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(client.exceptions.InvalidPaginationToken):
        client.describe_events(nextToken="bm90LWEtdG9rZW4=")
    # The same query may change its page size between pages.
    page = client.describe_events(filter={"regions": [EAST]}, maxResults=5, nextToken=token)
    assert len(page["events"]) == 2


def test_unsupported_locale(health_emulator: HealthApiEmulator) -> None:
    client = boto3_client(health_emulator)
    with pytest.raises(client.exceptions.UnsupportedLocale):
        client.describe_events(locale="xx-YY")
    assert client.describe_events(locale="en")["events"] == []


# --- DescribeEventDetails and DescribeAffectedEntities -------------------------------------


def test_describe_event_details_splits_known_and_unknown_arns(
    health_emulator: HealthApiEmulator,
) -> None:
    arn = health_emulator.open_event("RDS", EAST, description="Elevated API error rates")
    missing = arn.replace("/RDS/", "/EC2/")
    out = boto3_client(health_emulator).describe_event_details(eventArns=[arn, missing])
    (ok,) = out["successfulSet"]
    assert ok["event"]["arn"] == arn
    assert ok["eventDescription"]["latestDescription"] == "Elevated API error rates"
    (failed,) = out["failedSet"]
    assert failed["eventArn"] == missing
    assert failed["errorName"]
    assert failed["errorMessage"]


def test_describe_affected_entities_filters_paginates_and_resolves_on_close(
    health_emulator: HealthApiEmulator,
) -> None:
    emu = health_emulator
    instances = [f"i-{n:04d}" for n in range(25)]
    arn = emu.open_event(
        "EC2",
        EAST,
        affected_entities=[*instances, {"entityValue": "vol-1", "statusCode": "UNIMPAIRED"}],
    )
    other = emu.open_event("EC2", EAST, affected_entities=["i-other"])
    client = boto3_client(emu)
    paginator = client.get_paginator("describe_affected_entities")
    entities = [
        e
        for page in paginator.paginate(
            filter={"eventArns": [arn]}, PaginationConfig={"PageSize": 10}
        )
        for e in page["entities"]
    ]
    assert [e["entityValue"] for e in entities] == [*instances, "vol-1"]
    assert {e["eventArn"] for e in entities} == {arn}
    assert all(e["entityArn"].startswith("arn:aws:health:us-east-1:") for e in entities)
    assert all(e["awsAccountId"] == emu.account_id for e in entities)
    impaired = client.describe_affected_entities(
        filter={"eventArns": [arn, other], "statusCodes": ["IMPAIRED"]}, maxResults=100
    )["entities"]
    assert {e["entityValue"] for e in impaired} == {*instances, "i-other"}
    by_value = client.describe_affected_entities(
        filter={"eventArns": [arn], "entityValues": ["i-0003"]}
    )["entities"]
    assert [e["entityValue"] for e in by_value] == ["i-0003"]
    # The account-specific event is found through its entity too.
    events = client.describe_events(filter={"entityValues": ["i-other"]})["events"]
    assert arns(events) == {other}
    assert events[0]["eventScopeCode"] == "ACCOUNT_SPECIFIC"

    emu.close_event(arn)
    closed = client.describe_events(filter={"eventArns": [arn]})["events"][0]
    assert closed["statusCode"] == "closed"
    assert closed["endTime"] >= closed["startTime"]
    statuses = {
        e["statusCode"]
        for e in client.describe_affected_entities(filter={"eventArns": [arn]}, maxResults=100)[
            "entities"
        ]
    }
    assert statuses == {"RESOLVED"}


# --- faults and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("throttle", "ThrottlingException", 400),
        ("subscription_required", "SubscriptionRequiredException", 400),
        ("unavailable", "ServiceUnavailableException", 503),
    ],
)
def test_fault_modes_reach_botocore_as_client_errors(
    health_emulator: HealthApiEmulator, mode: str, code: str, status: int
) -> None:
    health_emulator.open_event("EC2", EAST)
    client = boto3_client(health_emulator)
    health_emulator.set_mode(mode)
    for call in (
        lambda: client.describe_events(),
        lambda: client.describe_affected_entities(
            filter={"eventArns": ["arn:aws:health:us-east-1::event/EC2/X_Y/X_Y_1"]}
        ),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == code
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    health_emulator.set_mode("normal")
    assert len(client.describe_events()["events"]) == 1


def test_a_fault_for_a_number_of_calls_then_normal(health_emulator: HealthApiEmulator) -> None:
    client = boto3_client(health_emulator)
    health_emulator.set_mode("throttle", calls=2)
    for _ in range(2):
        with pytest.raises(ClientError, match="ThrottlingException"):
            client.describe_events()
    assert client.describe_events()["events"] == []
    assert health_emulator.mode == "normal"
    assert health_emulator.calls("DescribeEvents") == 3


def test_botocore_retries_a_throttled_call_by_itself(health_emulator: HealthApiEmulator) -> None:
    # The SDK default (standard mode) retries throttling: the emulator's fault is a real one.
    client = boto3_client(health_emulator, retries={"mode": "standard", "total_max_attempts": 3})
    health_emulator.set_mode("throttle", calls=1)
    page = client.describe_events()
    assert page["ResponseMetadata"]["RetryAttempts"] == 1
    assert health_emulator.calls("DescribeEvents") == 2


def test_protocol_errors_have_the_json_error_shape(health_emulator: HealthApiEmulator) -> None:
    status, body = raw_call(health_emulator, b"{}", target="AWSHealth_20160804.DescribeNothing")
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    status, body = raw_call(health_emulator, b"{}", target=None)
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    status, body = raw_call(health_emulator, b"{}", signed=False)
    assert (status, body["__type"]) == (403, "MissingAuthenticationTokenException")
    status, body = raw_call(health_emulator, b"{not json")
    assert (status, body["__type"]) == (400, "SerializationException")
    status, body = raw_call(health_emulator, b"{}", content_type="application/json")
    assert (status, body["__type"]) == (400, "SerializationException")
    status, body = raw_call(health_emulator, b'{"maxResults": 101}')
    assert (status, body["__type"]) == (400, "ValidationException")
    assert "maxResults" in body["message"]
    status, body = raw_call(health_emulator, b'{"filter": {"eventStatusCodes": ["gone"]}}')
    assert (status, body["__type"]) == (400, "ValidationException")
    assert "filter.eventStatusCodes" in body["message"]
    target = "AWSHealth_20160804.DescribeAffectedEntities"
    status, body = raw_call(health_emulator, b"{}", target=target)
    assert (status, body["__type"]) == (400, "ValidationException")


def test_requests_are_recorded_with_their_signing_region(
    health_emulator: HealthApiEmulator,
) -> None:
    boto3_client(health_emulator).describe_events(filter={"regions": [WEST]})
    (request,) = health_emulator.requests()
    assert request == {
        "operation": "DescribeEvents",
        "signing_region": EAST,
        "body": {"filter": {"regions": [WEST]}},
    }


# --- control API ---------------------------------------------------------------------------


def test_http_control_endpoints_drive_the_emulator(health_emulator: HealthApiEmulator) -> None:
    emu = health_emulator
    status, body = control(
        emu, "open", {"service": "EC2", "region": EAST, "affected_entities": ["i-1"]}
    )
    assert status == 201
    arn = body["arn"]
    client = boto3_client(emu)
    assert arns(client.describe_events(filter={"eventStatusCodes": ["open"]})["events"]) == {arn}

    assert control(emu, "update", {"arn": arn, "description": "Mitigated"})[0] == 200
    details = client.describe_event_details(eventArns=[arn])["successfulSet"][0]
    assert details["eventDescription"]["latestDescription"] == "Mitigated"

    assert control(emu, "close", {"arn": arn})[0] == 200
    assert client.describe_events(filter={"eventStatusCodes": ["open"]})["events"] == []

    assert control(emu, "mode", {"mode": "throttle", "calls": 1})[0] == 200
    with pytest.raises(ClientError, match="ThrottlingException"):
        client.describe_events()

    status, state = control(emu, "state", method="GET")
    assert status == 200
    assert state["mode"] == "normal"
    assert state["calls"]["DescribeEvents"] == 3
    assert [e["arn"] for e in state["events"]] == [arn]

    assert control(emu, "reset")[0] == 200
    assert emu.events() == []


def test_http_control_endpoints_reject_bad_input_clearly(
    health_emulator: HealthApiEmulator,
) -> None:
    emu = health_emulator
    status, body = control(emu, "open", {"region": EAST})
    assert status == 400
    assert "'service' is required" in body["error"]
    status, body = control(emu, "open", {"service": "EC2", "region": EAST, "category": "oops"})
    assert status == 400
    assert "category must be one of" in body["error"]
    status, body = control(emu, "mode", {"mode": "sideways"})
    assert status == 400
    assert "mode must be one of" in body["error"]
    status, body = control(emu, "close", {"arn": "arn:aws:health:us-east-1::event/A/B/C"})
    assert status == 404
    assert "no such event" in body["error"]
    status, body = control(emu, "delay", {"seconds": -1})
    assert status == 400


def test_python_control_api_rejects_bad_input(health_emulator: HealthApiEmulator) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        health_emulator.open_event("EC2", EAST, status="closed")
    with pytest.raises(ValueError, match="entity statusCode"):
        health_emulator.open_event(
            "EC2", EAST, affected_entities=[{"entityValue": "i-1", "statusCode": "BROKEN"}]
        )
    with pytest.raises(KeyError, match="no such event"):
        health_emulator.close_event("arn:aws:health:us-east-1::event/A/B/C")
    with pytest.raises(ValueError, match="calls must be at least 1"):
        health_emulator.set_mode("throttle", calls=0)
    with pytest.raises(ValueError, match="loopback"):
        HealthApiEmulator(host="0.0.0.0")


async def test_runs_in_process_on_the_callers_loop() -> None:
    emulator = HealthApiEmulator()
    async with emulator:
        port = emulator.port
        arn = emulator.open_event("ELASTICLOADBALANCING", EAST)
        async with aio_client(emulator) as client:
            page = await client.describe_events(filter={"services": ["ELASTICLOADBALANCING"]})
        assert arns(page["events"]) == {arn}
    assert not port_open(port)
    await emulator.stop()  # idempotent
