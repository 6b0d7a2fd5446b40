"""JSON encoding of what the store keeps: service state, journal records, approvals.

Every document is an object carrying a format version, ``{"v": 1, ...}``, so that a later
failoverd can read what an earlier one wrote (and an earlier one refuses, clearly, what a
later one wrote). Decoding is strict: a missing or unexpected field, a wrong type, an unknown
enum value or a non-finite number raises :class:`CorruptRecord` naming the document and the
field, because a silently defaulted field in the journal or the service state could make the
daemon redo or skip a step. Encoding is deterministic (sorted keys) so equal values give equal
bytes, which the etcd store's compare-and-set relies on.

The codec is storage-agnostic: the sqlite and etcd stores both use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from orchestrator.engine.state import Initiator, Move, RunInfo, RunStatus, ServiceState
from orchestrator.engine.vocabulary import Action
from orchestrator.store.base import (
    ApprovalRecord,
    CorruptRecord,
    JournalRecord,
    JournalStatus,
)

FORMAT_VERSION = 1

_E = TypeVar("_E", bound=StrEnum)


# --- encoding -----------------------------------------------------------------------------
def _dump(doc: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN or infinity: JSON cannot carry it, and no time is NaN
        raise ValueError(f"cannot encode {what}: {exc}") from exc


def _run_doc(run: RunInfo) -> dict[str, Any]:
    return {
        "id": run.id,
        "kind": run.kind.value,
        "source": run.source,
        "target": run.target,
        "started_at": run.started_at,
        "initiated_by": run.initiated_by.value,
        "status": run.status.value,
        "finished_at": run.finished_at,
        "error": run.error,
        "waiting_approval": run.waiting_approval,
    }


def _move_doc(move: Move) -> dict[str, Any]:
    return {"at": move.at, "kind": move.kind.value, "target": move.target}


def encode_state(state: ServiceState) -> str:
    doc = {
        "v": FORMAT_VERSION,
        "service": state.service,
        "active_region": state.active_region,
        "paused": state.paused,
        "run": None if state.run is None else _run_doc(state.run),
        "moves": [_move_doc(m) for m in state.moves],
        "last_move_finished_at": state.last_move_finished_at,
        "detected_at": state.detected_at,
    }
    return _dump(doc, f"state of service {state.service!r}")


def encode_journal(record: JournalRecord) -> str:
    if record.status is JournalStatus.CORRUPT:
        raise ValueError(f"a corrupt record (run {record.run_id!r}) is read back, never written")
    doc = {
        "v": FORMAT_VERSION,
        "run_id": record.run_id,
        "service": record.service,
        "status": record.status.value,
        "at": record.at,
        "token": record.token,
        "policy_version": record.policy_version,
        "step": record.step,
        "attempt": record.attempt,
        "kind": record.kind,
        "source_region": record.source_region,
        "target_region": record.target_region,
        "error": record.error,
        "retryable": record.retryable,
        "detail": record.detail,
    }
    return _dump(doc, f"journal record of run {record.run_id!r}")


def encode_approval(approval: ApprovalRecord) -> str:
    doc = {
        "v": FORMAT_VERSION,
        "service": approval.service,
        "run_id": approval.run_id,
        "step": approval.step,
        "by": approval.by,
        "reason": approval.reason,
        "at": approval.at,
    }
    return _dump(doc, f"approval for service {approval.service!r}")


# --- decoding -----------------------------------------------------------------------------
class _Fields:
    """Typed, strict access to one JSON object; every error names ``what`` and the field."""

    def __init__(self, raw: object, what: str, path: str, expected: frozenset[str]) -> None:
        self.what = what
        self.path = path
        if not isinstance(raw, Mapping):
            self.fail(path or "document", f"expected an object, got {_kind(raw)}")
        self.raw: Mapping[str, object] = raw
        missing = sorted(expected - raw.keys())
        if missing:
            self.fail(self._at(missing[0]), "missing")
        extra = sorted(set(raw.keys()) - expected)
        if extra:
            self.fail(self._at(extra[0]), "unexpected field")

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, field: str, problem: str) -> NoReturn:
        raise CorruptRecord(f"corrupt {self.what}: field {field!r}: {problem}")

    def text(self, key: str) -> str:
        value = self.raw[key]
        if not isinstance(value, str):
            self.fail(self._at(key), f"expected a string, got {_kind(value)}")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw[key]
        if not isinstance(value, bool):
            self.fail(self._at(key), f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, key: str) -> int:
        value = self.raw[key]
        # bool is an int in Python; a stored `true` where a token belongs is corruption.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(self._at(key), f"expected an integer, got {_kind(value)}")
        return value

    def number(self, key: str) -> float:
        value = self.raw[key]
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(self._at(key), f"expected a number, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number):
            self.fail(self._at(key), f"expected a finite number, got {number}")
        return number

    def opt_number(self, key: str) -> float | None:
        return None if self.raw[key] is None else self.number(key)

    def enum(self, key: str, enum: type[_E]) -> _E:
        value = self.text(key)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            self.fail(self._at(key), f"unknown value {value!r} (one of: {allowed})")

    def items(self, key: str) -> list[object]:
        value = self.raw[key]
        if not isinstance(value, list):
            self.fail(self._at(key), f"expected a list, got {_kind(value)}")
        return value

    def sub(self, key: str, expected: frozenset[str]) -> _Fields | None:
        value = self.raw[key]
        return None if value is None else _Fields(value, self.what, self._at(key), expected)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "an object"
    )


_STATE_FIELDS = frozenset(
    {
        "v",
        "service",
        "active_region",
        "paused",
        "run",
        "moves",
        "last_move_finished_at",
        "detected_at",
    }
)
_RUN_FIELDS = frozenset(
    {
        "id",
        "kind",
        "source",
        "target",
        "started_at",
        "initiated_by",
        "status",
        "finished_at",
        "error",
        "waiting_approval",
    }
)
_MOVE_FIELDS = frozenset({"at", "kind", "target"})
_JOURNAL_FIELDS = frozenset(
    {
        "v",
        "run_id",
        "service",
        "status",
        "at",
        "token",
        "policy_version",
        "step",
        "attempt",
        "kind",
        "source_region",
        "target_region",
        "error",
        "retryable",
        "detail",
    }
)
_APPROVAL_FIELDS = frozenset({"v", "service", "run_id", "step", "by", "reason", "at"})


def _document(text: str | bytes, what: str, expected: frozenset[str]) -> _Fields:
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"corrupt {what}: not JSON: {exc}") from exc
    except RecursionError:
        raise CorruptRecord(f"corrupt {what}: not JSON: nested too deep") from None
    except TypeError:
        raise CorruptRecord(f"corrupt {what}: not JSON text but {_kind(text)}") from None
    # Check the version before the field set: a newer format may have other fields, and
    # "written by a newer failoverd" is the message that tells the operator what to do.
    if isinstance(raw, Mapping) and "v" in raw:
        version = raw["v"]
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise CorruptRecord(
                f"corrupt {what}: field 'v': format version {version!r} is not supported "
                f"(this failoverd reads version {FORMAT_VERSION}; was it written by a newer one?)"
            )
    return _Fields(raw, what, "", expected)


def decode_state(text: str | bytes, what: str = "service state") -> ServiceState:
    """Decode :func:`encode_state`'s output; ``what`` names the document in errors."""
    doc = _document(text, what, _STATE_FIELDS)
    run_doc = doc.sub("run", _RUN_FIELDS)
    run = None
    if run_doc is not None:
        run = RunInfo(
            id=run_doc.text("id"),
            kind=run_doc.enum("kind", Action),
            source=run_doc.text("source"),
            target=run_doc.text("target"),
            started_at=run_doc.number("started_at"),
            initiated_by=run_doc.enum("initiated_by", Initiator),
            status=run_doc.enum("status", RunStatus),
            finished_at=run_doc.opt_number("finished_at"),
            error=run_doc.text("error"),
            waiting_approval=run_doc.flag("waiting_approval"),
        )
    moves = []
    for i, raw in enumerate(doc.items("moves")):
        m = _Fields(raw, what, f"moves[{i}]", _MOVE_FIELDS)
        moves.append(Move(at=m.number("at"), kind=m.enum("kind", Action), target=m.text("target")))
    return ServiceState(
        service=doc.text("service"),
        active_region=doc.text("active_region"),
        paused=doc.flag("paused"),
        run=run,
        moves=tuple(moves),
        last_move_finished_at=doc.opt_number("last_move_finished_at"),
        detected_at=doc.opt_number("detected_at"),
    )


def decode_journal(text: str | bytes, what: str = "journal record") -> JournalRecord:
    doc = _document(text, what, _JOURNAL_FIELDS)
    return JournalRecord(
        run_id=doc.text("run_id"),
        service=doc.text("service"),
        status=doc.enum("status", JournalStatus),
        at=doc.number("at"),
        token=doc.integer("token"),
        policy_version=doc.text("policy_version"),
        step=doc.text("step"),
        attempt=doc.integer("attempt"),
        kind=doc.text("kind"),
        source_region=doc.text("source_region"),
        target_region=doc.text("target_region"),
        error=doc.text("error"),
        retryable=doc.flag("retryable"),
        detail=doc.text("detail"),
    )


def decode_approval(text: str | bytes, what: str = "approval") -> ApprovalRecord:
    doc = _document(text, what, _APPROVAL_FIELDS)
    return ApprovalRecord(
        service=doc.text("service"),
        run_id=doc.text("run_id"),
        step=doc.text("step"),
        by=doc.text("by"),
        reason=doc.text("reason"),
        at=doc.number("at"),
    )
