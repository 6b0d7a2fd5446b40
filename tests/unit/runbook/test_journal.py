"""Reading a run back from its journal."""

from __future__ import annotations

import pytest

from orchestrator.policy.models import Step
from orchestrator.runbook.journal import JournalError, RunHeader, StepStatus, fold
from orchestrator.store.base import JournalRecord, JournalStatus

S = JournalStatus


def header(**steps: int) -> RunHeader:
    return RunHeader(
        run_id="r",
        service="webapp",
        kind="failover",
        source="us-east-1",
        target="us-west-2",
        primary="us-east-1",
        policy_version="v1",
        rto=900.0,
        decided_at=10.0,
        detected_at=5.0,
        steps=tuple(
            Step(name=n, action="wait", params={"duration": "1s"}, retries=r)
            for n, r in steps.items()
        ),
    )


def rec(
    status: JournalStatus,
    step: str = "",
    attempt: int = 0,
    at: float = 0.0,
    retryable: bool = False,
    detail: str = "",
) -> JournalRecord:
    return JournalRecord(
        "r",
        "webapp",
        status,
        at,
        1,
        "v1",
        step=step,
        attempt=attempt,
        retryable=retryable,
        detail=detail,
        kind="failover",
        source_region="us-east-1",
        target_region="us-west-2",
    )


def test_the_header_round_trips_through_the_run_started_record() -> None:
    h = header(a=2)
    read = RunHeader.from_record(rec(S.RUN_STARTED, at=12.0, detail=h.detail()))
    assert read == RunHeader(**{**h.__dict__, "started_at": 12.0})


def test_step_states_fold_from_records() -> None:
    h = header(done=0, retrying=2, exhausted=1, cut=0, fatal=3, never=0)
    j = fold(
        [
            rec(S.RUN_STARTED, detail=h.detail()),
            rec(S.STEP_STARTED, "done", 1, at=1.0),
            rec(S.STEP_SUCCEEDED, "done", 1, at=3.0),
            rec(S.STEP_STARTED, "retrying", 1),
            rec(S.STEP_FAILED, "retrying", 1, retryable=True),
            rec(S.STEP_STARTED, "exhausted", 1),
            rec(S.STEP_FAILED, "exhausted", 1, retryable=True),
            rec(S.STEP_STARTED, "exhausted", 2),
            rec(S.STEP_FAILED, "exhausted", 2, retryable=True),
            rec(S.STEP_STARTED, "cut", 1),
            rec(S.STEP_STARTED, "fatal", 1),
            rec(S.STEP_FAILED, "fatal", 1, retryable=False),
        ]
    )
    assert {n: s.status for n, s in j.steps.items()} == {
        "done": StepStatus.SUCCEEDED,
        "retrying": StepStatus.RETRYING,
        "exhausted": StepStatus.FAILED,
        "cut": StepStatus.RUNNING,
        "fatal": StepStatus.FAILED,
        "never": StepStatus.PENDING,
    }
    assert (j.steps["done"].started_at, j.steps["done"].finished_at) == (1.0, 3.0)
    assert j.finished is None


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "no run_started"),
        ([rec(S.STEP_STARTED, "a", 1)], "not run_started"),
        ([rec(S.RUN_STARTED, detail="not json")], "unreadable run_started header"),
        ([rec(S.RUN_STARTED, detail='{"v": 99}')], "header version 99"),
        (
            [rec(S.RUN_STARTED, detail=header(a=0).detail()), rec(S.STEP_STARTED, "zz", 1)],
            "unknown step 'zz'",
        ),
    ],
)
def test_an_unreadable_journal_is_a_clear_error(records: list[JournalRecord], message: str) -> None:
    with pytest.raises(JournalError, match=message):
        fold(records)
