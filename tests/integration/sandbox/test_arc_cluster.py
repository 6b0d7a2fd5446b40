"""The ARC routing-control cluster emulator, driven by the real SDKs (boto3, aiobotocore).

What the action and the sandbox rely on: five endpoints sharing one state; botocore parses
every answer into the shapes and exception classes of its ``route53-recovery-cluster``
model, modeled error fields included; safety rules refuse what ARC refuses; each endpoint
fails on its own in the ways a regional endpoint does (refused, blackholed, unavailable,
throttled, 500).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from orchestrator.sandbox.arc_cluster import DEFAULT_REGIONS, ArcClusterEmulator
from tests.fixtures.arc_cluster import aio_client, boto3_client
from tests.fixtures.clock import VirtualClock

EAST, WEST = "us-east-1", "us-west-2"


def two_cells(cluster: ArcClusterEmulator) -> tuple[str, str, str]:
    panel = cluster.create_control_panel("shop")
    use1 = cluster.create_routing_control(panel, "use1", state="On")
    usw2 = cluster.create_routing_control(panel, "usw2", state="Off")
    return panel, use1, usw2


def entries(states: dict[str, str]) -> list[dict[str, str]]:
    return [{"RoutingControlArn": a, "RoutingControlState": s} for a, s in states.items()]


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def raw_call(
    cluster: ArcClusterEmulator,
    body: bytes,
    *,
    target: str = "ToggleCustomerAPI.GetRoutingControlState",
    signed: bool = True,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target}
    if signed:
        headers["Authorization"] = (
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/"
            "route53-recovery-cluster/aws4_request, SignedHeaders=host, Signature=0"
        )
    request = urllib.request.Request(
        cluster.endpoints[WEST], data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- the API ------------------------------------------------------------------------------


def test_five_regional_endpoints_share_one_state(arc_cluster: ArcClusterEmulator) -> None:
    assert arc_cluster.regions == DEFAULT_REGIONS
    assert all(url.endswith("/v1") for url in arc_cluster.endpoints.values())
    _, use1, usw2 = two_cells(arc_cluster)
    boto3_client(arc_cluster, "eu-west-1").update_routing_control_states(
        UpdateRoutingControlStateEntries=entries({use1: "Off", usw2: "On"})
    )
    for region in DEFAULT_REGIONS:
        got = boto3_client(arc_cluster, region).get_routing_control_state(RoutingControlArn=usw2)
        assert got["RoutingControlState"] == "On", region
        assert got["RoutingControlName"] == "usw2"
    # Requests were signed for the endpoint's own region, as the SDK examples do.
    signing = {r["region"]: r["signing_region"] for r in arc_cluster.requests()}
    assert signing == {r: r for r in DEFAULT_REGIONS}
    # The emulator remembers when each control last changed (the sandbox's demo times it).
    changed = arc_cluster.changed_at(usw2)
    assert changed is not None and abs(changed - time.time()) < 60
    assert arc_cluster.changed_at(arc_cluster.create_routing_control(
        arc_cluster.create_control_panel("p2"), "never")) is None  # fmt: skip


async def test_aiobotocore_reads_and_updates(arc_cluster: ArcClusterEmulator) -> None:
    _, use1, usw2 = two_cells(arc_cluster)
    async with aio_client(arc_cluster, "ap-northeast-1") as client:
        await client.update_routing_control_state(RoutingControlArn=usw2, RoutingControlState="On")
        got = await client.get_routing_control_state(RoutingControlArn=usw2)
        assert got["RoutingControlState"] == "On"
        with pytest.raises(ClientError) as refused:
            await client.get_routing_control_state(RoutingControlArn=use1 + "x")
    assert code(refused.value) == "ResourceNotFoundException"
    assert arc_cluster.state(usw2) == "On"


def test_list_routing_controls_by_panel_with_pagination(arc_cluster: ArcClusterEmulator) -> None:
    panel, use1, usw2 = two_cells(arc_cluster)
    other = arc_cluster.create_control_panel("other")
    extra = arc_cluster.create_routing_control(other, "zzz")
    client = boto3_client(arc_cluster, WEST)
    pages = list(
        client.get_paginator("list_routing_controls").paginate(
            ControlPanelArn=panel, PaginationConfig={"PageSize": 1}
        )
    )
    listed = [c for page in pages for c in page["RoutingControls"]]
    assert len(pages) == 2
    assert [(c["RoutingControlArn"], c["RoutingControlState"]) for c in listed] == [
        (use1, "On"),
        (usw2, "Off"),
    ]
    assert listed[0]["ControlPanelName"] == "shop" and listed[0]["Owner"] == "123456789012"
    everything = client.list_routing_controls()["RoutingControls"]
    assert {c["RoutingControlArn"] for c in everything} == {use1, usw2, extra}
    with pytest.raises(ClientError) as bad:
        client.list_routing_controls(ControlPanelArn=panel, NextToken="bm90LWEtdG9rZW4=")
    assert code(bad.value) == "ValidationException"


def test_errors_carry_their_modeled_fields(arc_cluster: ArcClusterEmulator) -> None:
    panel, use1, _ = two_cells(arc_cluster)
    client = boto3_client(arc_cluster, WEST)
    missing = panel + "/routingcontrol/0000000000000000"
    with pytest.raises(client.exceptions.ResourceNotFoundException) as not_found:
        client.get_routing_control_state(RoutingControlArn=missing)
    assert not_found.value.response["resourceId"] == missing
    assert not_found.value.response["resourceType"] == "RoutingControl"
    assert not_found.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(client.exceptions.ValidationException) as invalid:
        client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState="ON")
    assert invalid.value.response["reason"] == "fieldValidationFailed"
    assert invalid.value.response["fields"][0]["name"] == "RoutingControlState"
    with pytest.raises(client.exceptions.ValidationException):
        client.get_routing_control_state(RoutingControlArn="arn with spaces")
    with pytest.raises(client.exceptions.ResourceNotFoundException) as no_panel:
        client.list_routing_controls(ControlPanelArn=panel + "0")
    assert no_panel.value.response["resourceType"] == "ControlPanel"


def test_a_transaction_is_all_or_nothing(arc_cluster: ArcClusterEmulator) -> None:
    _, use1, usw2 = two_cells(arc_cluster)
    client = boto3_client(arc_cluster, WEST)
    with pytest.raises(client.exceptions.ValidationException):
        client.update_routing_control_states(
            UpdateRoutingControlStateEntries=[
                {"RoutingControlArn": use1, "RoutingControlState": "Off"},
                {"RoutingControlArn": usw2, "RoutingControlState": "maybe"},
            ]
        )
    with pytest.raises(client.exceptions.ValidationException):
        client.update_routing_control_states(
            UpdateRoutingControlStateEntries=entries({use1: "Off"}) + entries({use1: "On"})
        )
    assert arc_cluster.states() == {use1: "On", usw2: "Off"}


def test_at_most_ten_controls_per_update(arc_cluster: ArcClusterEmulator) -> None:
    panel = arc_cluster.create_control_panel("many")
    controls = [arc_cluster.create_routing_control(panel, f"c{i}") for i in range(11)]
    client = boto3_client(arc_cluster, WEST)
    with pytest.raises(client.exceptions.ServiceLimitExceededException) as limited:
        client.update_routing_control_states(
            UpdateRoutingControlStateEntries=entries(dict.fromkeys(controls, "On"))
        )
    assert limited.value.response["limitCode"]
    client.update_routing_control_states(
        UpdateRoutingControlStateEntries=entries(dict.fromkeys(controls[:10], "On"))
    )
    assert sum(s == "On" for s in arc_cluster.states().values()) == 10


def test_unknown_operation_unsigned_and_garbled_requests(arc_cluster: ArcClusterEmulator) -> None:
    status, body = raw_call(arc_cluster, b"{}", target="ToggleCustomerAPI.DeleteEverything")
    assert (status, body["__type"], body["reason"]) == (
        400,
        "ValidationException",
        "unknownOperation",
    )
    status, body = raw_call(arc_cluster, b"{not json")
    assert (status, body["__type"], body["reason"]) == (400, "ValidationException", "cannotParse")
    status, body = raw_call(arc_cluster, b"{}", signed=False)
    assert (status, body["__type"]) == (403, "MissingAuthenticationTokenException")


# --- safety rules -------------------------------------------------------------------------


def test_an_assertion_rule_refuses_leaving_no_cell_on(arc_cluster: ArcClusterEmulator) -> None:
    panel, use1, usw2 = two_cells(arc_cluster)
    rule = arc_cluster.create_assertion_rule(panel, "one-cell-on", [use1, usw2], "ATLEAST",
                                             threshold=1)  # fmt: skip
    client = boto3_client(arc_cluster, WEST)
    with pytest.raises(client.exceptions.ConflictException) as refused:
        client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState="Off")
    response = refused.value.response
    assert response["resourceId"] == rule and response["resourceType"] == "SafetyRule"
    assert "one-cell-on" in response["Error"]["Message"]
    assert arc_cluster.state(use1) == "On"
    # The flip in one transaction keeps one cell on: allowed.
    client.update_routing_control_states(
        UpdateRoutingControlStateEntries=entries({use1: "Off", usw2: "On"})
    )
    assert arc_cluster.states() == {use1: "Off", usw2: "On"}
    # Break glass: the named rule is not evaluated.
    client.update_routing_control_state(
        RoutingControlArn=usw2, RoutingControlState="Off", SafetyRulesToOverride=[rule]
    )
    assert arc_cluster.states() == {use1: "Off", usw2: "Off"}


def test_a_gating_rule_locks_its_targets_while_the_gate_is_off(
    arc_cluster: ArcClusterEmulator,
) -> None:
    panel, use1, usw2 = two_cells(arc_cluster)
    gate = arc_cluster.create_routing_control(panel, "automation-allowed", state="Off")
    rule = arc_cluster.create_gating_rule(panel, "gate", [gate], [use1, usw2], "OR")
    client = boto3_client(arc_cluster, WEST)
    flip = entries({use1: "Off", usw2: "On"})
    with pytest.raises(client.exceptions.ConflictException) as refused:
        client.update_routing_control_states(UpdateRoutingControlStateEntries=flip)
    assert refused.value.response["resourceId"] == rule
    # Opening the gate in the same request does not count: gates are judged as they were.
    with pytest.raises(client.exceptions.ConflictException):
        client.update_routing_control_states(
            UpdateRoutingControlStateEntries=flip + entries({gate: "On"})
        )
    client.update_routing_control_state(RoutingControlArn=gate, RoutingControlState="On")
    client.update_routing_control_states(UpdateRoutingControlStateEntries=flip)
    assert arc_cluster.states() == {use1: "Off", usw2: "On", gate: "On"}


def test_setting_a_control_to_its_own_state_breaks_no_rule(arc_cluster: ArcClusterEmulator) -> None:
    panel, use1, usw2 = two_cells(arc_cluster)
    arc_cluster.set_state(use1, "Off")  # past the rules, as a seed may
    arc_cluster.create_assertion_rule(panel, "one-on", [use1, usw2], "OR")
    client = boto3_client(arc_cluster, WEST)
    # Both are Off already (the rule does not hold): an update that changes nothing passes.
    client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState="Off")
    client.update_routing_control_state(RoutingControlArn=usw2, RoutingControlState="On")
    with pytest.raises(client.exceptions.ConflictException):
        client.update_routing_control_state(RoutingControlArn=usw2, RoutingControlState="Off")


# --- per-endpoint faults ------------------------------------------------------------------


def test_faults_answer_with_the_real_error_shapes(arc_cluster: ArcClusterEmulator) -> None:
    _, use1, _ = two_cells(arc_cluster)
    expected = {
        "unavailable": ("EndpointTemporarilyUnavailableException", 400),
        "throttle": ("ThrottlingException", 400),
        "internal_error": ("InternalServerException", 500),
    }
    for mode, (error, status) in expected.items():
        arc_cluster.set_endpoint_mode(EAST, mode)
        client = boto3_client(arc_cluster, EAST)
        with pytest.raises(ClientError) as failed:
            client.get_routing_control_state(RoutingControlArn=use1)
        assert code(failed.value) == error, mode
        assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert isinstance(failed.value, getattr(client.exceptions, error))
        # The other endpoints are not affected.
        other = boto3_client(arc_cluster, WEST).get_routing_control_state(RoutingControlArn=use1)
        assert other["RoutingControlState"] == "On"


def test_a_refused_endpoint_fails_at_once_and_comes_back(arc_cluster: ArcClusterEmulator) -> None:
    _, use1, _ = two_cells(arc_cluster)
    arc_cluster.set_endpoint_mode(EAST, "refuse")
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        boto3_client(arc_cluster, EAST).get_routing_control_state(RoutingControlArn=use1)
    assert time.monotonic() - started < 0.9  # refused, not timed out
    arc_cluster.set_endpoint_mode(EAST, "up")
    got = boto3_client(arc_cluster, EAST).get_routing_control_state(RoutingControlArn=use1)
    assert got["RoutingControlState"] == "On"


def test_a_blackholed_endpoint_costs_the_connect_timeout(arc_cluster: ArcClusterEmulator) -> None:
    _, use1, _ = two_cells(arc_cluster)
    kept = boto3_client(arc_cluster, EAST, read_timeout=0.5)
    kept.get_routing_control_state(RoutingControlArn=use1)  # a connection kept alive
    arc_cluster.set_endpoint_mode(EAST, "blackhole")
    started = time.monotonic()
    with pytest.raises(ConnectTimeoutError):
        boto3_client(arc_cluster, EAST, connect_timeout=0.3).get_routing_control_state(
            RoutingControlArn=use1
        )
    assert time.monotonic() - started >= 0.3
    # A request on a connection opened before gets no answer either.
    with pytest.raises(ReadTimeoutError):
        kept.get_routing_control_state(RoutingControlArn=use1)
    arc_cluster.set_endpoint_mode(EAST, "up")
    got = boto3_client(arc_cluster, EAST).get_routing_control_state(RoutingControlArn=use1)
    assert got["RoutingControlState"] == "On"


def test_mutations_are_limited_per_endpoint() -> None:
    clock = VirtualClock()
    cluster = ArcClusterEmulator(clock=clock)
    cluster.start_background()
    try:
        _, use1, _ = two_cells(cluster)
        client = boto3_client(cluster, WEST)
        for state in ("Off", "On", "Off"):
            client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState=state)
        with pytest.raises(client.exceptions.ThrottlingException) as throttled:
            client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState="On")
        assert throttled.value.response["retryAfterSeconds"] == 1
        # Reads are not limited; another endpoint has its own budget; a second later, again.
        assert client.get_routing_control_state(RoutingControlArn=use1)["RoutingControlState"]
        boto3_client(cluster, EAST).update_routing_control_state(
            RoutingControlArn=use1, RoutingControlState="On"
        )
        clock.advance(1.0)
        client.update_routing_control_state(RoutingControlArn=use1, RoutingControlState="Off")
        assert cluster.state(use1) == "Off"
    finally:
        cluster.stop_background()
