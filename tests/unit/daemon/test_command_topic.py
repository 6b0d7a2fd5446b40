"""The MQTT command topic takes an operator's abort like the other commands (no broker: the
message is handed to the publisher as its subscription would)."""

from __future__ import annotations

import json

from orchestrator.daemon.control import CommandResult
from orchestrator.daemon.events import EventPublisher, command_topic
from orchestrator.engine.state import Command, CommandSource, OperatorCommand
from orchestrator.signals.mqtt_agents import BrokerConfig


async def test_an_abort_arrives_with_who_and_why_and_a_reason_is_required() -> None:
    asked: list[tuple[str, OperatorCommand]] = []

    async def command(service: str, op: OperatorCommand) -> CommandResult:
        asked.append((service, op))
        return CommandResult(True, "run shop-1 aborted", run_id="shop-1")

    pub = EventPublisher(BrokerConfig.from_url("mqtt://127.0.0.1:1883"), commands=command)
    body = {"v": 1, "command": "abort", "by": "alice", "reason": "wrong region", "id": "c1"}
    topic = command_topic("shop")
    assert await pub.handle_command(topic, json.dumps(body).encode()) == "accepted"
    no_reason = json.dumps({**body, "reason": ""}).encode()
    assert await pub.handle_command(topic, no_reason) == "invalid"
    assert asked == [
        (
            "shop",
            OperatorCommand(
                Command.ABORT, by="alice", reason="wrong region", source=CommandSource.MQTT
            ),
        )
    ]
