"""Operator commands in the audit log and the report (pure, from hand-built records): who
(the token's label, and the name the client gave), why, from where, what it led to; the
report names the approvers of a run and the operator who forced it."""

from __future__ import annotations

import pytest

from orchestrator.audit import (
    command_info,
    entries,
    operator_command_record,
    with_command_id,
)
from orchestrator.engine.state import Command, CommandSource, Initiator, OperatorCommand
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.incident_report import ReportData, render
from tests.unit import audit_records as ar


def test_a_command_record_holds_who_why_where_and_its_id() -> None:
    asked = with_command_id(
        OperatorCommand(
            Command.FAILOVER,
            to="us-west-2",
            force=True,
            by="alice",
            reason="us-east-1 is burning",
            source=CommandSource.CLI,
            user="al",
        )
    )
    record = operator_command_record(
        ar.SERVICE, asked, at=ar.T0, token=ar.TOKEN, policy_version=ar.VERSION
    )
    info = command_info(record)
    assert info is not None
    assert (info.id, info.command, info.by, info.user, info.source) == (
        asked.id,
        "failover",
        "alice",
        "al",
        "cli",
    )
    assert (info.reason, info.to, info.force) == ("us-east-1 is burning", "us-west-2", True)
    (entry,) = entries([record])
    assert entry.summary == (
        "failover to us-west-2 (forced) by alice (as al) via cli: us-east-1 is burning"
    )
    with pytest.raises(ValueError, match="id"):
        operator_command_record(
            ar.SERVICE, OperatorCommand(Command.PAUSE), at=0.0, token=1, policy_version="v"
        )


def test_an_approval_names_the_gate_it_opens() -> None:
    record = ar.command(
        ar.T0, "approve", "bob", "replica re-seeded", source="api", run_id="r-9", step="gate"
    )
    (entry,) = entries([record])
    assert entry.summary == "approve (step gate of run r-9) by bob via api: replica re-seeded"


def test_a_command_gets_the_outcome_of_the_decision_that_answered_it() -> None:
    asked = ar.command(ar.T0, "failover", "alice", "go", command_id="cmd-7")
    answered = ar.answer(
        ar.T0 + 0.1, "cmd-7", "failover", "alice", False, "refused: paused", reasons=()
    )
    other = ar.command(ar.T0 + 1, "pause", "bob", "hold", command_id="cmd-8")
    got = entries([asked, answered, other])
    assert got[0].outcome == "refused: refused: paused"
    assert got[1].summary.endswith("; answers failover by alice: refused: refused: paused")
    assert got[2].outcome == ""  # its answer is not in this read


def test_records_written_before_the_source_existed_still_read() -> None:
    legacy = ar.operator_command(ar.T0, "pause", "alice", "watching")
    info = command_info(legacy)
    assert info is not None and (info.by, info.source, info.id) == ("alice", "", "")
    assert entries([legacy])[0].summary == "pause by alice: watching"


def _report(around: list[object], run: list[object] | None = None) -> str:
    data = ReportData(
        run=run or ar.run_records(detected=None),  # type: ignore[arg-type]
        around=around,  # type: ignore[arg-type]
        rpo=ar.RPO,
        now=ar.T0 + 100,
    )
    return render(data)


def test_the_report_names_who_forced_the_run_from_where_and_why() -> None:
    around = [
        ar.command(ar.T0 + 1.0, "pause", "alice", "checking the replica", command_id="c1"),
        ar.command(ar.T0 + 2.0, "resume", "alice", "replica fine", command_id="c2"),
        ar.command(
            ar.T0 + 3.0, "failover", "alice", "us-east-1 is burning", command_id="c3", force=True
        ),
        ar.answer(
            ar.T0 + 4.0,
            "c3",
            "failover",
            "alice",
            True,
            "failover to us-west-2 started",
            action=Action.FAILOVER,
            reasons=(Reason.OPERATOR_COMMAND,),
            target="us-west-2",
            run_id=ar.RUN_ID,
            initiated_by=Initiator.OPERATOR,
            down=False,
        ),
    ]
    text = _report(around)
    assert '| Initiated by | operator: alice via cli (forced) ("us-east-1 is burning") |' in text
    timeline = text.split("## Timeline", 1)[1].split("## Evidence", 1)[0]
    assert 'operator command: pause by alice via cli | "checking the replica"' in timeline
    assert 'operator command: resume by alice via cli | "replica fine"' in timeline
    assert (
        'operator command: failover (forced) by alice via cli | "us-east-1 is burning"'
        " -> accepted: failover to us-west-2 started |"
    ) in timeline


def test_the_report_names_the_approvers_of_its_gates() -> None:
    run = ar.run_records(detected=None)
    around = [
        ar.decision(
            ar.T0 + 4.0,
            Phase.FAILING_OVER,
            Action.FAILOVER,
            target="us-west-2",
            run_id=ar.RUN_ID,
            initiated_by=Initiator.OPERATOR,
            down=False,
        ),
        ar.command(
            ar.T0 + 20.0,
            "approve",
            "bob",
            "the replica caught up",
            source="api",
            command_id="c5",
            run_id=ar.RUN_ID,
            step="promote-db",
        ),
        # Another run's approval is not this run's.
        ar.command(
            ar.T0 + 21.0,
            "approve",
            "eve",
            "not this one",
            command_id="c6",
            run_id="other-run",
            step="gate",
        ),
    ]
    text = _report(around, run)
    (row,) = [line for line in text.splitlines() if line.startswith("| Approved by |")]
    assert "bob via api at 2026-11-26 16:00:20.000Z, step promote-db" in row
    assert '("the replica caught up")' in row and "eve" not in row
    assert "operator command: approve of step promote-db by bob via api" in text
    assert "not this one" not in text


def test_a_run_without_approvals_says_so() -> None:
    assert "| Approved by | - |" in _report([], ar.run_records())
