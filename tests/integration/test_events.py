"""The MQTT event stream against a real mosquitto: subscribers see decisions (once per
change), phase changes, run progress and the retained state; operator commands reach the
daemon only when enabled, junk is refused with a published reason, and the publisher comes
back (state and queued events included) after the broker restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.daemon.control import CommandResult, NotLeaderError, ServiceSnapshot
from orchestrator.daemon.events import (
    EventPublisher,
    command_topic,
)
from orchestrator.engine.state import Command, CommandSource, Decision, OperatorCommand, RunStatus
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.runbook.journal import StepStatus
from orchestrator.runbook.rto import RunProgress, StepProgress
from orchestrator.signals.mqtt_agents import Backoff, BrokerConfig
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.mqtt_subscriber import subscriber

DEADLINE = 10.0
SERVICE = "shop"
PRIMARY, STANDBY = "us-east-1", "us-west-2"


@contextlib.asynccontextmanager
async def running(publisher: EventPublisher) -> AsyncIterator[EventPublisher]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(publisher.run())
        try:
            await until(lambda: publisher.connected, "connected")
            yield publisher
        finally:
            task.cancel()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a flag of the publisher (which has no event for it) with a deadline."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        if predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class GatedClock:
    """The system clock, except that a reconnect backoff waits until the test opens the
    gate: then the test's subscriber is in place before queued events are sent."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def now(self) -> float:
        return SYSTEM_CLOCK.now()

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()


def broker_of(m: Mosquitto) -> BrokerConfig:
    return BrokerConfig.from_url(m.url, timeout=5.0)


def decision(phase: Phase, action: Action, *reasons: Reason, at: float = 1000.0) -> Decision:
    return Decision(
        service=SERVICE,
        at=at,
        phase=phase,
        action=action,
        active_region=PRIMARY,
        target=STANDBY if action is Action.FAILOVER else None,
        reasons=reasons,
        policy_version="abc123",
        detected_at=990.0 if reasons else None,
        rto_remaining=890.0 if reasons else None,
    )


def snapshot(phase: str = "steady", active: str = PRIMARY, **changes: Any) -> ServiceSnapshot:
    base = ServiceSnapshot(
        service=SERVICE,
        at=1000.0,
        policy_version="abc123",
        mode="automatic",
        regions=(PRIMARY, STANDBY),
        active_region=active,
        phase=phase,
        reasons=(),
        paused=False,
        rto=900.0,
        rpo=60.0,
        verdicts={},
        evidence={},
        lag={},
        decision=None,
        run=None,
    )
    return replace(base, **changes)


def step(name: str, status: StepStatus, started: float | None, ended: float | None) -> StepProgress:
    return StepProgress(
        name=name,
        action="route53.set_record",
        after=(),
        status=status,
        attempts=(),
        started_at=started,
        finished_at=ended,
        duration=None if started is None else (ended or started) - started,
    )


def progress(status: RunStatus, *steps: StepProgress, finished: float | None = None) -> RunProgress:
    return RunProgress(
        run_id="shop-run-1",
        service=SERVICE,
        kind="failover",
        source=PRIMARY,
        target=STANDBY,
        policy_version="abc123",
        status=status,
        error="",
        steps=steps,
        detected_at=990.0,
        decided_at=1000.0,
        started_at=1000.0,
        finished_at=finished,
        rto=900.0,
        elapsed=(finished or 1000.0) - 990.0,
        rto_remaining=900.0 - ((finished or 1000.0) - 990.0),
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_decisions_phases_run_progress_and_retained_state_reach_subscribers(
    mosquitto: Mosquitto,
) -> None:
    async with (
        running(EventPublisher(broker_of(mosquitto))) as pub,
        subscriber(mosquitto, "failoverd/v1/events/#") as sub,
    ):
        suspect = decision(Phase.SUSPECT, Action.NONE, Reason.NO_QUORUM)
        assert pub.publish_decision(suspect)
        assert not pub.publish_decision(replace(suspect, at=1001.0))  # no change: no event
        failing = decision(Phase.FAILING_OVER, Action.FAILOVER, Reason.ACTIVE_DOWN, at=1002.0)
        assert pub.publish_decision(failing)

        pub.publish_run(progress(RunStatus.RUNNING, step("flip", StepStatus.PENDING, None, None)))
        pub.publish_run(progress(RunStatus.RUNNING, step("flip", StepStatus.RUNNING, 1001, None)))
        pub.publish_run(
            progress(
                RunStatus.SUCCEEDED,
                step("flip", StepStatus.SUCCEEDED, 1001.0, 1004.0),
                finished=1005.0,
            )
        )
        run_done = "failoverd/v1/events/shop/run_finished"
        await sub.wait_for("run_finished", lambda: bool(sub.on(run_done)))

        decisions = sub.on("failoverd/v1/events/shop/decision")
        assert [(d["phase"], d["action"], d["reasons"]) for d in decisions] == [
            ("suspect", "none", ["no_quorum"]),
            ("failing_over", "failover", ["active_down"]),
        ]
        assert (
            decisions[1] | {"v": 1, "type": "decision", "service": SERVICE, "at": 1002.0}
            == (decisions[1])
        )
        assert decisions[1]["target"] == STANDBY and decisions[1]["policy_version"] == "abc123"
        phases = sub.on("failoverd/v1/events/shop/phase")
        assert [(p["previous"], p["phase"]) for p in phases] == [
            (None, "suspect"),
            ("suspect", "failing_over"),
        ]
        # Run progress, in order, each once.
        run_topics = [t.rsplit("/", 1)[1] for t, _, _ in sub.messages if "/run" in t or "step" in t]
        assert run_topics == ["run_started", "step_started", "step_finished", "run_finished"]
        [finished] = sub.on(run_done)
        assert finished["status"] == "succeeded" and finished["run_id"] == "shop-run-1"
        assert finished["rto"] == 900.0 and finished["elapsed"] == 15.0
        assert finished["rto_remaining"] == 885.0 and finished["rto_exceeded"] is False
        assert finished["steps"] == {"flip": {"status": "succeeded", "duration": 3.0}}

        # The retained state: a subscriber arriving later still gets the latest document,
        # and an unchanged snapshot publishes nothing new.
        pub.publish_state(snapshot("failing_over", reasons=("active_down",)))
        pub.publish_state(snapshot("steady", active=STANDBY))
        pub.publish_state(snapshot("steady", active=STANDBY, at=2000.0))
        state_topic = "failoverd/v1/state/shop"
        async with subscriber(mosquitto, state_topic) as late:
            await late.wait_for("retained state", lambda: bool(late.on(state_topic)))
            assert late.messages[-1][2] is True  # delivered as retained
            doc = late.on(state_topic)[-1]
            assert doc["v"] == 1 and doc["type"] == "state"
            assert (doc["active_region"], doc["phase"], doc["paused"], doc["run_id"]) == (
                STANDBY,
                "steady",
                False,
                None,
            )
        assert metric("failoverd_events_published_total", type="state") >= 1


@dataclass
class FakeControl:
    """Stands in for the daemon's Control.command: records what it was asked."""

    calls: list[tuple[str, OperatorCommand]] = field(default_factory=list)
    leader: bool = True

    async def command(self, service: str, command: OperatorCommand) -> CommandResult:
        if not self.leader:
            raise NotLeaderError("node-b")
        self.calls.append((service, command))
        if command.command is Command.PAUSE:
            return CommandResult(True, "paused")
        return CommandResult(False, "standby_unhealthy: us-west-2 is not healthy")


def command_body(**overrides: Any) -> bytes:
    body = {"v": 1, "command": "pause", "by": "alice", "reason": "game day", "id": "c1"}
    return json.dumps(body | overrides).encode()


async def test_commands_reach_the_daemon_only_when_enabled_and_junk_is_refused(
    mosquitto: Mosquitto,
) -> None:
    results = "failoverd/v1/command-results/shop"
    control = FakeControl()
    # Disabled: nothing subscribes, nothing answers. A later event proves the round trip.
    async with (
        running(EventPublisher(broker_of(mosquitto))) as pub,
        subscriber(mosquitto, results, "failoverd/v1/events/shop/#") as sub,
    ):
        await sub.publish(command_topic(SERVICE), command_body())
        await asyncio.sleep(0)  # let the command reach the broker first
        pub.publish_decision(decision(Phase.STEADY, Action.NONE))
        await sub.wait_for("marker event", lambda: bool(sub.on("failoverd/v1/events/shop/phase")))
        assert not sub.on(results)

    invalid_before = metric("failoverd_mqtt_commands_total", outcome="invalid")
    async with (
        running(EventPublisher(broker_of(mosquitto), commands=control.command)),
        subscriber(mosquitto, results) as sub,
    ):
        await sub.publish(command_topic(SERVICE), command_body())
        await sub.publish(command_topic(SERVICE), command_body(command="failover", to=STANDBY))
        await sub.publish(command_topic(SERVICE), b"{not json")
        await sub.publish(command_topic(SERVICE), command_body(command="explode", id="c9"))
        await sub.publish(command_topic(SERVICE), command_body(reason=""))
        await sub.publish(command_topic(SERVICE), command_body(to="moon-base"))
        await sub.publish(command_topic(SERVICE), command_body(force="yes"))
        await sub.wait_for("seven results", lambda: len(sub.on(results)) >= 7)

        answers = sub.on(results)
        assert [(a["outcome"], a["accepted"]) for a in answers] == [
            ("accepted", True),
            ("refused", False),
            ("invalid", False),
            ("invalid", False),
            ("invalid", False),
            ("invalid", False),
            ("invalid", False),
        ]
        assert answers[0]["id"] == "c1" and answers[0]["message"] == "paused"
        assert "standby_unhealthy" in answers[1]["message"]
        assert answers[3]["id"] == "c9" and answers[3]["message"].startswith("command:")
        assert answers[4]["message"].startswith("reason:")
        assert answers[5]["message"].startswith("to:")
        assert answers[6]["message"].startswith("force:")
        # Only the two valid commands reached the daemon, exactly as sent, from MQTT.
        mqtt = CommandSource.MQTT
        assert control.calls == [
            (SERVICE, OperatorCommand(Command.PAUSE, None, False, "alice", "game day", mqtt)),
            (
                SERVICE,
                OperatorCommand(Command.FAILOVER, STANDBY, False, "alice", "game day", mqtt),
            ),
        ]
        assert metric("failoverd_mqtt_commands_total", outcome="invalid") == invalid_before + 5

        # A follower answers who leads; nothing is applied.
        control.leader = False
        await sub.publish(command_topic(SERVICE), command_body(id="c10"))
        await sub.wait_for("not-leader answer", lambda: len(sub.on(results)) >= 8)
        assert sub.on(results)[-1]["outcome"] == "not_leader"
        assert "node-b" in sub.on(results)[-1]["message"]
        assert len(control.calls) == 2


async def test_a_retained_command_is_never_acted_on(mosquitto: Mosquitto) -> None:
    control = FakeControl()
    other = "retained-svc"
    results = f"failoverd/v1/command-results/{other}"
    async with subscriber(mosquitto, results) as sub:
        await sub.publish(command_topic(other), command_body(), retain=True)
        async with running(EventPublisher(broker_of(mosquitto), commands=control.command)):
            await sub.wait_for("retained refusal", lambda: bool(sub.on(results)))
        assert sub.on(results)[0]["outcome"] == "retained"
        assert control.calls == []


async def test_the_publisher_comes_back_after_a_broker_restart(
    mosquitto_factory: Callable[[], Mosquitto],
) -> None:
    broker = mosquitto_factory()
    clock = GatedClock()
    publisher = EventPublisher(
        broker_of(broker), clock=clock, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    state_topic = "failoverd/v1/state/shop"
    async with running(publisher) as pub:
        pub.publish_state(snapshot("steady"))
        async with subscriber(broker, state_topic) as sub:
            await sub.wait_for("state", lambda: bool(sub.on(state_topic)))

        await asyncio.to_thread(broker.stop)
        await until(lambda: not pub.connected, "disconnected")
        # While the broker is away, events wait in the queue.
        pub.publish_decision(decision(Phase.SUSPECT, Action.NONE, Reason.NO_QUORUM))
        assert pub.queued == 2  # decision + phase

        await asyncio.to_thread(broker.start)  # retained messages were lost with it
        async with subscriber(broker, state_topic, "failoverd/v1/events/#") as sub:
            clock.gate.set()
            await sub.wait_for(
                "state republished and queued events delivered",
                lambda: (
                    bool(sub.on(state_topic)) and bool(sub.on("failoverd/v1/events/shop/decision"))
                ),
            )
            assert sub.on(state_topic)[-1]["active_region"] == PRIMARY
        assert pub.connected and pub.queued == 0


def test_a_full_queue_drops_the_oldest_events_and_counts_them() -> None:
    publisher = EventPublisher(BrokerConfig.from_url("mqtt://127.0.0.1:9"), queue_size=3)
    before = metric("failoverd_events_dropped_total", reason="queue_full")
    for i, phase in enumerate([Phase.SUSPECT, Phase.STEADY, Phase.SUSPECT]):
        publisher.publish_decision(decision(phase, Action.NONE, at=float(i)))
    # three decisions, three phase changes, into a queue of three
    assert publisher.queued == 3 and publisher.dropped == 3
    assert metric("failoverd_events_dropped_total", reason="queue_full") == before + 3
