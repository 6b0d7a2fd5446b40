"""The daemon's controller wired to the MQTT event stream (EventBridge + EventPublisher)
against a real mosquitto: a decision change becomes an event, the retained state document
follows the service, a failover's run progress is streamed, and an operator command on the
command topic reaches the controller only when commands are enabled."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.daemon.controller import Controller
from orchestrator.daemon.events import EventPublisher, command_topic, state_topic
from orchestrator.daemon.support import EventBridge
from orchestrator.engine.observation import Observation
from orchestrator.signals.mqtt_agents import BrokerConfig
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import make_controller, policy_text
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.mqtt_subscriber import subscriber
from tests.unit.runbook.fakes import ScriptedAction

PRIMARY, STANDBY = "us-east-1", "us-west-2"


@dataclass
class Daemon:
    controller: Controller
    publisher: EventPublisher
    clock: VirtualClock
    action: ScriptedAction
    service: str

    def see(self, region: str, ok: bool) -> None:
        self.clock.advance(1.0)
        self.controller.put(
            Observation(self.service, region, "api", "local", ok, self.clock.now(), source="t")
        )

    def tick(self) -> None:
        self.clock.advance(1.0)

    def observe(self, primary_ok: bool) -> None:
        for _ in range(3):
            self.see(PRIMARY, primary_ok)
            self.see(STANDBY, True)


@contextlib.asynccontextmanager
async def daemon(
    broker: Mosquitto, tmp_path: Path, service: str, *, commands_enabled: bool
) -> AsyncIterator[Daemon]:
    """The daemon's controller and event stream, wired as ``failoverd run`` wires them."""
    policies = tmp_path / "policies"
    policies.mkdir(parents=True)
    (policies / f"{service}.yaml").write_text(policy_text(service))
    clock = VirtualClock()
    action = ScriptedAction(clock)
    store = await SqliteStore.open(tmp_path / "state.db")
    controller = await make_controller(policies, store, clock, action, lease_ttl=3600.0)
    publisher = EventPublisher(
        BrokerConfig.from_url(broker.url, timeout=5.0),
        commands=controller.command if commands_enabled else None,
    )
    EventBridge(controller, publisher).attach()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(controller.run()), tg.create_task(publisher.run())]
            await eventually(lambda: publisher.connected, "the event stream to connect")
            await eventually(controller.is_leader, "the lease")
            yield Daemon(controller, publisher, clock, action, service)
            for task in tasks:
                task.cancel()
    finally:
        await controller.close()
        await store.close()


async def test_decisions_state_and_a_failover_run_are_streamed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    events = "failoverd/v1/events/mq-shop"
    async with (
        subscriber(mosquitto, f"{events}/#", state_topic("mq-shop")) as sub,
        daemon(mosquitto, tmp_path, "mq-shop", commands_enabled=False) as d,
    ):
        d.observe(primary_ok=True)
        await sub.wait_for(
            "a steady decision",
            lambda: any(e["phase"] == "steady" for e in sub.on(f"{events}/decision")),
        )
        await sub.wait_for(
            "the state document",
            lambda: any(s.get("phase") == "steady" for s in sub.on(state_topic("mq-shop"))),
        )

        d.action.durations["move"] = 5.0  # holds the run open until the clock moves
        d.observe(primary_ok=False)
        # Run progress is read on the engine tick: move virtual time one tick at a time.
        await sub.wait_for(
            "the run to start", lambda: bool(sub.on(f"{events}/run_started")), d.tick
        )
        assert sub.on(f"{events}/run_finished") == []
        failovers = [e for e in sub.on(f"{events}/decision") if e["action"] == "failover"]
        assert failovers and failovers[0]["target"] == STANDBY
        assert [e["phase"] for e in sub.on(f"{events}/phase")][:2] == ["steady", "failing_over"]
        await sub.wait_for(
            "the run to finish", lambda: bool(sub.on(f"{events}/run_finished")), d.tick
        )
        finished = sub.on(f"{events}/run_finished")
        assert len(finished) == 1 and finished[0]["status"] == "succeeded"
        assert [s["step"] for s in sub.on(f"{events}/step_finished")] == ["move"]
        await sub.wait_for(
            "the state document on the standby",
            lambda: sub.on(state_topic("mq-shop"))[-1]["active_region"] == STANDBY,
        )
        # Decisions are published on change only, not on every tick.
        keys = [
            (e["phase"], e["action"], e["target"], tuple(e["reasons"]))
            for e in sub.on(f"{events}/decision")
        ]
        assert all(a != b for a, b in itertools.pairwise(keys))

    # Retained: a client connecting afterwards gets the latest state at once.
    async with subscriber(mosquitto, state_topic("mq-shop")) as late:
        await late.wait_for("the retained state", lambda: bool(late.messages))
        _, body, retained = late.messages[0]
        assert retained and body["active_region"] == STANDBY and body["run_status"]


def pause_command(id_: str) -> bytes:
    body = {"v": 1, "command": "pause", "by": "alice", "reason": "game day", "id": id_}
    return json.dumps(body).encode()


async def test_mqtt_commands_reach_the_controller_only_when_enabled(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    results = "failoverd/v1/command-results/mq-cmd"
    events = "failoverd/v1/events/mq-cmd"
    async with (
        subscriber(mosquitto, results, f"{events}/#") as sub,
        daemon(mosquitto, tmp_path / "off", "mq-cmd", commands_enabled=False) as d,
    ):
        assert sub.client is not None
        await sub.client.publish(command_topic("mq-cmd"), pause_command("c1"), qos=1)
        # A later event through the same broker marks the round trip.
        d.observe(primary_ok=True)
        await sub.wait_for("a decision event", lambda: bool(sub.on(f"{events}/decision")))
        snap = d.controller.snapshot("mq-cmd")
        assert snap is not None and not snap.paused
        assert sub.on(results) == []

    async with (
        subscriber(mosquitto, results, state_topic("mq-cmd")) as sub,
        daemon(mosquitto, tmp_path / "on", "mq-cmd", commands_enabled=True) as d,
    ):
        assert sub.client is not None
        await sub.client.publish(command_topic("mq-cmd"), pause_command("c2"), qos=1)
        await sub.wait_for("the command's result", lambda: bool(sub.on(results)))
        answer = sub.on(results)[0]
        assert answer["id"] == "c2" and answer["accepted"] is True
        snap = d.controller.snapshot("mq-cmd")
        assert snap is not None and snap.paused
        await sub.wait_for(
            "the paused state document",
            lambda: any(s.get("paused") for s in sub.on(state_topic("mq-cmd"))),
            d.tick,
        )
