"""Background, ordered appends of audit records (decision changes) to the store's journal.

The engine pass must not wait on the store to record *why* it decided: a decision change is
handed to :meth:`AuditWriter.submit`, which never blocks, and one writer task appends the
records in submission order (so a service's decisions land in the order they were taken).
Each append is bounded by ``timeout``; a failure (store down, fenced out, too slow) is logged
and counted, never retried (a timed-out append may have landed: a retry could record a
decision twice), and the next record is written. A record whose append has not started when
more than ``max_pending`` wait is dropped, oldest first, and counted: memory stays bounded
while the store is down, and the newest decisions are the ones worth keeping.

Callers that must order their own journal writes after a record (a run's ``run_started``
after the decision that started it) await the future ``submit`` returns.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.store.base import JournalRecord, Store, StoreError
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.audit")

MAX_PENDING = 1000

OUTCOMES = ("written", "failed", "dropped")


@dataclass
class _Item:
    record: JournalRecord
    done: asyncio.Future[bool]


class AuditWriter:
    """Owned by the controller: ``run()`` is one task of its TaskGroup, cancelled with it."""

    def __init__(self, store: Store, *, timeout: float, max_pending: int = MAX_PENDING) -> None:
        if not timeout > 0 or max_pending < 1:
            raise ValueError(
                f"timeout must be positive and max_pending at least 1, got timeout={timeout!r}"
                f" max_pending={max_pending!r}"
            )
        self._store = store
        self._timeout = timeout
        self._max = max_pending
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        # Called with each outcome (e.g. a Prometheus counter); must not block or raise.
        self.on_outcome: Callable[[str], object] | None = None

    @property
    def pending(self) -> int:
        """Records waiting for their append to start."""
        return len(self._queue)

    def submit(self, record: JournalRecord) -> asyncio.Future[bool]:
        """Queue ``record``; the future resolves True once it is durable, False when its
        append failed or it was dropped. Call on the event loop; never blocks or raises."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if len(self._queue) >= self._max:
            old = self._queue.popleft()
            self._finish(old, "dropped")
            log.warning(
                "audit_record_dropped",
                service=old.record.service,
                status=old.record.status.value,
                pending=len(self._queue),
            )
        self._queue.append(_Item(record, done))
        self._idle.clear()
        self._wake.set()
        return done

    async def flush(self, within: float) -> bool:
        """Wait (at most ``within`` seconds) until nothing is pending; True when drained."""
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Append queued records, one at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                # Taken off the queue before its append starts: only waiting records can be
                # dropped, never the one in flight.
                item = self._queue.popleft()
                self._finish(item, await self._append(item.record))
            self._idle.set()

    async def _append(self, record: JournalRecord) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.append_journal(record)
            return "written"
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "audit_record_failed",
                service=record.service,
                status=record.status.value,
                error=str(exc) or type(exc).__name__,
            )
            return "failed"
        except Exception:  # a record the store cannot take must not stop the writer
            log.exception("audit_record_failed", service=record.service)
            return "failed"

    def _finish(self, item: _Item, outcome: str) -> None:
        self.counts[outcome] += 1
        if not item.done.done():
            item.done.set_result(outcome == "written")
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:  # a metric hook must not stop the writer
                log.exception("audit_outcome_hook_failed")
