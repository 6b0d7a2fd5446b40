"""The sandbox's embedded broker (amqtt) carries MQTT traffic between aiomqtt clients, the way
agents and the daemon use it when mosquitto is not installed, and stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.sandbox import broker, runner
from tests.fixtures.binaries import free_port, port_open

pytest.importorskip("amqtt", reason="amqtt is not installed (the sandbox extra)")

START_DEADLINE = 15.0  # a cold `python -m` import of amqtt on 2 busy cores
ROUND_TRIP_DEADLINE = 5.0


async def _until_open(port: int, proc: asyncio.subprocess.Process | None = None) -> None:
    deadline = asyncio.get_running_loop().time() + START_DEADLINE
    while not port_open(port):
        if proc is not None and proc.returncode is not None:
            pytest.fail(f"broker exited with {proc.returncode} before listening")
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"broker did not listen on 127.0.0.1:{port} within {START_DEADLINE}s")
        await asyncio.sleep(0.05)


async def _round_trip(port: int) -> None:
    """One client subscribes, another publishes at QoS 1; the subscriber gets the payload."""
    topic = "failoverd/test/lag"
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="sub", timeout=5) as sub,
        aiomqtt.Client("127.0.0.1", port, identifier="pub", timeout=5) as pub,
    ):
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, b'{"lag_s": 12.5}', qos=1)
        async with asyncio.timeout(ROUND_TRIP_DEADLINE):
            async for message in sub.messages:
                assert str(message.topic) == topic
                assert message.payload == b'{"lag_s": 12.5}'
                return


async def test_in_process_broker_round_trips_and_stops() -> None:
    port = free_port()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(broker.serve(port, stop))
        await _until_open(port)
        await _round_trip(port)
        stop.set()
        async with asyncio.timeout(broker.SHUTDOWN_DEADLINE + 2):
            await server
    assert not port_open(port)


async def test_subprocess_broker_round_trips_and_exits_0_on_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.sandbox.broker",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _until_open(port, proc)
        await _round_trip(port)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(broker.SHUTDOWN_DEADLINE + 5):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_port_is_refused_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert broker.main(["--port", "70000"]) == broker.EXIT_UNUSABLE
    assert "--port must be 1..65535, got 70000" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        broker.broker_config(0)


async def test_taken_port_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        assert await broker._run(port) == broker.EXIT_UNUSABLE
    finally:
        holder.close()
        await holder.wait_closed()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


async def test_sandbox_falls_back_to_the_embedded_broker_without_mosquitto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(runner, "_mosquitto", lambda: None)
    sandbox = runner.Sandbox(port=0, agents=True, workdir=tmp_path)
    try:
        url = await sandbox._start_broker()
        assert url is not None and url.startswith("mqtt://127.0.0.1:")
        assert "amqtt" in sandbox.broker_note
        port = int(url.rsplit(":", 1)[1])
        await _round_trip(port)
    finally:
        await sandbox.aclose()
    assert "broker" in sandbox.pids
    assert not port_open(port)
