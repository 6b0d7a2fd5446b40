"""Reading records one at a time, so that a corrupt one takes out only itself.

Both stores decode what they read through here: a record that decodes is returned as it is;
one that does not becomes a ``corrupt`` record in its place (see "Corrupt records" in
:mod:`orchestrator.store.base`) and is reported to the store's :class:`Quarantine`, which
counts it (once per process and key), logs it with its key, and tells the store whether to
keep a copy (the store writes it to its quarantine area).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from orchestrator.store.base import CorruptRecord, CorruptState, JournalRecord, JournalStatus
from orchestrator.store.codec import decode_journal
from orchestrator.telemetry import STORE_CORRUPT_RECORDS, get_logger

_log = get_logger("failoverd.store")

SERVICE_STATE = "service_state"
JOURNAL = "journal"
MAX_REMEMBERED = 10_000  # keys counted in this process; past it, counting starts over


@dataclass(frozen=True, slots=True)
class Found:
    """A corrupt record just met: what to quarantine."""

    kind: str
    key: str
    error: str
    body: bytes


class Quarantine:
    """Per store handle: which corrupt records this process has already reported."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._seen: set[tuple[str, str]] = set()

    def found(self, kind: str, key: str, error: str, body: bytes | str) -> Found | None:
        """Count and log a corrupt record; the :class:`Found` to keep a copy of, or None
        when this process reported that key already."""
        if (kind, key) in self._seen:
            return None
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add((kind, key))
        STORE_CORRUPT_RECORDS.labels(self.backend, kind).inc()
        _log.error(
            "store_record_quarantined", backend=self.backend, kind=kind, key=key, error=error
        )
        raw = body.encode("utf-8", errors="surrogateescape") if isinstance(body, str) else body
        return Found(kind, key, error, bytes(raw))


def corrupt_state(
    quarantine: Quarantine, service: str, key: str, exc: CorruptRecord, body: bytes
) -> tuple[Found | None, CorruptState]:
    """A service state that did not decode: what to keep a copy of (None when this process
    reported it already) and the error ``load_state`` raises."""
    found = quarantine.found(SERVICE_STATE, key, str(exc), body)
    error = CorruptState(
        f"{exc} (quarantined as {key!r}; it stays until the service's state is saved again)",
        service=service,
        key=key,
    )
    return found, error


@dataclass(frozen=True, slots=True)
class Row:
    """One stored journal record as read: its key and what the store knows besides the
    body (SQLite keeps run id, service and token in columns; etcd only in the key)."""

    key: str
    body: bytes | str
    run_id: str = ""
    service: str = ""
    token: int = 0


class JournalDecoder:
    """Decodes journal rows one at a time, in the order they are read (append order, or
    newest first). A corrupt row becomes a ``corrupt`` record whose ``at`` is its older
    neighbour's (its newer one's when it has none), so that time filters and the audit put
    it where it was; until that neighbour is read it is held back. ``feed`` returns the
    records whose time is known, in order; ``finish`` the rest. ``found`` lists the corrupt
    records to keep a copy of."""

    def __init__(self, quarantine: Quarantine, what: str = "", *, newest_first: bool = False):
        self._quarantine = quarantine
        self._what = what
        self._newest_first = newest_first
        self._pending: list[JournalRecord] = []
        self._last_good: float | None = None
        self.found: list[Found] = []

    def feed(self, row: Row) -> list[JournalRecord]:
        try:
            record = decode_journal(row.body, f"journal record {row.key!r}{self._what}")
        except CorruptRecord as exc:
            error = str(exc)
            hit = self._quarantine.found(JOURNAL, row.key, error, row.body)
            if hit is not None:
                self.found.append(hit)
            corrupt = _corrupt(row, error, 0.0)
            if not self._newest_first and self._last_good is not None and not self._pending:
                return [replace(corrupt, at=self._last_good)]  # its older neighbour is known
            self._pending.append(corrupt)
            return []
        out = [replace(c, at=record.at) for c in self._pending]
        self._pending = []
        out.append(record)
        self._last_good = record.at
        return out

    def finish(self) -> list[JournalRecord]:
        at = self._last_good if self._last_good is not None else 0.0
        out = [replace(c, at=at) for c in self._pending]
        self._pending = []
        return out


def decode_all(rows: Iterable[Row], decoder: JournalDecoder) -> list[JournalRecord]:
    out: list[JournalRecord] = []
    for row in rows:
        out.extend(decoder.feed(row))
    out.extend(decoder.finish())
    return out


def _corrupt(row: Row, error: str, at: float) -> JournalRecord:
    return JournalRecord(
        run_id=row.run_id,
        service=row.service,
        status=JournalStatus.CORRUPT,
        at=at,
        token=row.token,
        policy_version="",
        error=error,
        detail=row.key,
    )


def corrupt_entries(records: Sequence[JournalRecord]) -> list[JournalRecord]:
    return [r for r in records if r.status is JournalStatus.CORRUPT]
