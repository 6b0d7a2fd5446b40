"""Remote agents over a real mosquitto broker: an agent's view counts toward the quorum, a
dead agent is announced by its last will and its view goes stale (unknown), junk is counted
and survived, and both ends come back after the broker restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from prometheus_client import REGISTRY

from orchestrator.agent import Agent, AgentSettings, main
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.healthbook import STALE, HealthBook
from orchestrator.engine.observation import Observation
from orchestrator.engine.vocabulary import Verdict, View
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import Policy
from orchestrator.signals.agent_wire import (
    AgentState,
    encode_observations,
    encode_status,
    observations_topic,
    status_topic,
)
from orchestrator.signals.base import ObservationSink
from orchestrator.signals.mqtt_agents import (
    Backoff,
    BrokerConfig,
    BrokerConfigError,
    MqttAgentSource,
    parse_broker_url,
)
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.secrets import write_secret

REPO = Path(__file__).resolve().parents[3]
AGENT = "agent-a"
PRIMARY, STANDBY = "us-east-1", "us-west-2"
STALENESS = 30.0
DEADLINE = 10.0

POLICY_YAML = f"""
service: shop
regions: [{PRIMARY}, {STANDBY}]
rto: 15m
rpo: 1m
vantage_points: [local, {AGENT}]
detection: {{interval: 40ms, timeout: 20ms, consecutive_failures: 2, quorum: 2,
  staleness: {STALENESS:g}s}}
signals:
  - {{name: api, type: http, target: "http://127.0.0.1:9/{{region}}"}}
runbooks:
  failover:
    - {{name: flip, action: route53.set_record, params: {{hosted_zone_id: Z1, name: a.example.com,
       type: CNAME, value: "b.{{target_region}}.example.com", ttl: 60}}}}
"""

# The real `failoverd agent` entry point, with a scripted producer instead of the probes.
AGENT_SCRIPT = """
import asyncio, sys
from orchestrator.agent import main
from orchestrator.engine.observation import Observation

class Failing:
    def __init__(self, policies, agent_id, clock):
        self.agent_id, self.clock = agent_id, clock

    async def run(self, sink):
        while True:
            sink.put(Observation(service="shop", region="us-east-1", signal="api",
                                 vantage=self.agent_id, ok=False, at=self.clock.now(),
                                 source="http", detail="connect"))
            await asyncio.sleep(0.05)

raise SystemExit(main(sys.argv[1:], producer_factory=Failing))
"""


# ---------------------------------------------------------------------------------------
# Helpers


def policy() -> Policy:
    return load_policy_text(POLICY_YAML)


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, maximum=0.2)


class BookSink:
    """The daemon's side in small: observations go into a health book (and a list)."""

    def __init__(self, book: HealthBook) -> None:
        self.book = book
        self.items: list[Observation] = []

    def put(self, obs: Observation) -> None:
        self.items.append(obs)
        self.book.observe(obs)

    def from_agent(self) -> list[Observation]:
        return [o for o in self.items if o.vantage == AGENT]


def local(region: str, ok: bool, at: float) -> Observation:
    return Observation("shop", region, "api", "local", ok, at, source="http")


class Scripted:
    """A producer putting one observation per region every ``every`` seconds: failures
    for the primary, successes for the standby."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every

    async def run(self, sink: ObservationSink) -> None:
        while True:
            now = SYSTEM_CLOCK.now()
            sink.put(Observation("shop", PRIMARY, "api", AGENT, False, now, source="http"))
            sink.put(Observation("shop", STANDBY, "api", AGENT, True, now, source="http"))
            await asyncio.sleep(self.every)


async def eventually(predicate: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Poll ``predicate`` (cheap, in-process state) until it holds, or fail after ``within``."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``coros`` as tasks owned by a TaskGroup; cancel them when the block ends."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(c) for c in coros]
        try:
            yield tasks
        finally:
            for task in tasks:
                task.cancel()


def messages(outcome: str) -> float:
    value = REGISTRY.get_sample_value("failoverd_agent_messages_total", {"outcome": outcome})
    return value or 0.0


def agent_up(agent: str) -> float | None:
    return REGISTRY.get_sample_value("failoverd_agent_up", {"agent": agent})


def source_for(broker: BrokerConfig, *policies: Policy) -> MqttAgentSource:
    return MqttAgentSource(broker, policies or [policy()], backoff=fast_backoff())


def agent_for(broker: BrokerConfig, producer: Any) -> Agent:
    settings = AgentSettings(AGENT, broker, flush_interval=0.05)
    return Agent(settings, [policy()], producer, backoff=fast_backoff())


def spawn_agent(tmp_path: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "agent_main.py"
    script.write_text(AGENT_SCRIPT, encoding="utf-8")
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY_YAML, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--id", AGENT, "--broker", url, "--policies", str(policy_file)]
    return subprocess.Popen(
        [sys.executable, str(script), *args, "--flush-interval", "100ms", *extra],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("wb"),
    )


@pytest.fixture
def reap() -> Any:
    """Agent subprocesses that must not outlive their test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


# ---------------------------------------------------------------------------------------
# The agent's view in the quorum


async def test_agent_failures_with_local_ones_make_the_region_down(mosquitto: Mosquitto) -> None:
    broker = BrokerConfig.from_url(mosquitto.url)
    book = HealthBook(policy())
    sink = BookSink(book)
    source = source_for(broker)
    agent = agent_for(broker, Scripted())
    async with running(source.run(sink)):
        await eventually(lambda: source.connected, "the source to subscribe")
        async with running(agent.run()):
            await eventually(lambda: len(sink.from_agent()) >= 6, "the agent's observations")
            assert source.agent_status()[AGENT].state == "online"
            assert agent_up(AGENT) == 1.0
        # A clean stop says goodbye: offline at once, without waiting for a will.
        await eventually(lambda: source.agent_status()[AGENT].state == "offline", "offline")
    now = max(o.at for o in sink.items)

    # The agent alone sees the primary failing: one vantage point is not a quorum.
    verdicts = book.verdicts(now)
    assert verdicts[PRIMARY].verdict is Verdict.DEGRADED
    assert verdicts[PRIMARY].failing == (AGENT,)

    # With the daemon's own failures the quorum of 2 holds: down.
    book.observe_many([local(PRIMARY, False, now - 0.2), local(PRIMARY, False, now - 0.1)])
    book.observe_many([local(STANDBY, True, now - 0.2), local(STANDBY, True, now - 0.1)])
    verdicts = book.verdicts(now)
    assert verdicts[PRIMARY].verdict is Verdict.DOWN
    assert set(verdicts[PRIMARY].failing) == {"local", AGENT}
    assert verdicts[STANDBY].verdict is Verdict.HEALTHY
    assert all(o.source == "agent" and o.vantage == AGENT for o in sink.from_agent())


async def test_killed_agent_is_announced_by_its_will_and_its_view_goes_stale(
    mosquitto: Mosquitto, tmp_path: Path, reap: Any
) -> None:
    broker = BrokerConfig.from_url(mosquitto.url)
    book = HealthBook(policy())
    sink = BookSink(book)
    source = source_for(broker)
    async with running(source.run(sink)):
        await eventually(lambda: source.connected, "the source to subscribe")
        proc = spawn_agent(tmp_path, mosquitto.url)
        reap(proc)
        await eventually(lambda: len(sink.from_agent()) >= 3, "the agent process's observations")
        assert source.agent_status()[AGENT].state == "online"

        proc.kill()  # no goodbye: the broker must speak for it
        proc.wait(timeout=5)
        await eventually(lambda: source.agent_status()[AGENT].state == "offline", "the will")
        assert agent_up(AGENT) == 0.0
    status = source.agent_status()[AGENT]
    last = max(o.at for o in sink.from_agent())
    assert status.last_seen is not None and status.last_seen >= last - 1.0

    book.observe_many([local(PRIMARY, False, last - 0.2), local(PRIMARY, False, last - 0.1)])
    assert book.verdicts(last)[PRIMARY].verdict is Verdict.DOWN

    # Later, the daemon still sees the primary failing, but the agent's view has aged out:
    # unknown, never down, so there is no longer a quorum.
    later = last + STALENESS + 1.0
    book.observe_many([local(PRIMARY, False, later - 0.2), local(PRIMARY, False, later - 0.1)])
    verdict = book.verdicts(later)[PRIMARY]
    assert verdict.verdict is Verdict.DEGRADED
    assert verdict.failing == ("local",)
    assert verdict.unknown == (AGENT,)
    (agent_view,) = [v for v in book.evidence(PRIMARY, later) if v.vantage == AGENT]
    assert agent_view.view is View.UNKNOWN
    assert agent_view.signals[0].detail == STALE


async def test_sigterm_flushes_publishes_offline_and_exits_0(
    mosquitto: Mosquitto, tmp_path: Path, reap: Any
) -> None:
    proc = spawn_agent(tmp_path, mosquitto.url)
    reap(proc)
    seen: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, timeout=5) as watcher:
        await watcher.subscribe(status_topic(AGENT), qos=1)
        async with asyncio.timeout(DEADLINE):
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload))
                # Not a status left retained by an earlier test: this agent, live.
                if seen[-1]["state"] == "online" and not message.retain:
                    break
        asked_at = time.time()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE):
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload))
                if seen[-1]["state"] == "offline":
                    break
    assert await asyncio.to_thread(proc.wait, DEADLINE) == 0
    # Written at shutdown, not the will registered at connect time.
    assert seen[-1]["at"] >= asked_at - 0.5
    assert "agent_offline_published" in (tmp_path / "agent.log").read_text()


# ---------------------------------------------------------------------------------------
# Junk


async def test_junk_is_rejected_counted_and_survived(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    mq = mosquitto_factory()  # its own broker: no retained statuses from other tests
    sink = BookSink(HealthBook(policy()))
    source = source_for(BrokerConfig.from_url(mq.url))
    outcomes = ("accepted", "malformed", "wrong_version", "unknown_service", "future")
    outcomes += ("agent_mismatch", "too_large", "stale")
    before = {o: messages(o) for o in outcomes}
    now = time.time()

    def batch(agent: str = AGENT, **fields: Any) -> bytes:
        obs = {"service": "shop", "region": PRIMARY, "signal": "api", "ok": False, "at": now}
        return json.dumps(
            {"v": 1, "agent": agent, "sent_at": now, "observations": [{**obs, **fields}]}
        ).encode()

    junk = [
        (observations_topic(AGENT), b"\x00 not json"),
        (observations_topic(AGENT), batch()[:-3]),
        ("failoverd/v1/observations/NOT AN ID", batch()),
        (observations_topic(AGENT), batch().replace(b'"v": 1', b'"v": 3')),
        (observations_topic(AGENT), batch(service="billing")),
        (observations_topic(AGENT), batch(at=now + 3600)),
        (observations_topic(AGENT), batch(at=now - 3600)),
        (observations_topic("agent-b"), batch()),  # topic of another agent
        (observations_topic("local"), batch("local")),  # posing as the daemon
        (observations_topic(AGENT), b" " * (600 * 1024)),
        (status_topic(AGENT), b"online"),
        (status_topic("agent-zz"), encode_status("agent-zz", AgentState.ONLINE, now)),
    ]
    expected = {"malformed": 4, "wrong_version": 1, "unknown_service": 1, "future": 1}
    expected |= {"stale": 1, "agent_mismatch": 3, "too_large": 1}
    async with running(source.run(sink)) as (task,):
        await eventually(lambda: source.connected, "the source to subscribe")
        with structlog.testing.capture_logs() as logs:
            async with aiomqtt.Client("127.0.0.1", mq.port, timeout=5) as client:
                for topic, payload in junk:
                    await client.publish(topic, payload, qos=1)
                good = encode_observations(
                    AGENT, [Observation("shop", PRIMARY, "api", AGENT, False, now)], now
                )
                await client.publish(observations_topic(AGENT), good, qos=1)
            # One subscriber gets one publisher's messages in order: junk first.
            await eventually(lambda: len(sink.items) == 1, "the good batch after the junk")
        assert not task.done() and source.connected
    got = {o: messages(o) - before[o] for o in outcomes}
    assert got == {**expected, "accepted": 1.0}
    assert set(source.agent_status()) == {AGENT}  # junk senders are not tracked
    rejected = [e for e in logs if e["event"] == "agent_message_rejected"]
    # Logged, but rate-limited: once per reason within the interval.
    assert {e["reason"] for e in rejected} == set(expected)
    assert len(rejected) == len(expected)


# ---------------------------------------------------------------------------------------
# Broker loss


async def test_both_ends_reconnect_after_a_broker_restart(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    mq = mosquitto_factory()
    broker = BrokerConfig.from_url(mq.url)
    sink = BookSink(HealthBook(policy()))
    source_retries, agent_retries = fast_backoff(), fast_backoff()
    source = MqttAgentSource(broker, [policy()], backoff=source_retries)
    agent = Agent(
        AgentSettings(AGENT, broker, flush_interval=0.05),
        [policy()],
        Scripted(),
        backoff=agent_retries,
    )
    async with running(source.run(sink), agent.run()):
        await eventually(lambda: len(sink.from_agent()) >= 2, "observations before the restart")
        await asyncio.to_thread(mq.stop)
        await eventually(lambda: not source.connected and not agent.connected, "the loss")
        await eventually(
            lambda: source_retries.attempt >= 3 and agent_retries.attempt >= 3,
            "both ends to retry (and fail) while the broker is down",
        )
        restarted_at = time.time()
        await asyncio.to_thread(mq.start)
        await eventually(
            lambda: any(o.at > restarted_at for o in sink.from_agent()),
            "observations made after the restart",
        )
        assert source.connected and agent.connected
        assert source.agent_status()[AGENT].state == "online"


# ---------------------------------------------------------------------------------------
# Authentication


async def test_password_from_a_file_and_never_in_the_logs(mosquitto: Mosquitto) -> None:
    url = mosquitto.auth_url
    good = BrokerConfig.from_url(
        url, username=mosquitto.username, password_file=mosquitto.password_file
    )
    sink = BookSink(HealthBook(policy()))
    with structlog.testing.capture_logs() as logs:
        source = source_for(good)
        agent = agent_for(good, Scripted())
        async with running(source.run(sink), agent.run()):
            await eventually(lambda: len(sink.from_agent()) >= 2, "observations over the auth port")

        wrong = write_secret(mosquitto.workdir / "wrong-password", "not-the-password\n")
        backoff = fast_backoff()
        refused = MqttAgentSource(
            BrokerConfig.from_url(url, username=mosquitto.username, password_file=wrong),
            [policy()],
            backoff=backoff,
        )
        async with running(refused.run(sink)) as (task,):
            await eventually(lambda: backoff.attempt >= 3, "three refused attempts")
            assert not refused.connected and not task.done()
    assert any(e["event"] == "mqtt_disconnected" and "authori" in e["error"] for e in logs)
    assert mosquitto.password not in repr(logs)
    assert mosquitto.password not in repr(good)


# ---------------------------------------------------------------------------------------
# TLS


async def test_tls_with_a_private_ca(mosquitto: Mosquitto) -> None:
    tls = BrokerConfig.from_url(mosquitto.tls_url, ca_file=mosquitto.ca_file)
    sink = BookSink(HealthBook(policy()))
    source = source_for(tls)
    agent = agent_for(tls, Scripted())
    async with running(source.run(sink), agent.run()):
        await eventually(lambda: len(sink.from_agent()) >= 2, "observations over TLS")


@pytest.mark.parametrize(
    ("host", "options", "connects"),
    [
        ("127.0.0.1", {}, False),  # the system's CAs do not know the test CA
        ("localhost", {"ca": True}, False),  # the certificate names 127.0.0.1 only
        ("localhost", {"ca": True, "tls_insecure": True}, True),  # hostname check off
    ],
)
async def test_tls_verification(
    host: str, options: dict[str, Any], connects: bool, mosquitto: Mosquitto
) -> None:
    ca_file = mosquitto.ca_file if options.pop("ca", False) else None
    config = BrokerConfig.from_url(
        f"mqtts://{host}:{mosquitto.tls_port}", ca_file=ca_file, **options
    )
    backoff = fast_backoff()
    source = MqttAgentSource(config, [policy()], backoff=backoff)
    with structlog.testing.capture_logs() as logs:
        async with running(source.run(BookSink(HealthBook(policy())))):
            if connects:
                await eventually(lambda: source.connected, "a TLS connection")
            else:
                await eventually(lambda: backoff.attempt >= 2, "two refused TLS handshakes")
                assert not source.connected
    if not connects:
        errors = [e["error"] for e in logs if e["event"] == "mqtt_disconnected"]
        assert errors and all("certificate verify failed" in e for e in errors)


# ---------------------------------------------------------------------------------------
# Configuration errors (no broker needed)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", ("127.0.0.1", 1883, False)),
        ("mqtts://broker.example.com", ("broker.example.com", 8883, True)),
        ("mqtt://[::1]:1884", ("::1", 1884, False)),
        ("MQTT://localhost:2000/", ("localhost", 2000, False)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, int, bool]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1883", "scheme must be mqtt:// or mqtts://"),
        ("127.0.0.1:1883", "scheme must be"),
        ("mqtt://", "no host"),
        ("mqtt://127.0.0.1:99999", "out of range"),
        ("mqtt://127.0.0.1:abc", "Port could not be cast"),
        ("mqtt://user:hunter2@127.0.0.1", "no credentials in the URL"),
        ("mqtt://127.0.0.1/topic", "no path"),
        ("mqtt://127.0.0.1?x=1", "no path, query"),
    ],
)
def test_bad_broker_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(BrokerConfigError, match=message) as info:
        parse_broker_url(url)
    assert "hunter2" not in str(info.value)


def test_broker_options_that_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="need an mqtts:// broker URL"):
        BrokerConfig.from_url("mqtt://127.0.0.1", tls_insecure=True)
    with pytest.raises(BrokerConfigError, match="needs a username"):
        BrokerConfig.from_url("mqtt://127.0.0.1", password_file=tmp_path / "p")
    missing = BrokerConfig.from_url("mqtt://127.0.0.1", username="u", password_file=tmp_path / "p")
    with pytest.raises(BrokerConfigError, match=r"password file .*/p"):
        missing.check()
    empty = write_secret(tmp_path / "empty", "\n")
    with pytest.raises(BrokerConfigError, match="is empty"):
        BrokerConfig.from_url("mqtt://127.0.0.1", username="u", password_file=empty).check()
    with pytest.raises(BrokerConfigError, match="TLS files"):
        BrokerConfig.from_url("mqtts://127.0.0.1", ca_file=tmp_path / "nope.pem").check()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--id", "Agent A"], "--id: agent id 'Agent A' must match"),
        (["--id", "local"], "reserved"),
        (["--broker", "tcp://127.0.0.1:1883"], "scheme must be mqtt:// or mqtts://"),
        (["--flush-interval", "soon"], "--flush-interval: expected a duration"),
        (["--tls-ca", "/nonexistent/ca.pem"], "need an mqtts:// broker URL"),
        (["--password-file", "/nonexistent/pw"], "needs a username"),
        (["--username", "u", "--password-file", "/nonexistent/pw"], "password file"),
        (["--policies", "/nonexistent/policies"], "no such file or folder"),
        (["--id", "agent-b"], "'agent-b' is not a vantage point of any probe signal"),
    ],
)
def test_agent_refuses_unusable_settings_with_exit_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Logging stays as the test session set it up.
    monkeypatch.setattr("orchestrator.agent.configure_logging", lambda level: None)
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY_YAML, encoding="utf-8")
    base = {"--id": AGENT, "--broker": "mqtt://127.0.0.1:1", "--policies": str(policy_file)}
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    args = [x for kv in {**base, **given}.items() for x in kv]
    assert main(args, producer_factory=lambda *a: Scripted()) == 2
    err = capsys.readouterr().err
    assert err.startswith("failoverd agent: ")
    assert message in err


def test_agent_reports_invalid_policies_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.agent.configure_logging", lambda level: None)
    bad = tmp_path / "shop.yaml"
    bad.write_text(POLICY_YAML.replace("quorum: 2", "quorum: zero"), encoding="utf-8")
    argv = ["--id", AGENT, "--broker", "mqtt://127.0.0.1:1", "--policies", str(bad)]
    assert main(argv, producer_factory=lambda *a: Scripted()) == 2
    err = capsys.readouterr().err
    assert f"{bad}:7:" in err and "quorum" in err
