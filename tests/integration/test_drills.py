"""`failoverd drill` against a moto server: a dry run reports what each step would do and
changes nothing; a switchover drill moves DNS to the standby, holds, moves it back, and
writes a report with per-step timings and the RTO achieved."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.audit import command_info, entries
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.drills import add_drill_parser, format_markdown, run_drill, switchover_drill
from orchestrator.engine.state import RunStatus
from orchestrator.policy.loader import load_policy_text, policy_version
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.moto_server import MotoServer
from tests.integration.runbook.webapp_world import moto_mutations
from tests.integration.shop_world import POLICY, PRIMARY, RECORD, STANDBY
from tests.integration.shop_world import seed as seed_world

HOLD = 1234.5


def dns(moto: MotoServer, zone_id: str) -> list[str]:
    sets = moto.boto3_client("route53").list_resource_record_sets(HostedZoneId=zone_id)
    return [
        r["Value"]
        for s in sets["ResourceRecordSets"]
        if s["Name"] == RECORD + "." and s["Type"] == "CNAME"
        for r in s["ResourceRecords"]
    ]


def cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="failoverd")
    add_drill_parser(parser.add_subparsers(dest="command", required=True))
    return run_drill(parser.parse_args(["drill", *argv]))


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_dry_run_prints_each_step_and_its_findings_and_changes_nothing(
    moto: MotoServer, tmp_path: Path, capsys: Any, creds: None
) -> None:
    zone = seed_world(moto, max_size=2, record=True)  # desired 4 will not fit
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY.format(zone=zone))
    args = ["shop", "--mode", "dry-run", "--policy", str(policy_file)]
    with moto_mutations() as changes:
        code = cli(*args, "--endpoint-url", moto.endpoint_url)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "shop: dry run of failover us-east-1 -> us-west-2 (nothing changes)" in out
    # DAG order, the rendered parameters, and the check's findings per step.
    assert out.index("1. scale (autoscaling.set_capacity): NOT READY") < out.index(
        "2. dns (route53.set_record) after scale: ready"
    )
    assert '"auto_scaling_group": "shop-us-west-2"' in out
    assert '"value": "us-west-2.shop.example.com"' in out
    assert "- ASG max below desired: max 2 < desired 4" in out
    assert "dry run: NOT READY" in out
    # Nothing touched the world.
    assert sum(changes.values()) == 0
    assert dns(moto, zone) == [f"{PRIMARY}.shop.example.com"]

    # Unusable input is exit 2 with a reason.
    assert cli("nope", "--mode", "dry-run", "--policy", str(policy_file)) == 2
    assert "no policy for service 'nope' (known: shop)" in capsys.readouterr().err
    assert cli("shop", "--mode", "switchover", "--policy", str(policy_file)) == 2
    assert "needs the daemon's state store: --config" in capsys.readouterr().err
    # The daemon's settings name its store (SQLite or etcd); a bad one is named.
    settings = policy_file.parent / "failoverd.yaml"
    settings.write_text("state:\n  backend: etcd\n  etcd: {endpoints: [ftp://x]}\n")
    args = ("shop", "--mode", "switchover", "--policy", str(policy_file))
    assert cli(*args, "--config", str(settings), "--reason", "game day") == 2
    assert "failoverd.yaml:3" in capsys.readouterr().err
    # A switchover drill moves traffic: it is journaled with a reason, which it needs.
    assert cli(*args, "--state", str(policy_file.parent / "state.db")) == 2
    assert "needs --reason" in capsys.readouterr().err


class HoldWatcher:
    """The system clock, but the hold looks at DNS instead of just waiting."""

    def __init__(self, moto: MotoServer, zone: str) -> None:
        self.moto, self.zone = moto, zone
        self.during_hold: list[list[str]] = []

    def now(self) -> float:
        return SYSTEM_CLOCK.now()

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds == HOLD:  # the drill's hold; step deadlines and backoffs sleep too
            self.during_hold.append(dns(self.moto, self.zone))
            return
        await SYSTEM_CLOCK.sleep(seconds)


async def test_switchover_drill_moves_dns_to_the_standby_and_back(
    moto: MotoServer, tmp_path: Path
) -> None:
    zone = seed_world(moto, record=True)
    policy = load_policy_text(POLICY.format(zone=zone))
    clock = HoldWatcher(moto, zone)
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        lease = await store.acquire_lease("drill", 600.0)
        assert lease is not None
        report = await switchover_drill(
            policy,
            store,
            AwsClients(moto.client_config()),
            token=lambda: lease.token,
            policy_version=policy_version([policy]),
            hold=HOLD,
            clock=clock,
        )
        state = await store.load_state("shop")
        runs = list(await store.recent_runs("shop"))
    finally:
        await store.close()

    assert report.ok, report.problems
    assert clock.during_hold == [[f"{STANDBY}.shop.example.com"]]
    assert dns(moto, zone) == [f"{PRIMARY}.shop.example.com"]
    assert state is not None and state.active_region == PRIMARY and state.run is None
    assert [(r.kind, r.source, r.target, r.status) for r in report.runs] == [
        ("switchover", PRIMARY, STANDBY, RunStatus.SUCCEEDED),
        ("failback", STANDBY, PRIMARY, RunStatus.SUCCEEDED),
    ]
    assert sorted(runs) == sorted(r.run_id for r in report.runs)  # journaled like any run
    for run in report.runs:
        assert [s.name for s in run.steps] == ["scale", "dns"]
        assert all(s.duration is not None and s.duration >= 0 for s in run.steps)
        assert 0 < run.elapsed < run.rto
    text = format_markdown(report)
    assert "Result: **PASSED**" in text
    assert "| dns | route53.set_record | succeeded |" in text
    assert "of a 900s budget (met)" in text


def test_switchover_cli_writes_a_json_report_and_refuses_a_held_lease(
    moto: MotoServer, tmp_path: Path, capsys: Any, creds: None
) -> None:
    zone = seed_world(moto, record=True)
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY.format(zone=zone))
    report_file = tmp_path / "drill.json"
    base = ["shop", "--mode", "switchover", "--policy", str(policy_file)]
    code = cli(
        *base,
        "--endpoint-url",
        moto.endpoint_url,
        "--state",
        str(tmp_path / "state.db"),
        "--hold",
        "1s",
        "--report",
        str(report_file),
        "--reason",
        "quarterly game day",
        "--by",
        "carol",
    )
    assert code == 0, capsys.readouterr()
    report = json.loads(report_file.read_text())
    assert report["ok"] is True and report["problems"] == []
    assert [(r["kind"], r["target"], r["status"]) for r in report["runs"]] == [
        ("switchover", STANDBY, "succeeded"),
        ("failback", PRIMARY, "succeeded"),
    ]
    for run in report["runs"]:
        assert run["rto"] == 900.0 and run["rto_met"] is True
        assert 0 < run["rto_achieved"] < 900.0
        assert {s["name"]: s["status"] for s in run["steps"]} == {
            "scale": "succeeded",
            "dns": "succeeded",
        }
        assert all(s["duration"] >= 0 for s in run["steps"])
    assert dns(moto, zone) == [f"{PRIMARY}.shop.example.com"]
    # On the record before anything moved: who, why, from where; and how it ended.
    journal = asyncio.run(read_journal(tmp_path / "state.db"))
    first = journal[0]
    info = command_info(first)
    assert info is not None, first
    assert (info.command, info.by, info.reason, info.source) == (
        "drill",
        "carol",
        "quarterly game day",
        "cli",
    )
    assert info.extra["mode"] == "switchover"
    assert first.at <= min(r.at for r in journal if r.status is JournalStatus.RUN_STARTED)
    finished = [r for r in journal if r.status is JournalStatus.DRILL_FINISHED]
    assert len(finished) == 1 and json.loads(finished[0].detail)["command_id"] == info.id
    assert "drill switchover by carol via cli: quarterly game day" in [
        e.summary for e in entries(journal)
    ]


async def read_journal(path: Path) -> list[JournalRecord]:
    store = await SqliteStore.open(path)
    try:
        return list(await store.read_journal("shop", limit=1000))
    finally:
        await store.close()


async def test_a_drill_refuses_when_the_daemon_holds_the_lease(
    moto: MotoServer, tmp_path: Path, capsys: Any, creds: None
) -> None:
    zone = seed_world(moto, record=True)
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(POLICY.format(zone=zone))
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        assert await store.acquire_lease("daemon-a", 600.0) is not None
    finally:
        await store.close()

    code = await asyncio.to_thread(
        cli,
        "shop",
        "--mode",
        "switchover",
        "--policy",
        str(policy_file),
        "--endpoint-url",
        moto.endpoint_url,
        "--state",
        str(tmp_path / "state.db"),
        "--reason",
        "game day",
    )
    assert code == 2
    assert "held by daemon-a" in capsys.readouterr().err
    assert dns(moto, zone) == [f"{PRIMARY}.shop.example.com"]
