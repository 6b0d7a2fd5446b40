"""TCP connect probes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes.result import ProbeResult, clip
from orchestrator.signals.probes.targets import parse_host_port


class TcpProber:
    """Connect to ``host:port`` and close again; success when the connection is accepted.

    Failure reasons: ``dns`` (the host name does not resolve), ``connect`` (refused,
    unreachable), ``timeout`` (no connection within ``timeout``).
    """

    type = "tcp"

    def __init__(self, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout

    def validate(self, target: str) -> None:
        parse_host_port(target)

    async def probe(self, target: str) -> ProbeResult:
        start = time.perf_counter()
        try:
            host, port = parse_host_port(target)
        except ValueError as exc:
            return ProbeResult.failure(FailureKind.CONNECT, 0.0, str(exc))
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(host, port)
                latency = time.perf_counter() - start
                writer.close()
                # The connect succeeded; a peer resetting while we hang up changes nothing.
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            return ProbeResult.success(latency)
        except socket.gaierror as exc:
            return _fail(FailureKind.DNS, start, f"{host}: {exc.strerror or exc}")
        except TimeoutError:
            return _fail(FailureKind.TIMEOUT, start, f"no connection within {self.timeout:g}s")
        except OSError as exc:
            return _fail(FailureKind.CONNECT, start, exc.strerror or str(exc))


def _fail(reason: FailureKind, start: float, detail: str) -> ProbeResult:
    return ProbeResult.failure(reason, time.perf_counter() - start, clip(detail))
