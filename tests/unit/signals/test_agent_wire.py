"""The agent wire format: what an agent sends is what the daemon feeds, and junk is refused
with the right reason, never an exception."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.engine.observation import Observation
from orchestrator.policy.loader import load_policy_text
from orchestrator.signals.agent_wire import (
    OBSERVATIONS_FILTER,
    STATUS_FILTER,
    Accepted,
    AgentState,
    AgentStatusMessage,
    Catalog,
    Rejected,
    Rejection,
    WireLimits,
    decode_observations,
    decode_status,
    encode_batches,
    encode_observations,
    encode_status,
    observations_topic,
    status_topic,
    topic_agent,
)

NOW = 1_800_000_000.0
AGENT = "agent-eu"
TOPIC = observations_topic(AGENT)

POLICY_YAML = """
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
vantage_points: [local, agent-eu, agent-ap]
detection: {staleness: 45s, quorum: 2}
signals:
  - {name: api, type: http, target: "https://api.{region}.shop.example.com/healthz"}
  - name: db
    type: tcp
    targets: {us-east-1: "db1.internal:5432", us-west-2: "db2.internal:5432"}
    vantage: [local]
  - {name: aws, type: aws_health, services: [EC2]}
runbooks:
  failover:
    - {name: flip, action: route53.set_record, params: {hosted_zone_id: Z1, name: a.example.com,
       type: CNAME, value: "b.{target_region}.example.com", ttl: 60}}
"""


@functools.cache
def shop_catalog() -> Catalog:
    return Catalog.from_policies([load_policy_text(POLICY_YAML)])


@pytest.fixture
def catalog() -> Catalog:
    return shop_catalog()


def obs(**overrides: Any) -> Observation:
    fields: dict[str, Any] = {
        "service": "shop",
        "region": "us-east-1",
        "signal": "api",
        "vantage": AGENT,
        "ok": False,
        "at": NOW - 1.0,
        "source": "http",
        "target": "https://api.us-east-1.shop.example.com/healthz",
        "latency": 0.25,
        "detail": "status",
    }
    fields.update(overrides)
    return Observation(**fields)


def wire_obs(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "service": "shop",
        "region": "us-east-1",
        "signal": "api",
        "ok": True,
        "at": NOW - 1.0,
        "latency": 0.1,
        "target": "t",
        "detail": "",
        "source": "http",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not _DROP}


_DROP = object()


def batch(*observations: dict[str, Any], **overrides: Any) -> bytes:
    data: dict[str, Any] = {
        "v": 1,
        "agent": AGENT,
        "sent_at": NOW,
        "observations": list(observations) or [wire_obs()],
    }
    data.update(overrides)
    return json.dumps({k: v for k, v in data.items() if v is not _DROP}).encode()


def decode(
    payload: bytes, catalog: Catalog, topic: str = TOPIC, **limits: Any
) -> Accepted | Rejected:
    return decode_observations(topic, payload, catalog, NOW, WireLimits(**limits))


def rejected(result: Accepted | Rejected) -> Rejection:
    assert isinstance(result, Rejected), f"expected a rejection, got {result}"
    return result.reason


# ---------------------------------------------------------------------------------------
# Round trips


def test_observations_round_trip_as_the_daemon_feeds_them(catalog: Catalog) -> None:
    sent = [obs(), obs(region="us-west-2", ok=True, latency=None, detail=""), obs(ok=None)]
    result = decode(encode_observations(AGENT, sent, NOW), catalog)
    assert isinstance(result, Accepted)
    assert result.agent == AGENT
    assert result.dropped == ()
    # The vantage is the agent the message came from; the source marks it as remote.
    assert result.observations == tuple(
        Observation(
            service=o.service,
            region=o.region,
            signal=o.signal,
            vantage=AGENT,
            ok=o.ok,
            at=o.at,
            source="agent",
            target=o.target,
            latency=o.latency,
            detail=o.detail,
        )
        for o in sent
    )


def test_status_round_trip_and_topics() -> None:
    payload = encode_status(AGENT, AgentState.OFFLINE, NOW)
    result = decode_status(status_topic(AGENT), payload)
    assert result == AgentStatusMessage(v=1, agent=AGENT, state=AgentState.OFFLINE, at=NOW)
    assert status_topic(AGENT) == "failoverd/v1/agents/agent-eu/status"
    assert TOPIC == "failoverd/v1/observations/agent-eu"
    assert topic_agent(TOPIC) == ("observations", AGENT)
    assert topic_agent(status_topic(AGENT)) == ("status", AGENT)
    assert OBSERVATIONS_FILTER == "failoverd/v1/observations/+"
    assert STATUS_FILTER == "failoverd/v1/agents/+/status"
    for bad in ("failoverd/v1/observations/Agent EU", "failoverd/v2/observations/a", "x/y"):
        assert topic_agent(bad) is None


def test_an_empty_batch_is_a_liveness_beat(catalog: Catalog) -> None:
    result = decode(encode_observations(AGENT, [], NOW), catalog)
    assert result == Accepted(AGENT, ())


def test_long_details_are_cut_by_the_sender_so_the_batch_still_passes(catalog: Catalog) -> None:
    result = decode(encode_observations(AGENT, [obs(detail="x" * 10_000)], NOW), catalog)
    assert isinstance(result, Accepted)
    assert len(result.observations[0].detail) == 256


def test_encoder_refuses_ids_that_are_not_agent_ids() -> None:
    for bad in ("local", "Agent", "a/b", "+", ""):
        with pytest.raises(ValueError, match="agent id"):
            encode_observations(bad, [], NOW)
        with pytest.raises(ValueError, match="agent id"):
            encode_status(bad, AgentState.ONLINE, NOW)


def test_batches_are_split_by_count_and_bytes_and_carry_each_observation_once(
    catalog: Catalog,
) -> None:
    many = [obs(at=NOW - 1 + i / 1000, detail="d" * 200) for i in range(250)]
    limits = WireLimits(max_payload_bytes=8 * 1024, max_batch=100)
    chunks = list(encode_batches(AGENT, many, NOW, limits))
    assert len(chunks) > 3  # 100 per count, then halved for bytes
    carried = [o for _, part in chunks for o in part]
    assert carried == many
    for payload, part in chunks:
        assert len(payload) <= limits.max_payload_bytes
        result = decode_observations(TOPIC, payload, catalog, NOW, limits)
        assert isinstance(result, Accepted)
        assert [o.at for o in result.observations] == [o.at for o in part]


# ---------------------------------------------------------------------------------------
# Every rejection reason


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"v"',
        b"{}",  # no version
        batch(wire_obs(ok="true")),  # no coercion
        batch(wire_obs(at="1800000000")),
        batch(wire_obs(at=True)),
        batch(wire_obs(latency=-1.0)),
        batch(wire_obs(extra="x")),  # v1 is frozen: unknown keys are errors
        batch(wire_obs(service="Shop")),
        batch(wire_obs(region="moon-1")),
        batch(wire_obs(source="Bad Source")),
        batch(wire_obs(ok=_DROP)),
        batch(wire_obs(), observations="nope"),
        batch(wire_obs(), sent_at=_DROP),
        batch(wire_obs(), agent=7),
        batch(wire_obs(), extra=1),
        batch(wire_obs(target="t" * 513)),
        b'{"v":1,"agent":"agent-eu","sent_at":NaN,"observations":[]}',
        b'{"v":1,"agent":"agent-eu","sent_at":1800000000,"observations":[{"at":Infinity}]}',
        b"[" * 100_000,  # deep nesting
    ],
)
def test_malformed(payload: bytes, catalog: Catalog) -> None:
    result = decode(payload, catalog)
    assert rejected(result) is Rejection.MALFORMED
    assert isinstance(result, Rejected) and result.detail


def test_malformed_topic(catalog: Catalog) -> None:
    for topic in ("failoverd/v1/observations/Bad Agent", "failoverd/v1/agents/agent-eu/status"):
        assert rejected(decode(batch(), catalog, topic=topic)) is Rejection.MALFORMED


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, None, True])
def test_wrong_version(version: object, catalog: Catalog) -> None:
    # Checked before the shape: a v2 message of another shape says so, not "malformed".
    payload = json.dumps({"v": version, "whatever": []}).encode()
    assert rejected(decode(payload, catalog)) is Rejection.WRONG_VERSION
    status = json.dumps({"v": version, "agent": AGENT, "state": "online", "at": NOW}).encode()
    assert rejected(decode_status(status_topic(AGENT), status)) is Rejection.WRONG_VERSION


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"service": "billing"}, "unknown service"),
        ({"region": "eu-west-1"}, "not a region of service"),
        ({"signal": "search"}, "no probe signal"),
        ({"signal": "db"}, "not a vantage point of shop/db"),  # db runs from local only
        ({"signal": "aws"}, "no probe signal"),  # AWS Health is its own vantage point
    ],
)
def test_unknown_service(fields: dict[str, Any], why: str, catalog: Catalog) -> None:
    result = decode(batch(wire_obs(**fields)), catalog)
    assert rejected(result) is Rejection.UNKNOWN_SERVICE
    assert isinstance(result, Rejected) and why in result.detail


def test_stale_against_the_policy_staleness(catalog: Catalog) -> None:
    assert isinstance(decode(batch(wire_obs(at=NOW - 45.0)), catalog), Accepted)
    result = decode(batch(wire_obs(at=NOW - 45.5)), catalog)
    assert rejected(result) is Rejection.STALE
    assert isinstance(result, Rejected) and "staleness 45s" in result.detail


def test_future_beyond_the_skew_tolerance(catalog: Catalog) -> None:
    assert rejected(decode(batch(wire_obs(at=NOW + 31.0)), catalog)) is Rejection.FUTURE
    assert rejected(decode(batch(sent_at=NOW + 31.0), catalog)) is Rejection.FUTURE
    # The tolerance is configurable.
    tight = decode(batch(wire_obs(at=NOW + 1.0)), catalog, max_clock_skew=0.5)
    assert rejected(tight) is Rejection.FUTURE


def test_ahead_within_the_tolerance_is_clamped_to_the_receivers_now(catalog: Catalog) -> None:
    result = decode(batch(wire_obs(at=NOW + 20.0), sent_at=NOW + 20.0), catalog)
    assert isinstance(result, Accepted)
    # A clock running ahead must not keep its view fresh for longer than the staleness.
    assert result.observations[0].at == NOW


@pytest.mark.parametrize(
    ("topic_agent_id", "body_agent", "why"),
    [
        ("agent-eu", "agent-ap", "topic says"),  # one agent speaking for another
        ("local", "local", "reserved"),  # impersonating the daemon's own vantage point
        ("agent-xx", "agent-xx", "not a vantage point of any loaded policy"),
    ],
)
def test_agent_mismatch(topic_agent_id: str, body_agent: str, why: str, catalog: Catalog) -> None:
    result = decode(batch(agent=body_agent), catalog, topic=observations_topic(topic_agent_id))
    assert rejected(result) is Rejection.AGENT_MISMATCH
    assert isinstance(result, Rejected) and why in result.detail
    assert result.agent == topic_agent_id


def test_status_agent_mismatch() -> None:
    payload = encode_status("agent-ap", AgentState.ONLINE, NOW)
    assert rejected(decode_status(status_topic(AGENT), payload)) is Rejection.AGENT_MISMATCH


def test_status_malformed() -> None:
    topic = status_topic(AGENT)
    for payload in (
        b"{",
        json.dumps({"v": 1, "agent": AGENT, "state": "sleeping", "at": NOW}).encode(),
        json.dumps({"v": 1, "agent": AGENT, "state": "online"}).encode(),
    ):
        assert rejected(decode_status(topic, payload)) is Rejection.MALFORMED
    assert rejected(decode_status(TOPIC, encode_status(AGENT, AgentState.ONLINE, NOW))) is (
        Rejection.MALFORMED
    )


def test_too_large_by_bytes_and_by_count(catalog: Catalog) -> None:
    big = batch(wire_obs(detail="x" * 200), sent_at=NOW) + b" " * 2048
    assert rejected(decode(big, catalog, max_payload_bytes=2048)) is Rejection.TOO_LARGE
    many = batch(*[wire_obs(at=NOW - 1 + i / 100) for i in range(11)])
    result = decode(many, catalog, max_batch=10)
    assert rejected(result) is Rejection.TOO_LARGE
    assert isinstance(result, Rejected) and "11 observations, limit 10" in result.detail
    status = encode_status(AGENT, AgentState.ONLINE, NOW) + b" " * 2048
    assert rejected(decode_status(status_topic(AGENT), status, WireLimits(2048))) is (
        Rejection.TOO_LARGE
    )


def test_bad_observations_are_dropped_from_a_batch_the_rest_is_fed(catalog: Catalog) -> None:
    payload = batch(
        wire_obs(at=NOW - 2.0),
        wire_obs(signal="search"),  # e.g. a signal the daemon has not reloaded yet
        wire_obs(at=NOW - 100.0),
        wire_obs(region="us-west-2", at=NOW - 1.0),
    )
    result = decode(payload, catalog)
    assert isinstance(result, Accepted)
    assert [(o.region, o.at) for o in result.observations] == [
        ("us-east-1", NOW - 2.0),
        ("us-west-2", NOW - 1.0),
    ]
    assert [d.reason for d in result.dropped] == [Rejection.UNKNOWN_SERVICE, Rejection.STALE]


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        WireLimits(max_batch=0)
    with pytest.raises(ValueError, match="max_clock_skew"):
        WireLimits(max_clock_skew=float("nan"))


def test_catalog_lists_the_signals_an_agent_runs(catalog: Catalog) -> None:
    assert catalog.agents == {"agent-eu", "agent-ap"}
    assert catalog.signals_of(AGENT) == [("shop", "api")]
    assert catalog.signals_of("agent-xx") == []


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from([TOPIC, status_topic(AGENT), "a/b"]), payload=st.binary(max_size=300))
def test_decoding_never_raises_on_arbitrary_bytes(topic: str, payload: bytes) -> None:
    catalog = shop_catalog()
    assert isinstance(decode_observations(topic, payload, catalog, NOW), Accepted | Rejected)
    assert isinstance(decode_status(topic, payload), AgentStatusMessage | Rejected)


@settings(max_examples=200, deadline=None)
@given(
    data=st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_decoding_never_raises_on_arbitrary_json(data: object) -> None:
    catalog = shop_catalog()
    payload = json.dumps({"v": 1, "agent": AGENT, "sent_at": NOW, "observations": data}).encode()
    assert isinstance(decode_observations(TOPIC, payload, catalog, NOW), Accepted | Rejected)
