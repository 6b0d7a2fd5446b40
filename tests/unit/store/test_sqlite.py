"""SqliteStore: the Store contract, plus what only a file-backed store can get wrong."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from orchestrator.store.base import (
    FencedOut,
    JournalStatus,
    Store,
    StoreError,
    StoreUnavailable,
)
from orchestrator.store.codec import CorruptRecord
from orchestrator.store.sqlite import SCHEMA_VERSION, SchemaMismatch, SqliteStore
from tests.fixtures.binaries import require_binary
from tests.fixtures.clock import VirtualClock
from tests.unit.store.contract import StoreContract, StoreFactory, full_state, record

REPO = Path(__file__).resolve().parents[3]


@dataclass
class SqliteFactory:
    path: Path
    clock: VirtualClock
    lease_ttl: float = 10.0

    async def open(self) -> Store:
        return await SqliteStore.open(self.path, clock=self.clock)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def corrupt_state(self, service: str, body: bytes) -> None:
        with raw(self.path) as conn:
            conn.execute("UPDATE service_state SET body = ? WHERE service = ?", (body, service))

    async def corrupt_journal(self, run_id: str, index: int, body: bytes) -> None:
        with raw(self.path) as conn:
            (seq,) = conn.execute(
                "SELECT seq FROM journal WHERE run_id = ? ORDER BY seq LIMIT 1 OFFSET ?",
                (run_id, index),
            ).fetchone()
            conn.execute("UPDATE journal SET body = ? WHERE seq = ?", (body, seq))


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return SqliteFactory(tmp_path / "state.db", VirtualClock())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(db, clock=VirtualClock())
    try:
        yield store
    finally:
        await store.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- durability settings and schema -------------------------------------------------------
async def test_commits_are_durable_wal_with_full_sync(db: Path, store: SqliteStore) -> None:
    settings = await store.settings()
    assert settings.journal_mode == "wal"
    assert settings.synchronous == 2  # FULL: the WAL is fsync'd at every commit
    # A locked file is given up on just before the call's own deadline.
    assert 0 < settings.busy_timeout_ms == store.busy_timeout_ms < store.timeout * 1000
    assert settings.schema_version == SCHEMA_VERSION
    # WAL is a property of the file: any other process opening it sees it too.
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_new_database_gets_a_schema_version(db: Path, store: SqliteStore) -> None:
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused_and_left_untouched(db: Path) -> None:
    store = await SqliteStore.open(db)
    await store.close()
    with raw(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaMismatch) as err:
        await SqliteStore.open(db)
    message = str(err.value)
    assert str(db) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "upgrade failoverd" in message
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == (
            SCHEMA_VERSION + 1
        )


# The tables of the earlier schema versions, as their failoverd created them.
_SCHEMA_1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "INSERT INTO schema_version VALUES (1);"
    "CREATE TABLE lease (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT,"
    " token INTEGER NOT NULL, expires_at REAL);"
    "INSERT INTO lease VALUES (1, NULL, 41, NULL);"
    "CREATE TABLE service_state (service TEXT PRIMARY KEY, body TEXT NOT NULL,"
    " token INTEGER NOT NULL, saved_at REAL NOT NULL);"
    "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,"
    " service TEXT NOT NULL, status TEXT NOT NULL, token INTEGER NOT NULL,"
    " body TEXT NOT NULL);"
    "CREATE TABLE approvals (seq INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT"
    " NULL, run_id TEXT NOT NULL, step TEXT NOT NULL, body TEXT NOT NULL);"
    # A corrupt state row, for the quarantine to take after the upgrade.
    "INSERT INTO service_state VALUES ('web', '{not json', 1, 0);"
)
_QUARANTINE_1 = (  # a version 1 database of a build that had the quarantine table already
    "CREATE TABLE quarantine (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL, key TEXT NOT NULL, error TEXT NOT NULL, found_at REAL NOT NULL,"
    " body BLOB NOT NULL, UNIQUE (kind, key, body));"
)
_SCHEMA_2 = (  # schema 1 + lease.info (the leader's announcement)
    _SCHEMA_1 + "ALTER TABLE lease ADD COLUMN info TEXT; UPDATE schema_version SET version = 2;"
)


@pytest.mark.parametrize(
    "old",
    [_SCHEMA_1, _SCHEMA_1 + _QUARANTINE_1, _SCHEMA_2],
    ids=["version-1", "version-1-with-quarantine", "version-2"],
)
async def test_an_older_database_is_upgraded_in_place_keeping_its_records(
    db: Path, old: str
) -> None:
    with raw(db) as conn:
        conn.executescript(old)
    store = await SqliteStore.open(db, clock=VirtualClock())
    try:
        lease = await store.acquire_lease("daemon-a", 10.0)
        assert lease is not None and lease.token == 42  # the token history survived
        await store.announce(lease, "http://127.0.0.1:8080", "v-1")
        info = await store.leader_info()
        assert info is not None and info.api == "http://127.0.0.1:8080"
        with pytest.raises(CorruptRecord):  # the old row is still there, and quarantined
            await store.load_state("web")
        assert [(q.kind, q.key) for q in await store.quarantined()] == [
            ("service_state", "service_state/web")
        ]
    finally:
        await store.close()
    with raw(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    reopened = await SqliteStore.open(db, clock=VirtualClock())  # upgraded once, opens as is
    try:
        assert len(list(await reopened.quarantined())) == 1
    finally:
        await reopened.close()


async def test_a_current_database_without_its_quarantine_table_is_refused(db: Path) -> None:
    store = await SqliteStore.open(db, clock=VirtualClock())
    await store.close()
    with raw(db) as conn:
        conn.execute("DROP TABLE quarantine")
    with pytest.raises(SchemaMismatch, match=r"tables missing .* quarantine"):
        await SqliteStore.open(db, clock=VirtualClock())


async def test_a_database_of_another_application_is_refused(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(SchemaMismatch, match="not a failoverd database") as err:
        await SqliteStore.open(db)
    assert str(db) in str(err.value)


def test_a_file_of_junk_is_a_clear_error_and_is_not_overwritten(db: Path) -> None:
    junk = bytes(range(256)) * 64
    db.write_bytes(junk)
    with pytest.raises(StoreUnavailable) as err:
        SqliteStore(db)
    assert str(db) in str(err.value)
    assert "not a SQLite database or is corrupt" in str(err.value)
    assert db.read_bytes() == junk


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "state.db"
    with pytest.raises(StoreUnavailable) as err:
        SqliteStore(path)
    assert str(path) in str(err.value)
    assert "cannot open or write" in str(err.value)


_OPEN_READ_ONLY = """
import sys
from orchestrator.store.sqlite import SqliteStore
from orchestrator.store.base import StoreUnavailable
try:
    SqliteStore(sys.argv[1])
except StoreUnavailable as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    path = ro / "state.db"
    ro.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(StoreUnavailable) as err:
                SqliteStore(path)
            message = str(err.value)
        else:
            # Root ignores directory permissions: open from a child without the capability
            # that lets it (what a daemon running as its own user would meet).
            setpriv = require_binary("setpriv")
            child = subprocess.run(
                [
                    *(setpriv, "--bounding-set", "-dac_override,-dac_read_search"),
                    *(sys.executable, "-c", _OPEN_READ_ONLY, str(path)),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert child.returncode == 3, child.stderr
            message = child.stdout
        assert str(path) in message
        assert "cannot open or write" in message
        assert not path.exists()
    finally:
        ro.chmod(0o755)


def test_bad_settings_are_refused(db: Path) -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            SqliteStore(db, timeout=bad)
    assert not db.exists()


# -- corrupt rows --------------------------------------------------------------------------
async def test_a_corrupt_state_row_names_the_service_and_field(
    db: Path, store: SqliteStore
) -> None:
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO service_state (service, body, token, saved_at) VALUES (?, ?, 1, 0)",
            ("web", '{"v": 1, "service": "web"}'),
        )
    with pytest.raises(CorruptRecord) as err:
        await store.load_state("web")
    assert "'web'" in str(err.value)
    assert "active_region" in str(err.value)
    assert isinstance(err.value, StoreError)


async def test_a_corrupt_journal_row_names_the_record(db: Path, store: SqliteStore) -> None:
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO journal (run_id, service, status, token, body)"
            " VALUES ('r1', 'web', 'run_started', 1, 'not json')"
        )
    counted = {"backend": "sqlite", "kind": "journal"}
    before = REGISTRY.get_sample_value("failoverd_store_corrupt_records_total", counted) or 0.0
    (bad,) = await store.read_run("r1")
    assert list(await store.read_run("r1")) == [bad]
    after = REGISTRY.get_sample_value("failoverd_store_corrupt_records_total", counted)
    assert after == before + 1  # counted once per process, however often it is read
    assert bad.status is JournalStatus.CORRUPT
    assert (bad.run_id, bad.service, bad.token, bad.detail) == ("r1", "web", 1, "journal/1")
    assert re.search(r"journal record 'journal/1' of run 'r1'.*not JSON", bad.error)


async def test_damaged_columns_and_bodies_of_any_type_are_quarantined(
    db: Path, store: SqliteStore
) -> None:
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO journal (run_id, service, status, token, body)"
            " VALUES (X'FF', X'FE', 'x', 'y', 42)"
        )
        conn.execute(
            "INSERT INTO service_state (service, body, token, saved_at) VALUES ('web', ?, 1, 0)",
            ("[" * 100_000,),
        )
    (bad,) = await store.read_journal()
    assert (bad.status, bad.run_id, bad.service, bad.token) == (JournalStatus.CORRUPT, "", "", 0)
    with pytest.raises(CorruptRecord, match="nested too deep"):
        await store.load_state("web")
    assert {q.kind for q in await store.quarantined()} == {"journal", "service_state"}


# -- time bounds and concurrency -----------------------------------------------------------
async def test_a_locked_database_is_unavailable_within_the_timeout(db: Path) -> None:
    store = await SqliteStore.open(db, timeout=0.3)
    try:
        other = raw(db)
        other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                await store.acquire_lease("daemon-a", 10.0)
            elapsed = time.monotonic() - started
            assert 0.2 <= elapsed < 1.5, elapsed
            assert str(db) in str(err.value)
            assert await store.leader() is None  # reads still work beside a writer (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Once the lock is gone the same store works again.
        assert await store.acquire_lease("daemon-a", 10.0) is not None
    finally:
        await store.close()


async def test_a_cancelled_write_waiting_for_the_lock_never_lands(db: Path) -> None:
    store = await SqliteStore.open(db, timeout=5.0)
    try:
        lease = await store.acquire_lease("daemon-a", 60.0)
        assert lease is not None
        other = raw(db)
        other.execute("BEGIN EXCLUSIVE")
        try:
            task = asyncio.create_task(
                store.append_journal(record("r1", JournalStatus.RUN_STARTED, lease.token))
            )
            # Let the write reach SQLite's lock wait (if it has not, the outcome must be the
            # same: the assertion holds either way, the pause only picks the harder path).
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            other.execute("ROLLBACK")  # the abandoned write now gets the lock...
            other.close()
        # ...and must roll back: the next call runs after it on the same worker.
        assert await store.read_run("r1") == []
        await store.append_journal(record("r2", JournalStatus.RUN_STARTED, lease.token))
        assert len(await store.read_run("r2")) == 1
    finally:
        await store.close()


async def test_writers_on_two_connections_are_serialised(db: Path) -> None:
    clock = VirtualClock()
    a = await SqliteStore.open(db, clock=clock)
    b = await SqliteStore.open(db, clock=clock)
    try:
        lease = await a.acquire_lease("daemon-a", 60.0)
        assert lease is not None

        async def writer(store: SqliteStore, step: str) -> None:
            for attempt in range(1, 31):
                await store.append_journal(
                    record(
                        "r1", JournalStatus.STEP_STARTED, lease.token, step=step, attempt=attempt
                    )
                )

        await asyncio.gather(writer(a, "a"), writer(b, "b"), writer(a, "c"))
        records = await b.read_run("r1")
        assert len(records) == 90
        for step in "abc":
            assert [r.attempt for r in records if r.step == step] == list(range(1, 31))
    finally:
        await a.close()
        await b.close()


async def test_fenced_writes_are_counted(db: Path, store: SqliteStore) -> None:
    def fenced() -> float:
        sample = REGISTRY.get_sample_value(
            "failoverd_store_operation_duration_seconds_count",
            {"backend": "sqlite", "operation": "save_state", "outcome": "fenced"},
        )
        return sample or 0.0

    before = fenced()
    with pytest.raises(FencedOut):
        await store.save_state(full_state(), 1)
    assert fenced() == before + 1


# -- crash durability ----------------------------------------------------------------------
async def test_a_journal_record_survives_sigkill_right_after_append_returns(db: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.unit.store.crash_writer",
        str(db),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    acknowledged = 0
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while acknowledged < 40:
                line = await proc.stdout.readline()
                if not line:
                    _, err = await proc.communicate()
                    pytest.fail(f"crash writer exited early: {err.decode()[-2000:]}")
                acknowledged = int(line)
        proc.send_signal(signal.SIGKILL)  # mid-way through the next append, most likely
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = await SqliteStore.open(db)
    try:
        attempts = [r.attempt for r in await store.read_run("crash-run")]
    finally:
        await store.close()
    # Every acknowledged record is there, in order; at most the unacknowledged ones follow.
    assert attempts[:acknowledged] == list(range(1, acknowledged + 1))
    assert attempts == list(range(1, len(attempts) + 1))
    with raw(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
