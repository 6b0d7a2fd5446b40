"""The SQLite state file (and its WAL files) are the daemon user's alone, whatever the umask:
the journal names operators, their reasons and the services' state."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock


async def test_a_new_database_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = os.umask(0o022)  # a container's usual umask: new files 0644
    try:
        store = await SqliteStore.open(db, clock=VirtualClock())  # creates the schema: writes
        try:
            files = [db, *(tmp_path / n for n in os.listdir(tmp_path) if n != "state.db")]
            assert len(files) >= 2, files  # the WAL exists while the store is open
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        finally:
            await store.close()
    finally:
        os.umask(old)


async def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    await (await SqliteStore.open(db, clock=VirtualClock())).close()
    db.chmod(0o640)
    await (await SqliteStore.open(db, clock=VirtualClock())).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
