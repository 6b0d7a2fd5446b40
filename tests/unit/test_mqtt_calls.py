"""The bounded MQTT calls: a cancellation that arrives as the broker's acknowledgement lands
is not lost (the loop that publishes stops, so its owner can stop), and an acknowledgement
that never comes is an ``aiomqtt.MqttError`` naming the topic after the bound."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiomqtt
import pytest

from orchestrator import mqtt_calls


class AckedClient:
    """aiomqtt's call shape: each call waits for its acknowledgement (``ack``), bounded the
    way aiomqtt bounds it (``asyncio.wait_for`` with the client's timeout, none at inf)."""

    def __init__(self) -> None:
        self.ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls: list[tuple[str, Any]] = []

    async def _acked(self, asked: float | None) -> None:
        bound = 10.0 if asked is None else asked
        await asyncio.wait_for(self.ack, None if bound == math.inf else bound)

    async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.calls.append((topic, kw))
        await self._acked(kw.get("timeout"))

    async def subscribe(self, filters: Any, **kw: Any) -> None:
        self.calls.append(("subscribe", filters))
        await self._acked(kw.get("timeout"))


async def _cancel_as_acked(client: AckedClient, call: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(call)
    await asyncio.sleep(0)  # the call now waits for its acknowledgement
    client.ack.set_result(None)
    task.cancel()  # the same loop iteration: what a shutdown during a PUBACK looks like
    await asyncio.wait({task})
    return task


async def test_aiomqtts_own_bound_would_swallow_the_cancellation() -> None:
    # The reason for the module: with aiomqtt's default bound the cancel is lost on 3.11.
    client = AckedClient()
    task = await _cancel_as_acked(client, client.publish("t", b"x", qos=1))
    if task.cancelled():
        pytest.skip("this Python's asyncio.wait_for does not lose cancellations")
    assert task.result() is None


@pytest.mark.parametrize("call", ["publish", "subscribe"])
async def test_a_cancellation_as_the_ack_lands_is_kept(call: str) -> None:
    client = AckedClient()
    if call == "publish":
        op = mqtt_calls.publish(client, "t/1", b"x", qos=1, retain=True, within=5.0)  # type: ignore[arg-type]
    else:
        op = mqtt_calls.subscribe(client, [("t/#", 1)], within=5.0)  # type: ignore[arg-type]
    task = await _cancel_as_acked(client, op)
    assert task.cancelled()


async def test_a_publish_without_ack_fails_as_an_mqtt_error_after_the_bound() -> None:
    client = AckedClient()
    with pytest.raises(aiomqtt.MqttError, match=r"publish to t/2 timed out after 0\.05s"):
        await mqtt_calls.publish(client, "t/2", b"x", qos=1, within=0.05)  # type: ignore[arg-type]
    assert client.calls == [("t/2", {"qos": 1, "retain": False, "timeout": math.inf})]


async def test_a_subscribe_without_suback_fails_as_an_mqtt_error() -> None:
    client = AckedClient()
    with pytest.raises(aiomqtt.MqttError, match=r"subscribe timed out after 0\.05s"):
        await mqtt_calls.subscribe(client, [("a/#", 1), ("b", 0)], within=0.05)  # type: ignore[arg-type]
    assert client.calls == [("subscribe", [("a/#", 1), ("b", 0)])]
