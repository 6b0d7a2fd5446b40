"""A timeout measured on the injected :class:`~orchestrator.clock.Clock`.

``asyncio.timeout`` counts on the event loop's own clock, which a test's virtual clock does
not move; this one sleeps on ``clock`` and then expires an ``asyncio.timeout`` at once, so
the body sees the same cancellation and the caller the same :class:`TimeoutError` as with
``asyncio.timeout`` itself, on whatever clock the executor was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orchestrator.clock import Clock


class Expiry:
    """Whether the timeout fired (as opposed to the body raising TimeoutError itself)."""

    def __init__(self) -> None:
        self.expired = False


@asynccontextmanager
async def clock_timeout(clock: Clock, seconds: float) -> AsyncIterator[Expiry]:
    """Cancel the body after ``seconds`` on ``clock``; raises TimeoutError when it fires.
    The watchdog task is owned here and cancelled (and awaited) when the body ends."""
    loop = asyncio.get_running_loop()
    expiry = Expiry()
    async with asyncio.timeout(None) as timeout:

        async def fire() -> None:
            await clock.sleep(seconds)
            expiry.expired = True
            timeout.reschedule(loop.time())

        watchdog = asyncio.ensure_future(fire())
        try:
            yield expiry
        finally:
            watchdog.cancel()
            # The watchdog only ever sleeps: it ends as soon as it is cancelled.
            await asyncio.gather(watchdog, return_exceptions=True)
