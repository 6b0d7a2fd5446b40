"""Accounting for what the health book did with each observation: counted by source and
outcome, and the refusals logged (``observation_rejected``) at most once per minute per
(service, vantage, reason), so that a bursting or replaying agent is named in the log
without flooding it."""

from __future__ import annotations

from orchestrator.clock import Clock
from orchestrator.engine.healthbook import Intake
from orchestrator.engine.observation import Observation
from orchestrator.telemetry import OBSERVATIONS, OBSERVATIONS_REJECTED, get_logger

log = get_logger("failoverd.intake")

LOG_EVERY = 60.0  # seconds between two observation_rejected lines for one key
MAX_KEYS = 4096  # bound of the rate limiter's table (keys come from policy cells)


class IntakeLedger:
    """Counts :class:`Intake` outcomes; never raises."""

    def __init__(self, clock: Clock, log_every: float = LOG_EVERY) -> None:
        self._clock = clock
        self._every = log_every
        self._last: dict[tuple[str, str, str], float] = {}
        self._held: dict[tuple[str, str, str], int] = {}

    def record(self, obs: Observation, intake: Intake) -> None:
        source = obs.source or "unknown"
        if intake is Intake.ACCEPTED:
            OBSERVATIONS.labels(source=source).inc()
            return
        OBSERVATIONS_REJECTED.labels(source=source, reason=intake.value).inc()
        if intake is Intake.UNEXPECTED:
            return  # e.g. an agent already probing a signal of the next policy version
        key = (obs.service, obs.vantage, intake.value)
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        if last is None and len(self._last) >= MAX_KEYS:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        log.warning(
            "observation_rejected",
            service=obs.service,
            region=obs.region,
            signal=obs.signal,
            vantage=obs.vantage,
            source=source,
            reason=intake.value,
            suppressed=self._held.pop(key, 0),
        )
