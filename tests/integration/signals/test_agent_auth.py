"""Agents cannot lie, on a real mosquitto holding every login to the ACL the docs give
(docs/examples/mosquitto-failoverd.acl): a login writes only its own agent's topics; with
agent keys, only what the agent signed is heard, a forged or unsigned message is refused and
counted, and a batch captured and published again is refused as a replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from orchestrator.agent import main
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import Observation
from orchestrator.policy.loader import load_policy_text
from orchestrator.signals.agent_auth import AgentKey, Keyring
from orchestrator.signals.agent_wire import (
    Sender,
    encode_observations,
    observations_topic,
    status_topic,
)
from orchestrator.signals.mqtt_agents import BrokerConfig, MqttAgentSource
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.signals import test_mqtt_agents as _agents
from tests.integration.signals.test_mqtt_agents import (
    AGENT_SCRIPT,
    BookSink,
    eventually,
    fast_backoff,
    messages,
    running,
)

reap = _agents.reap  # its fixture, visible to pytest here under the same name

A, B = "agent-a", "agent-b"
USERS = {"failoverd": "daemon-pw-0123", A: "agent-a-pw-0123", B: "agent-b-pw-0123"}
SECRET_A = "a" * 8 + "-0123456789abcdef0123456789abcdef"
SECRET_B = "b" * 8 + "-0123456789abcdef0123456789abcdef"
KEY_A = AgentKey.from_text(A, "a-1", SECRET_A)
KEY_B = AgentKey.from_text(B, "b-1", SECRET_B)
POLICY_YAML = _agents.POLICY_YAML.replace(
    f"vantage_points: [local, {A}]", f"vantage_points: [local, {A}, {B}]"
)
assert POLICY_YAML != _agents.POLICY_YAML


class Outcomes:
    """Wraps a source's ``handle``: what each message that reached the daemon became."""

    def __init__(self, source: MqttAgentSource) -> None:
        self.seen: list[tuple[str, str]] = []
        handle = source.handle

        def recording(topic: str, payload: bytes, sink: Any) -> str:
            outcome = handle(topic, payload, sink)
            self.seen.append((topic, outcome))
            return outcome

        source.handle = recording  # type: ignore[method-assign]

    def on(self, topic: str) -> list[str]:
        return [outcome for t, outcome in self.seen if t == topic]


def login(broker: Mosquitto, user: str) -> BrokerConfig:
    return BrokerConfig.from_url(
        broker.url, username=user, password_file=broker.password_file_for(user)
    )


def client(broker: Mosquitto, user: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username=user, password=USERS[user], timeout=5)


def daemon_side(broker: Mosquitto, keyring: Keyring) -> tuple[MqttAgentSource, BookSink, Outcomes]:
    policy = load_policy_text(POLICY_YAML)
    source = MqttAgentSource(
        login(broker, "failoverd"), [policy], backoff=fast_backoff(), keyring=keyring
    )
    return source, BookSink(HealthBook(policy)), Outcomes(source)


def failing(agent: str, at: float) -> Observation:
    return Observation("shop", "us-east-1", "api", agent, False, at, source="http")


async def test_the_documented_acl_binds_each_login_to_its_own_topics(
    mosquitto_acl: Callable[[dict[str, str]], Mosquitto],
) -> None:
    broker = mosquitto_acl(USERS)
    source, sink, outcomes = daemon_side(broker, Keyring())
    async with running(source.run(sink)):
        await eventually(lambda: source.connected, "the daemon's login to subscribe")
        async with client(broker, B) as b:
            now = time.time()
            # agent-b writing agent-a's topics: the broker drops both.
            forged = encode_observations(A, [failing(A, now)], now)
            await b.publish(observations_topic(A), forged, qos=1)
            await b.publish(status_topic(A), b'{"v":1}', qos=1, retain=True)
            # Its own topic goes through; being later on the same connection, once it has
            # arrived, anything the broker had let through before it would have too.
            await b.publish(observations_topic(B), encode_observations(B, [], now), qos=1)
            await eventually(lambda: outcomes.on(observations_topic(B)) != [], "agent-b's own")
    assert outcomes.on(observations_topic(B)) == ["accepted"]
    assert outcomes.on(observations_topic(A)) == []
    assert outcomes.on(status_topic(A)) == []
    assert sink.items == []

    # No login, no entry.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5):
            pass


def spawn_signed_agent(
    tmp_path: Path, broker: Mosquitto, agent: str, key: AgentKey
) -> subprocess.Popen[bytes]:
    """The real `failoverd agent` entry point (scripted failures instead of probes), logged
    in as itself and signing with its key file."""
    script = tmp_path / "agent_main.py"
    script.write_text(AGENT_SCRIPT, encoding="utf-8")
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY_YAML, encoding="utf-8")
    key_file = tmp_path / f"{agent}.key"
    key_file.write_text(key.secret.decode() + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    argv = [sys.executable, str(script), "--id", agent, "--broker", broker.url]
    argv += ["--policies", str(policy_file), "--flush-interval", "100ms"]
    argv += ["--username", agent, "--password-file", str(broker.password_file_for(agent))]
    argv += ["--key-file", str(key_file), "--key-id", key.key_id]
    return subprocess.Popen(
        argv,
        cwd=_agents.REPO,
        env={**os.environ, "PYTHONPATH": str(_agents.REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / f"{agent}.log").open("wb"),
    )


async def test_with_keys_only_the_agent_itself_is_heard(
    mosquitto_acl: Callable[[dict[str, str]], Mosquitto], tmp_path: Path, reap: Any
) -> None:
    broker = mosquitto_acl(USERS)
    source, sink, outcomes = daemon_side(broker, Keyring([KEY_A, KEY_B]))
    topic_a, topic_b = observations_topic(A), observations_topic(B)
    before = {o: messages(o) for o in ("unsigned", "bad_signature", "agent_mismatch")}
    async with running(source.run(sink)):
        await eventually(lambda: source.connected, "the daemon's login to subscribe")
        proc = spawn_signed_agent(tmp_path, broker, A, KEY_A)
        reap(proc)
        await eventually(lambda: outcomes.on(topic_a).count("accepted") >= 2, "agent-a's batches")
        assert source.agent_status()[A].state == "online"  # its signed status was heard

        # agent-b's login, on its own topic (the ACL lets it), tries every way to lie.
        now = time.time()
        guesser = Sender(B, AgentKey.from_text(B, "a-1", "guess" * 8))
        lies = [
            # Unsigned.
            encode_observations(B, [failing(B, now)], now),
            # Signed with a key id of agent-a's, without agent-a's secret.
            next(iter(guesser.batches([failing(B, now)], now)))[0],
            # Signed with agent-b's own key, but naming agent-a inside.
            _signed_naming(KEY_B, topic_b, A, now),
        ]
        async with client(broker, B) as b:
            for lie in lies:
                await b.publish(topic_b, lie, qos=1)
            await eventually(lambda: len(outcomes.on(topic_b)) == 3, "agent-b's three lies")
    assert outcomes.on(topic_b) == ["unsigned", "bad_signature", "agent_mismatch"]
    for outcome, count in before.items():
        assert messages(outcome) - count >= 1, outcome
    assert all(o.vantage == A for o in sink.items)  # not one observation from agent-b


def _signed_naming(key: AgentKey, topic: str, agent: str, now: float) -> bytes:
    body = json.dumps(
        {
            "v": 2,
            "agent": agent,
            "sent_at": now,
            "boot": "0" * 16,
            "seq": 1,
            "observations": [],
        }
    ).encode()
    envelope = {"v": 2, "kid": key.key_id, "sig": key.sign(topic, body), "body": body.decode()}
    return json.dumps(envelope).encode()


async def test_a_captured_batch_published_again_is_refused(
    mosquitto_acl: Callable[[dict[str, str]], Mosquitto],
) -> None:
    """Someone with agent-a's broker password but not its key publishes agent-a's earlier
    batches again: each one is refused (replayed, or a duplicate of the latest)."""
    broker = mosquitto_acl(USERS)
    source, sink, outcomes = daemon_side(broker, Keyring([KEY_A]))
    topic = observations_topic(A)
    sender = Sender(A, KEY_A)
    now = time.time()
    batches = [
        next(iter(sender.batches([failing(A, now + i * 0.1)], now + i * 0.1)))[0] for i in range(3)
    ]
    async with running(source.run(sink)):
        await eventually(lambda: source.connected, "the daemon's login to subscribe")
        async with client(broker, A) as a:
            for payload in batches:
                await a.publish(topic, payload, qos=1)
            await eventually(lambda: len(outcomes.on(topic)) == 3, "the three genuine batches")
            for payload in (batches[0], batches[2]):  # the replays
                await a.publish(topic, payload, qos=1)
            await eventually(lambda: len(outcomes.on(topic)) == 5, "the replays")
    assert outcomes.on(topic) == ["accepted"] * 3 + ["replayed", "duplicate"]
    assert len(sink.items) == 3


def test_the_agent_refuses_an_unusable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Logging stays as the test session set it up (not on this test's captured stderr).
    monkeypatch.setattr("orchestrator.agent.configure_logging", lambda level: None)
    short = tmp_path / "short.key"
    short.write_text("too-short\n", encoding="utf-8")
    short.chmod(0o600)
    base = ["--id", A, "--broker", "mqtt://127.0.0.1:1"]
    assert main([*base, "--key-file", str(short)]) == 2
    assert "--key-file: key 'agent-a': the secret is shorter than 32" in capsys.readouterr().err
    assert main([*base, "--key-id", "a-1"]) == 2
    assert "--key-id needs --key-file" in capsys.readouterr().err
    assert main([*base, "--key-file", str(tmp_path / "absent")]) == 2
    assert "No such file" in capsys.readouterr().err
