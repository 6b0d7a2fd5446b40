"""The ARC Region switch emulator, driven by the real SDKs (boto3 and aiobotocore) over HTTP.

What the action and the sandbox rely on: botocore parses every answer into the shapes and
exception classes of its service model, on both wire protocols the model lists (JSON 1.0,
which botocore picks, and Smithy RPC v2 CBOR); executions run their steps on the clock;
approvals, declines, failures, cancellations and client tokens behave as AWS documents them;
calls reach only the regions the plan lives in; a region taken down answers nothing.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cbor2
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.sandbox.region_switch_api import (
    _HANDLERS,
    _STATUS,
    RegionSwitchEmulator,
    plan_document,
)
from tests.fixtures.region_switch_emulator import WallClock, aio_client, boto3_client

EAST, WEST, EU = "us-east-2", "us-west-2", "eu-west-1"
STEPS = [("scale", "EC2AutoScaling"), ("approve", "ManualApproval"), ("flip", "ARCRoutingControl")]
World = tuple[RegionSwitchEmulator, WallClock]


def seed(emulator: RegionSwitchEmulator, **steps: dict[str, Any]) -> str:
    return emulator.add_plan(plan_document("orders", (EAST, WEST), steps=STEPS), steps)


@pytest.fixture(params=["json", "cbor"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def client(world: World, protocol: str, tmp_path: Path, region: str = WEST) -> Any:
    return boto3_client(world[0], region, protocol=protocol, tmp=tmp_path)


def code(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_a_whole_execution_with_an_approval(
    region_switch: World, protocol: str, tmp_path: Path
) -> None:
    emulator, clock = region_switch
    arn = seed(emulator, scale={"duration": 30}, flip={"duration": 10})
    c = client(region_switch, protocol, tmp_path)
    assert c.meta.service_model.resolved_protocol == (
        "smithy-rpc-v2-cbor" if protocol == "cbor" else "json"
    )
    started = c.start_plan_execution(
        planArn=arn, targetRegion=WEST, action="activate", mode="ungraceful", comment="why"
    )
    assert started["activateRegion"] == WEST and started["plan"] == arn
    ex_id = started["executionId"]

    got = c.get_plan_execution(planArn=arn, executionId=ex_id)
    assert (got["executionState"], got["mode"], got["executionRegion"]) == (
        "inProgress",
        "ungraceful",
        WEST,
    )
    assert got["startTime"].timestamp() == clock.now()
    assert [(s["name"], s["status"]) for s in got["stepStates"]] == [
        ("scale", "running"),
        ("approve", "notStarted"),
        ("flip", "notStarted"),
    ]
    clock.advance(30)
    got = c.get_plan_execution(planArn=arn, executionId=ex_id)
    assert got["executionState"] == "pendingManualApproval"
    assert got["stepStates"][1]["status"] == "pendingApproval"
    assert got["stepStates"][0]["endTime"].timestamp() == got["startTime"].timestamp() + 30

    clock.advance(100)  # an approval waits, however long (within its timeout)
    assert c.get_plan_execution(planArn=arn, executionId=ex_id)["executionState"] == (
        "pendingManualApproval"
    )
    c.approve_plan_execution_step(
        planArn=arn, executionId=ex_id, stepName="approve", approval="approve", comment="go"
    )
    clock.advance(10)
    got = c.get_plan_execution(planArn=arn, executionId=ex_id)
    assert got["executionState"] == "completed"
    assert got["endTime"].timestamp() - got["startTime"].timestamp() == 140
    assert got["actualRecoveryTime"] == "PT2M20S"
    events = c.list_plan_execution_events(planArn=arn, executionId=ex_id)["items"]
    assert [(e["type"], e.get("stepName")) for e in events] == [
        ("executionStarted", None),
        ("stepStarted", "scale"),
        ("stepSucceeded", "scale"),
        ("stepStarted", "approve"),
        ("stepPendingApproval", "approve"),
        ("executionPendingApproval", None),
        ("stepSucceeded", "approve"),
        ("stepStarted", "flip"),
        ("stepSucceeded", "flip"),
        ("executionSucceeded", None),
    ]
    assert all(e["previousEventId"] == p["eventId"] for p, e in itertools.pairwise(events))
    assert "go" in events[6]["description"]
    listed = c.list_plan_executions(planArn=arn)["items"]
    assert [(x["executionId"], x["executionState"], x["comment"]) for x in listed] == [
        (ex_id, "completed", "why")
    ]


def test_pagination_of_steps_and_events(
    region_switch: World, protocol: str, tmp_path: Path
) -> None:
    emulator, clock = region_switch
    arn = seed(emulator, scale={"duration": 1})
    c = client(region_switch, protocol, tmp_path)
    ex_id = c.start_plan_execution(planArn=arn, targetRegion=WEST, action="activate")["executionId"]
    clock.advance(1)
    first = c.get_plan_execution(planArn=arn, executionId=ex_id, maxResults=2)
    assert [s["name"] for s in first["stepStates"]] == ["scale", "approve"]
    rest = c.get_plan_execution(
        planArn=arn, executionId=ex_id, maxResults=2, nextToken=first["nextToken"]
    )
    assert [s["name"] for s in rest["stepStates"]] == ["flip"] and "nextToken" not in rest
    pages = c.get_paginator("list_plan_execution_events").paginate(
        planArn=arn, executionId=ex_id, PaginationConfig={"PageSize": 2}
    )
    types = [e["type"] for page in pages for e in page["items"]]
    assert types[:3] == ["executionStarted", "stepStarted", "stepSucceeded"] and len(types) == 6
    only = c.list_plan_execution_events(planArn=arn, executionId=ex_id, name="scale")["items"]
    assert {e["stepName"] for e in only} == {"scale"}
    with pytest.raises(ClientError) as bad:
        c.list_plan_execution_events(planArn=arn, executionId=ex_id, nextToken="forged.1")
    assert code(bad.value) == ("IllegalArgumentException", 400)


def test_client_tokens_are_idempotent_per_region(
    region_switch: World, protocol: str, tmp_path: Path
) -> None:
    emulator, _clock = region_switch
    arn = seed(emulator)
    c = client(region_switch, protocol, tmp_path)
    args = {"planArn": arn, "targetRegion": WEST, "action": "activate", "mode": "graceful"}
    first = c.start_plan_execution(clientToken="run-1/switch", **args)["executionId"]
    again = c.start_plan_execution(clientToken="run-1/switch", **args)["executionId"]
    assert again == first and len(emulator.executions(arn)) == 1
    with pytest.raises(c.exceptions.ConflictException) as conflict:
        c.start_plan_execution(clientToken="run-1/switch", **{**args, "mode": "ungraceful"})
    assert code(conflict.value) == ("ConflictException", 409)
    # Another token while the first execution is active: one active execution per plan.
    with pytest.raises(c.exceptions.IllegalStateException):
        c.start_plan_execution(clientToken="run-2/switch", **args)
    c.cancel_plan_execution(planArn=arn, executionId=first, comment="stop")
    # The token still names the first execution, canceled now.
    assert c.start_plan_execution(clientToken="run-1/switch", **args)["executionId"] == first
    assert emulator.executions(arn)[0]["state"] == "canceled"


def test_executions_are_regional_and_plans_live_in_their_two_regions(
    region_switch: World, tmp_path: Path
) -> None:
    emulator, _ = region_switch
    arn = seed(emulator)
    west, east, eu = (boto3_client(emulator, r) for r in (WEST, EAST, EU))
    ex_id = west.start_plan_execution(planArn=arn, targetRegion=WEST, action="activate")[
        "executionId"
    ]
    assert east.get_plan_in_region(arn=arn)["plan"]["regions"] == [EAST, WEST]
    with pytest.raises(east.exceptions.ResourceNotFoundException):
        east.get_plan_execution(planArn=arn, executionId=ex_id)
    assert east.list_plan_executions(planArn=arn)["items"] == []
    with pytest.raises(eu.exceptions.ResourceNotFoundException):
        eu.get_plan_in_region(arn=arn)
    # GetPlan is a control-plane call: any region's client reaches it.
    assert eu.get_plan(arn=arn)["plan"]["name"] == "orders"
    west.cancel_plan_execution(planArn=arn, executionId=ex_id)
    with pytest.raises(west.exceptions.IllegalArgumentException):
        west.start_plan_execution(planArn=arn, targetRegion=EU, action="activate")
    assert emulator.calls[("StartPlanExecution", WEST)] == 1


def test_a_region_down_drops_its_calls_and_us_east_1_down_takes_the_control_plane(
    region_switch: World,
) -> None:
    emulator, _ = region_switch
    arn = seed(emulator)
    east, west = boto3_client(emulator, EAST), boto3_client(emulator, WEST)
    emulator.set_region_down(EAST)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        east.get_plan_in_region(arn=arn)
    assert west.get_plan_in_region(arn=arn)["plan"]["arn"] == arn
    emulator.set_region_down("us-east-1")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        west.get_plan(arn=arn)
    assert west.get_plan_in_region(arn=arn)["plan"]["arn"] == arn
    emulator.set_region_down(EAST, down=False)
    assert east.get_plan_in_region(arn=arn)["plan"]["arn"] == arn


def test_failures_declines_timeouts_and_skips(
    region_switch: World, protocol: str, tmp_path: Path
) -> None:
    emulator, clock = region_switch
    arn = seed(emulator, scale={"duration": 5, "fail": "ASG not found"})
    c = client(region_switch, protocol, tmp_path)

    def run(mode: str = "graceful") -> str:
        return str(
            c.start_plan_execution(planArn=arn, targetRegion=WEST, action="activate", mode=mode)[
                "executionId"
            ]
        )

    ex = run()
    clock.advance(5)
    got = c.get_plan_execution(planArn=arn, executionId=ex)
    assert got["executionState"] == "failed" and got["stepStates"][0]["status"] == "failed"
    failed = [
        e
        for e in c.list_plan_execution_events(planArn=arn, executionId=ex)["items"]
        if e["type"] == "stepFailed"
    ]
    assert failed[0]["error"] == "ASG not found"

    emulator.set_step(arn, "scale", duration=5, fail="ASG not found", pause_on_failure=True)
    ex = run()
    clock.advance(5)
    assert c.get_plan_execution(planArn=arn, executionId=ex)["executionState"] == (
        "pausedByFailedStep"
    )
    c.cancel_plan_execution(planArn=arn, executionId=ex)

    emulator.set_step(arn, "scale", duration=5)
    ex = run()
    clock.advance(5)
    c.approve_plan_execution_step(
        planArn=arn, executionId=ex, stepName="approve", approval="decline", comment="not now"
    )
    got = c.get_plan_execution(planArn=arn, executionId=ex)
    assert got["executionState"] == "failed" and got["stepStates"][1]["status"] == "failed"
    with pytest.raises(c.exceptions.ResourceNotFoundException):  # not pending approval
        c.approve_plan_execution_step(
            planArn=arn, executionId=ex, stepName="approve", approval="approve"
        )

    ex = run()
    clock.advance(5 + 3600)  # the approval block's timeoutMinutes is 60
    assert c.get_plan_execution(planArn=arn, executionId=ex)["executionState"] == "failed"

    emulator.set_step(arn, "approve", skip_when_ungraceful=True)
    emulator.set_step(arn, "flip", duration=2)
    ex = run("ungraceful")
    clock.advance(7)
    got = c.get_plan_execution(planArn=arn, executionId=ex)
    assert got["executionState"] == "completed"
    assert [s["status"] for s in got["stepStates"]] == ["completed", "skipped", "completed"]


def test_evaluation_status_and_its_warnings(
    region_switch: World, protocol: str, tmp_path: Path
) -> None:
    emulator, _ = region_switch
    arn = seed(emulator)
    c = client(region_switch, protocol, tmp_path)
    status = c.get_plan_evaluation_status(planArn=arn)
    assert (status["evaluationState"], status["warnings"], status["region"]) == ("passed", [], WEST)
    emulator.set_evaluation(arn, "actionRequired", ["role lacks rds:FailoverGlobalCluster", "ASG"])
    status = c.get_plan_evaluation_status(planArn=arn, maxResults=1)
    assert status["evaluationState"] == "actionRequired"
    assert [w["warningMessage"] for w in status["warnings"]] == [
        "role lacks rds:FailoverGlobalCluster"
    ]
    assert status["warnings"][0]["warningStatus"] == "active"
    more = c.get_plan_evaluation_status(planArn=arn, nextToken=status["nextToken"])
    assert [w["warningMessage"] for w in more["warnings"]] == ["ASG"]


def test_validation_and_faults(region_switch: World, protocol: str, tmp_path: Path) -> None:
    emulator, _ = region_switch
    arn = seed(emulator)
    c = client(region_switch, protocol, tmp_path)
    with pytest.raises(ClientError) as bad:
        c.get_plan_execution(planArn=arn, executionId="nope")
    assert code(bad.value) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as bad:
        c.get_plan_execution(planArn=arn, executionId="x", maxResults=100)
    assert code(bad.value)[0] == "ResourceNotFoundException"
    emulator.set_mode("throttle", calls=1)
    with pytest.raises(ClientError) as throttled:
        c.get_plan_in_region(arn=arn)
    assert code(throttled.value) == ("ThrottlingException", 400)
    assert c.get_plan_in_region(arn=arn)["plan"]["arn"] == arn  # one call only
    emulator.set_mode("unavailable")
    with pytest.raises(ClientError) as down:
        c.get_plan_in_region(arn=arn)
    assert code(down.value) == ("ServiceUnavailableException", 503)
    emulator.set_mode("normal")
    with pytest.raises(ValueError, match="exactly 2"):
        emulator.add_plan(plan_document("x", (EAST, WEST, EU), steps=STEPS))


async def test_aiobotocore_on_both_protocols(region_switch: World, tmp_path: Path) -> None:
    emulator, clock = region_switch
    arn = seed(emulator, scale={"duration": 3})
    for protocol in ("json", "cbor"):
        async with aio_client(emulator, WEST, protocol=protocol, tmp=tmp_path) as c:
            started = await c.start_plan_execution(
                planArn=arn, targetRegion=WEST, action="activate", clientToken=protocol
            )
            clock.advance(3)
            got = await c.get_plan_execution(planArn=arn, executionId=started["executionId"])
            assert got["executionState"] == "pendingManualApproval"
            try:
                await c.get_plan_in_region(arn=arn.replace("orders", "other"))
            except c.exceptions.ResourceNotFoundException as exc:
                assert exc.response["Error"]["Code"] == "ResourceNotFoundException"
            else:
                pytest.fail("an unknown plan must be ResourceNotFoundException")
            await c.cancel_plan_execution(planArn=arn, executionId=started["executionId"])


def raw(emulator: RegionSwitchEmulator, path: str, body: bytes, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(
        emulator.endpoint_url + path, data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


SIGNED = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/"
    "arc-region-switch/aws4_request, SignedHeaders=host, Signature=0"
}


def test_the_wire_errors_an_sdk_never_sends(region_switch: World) -> None:
    emulator, _ = region_switch
    arn = seed(emulator)
    cbor_path = "/service/ArcRegionSwitch/operation/GetPlanInRegion"
    cbor_headers = {**SIGNED, "smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"}
    status, headers, body = raw(emulator, cbor_path, cbor2.dumps({"arn": arn}), cbor_headers)
    assert status == 200 and headers["smithy-protocol"] == "rpc-v2-cbor"
    assert cbor2.loads(body)["plan"]["arn"] == arn
    status, headers, body = raw(
        emulator, cbor_path, cbor2.dumps({"arn": arn}), {**cbor_headers, "smithy-protocol": "x"}
    )
    assert status == 400 and cbor2.loads(body)["__type"].endswith("#SerializationException")
    status, _, body = raw(emulator, cbor_path, b"\xff\x00", cbor_headers)
    assert status == 400 and cbor2.loads(body)["__type"].endswith("#SerializationException")
    unsigned = {k: v for k, v in cbor_headers.items() if k != "Authorization"}
    status, _, body = raw(emulator, cbor_path, cbor2.dumps({"arn": arn}), unsigned)
    assert (status, cbor2.loads(body)["__type"].rsplit("#")[-1]) == (
        403,
        "MissingAuthenticationTokenException",
    )
    json_headers = {
        **SIGNED,
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "ArcRegionSwitch.CreatePlan",
    }
    status, _, body = raw(emulator, "/", b"{}", json_headers)
    assert (status, json.loads(body)["__type"].rsplit("#")[-1]) == (
        404,
        "UnknownOperationException",
    )


def control(emulator: RegionSwitchEmulator, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        emulator.endpoint_url + path,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_control_api_over_http(region_switch: World) -> None:
    emulator, clock = region_switch
    doc = plan_document("orders", (EAST, WEST), steps=STEPS)
    status, body = control(
        emulator, "/_emulator/plan", {"plan": doc, "steps": {"scale": {"duration": 4}}}
    )
    assert status == 201 and body["arn"] == doc["arn"]
    status, body = control(emulator, "/_emulator/plan", {"plan": {**doc, "regions": [EAST]}})
    assert status == 400 and "exactly 2" in body["error"]
    west = boto3_client(emulator, WEST)
    west.start_plan_execution(planArn=doc["arn"], targetRegion=WEST, action="activate")
    clock.advance(4)
    status, body = control(emulator, "/_emulator/region", {"region": WEST, "down": True})
    assert (status, body["down"]) == (200, [WEST])
    status, state = control(emulator, "/_emulator/state")
    assert state["calls"] == {f"StartPlanExecution {WEST}": 1}
    assert state["executions"][0]["steps"] == {
        "scale": "completed",
        "approve": "pendingApproval",
        "flip": "notStarted",
    }
    assert control(emulator, "/_emulator/mode", {"mode": "sideways"})[0] == 400
    assert control(emulator, "/_emulator/reset", {})[0] == 200
    assert control(emulator, "/_emulator/state")[1]["executions"] == []


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
MEMBERS = [
    "planArn",
    "arn",
    "executionId",
    "targetRegion",
    "action",
    "mode",
    "clientToken",
    "stepName",
    "approval",
    "comment",
    "maxResults",
    "nextToken",
    "state",
    "name",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operation=st.sampled_from(sorted(_HANDLERS)),
    body=st.dictionaries(st.sampled_from(MEMBERS), JSON_VALUES, max_size=6),
    cbor=st.booleans(),
)
def test_hostile_requests_get_a_modeled_error_never_a_crash(
    region_switch: World, operation: str, body: dict[str, Any], cbor: bool
) -> None:
    emulator, _ = region_switch
    if not emulator.executions():
        seed(emulator)
    if cbor:
        path = f"/service/ArcRegionSwitch/operation/{operation}"
        headers = {**SIGNED, "smithy-protocol": "rpc-v2-cbor", "Content-Type": "application/cbor"}
        status, _, raw_body = raw(emulator, path, cbor2.dumps(body), headers)
        answer = cbor2.loads(raw_body)
    else:
        headers = {
            **SIGNED,
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"ArcRegionSwitch.{operation}",
        }
        status, _, raw_body = raw(emulator, "/", json.dumps(body).encode(), headers)
        answer = json.loads(raw_body)
    assert status in (200, 400, 403, 404, 409), (status, answer)
    if status != 200:
        assert answer["__type"].rsplit("#")[-1] in _STATUS, answer
