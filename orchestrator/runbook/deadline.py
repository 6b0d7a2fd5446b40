"""A timeout measured on the injected :class:`~orchestrator.clock.Clock`.

``asyncio.timeout`` counts on the event loop's own clock, which a test's virtual clock does
not move; this one sleeps on ``clock`` and then expires an ``asyncio.timeout`` at once, so
the body sees the same cancellation and the caller the same :class:`TimeoutError` as with
``asyncio.timeout`` itself, on whatever clock the executor was given. An ``interrupt`` event
(an operator's abort of the run) ends the body the same way, before its time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orchestrator.clock import Clock


class Expiry:
    """Whether the timeout fired (as opposed to the body raising TimeoutError itself), and
    whether the interrupt cut the body short."""

    def __init__(self) -> None:
        self.expired = False
        self.interrupted = False


@asynccontextmanager
async def clock_timeout(
    clock: Clock, seconds: float, interrupt: asyncio.Event | None = None
) -> AsyncIterator[Expiry]:
    """Cancel the body after ``seconds`` on ``clock``, or as soon as ``interrupt`` is set
    (already set: at the body's first await); raises TimeoutError either way, and the
    :class:`Expiry` says which. The watchdog tasks are owned here and cancelled (and
    awaited) when the body ends."""
    loop = asyncio.get_running_loop()
    expiry = Expiry()
    async with asyncio.timeout(None) as timeout:

        async def fire() -> None:
            await clock.sleep(seconds)
            if not timeout.expired():
                expiry.expired = True
                timeout.reschedule(loop.time())

        async def stop(event: asyncio.Event) -> None:
            await event.wait()
            if not timeout.expired():
                expiry.interrupted = True
                timeout.reschedule(loop.time())

        watchdogs = [asyncio.ensure_future(fire())]
        if interrupt is not None:
            watchdogs.append(asyncio.ensure_future(stop(interrupt)))
        try:
            yield expiry
        finally:
            for watchdog in watchdogs:
                watchdog.cancel()
            # The watchdogs only ever wait: they end as soon as they are cancelled.
            await asyncio.gather(*watchdogs, return_exceptions=True)
