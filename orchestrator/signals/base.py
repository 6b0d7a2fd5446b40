"""The contracts between signal sources and the rest of the daemon."""

from __future__ import annotations

from typing import Protocol

from orchestrator.engine.observation import Observation
from orchestrator.engine.state import LagReading


class ObservationSink(Protocol):
    """Where sources put what they see.

    ``put`` must not block and must not raise: it is called from probe callbacks on the
    event loop. Implementations queue or apply the observation at once.
    """

    def put(self, obs: Observation) -> None: ...


class LagSink(Protocol):
    """Where lag readers put readings: ``put_lag(service, region, reading)``; non-blocking."""

    def put_lag(self, service: str, region: str, reading: LagReading) -> None: ...


class SignalSource(Protocol):
    """A long-running producer of observations.

    Contract: ``run`` loops until cancelled and returns only by cancellation; it never lets a
    network error escape (a failed look is an observation: ``ok=False`` when the target
    failed, ``ok=None`` when the observer itself could not tell); every network call it makes
    is bounded by a timeout; retries use backoff with jitter and a budget.
    """

    name: str

    async def run(self, sink: ObservationSink) -> None: ...


class ListSink:
    """A sink that keeps everything, for tests and the agent's publisher batches."""

    def __init__(self) -> None:
        self.items: list[Observation] = []
        self.lag: list[tuple[str, str, LagReading]] = []

    def put(self, obs: Observation) -> None:
        self.items.append(obs)

    def put_lag(self, service: str, region: str, reading: LagReading) -> None:
        self.lag.append((service, region, reading))
