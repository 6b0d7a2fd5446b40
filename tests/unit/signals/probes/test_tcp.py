"""TCP connect probes against real loopback listeners."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import TcpProber


@pytest_asyncio.fixture
async def listener() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A listener that accepts and hangs up; yields its port and an event set on accept."""
    accepted = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_open_port_succeeds(listener: tuple[int, asyncio.Event]) -> None:
    port, accepted = listener
    result = await TcpProber(timeout=2.0).probe(f"127.0.0.1:{port}")
    assert result.ok, result
    assert 0 < result.latency < 2.0
    async with asyncio.timeout(2.0):  # the server really saw the connection
        await accepted.wait()


async def test_ipv6_literal_target_is_understood(listener: tuple[int, asyncio.Event]) -> None:
    port, _ = listener
    # Nothing listens on [::1] at this port: refused (or unavailable), never a parse error.
    result = await TcpProber(timeout=2.0).probe(f"[::1]:{port}")
    assert result.reason is FailureKind.CONNECT


async def test_refused_port_is_connect(refused_port: int) -> None:
    result = await TcpProber(timeout=2.0).probe(f"127.0.0.1:{refused_port}")
    assert (result.ok, result.reason) == (False, FailureKind.CONNECT)


async def test_unresolvable_name_is_dns() -> None:
    result = await TcpProber(timeout=2.0).probe("db.failoverd.invalid:5432")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)
    assert "failoverd.invalid" in result.detail


async def test_connect_that_never_completes_is_timeout(unreachable_port: int) -> None:
    started = time.monotonic()
    result = await TcpProber(timeout=0.3).probe(f"127.0.0.1:{unreachable_port}")
    assert (result.ok, result.reason) == (False, FailureKind.TIMEOUT)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("db.example.com", "host:port"),
        ("db.example.com:", "host:port"),
        (":5432", "host:port"),
        ("db.example.com:99999", "1-65535"),
        ("::1:80", r"\[address\]:port"),
        ("[not-v6]:80", "IPv6"),
    ],
)
def test_malformed_targets_are_refused(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TcpProber(timeout=1.0).validate(target)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TcpProber(timeout=0)
