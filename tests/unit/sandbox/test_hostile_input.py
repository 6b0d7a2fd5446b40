"""Hostile input to the sandbox's new surfaces never stops or misleads them: the DNS server
answers garbage with nothing or FORMERR and keeps answering; the ARC cluster emulator answers
every body with its API's own errors; an `arc.set_routing_controls` step's parameters are
accepted or refused with a ValidationError, never anything else (hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import dns.message
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.policy.actions import ArcSetRoutingControls
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.regions import POLICY_REGIONS
from orchestrator.sandbox.arc_cluster import ArcApiError, ArcClusterEmulator
from orchestrator.sandbox.dns_server import DnsServer, RecordSet, Snapshot, Zone, _name


class _Source:
    def read(self) -> Snapshot:
        sets = (RecordSet(_name("www.shop.example.com"), "A", 60, ("192.0.2.1",)),)
        return Snapshot(zones=(Zone("Z1", _name("shop.example.com"), sets),))


class _Healthy:
    def healthy(self, health_check_id: str, checks: Any) -> bool:
        return True


SERVER = DnsServer(_Source(), _Healthy(), refresh=3600.0)
VALID = dns.message.make_query("www.shop.example.com", "A").to_wire()
LOOP = asyncio.new_event_loop()


def _answer(wire: bytes) -> bytes | None:
    return LOOP.run_until_complete(SERVER.answer(wire, udp=True))


def teardown_module() -> None:
    LOOP.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda cut, junk: VALID[:cut] + junk,
            st.integers(0, len(VALID)),
            st.binary(max_size=40),
        ),
    )
)
def test_the_dns_server_survives_any_datagram(wire: bytes) -> None:
    reply = _answer(wire)
    if reply is not None:
        message = dns.message.from_wire(reply)  # whatever it says, it is a DNS message
        assert message.id == int.from_bytes(wire[:2], "big")
    assert dns.message.from_wire(_answer(VALID) or b"").rcode() == dns.rcode.NOERROR


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=30), inner, max_size=12)
    ),
    max_leaves=15,
)
CLUSTER = ArcClusterEmulator(mutations_per_second=None)
_PANEL = CLUSTER.create_control_panel("fuzz")
ARN = CLUSTER.create_routing_control(_PANEL, "a")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["GetRoutingControlState", "UpdateRoutingControlState",
                     "UpdateRoutingControlStates", "ListRoutingControls"]),
    st.dictionaries(
        st.sampled_from(["RoutingControlArn", "RoutingControlState", "SafetyRulesToOverride",
                         "UpdateRoutingControlStateEntries", "ControlPanelArn", "MaxResults",
                         "NextToken"]),
        JSON | st.just(ARN) | st.just("On") | st.just([{"RoutingControlArn": ARN}]),
        max_size=5,
    ),
)  # fmt: skip
def test_the_arc_emulator_answers_any_body_with_its_own_errors(
    operation: str, body: dict[str, Any]
) -> None:
    try:
        answer = CLUSTER._handlers()[operation](body)
    except ArcApiError as err:
        assert err.body()["__type"].endswith("Exception")
    else:
        assert isinstance(answer, dict)
    assert CLUSTER.state(ARN) in ("On", "Off")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(["cluster_endpoints", "routing_controls", "states", "safety_rules_to_override",
                     "connect_timeout", "read_timeout", "bogus"]),
    JSON,
    max_size=6,
))  # fmt: skip
def test_routing_control_parameters_are_valid_or_refused(raw: dict[str, Any]) -> None:
    try:
        params = ArcSetRoutingControls.model_validate(
            raw, context={FROM_FILE: True, POLICY_REGIONS: ("us-east-1", "us-west-2")}
        )
    except ValidationError:
        return
    with contextlib.suppress(ValueError):  # a key naming nothing until a run fills it in
        params.wanted()
