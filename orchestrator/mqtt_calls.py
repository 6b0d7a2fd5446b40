"""Bounded MQTT calls that never lose a cancellation.

aiomqtt bounds each call (PUBACK, SUBACK) with ``asyncio.wait_for``. On Python 3.11 that
returns the result instead of raising when the task is cancelled in the same loop iteration
as the acknowledgement lands (CPython bpo-42130, fixed by 3.12's rewrite of wait_for). A
publishing loop then goes on as if nothing happened, waits for its next message, and the
TaskGroup that cancelled it waits forever: the daemon or agent does not stop.
``asyncio.timeout`` keeps count of cancellations, so these helpers hand aiomqtt an infinite
timeout (it then awaits the acknowledgement directly) and bound the call themselves. A
timeout still surfaces as ``aiomqtt.MqttError``, as aiomqtt's own does, so callers keep one
error to handle.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import aiomqtt


async def publish(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool = False,
    within: float,
) -> None:
    """``client.publish`` bounded by ``within`` seconds (for QoS 1 and 2: until acked)."""
    try:
        async with asyncio.timeout(within):
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
    except TimeoutError:
        raise aiomqtt.MqttError(f"publish to {topic} timed out after {within}s") from None


async def subscribe(
    client: aiomqtt.Client, filters: Sequence[tuple[str, int]], *, within: float
) -> None:
    """``client.subscribe`` to ``(filter, qos)`` pairs, bounded by ``within`` seconds
    (the SUBACK)."""
    try:
        async with asyncio.timeout(within):
            await client.subscribe(list(filters), timeout=math.inf)
    except TimeoutError:
        raise aiomqtt.MqttError(f"subscribe timed out after {within}s") from None
