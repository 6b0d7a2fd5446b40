"""The stored-document codec: exact round trips, and corruption named down to the field."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from orchestrator.engine.state import Move, RunInfo, ServiceState
from orchestrator.store.base import ApprovalRecord, JournalRecord, JournalStatus, StoreError
from orchestrator.store.codec import (
    FORMAT_VERSION,
    CorruptRecord,
    decode_approval,
    decode_journal,
    decode_state,
    encode_approval,
    encode_journal,
    encode_state,
)
from tests.unit.store.contract import T0, failed_state, full_state

JOURNAL = JournalRecord(
    run_id="run-1",
    service="web",
    status=JournalStatus.STEP_FAILED,
    at=T0 + 0.125,
    token=7,
    policy_version="sha256:abc@1f2e3d",
    step="promote_db",
    attempt=3,
    kind="failover",
    source_region="us-east-1",
    target_region="us-west-2",
    error="ThrottlingException: Rate exceeded",
    retryable=True,
    detail="promoted db-2",
)
APPROVAL = ApprovalRecord(
    service="web", run_id="run-1", step="gate", by="alice", reason="checked the replica", at=T0
)


def doc(text: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(text)
    return parsed


@pytest.mark.parametrize("state", [full_state(), failed_state(), ServiceState("api", "eu-west-1")])
def test_state_round_trips_exactly(state: ServiceState) -> None:
    assert decode_state(encode_state(state)) == state


def test_records_round_trip_exactly() -> None:
    assert decode_journal(encode_journal(JOURNAL)) == JOURNAL
    assert decode_approval(encode_approval(APPROVAL)) == APPROVAL


def test_every_field_of_every_type_is_encoded() -> None:
    # A field added to a dataclass without a codec change fails here, not in production.
    state = doc(encode_state(full_state()))
    assert set(state) == {"v"} | {f.name for f in fields(ServiceState)}
    assert set(state["run"]) == {f.name for f in fields(RunInfo)}
    assert set(state["moves"][0]) == {f.name for f in fields(Move)}
    assert set(doc(encode_journal(JOURNAL))) == {"v"} | {f.name for f in fields(JournalRecord)}
    assert set(doc(encode_approval(APPROVAL))) == {"v"} | {f.name for f in fields(ApprovalRecord)}


def test_documents_are_versioned_and_deterministic() -> None:
    assert doc(encode_state(full_state()))["v"] == FORMAT_VERSION
    assert encode_state(full_state()) == encode_state(full_state())
    assert doc(encode_journal(JOURNAL))["status"] == "step_failed"  # enums as their values


def test_non_finite_times_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="cannot encode journal record of run 'run-1'"):
        encode_journal(
            JournalRecord("run-1", "web", JournalStatus.RUN_STARTED, float("nan"), 1, "")
        )


def mutate_state(change: dict[str, Any]) -> str:
    d = doc(encode_state(full_state()))
    for path, value in change.items():
        target = d
        *parents, last = path.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(d)


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"active_region": _DELETE}, "active_region", "missing"),
        ({"colour": "blue"}, "colour", "unexpected field"),
        ({"paused": 1}, "paused", "expected true or false, got an integer"),
        ({"active_region": None}, "active_region", "expected a string, got null"),
        ({"detected_at": "soon"}, "detected_at", "expected a number, got a string"),
        ({"detected_at": True}, "detected_at", "expected a number, got a boolean"),
        ({"moves": {}}, "moves", "expected a list, got an object"),
        ({"moves.1.kind": "teleport"}, "moves[1].kind", "unknown value 'teleport'"),
        ({"moves.0.at": _DELETE}, "moves[0].at", "missing"),
        ({"run.status": "paused"}, "run.status", "unknown value 'paused'"),
        ({"run.initiated_by": "robot"}, "run.initiated_by", "unknown value 'robot'"),
        ({"run.started_at": 1e999}, "run.started_at", "expected a finite number"),
        ({"run": []}, "run", "expected an object, got a list"),
    ],
)
def test_a_corrupt_state_names_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(CorruptRecord) as err:
        decode_state(mutate_state(change), "state of service 'web'")
    message = str(err.value)
    assert message.startswith("corrupt state of service 'web': ")
    assert f"field {field!r}" in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[]", "expected an object, got a list"),
        ('{"v": 2}', "format version 2 is not supported"),
        ('{"v": true}', "format version True is not supported"),
        ('{"service": "web"}', "field 'active_region': missing"),
    ],
)
def test_unreadable_documents_are_corrupt(text: str | bytes, problem: str) -> None:
    with pytest.raises(CorruptRecord, match="corrupt service state") as err:
        decode_state(text)
    assert problem in str(err.value)
    assert isinstance(err.value, StoreError)


def test_a_token_must_be_an_integer_not_a_boolean_or_float() -> None:
    for bad in (True, 1.5, "7"):
        d = doc(encode_journal(JOURNAL))
        d["token"] = bad
        with pytest.raises(CorruptRecord, match="field 'token': expected an integer"):
            decode_journal(json.dumps(d))


def test_a_journal_status_outside_the_vocabulary_is_corrupt() -> None:
    d = doc(encode_journal(JOURNAL))
    d["status"] = "step_maybe"
    with pytest.raises(CorruptRecord, match="field 'status': unknown value 'step_maybe'"):
        decode_journal(json.dumps(d), "journal record 5 of run 'run-1'")


def test_an_approval_missing_its_author_is_corrupt() -> None:
    d = doc(encode_approval(APPROVAL))
    del d["by"]
    with pytest.raises(CorruptRecord, match="corrupt approval: field 'by': missing"):
        decode_approval(json.dumps(d))


def test_integral_times_decode_as_floats() -> None:
    # JSON writers (and etcd tooling) may drop ".0"; the value is the same time.
    d = doc(encode_state(failed_state()))
    d["last_move_finished_at"] = 1_700_000_000
    decoded = decode_state(json.dumps(d))
    assert decoded.last_move_finished_at == 1_700_000_000.0
    assert isinstance(decoded.last_move_finished_at, float)
