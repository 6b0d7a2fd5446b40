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
from orchestrator.signals.agent_auth import AgentKey, AgentKeyError, Keyring, Replay, ReplayGuard
from orchestrator.signals.agent_wire import (
    OBSERVATIONS_FILTER,
    STATUS_FILTER,
    Accepted,
    AgentState,
    Catalog,
    Rejected,
    Rejection,
    Sender,
    StatusReport,
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
    assert result == StatusReport(AGENT, AgentState.OFFLINE, NOW)
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


@pytest.mark.parametrize("version", [3, 0, "1", 1.5, None, True])
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
    assert isinstance(decode_status(topic, payload), StatusReport | Rejected)


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


# ---------------------------------------------------------------------------------------
# Signed messages (version 2): only the agent's own key speaks for it

SECRET_EU = "eu-secret-0123456789abcdef0123456789abcdef"
SECRET_AP = "ap-secret-0123456789abcdef0123456789abcdef"
KEY_EU = AgentKey.from_text(AGENT, "eu-1", SECRET_EU)
KEY_AP = AgentKey.from_text("agent-ap", "ap-1", SECRET_AP)
KEYRING = Keyring([KEY_EU, KEY_AP])
BOOT = "0123456789abcdef"


def signed(
    body: dict[str, Any],
    *,
    key: AgentKey = KEY_EU,
    topic: str = TOPIC,
    kid: str | None = None,
    sig: str | None = None,
) -> bytes:
    text = json.dumps(body).encode()
    return json.dumps(
        {
            "v": 2,
            "kid": kid or key.key_id,
            "sig": sig or key.sign(topic, text),
            "body": text.decode(),
        }
    ).encode()


def signed_batch(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 2,
        "agent": AGENT,
        "sent_at": NOW,
        "boot": BOOT,
        "seq": 1,
        "observations": [wire_obs()],
    }
    body.update(overrides)
    return body


def verify(payload: bytes, catalog: Catalog, topic: str = TOPIC) -> Accepted | Rejected:
    return decode_observations(topic, payload, catalog, NOW, WireLimits(), KEYRING)


def test_a_signed_batch_round_trips_with_its_key_boot_and_seq(catalog: Catalog) -> None:
    sender = Sender(AGENT, KEY_EU, boot=BOOT)
    ((first, _),) = sender.batches([obs()], NOW)
    ((second, _),) = sender.batches([obs(at=NOW - 0.5)], NOW)
    for payload, seq in ((first, 1), (second, 2)):
        result = verify(payload, catalog)
        assert isinstance(result, Accepted), result
        assert (result.key_id, result.boot, result.seq) == ("eu-1", BOOT, seq)
        assert [o.vantage for o in result.observations] == [AGENT]
    # The envelope is plain JSON; the body inside it is the signed text.
    assert json.loads(first)["kid"] == "eu-1"
    assert json.loads(json.loads(first)["body"])["agent"] == AGENT


def test_signed_status_online_will_and_goodbye_grow_in_order() -> None:
    sender = Sender(AGENT, KEY_EU, boot=BOOT)
    online, will = sender.online_and_will(NOW)
    goodbye = sender.status(AgentState.OFFLINE, NOW + 5)
    reports = [
        decode_status(status_topic(AGENT), p, keyring=KEYRING) for p in (online, will, goodbye)
    ]
    assert all(isinstance(r, StatusReport) for r in reports), reports
    keys = [(r.at, r.seq) for r in reports if isinstance(r, StatusReport)]
    assert keys == sorted(keys) and len(set(keys)) == 3
    assert [r.state for r in reports if isinstance(r, StatusReport)] == [
        AgentState.ONLINE,
        AgentState.OFFLINE,
        AgentState.OFFLINE,
    ]


def test_with_keys_an_unsigned_message_is_refused(catalog: Catalog) -> None:
    assert rejected(verify(batch(), catalog)) is Rejection.UNSIGNED
    unsigned_status = encode_status(AGENT, AgentState.OFFLINE, NOW)
    result = decode_status(status_topic(AGENT), unsigned_status, keyring=KEYRING)
    assert rejected(result) is Rejection.UNSIGNED


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # A key nobody configured.
        (signed(signed_batch(), key=AgentKey.from_text(AGENT, "eu-9", "x" * 40)), "bad_signature"),
        # The right key id, a signature made with another secret (a forger's guess).
        (signed(signed_batch(), key=AgentKey.from_text(AGENT, "eu-1", "y" * 40)), "bad_signature"),
        # The body changed after signing (a failure turned into a success, or back).
        (
            signed(
                signed_batch(), sig=KEY_EU.sign(TOPIC, json.dumps(signed_batch(seq=2)).encode())
            ),
            "bad_signature",
        ),
        # agent-ap's own key, on agent-eu's topic, body naming agent-eu: speaking for another.
        (signed(signed_batch(), key=KEY_AP), "agent_mismatch"),
        # agent-eu's message signed for its status topic, replayed on its observations topic.
        (signed(signed_batch(), topic=status_topic(AGENT)), "bad_signature"),
        # Signed by agent-eu but naming agent-ap inside.
        (signed(signed_batch(agent="agent-ap")), "agent_mismatch"),
        # Envelope junk.
        (json.dumps({"v": 2, "kid": "eu-1", "sig": "zz", "body": "{}"}).encode(), "malformed"),
        (json.dumps({"v": 2, "kid": "eu-1", "body": "{}"}).encode(), "malformed"),
        (signed({"v": 1, "agent": AGENT, "sent_at": NOW, "observations": []}), "wrong_version"),
        (signed(signed_batch(seq=-1)), "malformed"),
        (signed(signed_batch(boot="xyz")), "malformed"),
        (signed(signed_batch(sent_at=NOW - 61.0)), "stale"),  # older than max_message_age
    ],
)
def test_forged_or_broken_signed_batches_are_refused(
    payload: bytes, reason: str, catalog: Catalog
) -> None:
    result = verify(payload, catalog)
    assert rejected(result) == reason, result


def test_an_agent_key_signs_only_for_its_agent() -> None:
    with pytest.raises(ValueError, match="belongs to agent"):
        Sender("agent-ap", KEY_EU)
    with pytest.raises(AgentKeyError, match="shorter than 32"):
        AgentKey.from_text(AGENT, "k", "short")
    with pytest.raises(AgentKeyError, match="configured twice"):
        Keyring([KEY_EU, KEY_EU])
    assert SECRET_EU not in repr(KEY_EU)


def test_without_keys_signed_and_unsigned_messages_pass(catalog: Catalog) -> None:
    """Rolling out: agents get keys first, the daemon (no keys yet) takes both."""
    sender = Sender(AGENT, KEY_EU, boot=BOOT)
    ((payload, _),) = sender.batches([obs()], NOW)
    assert isinstance(decode(payload, catalog), Accepted)
    assert isinstance(decode(batch(), catalog), Accepted)


def test_large_signed_batches_are_split_within_the_limit(catalog: Catalog) -> None:
    many = [obs(at=NOW - 1 + i / 1000, detail="d" * 200) for i in range(250)]
    limits = WireLimits(max_payload_bytes=8 * 1024, max_batch=100)
    sender = Sender(AGENT, KEY_EU, boot=BOOT)
    chunks = list(sender.batches(many, NOW, limits))
    assert [o for _, part in chunks for o in part] == many
    seqs = []
    for payload, part in chunks:
        assert len(payload) <= limits.max_payload_bytes
        result = decode_observations(TOPIC, payload, catalog, NOW, limits, KEYRING)
        assert isinstance(result, Accepted) and len(result.observations) == len(part)
        seqs.append(result.seq)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_the_replay_guard_takes_each_batch_once_per_boot() -> None:
    guard = ReplayGuard(boots_per_agent=2)
    assert guard.batch(AGENT, BOOT, 1) is Replay.FRESH
    assert guard.batch(AGENT, BOOT, 1) is Replay.DUPLICATE
    assert guard.batch(AGENT, BOOT, 3) is Replay.FRESH
    assert guard.batch(AGENT, BOOT, 2) is Replay.REPLAYED
    assert guard.batch(AGENT, "f" * 16, 1) is Replay.FRESH  # a restarted agent
    assert guard.batch("agent-ap", BOOT, 1) is Replay.FRESH  # agents are apart
    # Status: (at, seq) only grows; a late will of an older session changes nothing.
    assert guard.status(AGENT, NOW, 1) is Replay.FRESH
    assert guard.status(AGENT, NOW, 2) is Replay.FRESH  # the will after online
    assert guard.status(AGENT, NOW + 10, 1) is Replay.FRESH  # the next session's online
    assert guard.status(AGENT, NOW, 2) is Replay.REPLAYED  # the old will, late
    assert guard.status(AGENT, NOW + 10, 1) is Replay.DUPLICATE  # retained, redelivered


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=400), flip=st.integers(min_value=0, max_value=10_000))
def test_signed_decoding_never_raises_and_never_takes_a_changed_byte(
    payload: bytes, flip: int
) -> None:
    catalog = shop_catalog()
    assert isinstance(
        decode_observations(TOPIC, payload, catalog, NOW, WireLimits(), KEYRING),
        Accepted | Rejected,
    )
    good = signed(signed_batch())
    i = flip % len(good)
    changed = good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :]
    assert not isinstance(
        decode_observations(TOPIC, changed, catalog, NOW, WireLimits(), KEYRING), Accepted
    ) or json.loads(changed) == json.loads(good)
