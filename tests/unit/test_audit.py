"""The audit view of journal records (pure): a one-line summary and reasons per entry kind, a
decision record's evidence round-trips and stays bounded, and time filters read the way an
SRE types them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from orchestrator.audit import (
    MAX_DETAIL,
    MAX_SIGNALS,
    decision_detail,
    decision_info,
    entries,
    entry,
    format_time,
    parse_time,
)
from orchestrator.engine.healthbook import SignalView, VantageView
from orchestrator.engine.state import Decision, LagReading
from orchestrator.engine.vocabulary import Action, Phase, Reason, Verdict, View
from orchestrator.store.base import JournalStatus
from tests.unit import audit_records as ar


def test_every_entry_has_its_kind_policy_version_and_a_summary() -> None:
    got = [(e.entry.value, e.summary) for e in entries(ar.journal())]
    assert got == [
        ("decision", "steady: none"),
        ("decision", "suspect: none"),
        ("decision", f"failing_over: failover us-east-1 -> us-west-2 (run {ar.RUN_ID})"),
        ("run_started", "failover us-east-1 -> us-west-2, 2 steps"),
        ("decision", "failing_over: none"),
        ("step_started", "step promote-db attempt 1 started"),
        ("step_failed", "step promote-db attempt 1 failed (retryable): Throttling: rate exceeded"),
        ("step_started", "step promote-db attempt 2 started"),
        ("operator_command", "pause by alice: watching the promotion"),
        ("step_succeeded", "step promote-db attempt 2 succeeded"),
        ("step_started", "step flip-dns attempt 1 started"),
        ("step_succeeded", "step flip-dns attempt 1 succeeded"),
        ("run_succeeded", "run succeeded"),
    ]
    assert {e.policy_version for e in entries(ar.journal())} == {ar.VERSION}


def test_a_decision_entry_carries_reason_codes_and_its_evidence() -> None:
    record = ar.around()[2]
    e = entry(record)
    assert e.entry is JournalStatus.DECISION and e.run_id == "" and e.token == ar.TOKEN
    assert e.reasons == ("active_down",)
    assert e.detail["run_id"] == ar.RUN_ID and e.detail["rpo"] == ar.RPO
    east = e.detail["regions"][0]
    assert (east["region"], east["verdict"], east["failing"]) == (
        "us-east-1",
        "down",
        ["local", "eu"],
    )
    info = decision_info(record)
    assert info is not None
    assert (info.phase, info.action, info.target, info.run_id) == (
        "failing_over",
        "failover",
        "us-west-2",
        ar.RUN_ID,
    )
    assert info.lag[0]["seconds"] == 5.0 and info.lag[0]["within_rpo"] is True
    assert info.detected_at == ar.T0 and not info.truncated


def test_failed_runs_skipped_steps_and_text_details_read_as_such() -> None:
    run = ar.run_records(fail=True)
    assert entry(run[-1]).summary == "run failed: step flip-dns failed: NoSuchHostedZone"
    skipped = replace(run[1], status=JournalStatus.STEP_SKIPPED, error="promote-db failed")
    assert entry(skipped).summary == "step promote-db skipped: promote-db failed"
    assert entry(run[4]).detail == {"text": "promoted"}  # a detail that is not JSON
    assert entry(run[1]).detail == {}


def test_a_decision_record_from_another_build_shows_what_it_has() -> None:
    record = replace(ar.around()[2], detail='{"phase": "suspect", "future_field": 1}')
    info = decision_info(record)
    assert info is not None
    assert (info.phase, info.action, info.target, info.reasons, info.regions) == (
        "suspect",
        "failover",
        "us-west-2",
        (),
        (),
    )
    assert decision_info(replace(record, detail="not json")) is not None
    assert decision_info(ar.run_records()[0]) is None


def _many_signals(n: int) -> tuple[VantageView, ...]:
    return tuple(
        VantageView(
            f"vantage-{i}",
            View.FAILING,
            (
                SignalView(
                    f"signal-{i}",
                    f"vantage-{i}",
                    View.FAILING,
                    "connect " * 200,  # a long failure detail is clipped
                    ar.T0,
                    False,
                    3,
                    0,
                    1.0,
                    ar.T0 - 5,
                    "http://127.0.0.1/",
                ),
            ),
        )
        for i in range(n)
    )


def test_evidence_lists_are_capped_and_the_detail_bounded() -> None:
    d = Decision("webapp", ar.T0, Phase.SUSPECT, Action.NONE, "us-east-1", notes=("n",) * 50)
    regions = [f"r{i}" for i in range(40)]
    verdicts = {
        r: replace(ar.verdicts(ar.T0, Verdict.DOWN)["us-east-1"], region=r) for r in regions
    }
    detail = decision_detail(
        d,
        verdicts=verdicts,
        evidence={r: _many_signals(30) for r in regions},
        lag={r: LagReading(None, ar.T0) for r in regions},
        regions=regions,
        rto=60.0,
        rpo=5.0,
        run_id=None,
    )
    assert len(detail.encode()) <= MAX_DETAIL
    data = json.loads(detail)
    assert data["truncated"] is True and "signals" not in data["regions"][0]
    assert len(data["notes"]) == 8 and data["lag"][0]["within_rpo"] is None

    small = decision_detail(
        d,
        verdicts={"us-east-1": verdicts["r0"]},
        evidence={"us-east-1": _many_signals(30)},
        lag={},
        regions=["us-east-1"],
        rto=60.0,
        rpo=5.0,
        run_id=None,
    )
    region = json.loads(small)["regions"][0]
    assert len(region["signals"]) == MAX_SIGNALS and region["signals_omitted"] == 30 - MAX_SIGNALS
    assert len(region["signals"][0]["detail"]) == 200


def test_past_the_bound_the_last_regions_are_left_out_and_counted() -> None:
    d = Decision("webapp", ar.T0, Phase.SUSPECT, Action.NONE, "r0")
    regions = [f"region-{i}" for i in range(200)]
    down = ar.verdicts(ar.T0, Verdict.DOWN)["us-east-1"]
    detail = decision_detail(
        d,
        verdicts={r: replace(down, region=r) for r in regions},
        evidence={},
        lag={},
        regions=regions,
        rto=60.0,
        rpo=5.0,
        run_id=None,
    )
    data = json.loads(detail)
    assert len(detail.encode()) <= MAX_DETAIL
    assert data["regions"][0]["region"] == "region-0"  # priority order: the primary first
    assert len(data["regions"]) + data["regions_omitted"] == 200 and data["regions_omitted"] > 0


def test_reasons_are_stored_as_codes() -> None:
    d = Decision(
        "webapp", ar.T0, Phase.BLOCKED, Action.NONE, "us-east-1", reasons=(Reason.RPO_EXCEEDED,)
    )
    detail = decision_detail(
        d, verdicts={}, evidence={}, lag={}, regions=[], rto=1.0, rpo=1.0, run_id=None
    )
    assert json.loads(detail)["reasons"] == ["rpo_exceeded"]


NOW = 1_795_708_800.0  # 2026-11-26T16:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("1h30m", NOW - 5400),
        ("1795708800", NOW),
        ("1795708800.5", NOW + 0.5),
        ("2026-11-26T16:00:00Z", NOW),
        ("2026-11-26t16:00:00z", NOW),
        ("2026-11-26T17:00:00+01:00", NOW),
        ("2026-11-26 16:00", NOW),  # no offset: UTC
        (" 2h ", NOW - 7200),
    ],
)
def test_time_filters_read_as_typed(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2x", "-5", "1e9", "nan", "2026-13-01"])
def test_bad_time_filters_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339 time .* epoch seconds .* duration ago"):
        parse_time(text, NOW)


def test_times_are_shown_as_rfc_3339_utc() -> None:
    assert format_time(NOW + 0.25) == "2026-11-26T16:00:00.250Z"
