"""Time, injected: every time-dependent part takes a :class:`Clock` so tests run on virtual
time. ``now()`` is wall-clock seconds since the epoch (observations from agents on other
machines are compared with it); ``monotonic()`` is for measuring intervals and deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


STEP_REPORT_THRESHOLD = 1.0  # seconds of wall-clock step worth reporting


class SteadyClock:
    """Wall-clock time that never jumps: the host's wall clock read once, then moved on by
    the monotonic clock. This is the daemon's and the agent's clock.

    Why: every decision measures durations between wall-clock stamps (staleness of a view,
    a cooldown, the leader lease in SQLite, an agent's message age). A step of the host's
    clock (``date -s``, an NTP server that was wrong, a VM restored from a snapshot) would
    otherwise make a view stale, freeze a cell (later probes "older" than the last), end a
    cooldown early or expire the lease. Slewing (NTP's gradual correction) still reaches
    this clock, since the monotonic clock is slewed too.

    The price: after a step that *corrects* a wrong host clock, this clock stays off by the
    step until the process restarts. ``offset()`` says by how much; ``on_step`` (if given)
    is called with it when it moves by more than :data:`STEP_REPORT_THRESHOLD` seconds, so
    the daemon can log and export it.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self._wall = wall
        self._mono = monotonic
        self._anchor_wall = wall()
        self._anchor_mono = monotonic()
        self._reported = 0.0
        self.on_step = on_step

    def now(self) -> float:
        now = self._anchor_wall + (self._mono() - self._anchor_mono)
        if self.on_step is not None:
            offset = self._wall() - now
            if abs(offset - self._reported) > STEP_REPORT_THRESHOLD:
                self._reported = offset
                self.on_step(offset)
        return now

    def offset(self) -> float:
        """The host's wall clock minus this clock, in seconds (0 until the host's steps)."""
        return self._wall() - (self._anchor_wall + (self._mono() - self._anchor_mono))

    def monotonic(self) -> float:
        return self._mono()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
