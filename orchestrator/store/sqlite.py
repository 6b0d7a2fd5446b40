"""The embedded, single-node store: one SQLite file.

Durability: WAL journal with ``synchronous=FULL``, so a commit is fsync'd before the call
returns (``append_journal`` is durable when it returns, as the contract demands; ``NORMAL``
would only survive a process crash, not a power cut).

One writer: a single connection, used only from one dedicated worker thread; calls are
serialised by an ``asyncio.Lock`` and every write is a ``BEGIN IMMEDIATE`` transaction, so
the fencing check and the write it guards are atomic even against another process that
opened the same file (SQLite's file lock serialises the two; ``busy_timeout`` waits for it).

Time: the lease's ``expires_at`` is judged on this store's clock, ``clock.now()`` (the host's
wall clock), read in the worker thread at the moment of the transaction. SQLite is single-node,
so every daemon sharing the file shares that clock and skew cannot arise; the wall clock (not
the monotonic one) is used because it survives a reboot, so a lease written before a reboot
expires on time after it. A wall-clock step shortens or lengthens a lease by the step.

Timeouts: every call is bounded by ``timeout`` (lock wait included) and raises
:class:`StoreUnavailable` when it runs over; a statement still running is interrupted, and a
call that had not started yet never runs. As with any store, a write that times out *while
committing* may have landed: its outcome is unknown, never reordered after a later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.state import ServiceState
from orchestrator.store.base import (
    ApprovalRecord,
    CorruptRecord,
    FencedOut,
    JournalRecord,
    JournalStatus,
    LeaderInfo,
    Lease,
    QuarantinedRecord,
    StoreError,
    StoreUnavailable,
    check_holder,
    check_journal_query,
    check_recent_runs_limit,
    check_token,
    check_ttl,
    decode_announcement,
    encode_announcement,
    in_window,
)
from orchestrator.store.codec import (
    decode_approval,
    decode_state,
    encode_approval,
    encode_journal,
    encode_state,
)
from orchestrator.store.quarantine import (
    Found,
    JournalDecoder,
    Quarantine,
    Row,
    corrupt_state,
    decode_all,
)
from orchestrator.telemetry import STORE_OPERATION_DURATION, get_logger

# 2: lease.info (what the leader announced); 3: the quarantine table (corrupt records' copies).
# Opening an older database upgrades it in place, one step per version, in one transaction.
SCHEMA_VERSION = 3

_T = TypeVar("_T")
_log = get_logger("failoverd.store")

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    # One row, kept after release: `token` is the last token handed out, so tokens keep
    # increasing across releases, restarts and holders.
    "CREATE TABLE lease (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT,"
    " token INTEGER NOT NULL, expires_at REAL, info TEXT)",
    "INSERT INTO lease (id, holder, token, expires_at) VALUES (1, NULL, 0, NULL)",
    "CREATE TABLE service_state (service TEXT PRIMARY KEY, body TEXT NOT NULL,"
    " token INTEGER NOT NULL, saved_at REAL NOT NULL)",
    "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,"
    " service TEXT NOT NULL, status TEXT NOT NULL, token INTEGER NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX journal_run ON journal (run_id, seq)",
    "CREATE INDEX journal_service ON journal (service, seq)",
    "CREATE TABLE approvals (seq INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL,"
    " run_id TEXT NOT NULL, step TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX approvals_key ON approvals (service, run_id, step)",
)
_TABLES = frozenset({"schema_version", "lease", "service_state", "journal", "approvals"})
# Schema 3: corrupt records' copies (see store/quarantine.py).
_QUARANTINE_TABLE = (
    "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL, key TEXT NOT NULL, error TEXT NOT NULL, found_at REAL NOT NULL,"
    " body BLOB NOT NULL, UNIQUE (kind, key, body))"
)
_FINISHED = (JournalStatus.RUN_SUCCEEDED.value, JournalStatus.RUN_FAILED.value)

# Primary result codes (the low byte of an extended code).
_CORRUPT = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_NO_ACCESS = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_AUTH,
    }
)
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@dataclass(frozen=True)
class SqliteSettings:
    path: str
    journal_mode: str  # "wal"
    synchronous: int  # 2 = FULL
    busy_timeout_ms: int
    schema_version: int


def _row(seq: int, run_id: object, service: object, token: object, body: object) -> Row:
    """A journal row as the decoder takes it; the columns may be damaged too."""
    return Row(
        key=f"journal/{seq}",
        body=_raw(body),
        run_id=run_id if isinstance(run_id, str) else "",
        service=service if isinstance(service, str) else "",
        token=token if isinstance(token, int) else 0,
    )


def _raw(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", errors="surrogateescape")
    return repr(body).encode()  # a number or NULL where JSON text belongs


class SchemaMismatch(StoreError):
    """The database was written by a newer failoverd (or is not a failoverd database)."""


class _Abandoned(Exception):
    """The caller gave up on this call; nobody reads this error."""


class _Job:
    """One call's work in the worker thread, abandonable by its caller (timeout, cancel).

    An abandoned job that has not started never starts; a running statement is interrupted
    (the lock makes sure the interrupt can only hit this job, never the next one); a write
    re-checks after taking the write lock and before committing, so a write that waited out
    its caller's deadline on the lock rolls back instead of landing after the caller was told
    it failed. Only a commit already under way when the caller gives up may still land."""

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.state = "pending"
        self.abandoned = False
        self.lock = threading.Lock()

    def run(self, conn: sqlite3.Connection) -> Any:
        with self.lock:
            if self.abandoned:
                raise _Abandoned
            self.state = "running"
        try:
            if not self.write:
                return self.fn(conn)
            # IMMEDIATE takes the write lock first, so what fn reads cannot change before
            # it commits: the fencing check and the write it guards are one atomic step.
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._still_wanted()
                result = self.fn(conn)
                self._still_wanted()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # an interrupt or I/O error may have rolled back
                    conn.execute("ROLLBACK")
                raise
            return result
        finally:
            with self.lock:
                self.state = "done"

    def _still_wanted(self) -> None:
        if self.abandoned:
            raise _Abandoned

    def abandon(self, conn: sqlite3.Connection) -> None:
        with self.lock:
            self.abandoned = True
            if self.state == "running":
                conn.interrupt()


class SqliteStore:
    """The :class:`~orchestrator.store.base.Store` on one SQLite file (see the module doc).

    The constructor opens (creating if needed) and checks the database, blocking for at most
    ``timeout`` seconds, so a corrupt, unwritable or too-new file is an error at startup;
    from a running event loop prefer ``await SqliteStore.open(...)``.

    Raises :class:`StoreUnavailable` (the file cannot be opened, read or written, is not a
    SQLite database, is locked for longer than ``timeout``) or :class:`SchemaMismatch`,
    each naming the path.

    Lease semantics beyond the protocol's docstring (the contract suite holds every store
    to them): every successful ``acquire_lease`` is a new acquisition with a larger token,
    even by the current holder, so a restarted daemon fences its previous incarnation; an
    expired lease cannot be renewed (acquire again) and fences writes, taken or not.
    """

    backend = "sqlite"

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 2.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"sqlite store timeout must be a positive number, got {timeout!r}")
        self.path = Path(path)
        self.timeout = float(timeout)
        self.busy_timeout_ms = max(1, int(self.timeout * 900))
        self._clock = clock
        self._lock = asyncio.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._abandoned_open = False
        self._quarantine = Quarantine(self.backend)
        # One thread, so the connection is only ever touched by the thread that made it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="failoverd-sqlite")
        future = self._executor.submit(self._open)
        try:
            created = future.result(timeout=self.timeout)
        except FutureTimeout:
            self._abandoned_open = True
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._closed = True
            raise StoreUnavailable(
                f"sqlite store {self.path}: opening took longer than {self.timeout}s"
                " (is another process holding the database locked?)"
            ) from None
        except BaseException:
            self._executor.shutdown(wait=False)
            self._closed = True
            raise
        _log.info(
            "store_opened",
            backend=self.backend,
            path=str(self.path),
            schema_version=SCHEMA_VERSION,
            created=created,
        )

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float = 2.0,  # noqa: ASYNC109 - the store's per-call bound, kept for its life
        clock: Clock = SYSTEM_CLOCK,
    ) -> SqliteStore:
        """Construct without blocking the event loop."""
        return await asyncio.to_thread(cls, path, timeout=timeout, clock=clock)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- opening (worker thread) ----------------------------------------------------------
    def _open(self) -> bool:
        """Connect, set the durability pragmas, create or check the schema; True if created."""
        conn: sqlite3.Connection | None = None
        try:
            _create_private(self.path)
            # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
            conn = sqlite3.connect(self.path, timeout=self.timeout * 0.9, isolation_level=None)
            # Give up on a locked file a little before the call's deadline, so the worker is
            # free again by the time the caller hears StoreUnavailable.
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"sqlite store {self.path}: cannot switch the journal to WAL mode (got"
                    f" {mode!r}); put the database on a local filesystem"
                )
            conn.execute("PRAGMA synchronous = FULL")
            created = self._ensure_schema(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._translate(exc, "open") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if self._abandoned_open:  # the constructor timed out and gave up on us
            conn.close()
            return created
        self._conn = conn
        return created

    def _ensure_schema(self, conn: sqlite3.Connection) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not str(row[0]).startswith("sqlite_")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute(_QUARANTINE_TABLE)
                conn.execute("COMMIT")
                return True
            if "schema_version" not in tables:
                raise SchemaMismatch(
                    f"sqlite store {self.path}: not a failoverd database (it has tables"
                    f" {', '.join(sorted(tables))} and no schema_version); point the store at"
                    " another path"
                )
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            if len(rows) != 1 or not isinstance(rows[0][0], int) or rows[0][0] < 1:
                raise SchemaMismatch(
                    f"sqlite store {self.path}: the schema_version table is damaged"
                    f" (rows: {rows!r}); restore the database from a backup"
                )
            version: int = rows[0][0]
            if version > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"sqlite store {self.path}: database schema version {version} is newer"
                    f" than this failoverd supports ({SCHEMA_VERSION}); upgrade failoverd or"
                    " use another database"
                )
            missing = _TABLES - tables
            if version >= 3 and "quarantine" not in tables:
                missing = missing | {"quarantine"}
            if missing:
                raise SchemaMismatch(
                    f"sqlite store {self.path}: tables missing from a version {version}"
                    f" database: {', '.join(sorted(missing))}; restore it from a backup"
                )
            if version < 2:  # each step in the same transaction: all or nothing
                conn.execute("ALTER TABLE lease ADD COLUMN info TEXT")
            if version < 3:
                # IF NOT EXISTS: a version 1 database written by a build that had the table
                # before it had its own schema version.
                conn.execute(_QUARANTINE_TABLE)
            if version < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                _log.info(
                    "sqlite_schema_upgraded", path=str(self.path), old=version, new=SCHEMA_VERSION
                )
            conn.execute("COMMIT")
            return False
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _translate(self, exc: sqlite3.Error, operation: str) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        where = f"sqlite store {self.path}"
        if primary in _CORRUPT:
            message = (
                f"{where}: the file is not a SQLite database or is corrupt ({exc});"
                " restore it from a backup or move it aside"
            )
        elif primary in _NO_ACCESS:
            message = (
                f"{where}: cannot open or write the database ({exc}); check that its"
                " directory exists, is writable by this user and its disk is not full"
            )
        elif primary in _BUSY:
            message = (
                f"{where}: the database stayed locked by another connection for more than"
                f" {self.busy_timeout_ms / 1000:g}s ({exc})"
            )
        elif primary == sqlite3.SQLITE_INTERRUPT:
            message = f"{where}: {operation} took longer than {self.timeout}s"
        else:
            message = f"{where}: {operation} failed: {exc}"
        return StoreUnavailable(message)

    # -- running calls --------------------------------------------------------------------
    async def _call(
        self, operation: str, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False
    ) -> _T:
        """Run ``fn`` on the worker thread within ``timeout``; ``write`` wraps it in one
        write transaction."""
        conn = self._conn
        if self._closed or conn is None:
            raise StoreUnavailable(f"sqlite store {self.path} is closed")
        started = time.perf_counter()
        outcome = "error"
        job = _Job(fn, write)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._lock:
                    loop = asyncio.get_running_loop()
                    result: _T = await loop.run_in_executor(self._executor, job.run, conn)
            outcome = "ok"
            return result
        except TimeoutError:
            job.abandon(conn)
            outcome = "timeout"
            _log.warning(
                "store_timeout", backend=self.backend, path=str(self.path), operation=operation
            )
            raise StoreUnavailable(
                f"sqlite store {self.path}: {operation} took longer than {self.timeout}s"
            ) from None
        except asyncio.CancelledError:
            job.abandon(conn)  # the caller's owner cancelled it: do not finish its write
            outcome = "cancelled"
            raise
        except FencedOut:
            outcome = "fenced"
            raise
        except sqlite3.Error as exc:
            outcome = "unavailable"
            error = self._translate(exc, operation)
            _log.warning(
                "store_unavailable",
                backend=self.backend,
                path=str(self.path),
                operation=operation,
                error=str(error),
            )
            raise error from exc
        finally:
            STORE_OPERATION_DURATION.labels(self.backend, operation, outcome).observe(
                time.perf_counter() - started
            )

    def _check_fence(self, conn: sqlite3.Connection, token: int, operation: str) -> None:
        holder, current, expires_at = conn.execute(
            "SELECT holder, token, expires_at FROM lease WHERE id = 1"
        ).fetchone()
        now = self._clock.now()
        if holder is not None and current == token and expires_at > now:
            return
        if current != token:
            why = f"the current lease's token is {current}"
        elif holder is None:
            why = "the lease was released"
        else:
            why = "the lease has expired"
        _log.warning(
            "store_fenced_out",
            backend=self.backend,
            operation=operation,
            token=token,
            current_token=current,
        )
        raise FencedOut(f"{operation} with fencing token {token} refused: {why}")

    # -- leadership -----------------------------------------------------------------------
    async def acquire_lease(self, holder: str, ttl: float) -> Lease | None:
        check_holder(holder)
        check_ttl(ttl)

        def acquire(conn: sqlite3.Connection) -> Lease | None:
            current_holder, token, expires_at = conn.execute(
                "SELECT holder, token, expires_at FROM lease WHERE id = 1"
            ).fetchone()
            now = self._clock.now()
            if current_holder is not None and current_holder != holder and expires_at > now:
                return None
            conn.execute(
                "UPDATE lease SET holder = ?, token = ?, expires_at = ?, info = NULL WHERE id = 1",
                (holder, token + 1, now + ttl),
            )
            return Lease(holder=holder, token=token + 1, ttl=ttl)

        return await self._call("acquire_lease", acquire, write=True)

    async def renew_lease(self, lease: Lease) -> Lease | None:
        check_ttl(lease.ttl)

        def renew(conn: sqlite3.Connection) -> Lease | None:
            holder, token, expires_at = conn.execute(
                "SELECT holder, token, expires_at FROM lease WHERE id = 1"
            ).fetchone()
            now = self._clock.now()
            if holder != lease.holder or token != lease.token or not expires_at > now:
                return None
            conn.execute("UPDATE lease SET expires_at = ? WHERE id = 1", (now + lease.ttl,))
            return lease

        return await self._call("renew_lease", renew, write=True)

    async def release_lease(self, lease: Lease) -> None:
        def release(conn: sqlite3.Connection) -> None:
            # Keep the token: the next acquisition must still get a larger one.
            conn.execute(
                "UPDATE lease SET holder = NULL, expires_at = NULL"
                " WHERE id = 1 AND token = ? AND holder = ?",
                (lease.token, lease.holder),
            )

        await self._call("release_lease", release, write=True)

    async def leader(self) -> str | None:
        def leader(conn: sqlite3.Connection) -> str | None:
            holder, expires_at = conn.execute(
                "SELECT holder, expires_at FROM lease WHERE id = 1"
            ).fetchone()
            if holder is None or not expires_at > self._clock.now():
                return None
            return str(holder)

        return await self._call("leader", leader)

    async def announce(self, lease: Lease, api: str, policy_version: str) -> None:
        check_token(lease.token)
        info = encode_announcement(lease.token, api, policy_version)

        def announce(conn: sqlite3.Connection) -> None:
            self._check_fence(conn, lease.token, "announce")
            conn.execute("UPDATE lease SET info = ? WHERE id = 1", (info,))

        await self._call("announce", announce, write=True)

    async def leader_info(self) -> LeaderInfo | None:
        def read(conn: sqlite3.Connection) -> LeaderInfo | None:
            holder, token, expires_at, info = conn.execute(
                "SELECT holder, token, expires_at, info FROM lease WHERE id = 1"
            ).fetchone()
            if holder is None or not expires_at > self._clock.now():
                return None
            return decode_announcement(str(holder), int(token), info)

        return await self._call("leader_info", read)

    # -- service state --------------------------------------------------------------------
    async def load_state(self, service: str) -> ServiceState | None:
        def load(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT body FROM service_state WHERE service = ?", (service,)
            ).fetchone()
            return None if row is None else _raw(row[0])

        body = await self._call("load_state", load)
        if body is None:
            return None
        try:
            return decode_state(body, f"state of service {service!r} in {self.path}")
        except CorruptRecord as exc:
            hit, error = corrupt_state(
                self._quarantine, service, f"service_state/{service}", exc, body
            )
            if hit is not None:
                await self._keep([hit])
            raise error from None

    async def save_state(self, state: ServiceState, token: int) -> None:
        check_token(token)
        body = encode_state(state)

        def save(conn: sqlite3.Connection) -> None:
            self._check_fence(conn, token, "save_state")
            conn.execute(
                "INSERT INTO service_state (service, body, token, saved_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (service) DO UPDATE SET body = excluded.body,"
                " token = excluded.token, saved_at = excluded.saved_at",
                (state.service, body, token, self._clock.now()),
            )

        await self._call("save_state", save, write=True)

    # -- journal --------------------------------------------------------------------------
    async def append_journal(self, record: JournalRecord) -> None:
        check_token(record.token)
        body = encode_journal(record)

        def append(conn: sqlite3.Connection) -> None:
            self._check_fence(conn, record.token, "append_journal")
            conn.execute(
                "INSERT INTO journal (run_id, service, status, token, body) VALUES (?, ?, ?, ?, ?)",
                (record.run_id, record.service, record.status.value, record.token, body),
            )

        await self._call("append_journal", append, write=True)

    async def read_run(self, run_id: str) -> Sequence[JournalRecord]:
        def read(conn: sqlite3.Connection) -> list[tuple[int, str, str, int, Any]]:
            return conn.execute(
                "SELECT seq, run_id, service, token, body FROM journal WHERE run_id = ?"
                " ORDER BY seq",
                (run_id,),
            ).fetchall()

        rows = await self._call("read_run", read)
        decoder = JournalDecoder(self._quarantine, f" of run {run_id!r} in {self.path}")
        records = decode_all((_row(*r) for r in rows), decoder)
        await self._keep(decoder.found)
        return records

    async def unfinished_runs(self) -> Sequence[str]:
        def unfinished(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT run_id FROM journal WHERE status = ? AND run_id NOT IN"
                " (SELECT run_id FROM journal WHERE status IN (?, ?))"
                " GROUP BY run_id ORDER BY MIN(seq)",
                (JournalStatus.RUN_STARTED.value, *_FINISHED),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._call("unfinished_runs", unfinished)

    async def recent_runs(self, service: str, limit: int = 20) -> Sequence[str]:
        check_recent_runs_limit(limit)

        def recent(conn: sqlite3.Connection) -> list[str]:
            # A run's age is its first record's: a long run does not overtake a newer one.
            rows = conn.execute(
                "SELECT run_id FROM journal WHERE service = ? AND run_id != '' GROUP BY run_id"
                " ORDER BY MIN(seq) DESC LIMIT ?",
                (service, limit),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._call("recent_runs", recent)

    async def read_journal(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[JournalRecord]:
        check_journal_query(since, until, limit)

        decoder = JournalDecoder(self._quarantine, f" in {self.path}", newest_first=True)

        def read(conn: sqlite3.Connection) -> list[JournalRecord]:
            # Newest first, and the cursor is consumed lazily: the scan stops at the `limit`th
            # match instead of loading the service's whole journal (`at` lives in the body).
            columns = "SELECT seq, run_id, service, token, body FROM journal"
            if service is None:
                cursor = conn.execute(f"{columns} ORDER BY seq DESC")
            else:
                cursor = conn.execute(f"{columns} WHERE service = ? ORDER BY seq DESC", (service,))
            found: list[JournalRecord] = []

            def take(records: list[JournalRecord]) -> bool:
                for rec in records:
                    if in_window(rec, since, until):
                        found.append(rec)
                        if len(found) == limit:
                            return True
                return False

            try:
                done = False
                for row in cursor:
                    if take(decoder.feed(_row(*row))):
                        done = True
                        break
                if not done:
                    take(decoder.finish())
            finally:
                cursor.close()
            found.reverse()
            return found

        records = await self._call("read_journal", read)
        await self._keep(decoder.found)
        return records

    # -- approvals ------------------------------------------------------------------------
    async def record_approval(self, approval: ApprovalRecord) -> None:
        body = encode_approval(approval)

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO approvals (service, run_id, step, body) VALUES (?, ?, ?, ?)",
                (approval.service, approval.run_id, approval.step, body),
            )

        await self._call("record_approval", record, write=True)

    async def approved(self, service: str, run_id: str, step: str) -> bool:
        def approved(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM approvals WHERE service = ? AND run_id = ? AND step = ? LIMIT 1",
                (service, run_id, step),
            ).fetchone()
            return row is not None

        return await self._call("approved", approved)

    # -- quarantine -----------------------------------------------------------------------
    async def _keep(self, found: Sequence[Found]) -> None:
        """Copy corrupt records to the quarantine table (once each). Best effort: a store
        that cannot write now has them counted and logged, and the next process tries again."""
        if not found:
            return
        now = self._clock.now()

        def keep(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO quarantine (kind, key, error, found_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                [(f.kind, f.key, f.error, now, f.body) for f in found],
            )

        try:
            await self._call("quarantine", keep, write=True)
        except StoreError as exc:
            _log.warning("store_quarantine_failed", backend=self.backend, error=str(exc))

    async def quarantined(self) -> Sequence[QuarantinedRecord]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str, str, float, Any]]:
            return conn.execute(
                "SELECT kind, key, error, found_at, body FROM quarantine ORDER BY seq"
            ).fetchall()

        rows = await self._call("quarantined", read)
        return [
            QuarantinedRecord(kind, key, error, found_at, _raw(body))
            for kind, key, error, found_at, body in rows
        ]

    async def approval(self, service: str, run_id: str, step: str) -> ApprovalRecord | None:
        def first(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT body FROM approvals WHERE service = ? AND run_id = ? AND step = ?"
                " ORDER BY seq LIMIT 1",
                (service, run_id, step),
            ).fetchone()
            return None if row is None else str(row[0])

        body = await self._call("approval", first)
        return None if body is None else decode_approval(body, f"approval of {run_id}/{step}")

    # -- diagnostics and lifecycle --------------------------------------------------------
    async def settings(self) -> SqliteSettings:
        """The connection's effective settings, for readiness reports and tests."""

        def settings(conn: sqlite3.Connection) -> SqliteSettings:
            def pragma(name: str) -> Any:
                return conn.execute(f"PRAGMA {name}").fetchone()[0]

            return SqliteSettings(
                path=str(self.path),
                journal_mode=str(pragma("journal_mode")),
                synchronous=int(pragma("synchronous")),
                busy_timeout_ms=int(pragma("busy_timeout")),
                schema_version=int(
                    conn.execute("SELECT version FROM schema_version").fetchone()[0]
                ),
            )

        return await self._call("settings", settings)

    async def close(self) -> None:
        """Close the connection (waiting at most ``timeout`` for a call in flight); idempotent.
        Later calls raise :class:`StoreUnavailable`."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                loop = asyncio.get_running_loop()
                async with asyncio.timeout(self.timeout):
                    await loop.run_in_executor(self._executor, conn.close)
        except (TimeoutError, sqlite3.Error) as exc:
            _log.warning("store_close_failed", path=str(self.path), error=repr(exc))
        finally:
            self._executor.shutdown(wait=False)


def _create_private(path: str | os.PathLike[str]) -> None:
    """Create the database file readable and writable by its owner only, whatever the umask
    (the journal names operators and their reasons; SQLite gives the -wal and -shm files the
    database's mode). An existing file is left as it is; any other failure is SQLite's to
    report when it opens the path."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
