"""Child process for the crash-durability test: appends journal records forever, printing
each record's attempt number only after ``append_journal`` has returned. The test SIGKILLs
it; every number printed must be in the database afterwards.

Run: ``python -m tests.unit.store.crash_writer DB_PATH``.
"""

from __future__ import annotations

import asyncio
import sys

from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.sqlite import SqliteStore
from orchestrator.telemetry import configure_logging

RUN_ID = "crash-run"


async def main(path: str) -> None:
    store = await SqliteStore.open(path, timeout=10.0)
    lease = await store.acquire_lease("crash-writer", 3600.0)
    assert lease is not None, "the test's database must be fresh"
    attempt = 0
    while True:  # ends by SIGKILL, which is the point
        attempt += 1
        await store.append_journal(
            JournalRecord(
                run_id=RUN_ID,
                service="web",
                status=JournalStatus.STEP_STARTED,
                at=float(attempt),
                token=lease.token,
                policy_version="v1",
                step="promote_db",
                attempt=attempt,
            )
        )
        sys.stdout.write(f"{attempt}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    configure_logging(level="warning", json=True)  # logs on stderr; stdout is the protocol
    asyncio.run(main(sys.argv[1]))
