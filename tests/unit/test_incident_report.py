"""The post-incident report (pure, from hand-built journal records): the header, the RTO and
RPO achieved against the policy's with how detection is defined, a timeline from detection,
the evidence of the decision that started the run, step durations, a failed run's error,
and "unknown" where nothing was measured."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.engine.state import Initiator
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.incident_report import ReportData, render, report_markdown, select_context
from orchestrator.runbook.journal import RunHeader
from tests.unit import audit_records as ar


def report(**kw: object) -> str:
    data = ReportData(run=ar.run_records(), around=ar.around(), rpo=ar.RPO, now=ar.T0 + 100)
    return render(replace(data, **kw))  # type: ignore[arg-type]


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


def test_the_header_names_service_kind_move_initiator_and_outcome() -> None:
    text = report()
    assert text.startswith(f"# Incident report: webapp failover run `{ar.RUN_ID}`\n")
    assert "| Source → target | us-east-1 → us-west-2 |" in text
    assert "| Initiated by | policy (the engine's own decision) |" in text
    assert "| Outcome | **succeeded** |" in text
    assert f"| Policy version | `{ar.VERSION}` |" in text
    assert "| Detection | 2026-11-26 16:00:00.000Z (when the engine first saw" in text


def test_rto_and_rpo_achieved_are_measured_against_the_policy() -> None:
    rto, breakdown, rpo = section(report(), "RTO and RPO")
    assert rto == "- **RTO achieved: 40.5 s** (run end - detection) vs RTO 15.0 min: met"
    assert breakdown == (
        "  - where the time went: detection to decision 4.0 s, decision to run start 0.5 s,"
        " the run itself 36.0 s"
    )
    assert rpo == (
        "- **RPO achieved: 5.0 s** (replication lag to us-west-2 at decision time, measured"
        " 3.0 s before the decision) vs RPO 60.0 s: within"
    )


def test_an_overrun_rto_and_a_lag_above_the_rpo_say_by_how_much() -> None:
    run = ar.run_records()
    late = [*run[:-1], replace(run[-1], at=ar.T0 + 1000.0)]
    around = ar.around()
    around[2] = ar.decision(
        ar.T0 + 4.0,
        Phase.FAILING_OVER,
        Action.FAILOVER,
        reasons=(Reason.ACTIVE_DOWN, Reason.FORCED),
        target="us-west-2",
        run_id=ar.RUN_ID,
        lag=90.0,
    )
    rto, _, rpo = section(report(run=late, around=around), "RTO and RPO")
    assert rto.endswith("vs RTO 15.0 min: MISSED by 100.0 s")
    assert rpo.endswith("vs RPO 60.0 s: ABOVE by 30.0 s")


def test_unmeasured_lag_and_an_unfinished_run_are_unknown() -> None:
    around = ar.around()
    around[2] = ar.decision(
        ar.T0 + 4.0,
        Phase.FAILING_OVER,
        Action.FAILOVER,
        reasons=(Reason.ACTIVE_DOWN,),
        target="us-west-2",
        run_id=ar.RUN_ID,
        lag=None,
    )
    text = report(run=ar.run_records()[:4], around=around)
    rto, _, rpo = section(text, "RTO and RPO")
    assert rto == "- **RTO achieved: unknown** (the run has not ended) — RTO 15.0 min"
    assert rpo == (
        "- **RPO achieved: unknown** (no lag reading for us-west-2 at decision time) vs RPO 60.0 s"
    )
    assert "| Outcome | **running** (not finished when this report was made) |" in text
    assert "No lag readings at decision time." in text


def test_the_timeline_runs_from_detection_through_decisions_steps_and_commands() -> None:
    rows = section(report(), "Timeline")
    assert rows[0] == "Offsets from T0 = detection, 2026-11-26 16:00:00.000Z."
    events = [r.split(" | ")[0].lstrip("| ") + " " + r.split(" | ")[2] for r in rows[3:]]
    assert events == [
        "T+0.0s active region first seen down (detection)",
        "T+1.0s decision: suspect, none",
        "T+4.0s decision: failing_over, failover → us-west-2",
        "T+4.5s run started: failover us-east-1 → us-west-2",
        "T+5.0s step promote-db attempt 1 started",
        "T+6.0s step promote-db attempt 1 ended",
        "T+7.0s step promote-db attempt 2 started",
        "T+20.0s operator command: pause by alice",
        "T+37.0s step promote-db attempt 2 ended",
        "T+38.0s step flip-dns attempt 1 started",
        "T+40.0s step flip-dns attempt 1 ended",
        "T+40.5s run ended",
    ]
    assert "| failed, will retry if attempts remain: Throttling: rate exceeded |" in rows[8]
    # The decision after the run started (run_in_progress) and the steady one before the
    # incident are not part of it.
    assert not any("run_in_progress" in r or "steady" in r for r in rows)


def test_the_evidence_is_the_decision_that_started_the_run() -> None:
    rows = section(report(), "Evidence at decision time")
    assert rows[0].startswith("Decision at 2026-11-26 16:00:04.000Z (policy version")
    assert "phase **failing_over**, action **failover** → us-west-2" in rows[0]
    assert "- `active_down`: the active region is down" in rows[2]
    assert "| us-east-1 | down | 2/2 | local, eu | ap | - | stale_data |" in rows
    assert "| us-west-2 | 5.0 s | 3.0 s | within RPO |" in rows


def test_step_durations_count_retries() -> None:
    rows = section(report(), "Step durations")
    assert rows[-2:] == [
        "| promote-db | rds.promote_read_replica | succeeded | 2 | T+5.0s | 32.0 s |   |",
        "| flip-dns | route53.set_record | succeeded | 1 | T+38.0s | 2.0 s |   |",
    ]


def test_a_failed_run_shows_its_error_and_the_failed_step() -> None:
    text = report(run=ar.run_records(fail=True))
    assert "| Outcome | **failed**: step flip-dns failed: NoSuchHostedZone |" in text
    assert (
        "| flip-dns | route53.set_record | failed | 1 | T+38.0s | 2.0 s | NoSuchHostedZone |"
        in (text)
    )
    assert "| run ended | failed: step flip-dns failed: NoSuchHostedZone |" in text


def test_an_operator_run_without_detection_is_measured_from_the_decision() -> None:
    around = [
        ar.operator_command(ar.T0 + 3.0, "failover", "bob", "region maintenance"),
        ar.decision(
            ar.T0 + 4.0,
            Phase.FAILING_OVER,
            Action.FAILOVER,
            reasons=(Reason.OPERATOR_COMMAND,),
            target="us-west-2",
            run_id=ar.RUN_ID,
            initiated_by=Initiator.OPERATOR,
            down=False,
        ),
    ]
    text = report(run=ar.run_records(detected=None), around=around)
    assert '| Initiated by | operator: bob ("region maintenance") |' in text
    assert "none recorded (e.g. an operator's run): the RTO clock starts at the decision" in text
    assert "- **RTO achieved: 36.5 s** (run end - the decision)" in text
    assert "T-1.0s | 2026-11-26 16:00:03.000Z | operator command: failover by bob" in text


def test_without_a_decision_record_the_evidence_is_unknown() -> None:
    text = report(around=[], rpo=None)
    assert "| Initiated by | unknown (no decision record found) |" in text
    assert "No decision record was found for this run" in text
    assert "- **RPO achieved: unknown** (no decision record at decision time) vs RPO unknown" in (
        text
    )


def test_an_older_decision_without_the_run_id_is_found_by_time() -> None:
    header = RunHeader.from_record(ar.run_records()[0])
    around = ar.around()
    around[2] = ar.decision(
        ar.T0 + 4.0,
        Phase.FAILING_OVER,
        Action.FAILOVER,
        reasons=(Reason.ACTIVE_DOWN,),
        target="us-west-2",
    )
    ctx = select_context(header, around[:3], ar.T0 + 40.5)
    assert ctx.decision is not None and ctx.decision.at == ar.T0 + 4.0
    assert [d.phase for d in ctx.lead_up] == ["suspect"]


def test_an_unreadable_journal_is_reported_not_raised() -> None:
    broken = [replace(ar.run_records()[0], detail="{}")]
    text = report_markdown(ReportData(run=broken, around=[], rpo=None, now=ar.T0))
    assert "The run's journal is unreadable" in text


def test_pipes_and_newlines_in_errors_do_not_break_the_tables() -> None:
    run = ar.run_records(fail=True)
    run[-2] = replace(run[-2], error="bad | value\nsecond line")
    text = report(run=run)
    row = next(line for line in text.splitlines() if line.startswith("| flip-dns"))
    assert row.endswith("| bad \\| value second line |")


def test_a_steps_own_steps_show_in_the_timeline_and_the_durations() -> None:
    """A step that follows an ARC Region switch plan journals the plan's events: the report
    shows them in the timeline and the plan's steps, timed by the plan, under the step."""
    import json

    from orchestrator.audit import summarize
    from orchestrator.store.base import JournalStatus

    def note(at: float, detail: dict[str, object]) -> object:
        return ar._run(
            JournalStatus.STEP_PROGRESS, at, step="flip-dns", attempt=1, detail=json.dumps(detail)
        )

    run = ar.run_records()
    notes = [
        note(
            ar.T0 + 38.2,
            {
                "note": "stepStarted scale",
                "substep": {
                    "name": "scale",
                    "status": "running",
                    "at": ar.T0 + 38.1,
                    "kind": "EC2AutoScaling",
                },
            },
        ),
        note(
            ar.T0 + 39.5,
            {
                "note": "stepSucceeded scale",
                "substep": {"name": "scale", "status": "succeeded", "at": ar.T0 + 39.6},
            },
        ),
        note(
            ar.T0 + 39.7,
            {
                "note": "plan step gate approved by alice: go",
                "approved": "gate",
                "by": "alice",
                "reason": "go",
            },
        ),
    ]
    run = [*run[:6], *notes, *run[6:]]  # after flip-dns started, before it ended
    text = report(run=run)
    rows = section(text, "Step durations")
    assert "| flip-dns / scale | EC2AutoScaling | succeeded |   | T+38.1s | 1.5 s |   |" in rows
    timeline = section(text, "Timeline")
    assert any("step flip-dns: plan step gate approved by alice: go" in r for r in timeline)
    assert summarize(notes[2]) == "step flip-dns: plan step gate approved by alice: go"  # type: ignore[arg-type]
