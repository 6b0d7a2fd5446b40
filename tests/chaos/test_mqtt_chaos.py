"""Chaos row "MQTT fuzz and impersonation": a real mosquitto holding every login to the
documented ACL, two honest signing agents and the daemon's own probes all seeing the primary
healthy, while liars try to make it look down: junk, oversize payloads, a buggy agent's
bursts of failures, forged agents, replayed batches, forged statuses. The region verdict is
sampled all along; the row's outcome is the number of wrong verdicts (0): while the liars
speak, the primary must stay healthy; while a buggy agent (its own key) bursts failures, no
vantage point may be failing (a burst is one probe, not three) and the region never down."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
from prometheus_client import REGISTRY

from orchestrator.agent import Agent, AgentSettings
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import Observation
from orchestrator.engine.vocabulary import Verdict
from orchestrator.policy.loader import load_policy_text
from orchestrator.signals.agent_auth import AgentKey, Keyring
from orchestrator.signals.agent_wire import (
    AgentState,
    Sender,
    encode_observations,
    observations_topic,
    status_topic,
)
from orchestrator.signals.base import ObservationSink
from orchestrator.signals.mqtt_agents import Backoff, BrokerConfig, MqttAgentSource
from tests.fixtures.clock import eventually
from tests.fixtures.mosquitto import Mosquitto

PRIMARY, STANDBY = "us-east-1", "us-west-2"
A, B = "agent-a", "agent-b"
USERS = {"failoverd": "daemon-pw-0123", A: "a-pw-0123", B: "b-pw-0123", "intruder": "i-pw-0123"}
KEYS = {
    A: AgentKey.from_text(A, "a-1", "a-secret-0123456789abcdef0123456789ab"),
    B: AgentKey.from_text(B, "b-1", "b-secret-0123456789abcdef0123456789ab"),
}
INTERVAL = 0.5  # seconds: every honest source reports both regions healthy this often
POLICY = load_policy_text(
    f"""
service: shop
regions: [{PRIMARY}, {STANDBY}]
rto: 15m
rpo: 1m
vantage_points: [local, {A}, {B}]
detection: {{interval: 500ms, timeout: 200ms, consecutive_failures: 3, quorum: 2,
  staleness: 5s}}
signals:
  - {{name: api, type: http, target: "http://127.0.0.1:9/{{region}}"}}
runbooks:
  failover:
    - {{name: flip, action: route53.set_record, params: {{hosted_zone_id: Z1,
       name: a.example.com, type: CNAME, value: "b.{{target_region}}.example.com", ttl: 60}}}}
"""
)
SEED = 1313


@dataclass
class Book:
    """The daemon's side: a health book, and what became of each observation fed to it."""

    book: HealthBook = field(default_factory=lambda: HealthBook(POLICY))
    intake: Counter[str] = field(default_factory=Counter)

    def put(self, obs: Observation) -> None:
        self.intake[str(self.book.observe(obs))] += 1

    def verdict(self) -> Verdict:
        return self.book.verdicts(time.time())[PRIMARY].verdict

    def failing(self) -> tuple[str, ...]:
        return self.book.verdicts(time.time())[PRIMARY].failing


class Honest:
    """A producer reporting both regions healthy every INTERVAL (what really is)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent

    async def run(self, sink: ObservationSink) -> None:
        while True:
            now = time.time()
            for region in (PRIMARY, STANDBY):
                sink.put(Observation("shop", region, "api", self.agent, True, now, source="http"))
            await asyncio.sleep(INTERVAL)


def login(broker: Mosquitto, user: str) -> BrokerConfig:
    return BrokerConfig.from_url(
        broker.url, username=user, password_file=broker.password_file_for(user)
    )


def failing(agent: str, at: float) -> Observation:
    return Observation("shop", PRIMARY, "api", agent, False, at, source="http")


def outcomes() -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "failoverd_agent_messages":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    found[s.labels["outcome"]] = s.value
    return found


async def test_liars_on_the_broker_never_change_a_verdict(
    mosquitto_acl: Callable[[dict[str, str]], Mosquitto],
) -> None:
    rng = random.Random(SEED)
    broker = mosquitto_acl(USERS)
    book = Book()
    source = MqttAgentSource(
        login(broker, "failoverd"),
        [POLICY],
        backoff=Backoff(0.05, 0.2),
        keyring=Keyring(KEYS.values()),
    )
    agents = [
        Agent(
            AgentSettings(a, login(broker, a), flush_interval=0.1, key=KEYS[a]),
            [POLICY],
            Honest(a),
            backoff=Backoff(0.05, 0.2),
        )
        for a in (A, B)
    ]
    samples: list[tuple[str, Verdict, tuple[str, ...]]] = []
    phase = ["lies"]
    before = outcomes()

    async def local() -> None:  # the daemon's own probe, seeing the truth
        await Honest("local").run(book)

    async def sample() -> None:
        while True:
            samples.append((phase[0], book.verdict(), book.failing()))
            await asyncio.sleep(0.05)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(source.run(book)), tg.create_task(local())]
        await eventually(lambda: source.connected, "the daemon's subscription")
        tasks += [tg.create_task(a.run()) for a in agents]
        await eventually(lambda: book.verdict() is Verdict.HEALTHY, "healthy to start with")
        await eventually(
            lambda: all(s.state == "online" for s in source.agent_status().values()), "online"
        )
        tasks.append(tg.create_task(sample()))
        injected = await lie(broker, rng)
        await asyncio.sleep(2 * INTERVAL)  # let the last lies arrive and be judged
        phase[0] = "bursts"
        injected += await burst(broker)
        await asyncio.sleep(2 * INTERVAL)
        for task in tasks:
            task.cancel()

    after = outcomes()
    rejected = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "accepted"}
    wrong = sum(
        1
        for phase_name, verdict, failing in samples
        if (phase_name == "lies" and verdict is not Verdict.HEALTHY)
        or (phase_name == "bursts" and (failing or verdict is Verdict.DOWN))
    )
    print(
        f"\nmqtt chaos: {sum(injected.values())} lies {dict(injected)};"
        f" rejected {dict((k, int(v)) for k, v in rejected.items() if v)};"
        f" health book {dict(book.intake)}; {len(samples)} verdict samples, {wrong} wrong"
    )
    assert wrong == 0, Counter(samples)
    assert sum(1 for p, _, _ in samples if p == "bursts") > 20 and len(samples) > 100
    # Every kind of lie was refused for the right reason.
    for reason in ("malformed", "wrong_version", "too_large", "unsigned", "bad_signature"):
        assert rejected.get(reason, 0) >= 1, (reason, rejected)
    assert rejected.get("agent_mismatch", 0) >= 2, rejected
    assert rejected.get("unsigned", 0) >= 10, rejected
    assert rejected.get("replayed", 0) + rejected.get("duplicate", 0) >= 3, rejected
    assert book.intake["too_soon"] >= 4, book.intake  # the buggy agent's bursts
    # Presence was not moved by forged or replayed statuses.
    assert {a: s.state for a, s in source.agent_status().items()} == {A: "online", B: "online"}


async def lie(broker: Mosquitto, rng: random.Random) -> Counter[str]:
    """Every lie, in a seeded random order; the count of each kind sent."""
    sent: Counter[str] = Counter()
    clients = {
        user: aiomqtt.Client(
            "127.0.0.1", broker.port, username=user, password=USERS[user], timeout=5
        )
        for user in ("failoverd", A, B, "intruder")
    }
    async with (
        clients["failoverd"] as eavesdropper,
        clients[A] as stolen_a,
        clients[B] as stolen_b,
        clients["intruder"] as intruder,
    ):
        # A stolen daemon login reads agent-a's genuine batches, to replay them later.
        await eavesdropper.subscribe(observations_topic(A), qos=1)
        captured: list[bytes] = []
        async with asyncio.timeout(10):
            async for message in eavesdropper.messages:
                assert isinstance(message.payload, bytes)
                captured.append(message.payload)
                if len(captured) == 3:
                    break
        now = time.time()
        lies: list[tuple[str, aiomqtt.Client, str, bytes]] = []
        for payload in (b"\x00\xff junk", b"{", b"[]", json.dumps({"v": 9}).encode()):
            lies.append(("junk", intruder, observations_topic("intruder"), payload))
            lies.append(("junk", stolen_a, observations_topic(A), payload))
        lies.append(("oversize", stolen_a, observations_topic(A), b" " * (600 * 1024)))
        # Unsigned failures, in agent-a's name (its broker password, not its key).
        unsigned = encode_observations(A, [failing(A, now + i * 0.1) for i in range(3)], now)
        lies.append(("forged", stolen_a, observations_topic(A), unsigned))
        # The intruder writes agent-a's topic (dropped by the broker's ACL), and its own
        # (not an agent of any policy).
        lies.append(("forged", intruder, observations_topic(A), unsigned))
        intruder_key = AgentKey.from_text("intruder", "a-1", "guess" * 8)
        lies.append(
            (
                "forged",
                intruder,
                observations_topic("intruder"),
                _signed(intruder_key, "intruder", "intruder", now),
            )
        )
        # agent-b's real key (stolen) signing failures in agent-a's name, on agent-a's topic.
        lies.append(("forged", stolen_a, observations_topic(A), _signed(KEYS[B], A, A, now)))
        # A guessed key under agent-a's key id.
        guess = Sender(A, AgentKey.from_text(A, "a-1", "guess" * 8))
        lies.append(("forged", stolen_a, observations_topic(A), _one(guess, failing(A, now), now)))
        # agent-b, with its own login and key, speaking for agent-a on its own topic.
        lies.append(("forged", stolen_b, observations_topic(B), _signed(KEYS[B], B, A, now)))
        # A forged status: agent-a "offline", unsigned.
        lies.append(("status", stolen_a, status_topic(A), _unsigned_offline(now)))
        # Replays of agent-a's genuine batches (its broker password, not its key).
        for payload in captured:
            lies.append(("replayed", stolen_a, observations_topic(A), payload))
        rng.shuffle(lies)
        for kind, client, topic, payload in lies:
            await client.publish(topic, payload, qos=1)
            sent[kind] += 1
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        # Sustained forgery with both agents' broker passwords (not their keys): a failure
        # in each agent's name every interval, a quorum's worth of "down" were it believed.
        for _ in range(5):
            at = time.time()
            for agent, client in ((A, stolen_a), (B, stolen_b)):
                forged = encode_observations(agent, [failing(agent, at)], at)
                await client.publish(observations_topic(agent), forged, qos=1)
                sent["forged"] += 1
            await asyncio.sleep(INTERVAL)
    return sent


async def burst(broker: Mosquitto) -> Counter[str]:
    """A buggy agent, with its own key: three failures 0.1 s apart in one batch, from both
    agents at once (a quorum's worth, were each burst taken for three probes), twice."""
    sent: Counter[str] = Counter()
    buggy = {a: Sender(a, KEYS[a]) for a in (A, B)}
    for _ in range(2):
        at = time.time()
        for agent in (A, B):
            failures = [failing(agent, at - 0.2 + i * 0.1) for i in range(3)]
            payload = next(iter(buggy[agent].batches(failures, at)))[0]
            await _publish_as(broker, agent, observations_topic(agent), payload)
            sent["burst"] += 1
        await asyncio.sleep(3 * INTERVAL)  # a whole recovery between the two
    return sent


def _signed(key: AgentKey, topic_agent: str, body_agent: str, now: float) -> bytes:
    """A signed batch of one failure naming ``body_agent``, for ``topic_agent``'s topic."""
    topic = observations_topic(topic_agent)
    wire = {"service": "shop", "region": PRIMARY, "signal": "api", "ok": False, "at": now}
    body = json.dumps(
        {
            "v": 2,
            "agent": body_agent,
            "sent_at": now,
            "boot": "f" * 16,
            "seq": 1,
            "observations": [wire],
        }
    ).encode()
    envelope = {"v": 2, "kid": key.key_id, "sig": key.sign(topic, body), "body": body.decode()}
    return json.dumps(envelope).encode()


def _one(sender: Sender, obs: Observation, now: float) -> bytes:
    return next(iter(sender.batches([obs], now)))[0]


def _unsigned_offline(now: float) -> bytes:
    return json.dumps({"v": 1, "agent": A, "state": str(AgentState.OFFLINE), "at": now}).encode()


async def _publish_as(broker: Mosquitto, user: str, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, username=user, password=USERS[user], timeout=5
    ) as client:
        await client.publish(topic, payload, qos=1)
