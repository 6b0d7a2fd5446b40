"""The operator CLI against a real aiohttp server on 127.0.0.1 serving ``make_app(fake)``:
tables, ``--json`` and exit codes (0 done, 1 refused / not ready, 2 usage / connection)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.api import bound_port, make_app, serve
from orchestrator.cli.operator import (
    ASCII_GLYPHS,
    add_operator_parsers,
    render_service,
    run_operator,
)
from orchestrator.daemon.control import CommandResult, Readiness
from orchestrator.engine.state import Command, CommandSource, OperatorCommand
from orchestrator.engine.vocabulary import REASON_TEXT, Reason
from tests.fixtures.binaries import free_port
from tests.unit import audit_records as ar
from tests.unit.api.fakes import FakeControl

TOKEN = "cli-test-token"


@dataclass
class Api:
    url: str
    control: FakeControl
    token_file: Path


@contextmanager
def serving(control: FakeControl) -> Iterator[str]:
    """``make_app(control)`` on a random loopback port, served from its own thread and loop
    (the CLI runs its own ``asyncio.run`` in the test thread); yields its URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop = asyncio.Event()

    async def main() -> None:
        app = make_app(control, token=TOKEN, metrics_registry=CollectorRegistry())
        runner = await serve(app, "127.0.0.1", 0)
        try:
            port.append(bound_port(runner))
            started.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the API server did not start"
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        assert not thread.is_alive(), "the API server did not stop"
        loop.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    control = FakeControl()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with serving(control) as url:
        yield Api(url, control, token_file)


def token(api: Api) -> list[str]:
    return ["--token-file", str(api.token_file)]


def cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="failoverd")
    add_operator_parsers(parser.add_subparsers(dest="command", required=True))
    out = io.StringIO()
    code = run_operator(parser.parse_args(argv), out=out)
    return code, out.getvalue()


# --- status -------------------------------------------------------------------------------
def test_status_prints_one_line_per_service(api: Api) -> None:
    code, out = cli(["status", "--api", api.url])
    assert code == 0
    header, columns, *rows = out.splitlines()
    assert header.startswith("node node-a · leader node-a · policies ")
    assert columns.split() == ["SERVICE", "MODE", "ACTIVE", "PHASE", "PAUSED", "RUN", "REASONS"]
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["catalog"] == ["catalog", "automatic", "us-east-1", "steady", "no", "-", "-"]
    assert by_name["webapp"] == [
        "webapp",
        "automatic",
        "us-east-1",
        "failing_over",
        "no",
        "run-0001",
        "running",
        "active_down",
    ]


def test_status_of_a_service_shows_regions_with_vantage_dots_and_the_run(api: Api) -> None:
    code, out = cli(["status", "webapp", "--api", api.url])
    assert code == 0
    assert f"why: active_down: {REASON_TEXT[Reason.ACTIVE_DOWN]}" in out
    assert "RTO: 13.0m left of 15.0m (2.0m since detection)" in out
    assert "lag: us-west-2 12s ok (RPO 60s, measured 20s ago)" in out
    assert "decision: failover → us-west-2" in out
    east = next(line for line in out.splitlines() if line.startswith("us-east-1"))
    assert east.split()[:3] == ["us-east-1", "down", "2/2"]
    assert "✗ local" in east and "✗ agent-eu" in east and "● agent-ap" in east
    west = next(line for line in out.splitlines() if line.startswith("us-west-2"))
    assert "healthy" in west and "✗" not in west
    assert "run run-0001: failover us-east-1 → us-west-2, running" in out
    steps = [line.split() for line in out.splitlines() if line.startswith("  notify-start")]
    assert steps == [["notify-start", "notify.sns", "succeeded", "2", "2s"]]


def test_service_detail_falls_back_to_ascii_marks() -> None:
    body = json.loads(
        json.dumps({"service": "s", "mode": "automatic", "active_region": "a", "primary": "a"})
    )
    body |= {
        "phase": "steady",
        "paused": False,
        "reasons": [],
        "rto": {"budget": 60, "remaining": None, "elapsed": None, "detected_at": None},
        "rpo": 10,
        "lag": [],
        "decision": None,
        "run": None,
        "verdicts": [
            {
                "region": "a",
                "verdict": "degraded",
                "failing": ["v1"],
                "quorum": 2,
                "vantages": [
                    {"vantage": "v1", "view": "failing"},
                    {"vantage": "v2", "view": "passing"},
                ],
            }
        ],
    }
    text = render_service(body, ASCII_GLYPHS)
    assert "x v1  + v2" in text and "1/2" in text
    assert "s (automatic) | active a" in text
    text.encode("ascii")  # a C-locale terminal can print all of it
    assert "STATE:" not in text
    body["state_problem"] = "the stored state is corrupt and was quarantined (service_state/s)"
    assert "  STATE: the stored state is corrupt" in render_service(body, ASCII_GLYPHS)


def test_service_detail_shows_a_failed_run_s_error() -> None:
    body = {
        "service": "s",
        "mode": "automatic",
        "active_region": "a",
        "primary": "a",
        "phase": "failed",
        "paused": False,
        "reasons": [],
        "rto": {"budget": 60, "remaining": None, "elapsed": None, "detected_at": None},
        "rpo": 10,
        "lag": [],
        "decision": None,
        "verdicts": [],
        "run": {
            "run_id": "s-1",
            "kind": "failover",
            "source": "a",
            "target": "b",
            "status": "failed",
            "error": "aborted by alice: wrong region",
            "rto_remaining": 30,
            "steps": [],
        },
    }
    text = render_service(body, ASCII_GLYPHS)
    assert "run s-1: failover a -> b, failed" in text
    assert "  error: aborted by alice: wrong region" in text


def test_status_json_is_the_api_document_with_readiness(api: Api) -> None:
    code, out = cli(["status", "--json", "--api", api.url])
    assert code == 0
    body = json.loads(out)
    assert {s["name"] for s in body["services"]} == {"webapp", "catalog"}
    assert body["readiness"] == {"ready": True, "problems": []}
    code, out = cli(["status", "webapp", "--json", "--api", api.url])
    assert code == 0 and json.loads(out)["verdicts"][0]["verdict"] == "down"


def test_status_exits_1_when_the_daemon_is_not_ready(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.control.ready = Readiness(False, ("no leader known",))
    code, out = cli(["status", "--api", api.url])
    assert code == 1
    assert "webapp" in out  # the table is still printed
    assert "the daemon is not ready: no leader known" in capsys.readouterr().err


def test_status_of_an_unknown_service_is_a_usage_error(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = cli(["status", "nope", "--api", api.url])
    assert code == 2
    assert "no service named 'nope'" in capsys.readouterr().err


def test_the_api_address_comes_from_the_environment(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAILOVERD_API", api.url)
    assert cli(["status"])[0] == 0


# --- commands -----------------------------------------------------------------------------
def test_failover_sends_target_force_who_and_why(api: Api) -> None:
    code, out = cli(
        [
            "failover",
            "webapp",
            "--to",
            "us-west-2",
            "--force",
            "--reason",
            "us-east-1 is down",
            "--by",
            "alice",
            "--api",
            api.url,
            "--token-file",
            str(api.token_file),
        ]
    )
    assert code == 0
    assert out == "accepted: failover started (run run-0002)\n"
    # Who is the token's label; the name given is recorded beside it; the source is the CLI.
    cli_source = CommandSource.CLI
    assert api.control.commands == [
        (
            "webapp",
            OperatorCommand(
                Command.FAILOVER, "us-west-2", True, "api", "us-east-1 is down", cli_source, "alice"
            ),
        )
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["switchover", "webapp", "--to", "us-west-2"], Command.SWITCHOVER),
        (["failback", "webapp"], Command.FAILBACK),
        (["approve", "webapp"], Command.APPROVE),
        (["pause", "webapp"], Command.PAUSE),
        (["resume", "webapp"], Command.RESUME),
        (["abort", "webapp"], Command.ABORT),
    ],
)
def test_each_command_reaches_the_daemon(
    api: Api, monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: Command
) -> None:
    monkeypatch.setenv("FAILOVERD_TOKEN_FILE", str(api.token_file))
    code, _ = cli([*argv, "--reason", "drill", "--by", "bob", "--api", api.url])
    assert code == 0
    ((service, command),) = api.control.commands
    assert (service, command.command, command.by, command.user, command.reason) == (
        "webapp",
        expected,
        "api",
        "bob",
        "drill",
    )
    assert command.source is CommandSource.CLI


def test_pause_without_a_service_is_the_global_brake(api: Api) -> None:
    code, out = cli(
        ["pause", "--reason", "incident", "--by", "carol", "--api", api.url, "--json", *token(api)]
    )
    assert code == 0
    assert json.loads(out)["accepted"] is True
    assert api.control.paused_all == [("api", "incident")]
    assert api.control.paused_all_from == [(CommandSource.CLI, "carol")]


def test_a_refused_command_exits_1_with_the_engine_message(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.control.result = CommandResult(False, "paused: resume first")
    code, out = cli(
        ["failover", "webapp", "--reason", "r", "--api", api.url, "--json", *token(api)]
    )
    assert code == 1
    assert json.loads(out)["error"] == "refused"
    assert "refused: paused: resume first" in capsys.readouterr().err


def test_not_the_leader_exits_1_naming_the_leader(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    api.control.leader_id = "node-b"
    code, _ = cli(
        [
            "approve",
            "webapp",
            "--reason",
            "r",
            "--api",
            api.url,
            "--token-file",
            str(api.token_file),
        ]
    )
    assert code == 1
    assert "(leader: node-b)" in capsys.readouterr().err


def test_a_follower_s_409_is_followed_once_to_the_leader_s_api(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    # `api` leads; the follower's 409 names it and the address it announced.
    follower = FakeControl(node_id="node-b", leader_id="node-a", leader_url=api.url)
    with serving(follower) as follower_url:
        code, out = cli(
            ["pause", "webapp", "--reason", "deploy", "--api", follower_url, *token(api)]
        )
        assert code == 0, capsys.readouterr().err
        assert out == "accepted: failover started (run run-0002)\n"
        err = capsys.readouterr().err
        assert f"{follower_url} does not lead; sending the command to node-a at {api.url}" in err
        assert follower.commands == []
        ((service, command),) = api.control.commands
        assert (service, command.command, command.source) == (
            "webapp",
            Command.PAUSE,
            CommandSource.CLI,
        )
        # The global brake follows too.
        code, _ = cli(["pause", "--reason", "incident", "--api", follower_url, *token(api)])
        assert code == 0 and api.control.paused_all == [("api", "incident")]


def test_a_second_not_leader_answer_is_not_followed_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    third = FakeControl(node_id="node-c", leader_id="node-a")
    with serving(third) as third_url:
        second = FakeControl(node_id="node-b", leader_id="node-c", leader_url=third_url)
        with serving(second) as second_url:
            first = FakeControl(node_id="node-a", leader_id="node-b", leader_url=second_url)
            with serving(first) as first_url:
                argv = ["resume", "webapp", "--reason", "r", "--api", first_url]
                code, _ = cli([*argv, "--token-file", str(token_file)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("does not lead; sending the command to") == 1
    assert f"(leader: node-c at {third_url})" in err
    assert first.commands == second.commands == third.commands == []


def test_a_token_file_may_hold_one_named_token_with_crlf(api: Api, tmp_path: Path) -> None:
    named = tmp_path / "alice.token"
    named.write_bytes(b"# my token\r\nalice:" + TOKEN.encode() + b"\r\n")
    code, _ = cli(
        ["resume", "webapp", "--reason", "r", "--api", api.url, "--token-file", str(named)]
    )
    assert code == 0 and len(api.control.commands) == 1


def test_without_a_token_the_command_is_refused_with_a_hint(
    api: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAILOVERD_TOKEN_FILE", raising=False)
    code, _ = cli(["pause", "webapp", "--reason", "r", "--api", api.url])
    assert code == 1
    assert "--token-file" in capsys.readouterr().err
    assert api.control.commands == []


def test_an_unknown_region_is_a_usage_error(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli(
        ["failover", "webapp", "--to", "mars-1", "--reason", "r", "--api", api.url, *token(api)]
    )
    assert code == 2
    assert "mars-1" in capsys.readouterr().err


# --- usage and connection errors ----------------------------------------------------------
def test_unreachable_api_exits_2_with_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _ = cli(["status", "--api", url, "--timeout", "2"])
    assert code == 2
    assert f"cannot reach the failoverd API at {url}" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1", "http://", "http://h:x"])
def test_a_bad_api_address_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = cli(["status", "--api", url])
    assert code == 2
    assert "API address" in capsys.readouterr().err


def test_an_unreadable_or_empty_token_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    code, _ = cli(["pause", "--reason", "r", "--token-file", str(missing)])
    assert code == 2
    assert f"cannot read the token file {missing}" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _ = cli(["pause", "--reason", "r", "--token-file", str(empty)])
    assert code == 2
    assert "is empty" in capsys.readouterr().err
    several = tmp_path / "tokens"
    several.write_text("alice:aaaaaaaa\nbob:bbbbbbbb\n")
    code, _ = cli(["pause", "--reason", "r", "--token-file", str(several)])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds 2 tokens (alice, bob)" in err and "aaaaaaaa" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["failover", "webapp"],  # no reason
        ["failover", "webapp", "--reason", "   "],
        ["failback", "webapp", "--reason", "r", "--to", "us-west-2"],  # failback takes no --to
        ["switchover", "webapp", "--reason", "r", "--force"],
    ],
)
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    assert exc.value.code == 2


# --- audit and report ---------------------------------------------------------------------
def test_audit_prints_a_table_of_decisions_commands_runs_and_steps(api: Api) -> None:
    code, out = cli(["audit", "--api", api.url])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "SERVICE", "ENTRY", "POLICY", "WHAT", "AND", "WHY"]
    start = next(line for line in lines if "(run webapp-" in line)
    assert start.startswith("2026-11-26 16:00:04  webapp   decision")
    assert "a1b2c3d4 " in start and "failover us-east-1 -> us-west-2" in start
    assert start.endswith("[active_down]")
    pause = next(line for line in lines if "operator_command" in line)
    assert "pause by alice: watching the promotion" in pause
    failed = next(line for line in lines if "step_failed" in line)
    assert "step promote-db attempt 1 failed (retryable): Throttling: rate exceeded" in failed
    assert lines[-1] == f"{len(lines) - 2} entries"


def test_audit_passes_its_filters_and_json_is_the_api_document(api: Api) -> None:
    code, out = cli(
        [
            *("audit", "--api", api.url, "--service", "webapp", "--since", "1795708805"),
            *("--until", "2026-11-26T16:00:38Z", "--limit", "4", "--json"),
        ]
    )
    assert code == 0
    body = json.loads(out)
    assert api.control.audit_queries == [("webapp", 1795708805.0, 1795708838.0, 4)]
    assert body["count"] == 4  # the newest four of the window, the last at 16:00:38
    assert [e["summary"] for e in body["entries"]][-1] == "step flip-dns attempt 1 started"
    code, out = cli(["audit", "--api", api.url, "--limit", "2"])
    assert "2 entries (the limit: older entries may exist" in out


def test_audit_with_a_bad_time_exits_2_with_the_api_message(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = cli(["audit", "--api", api.url, "--since", "last tuesday"])
    assert code == 2
    assert "since: expected an RFC 3339 time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["audit", "--limit", "0"])  # caught before any request


def test_report_prints_markdown_or_writes_it_to_a_file(api: Api, tmp_path: Path) -> None:
    from tests.unit.audit_records import RUN_ID

    code, out = cli(["report", RUN_ID, "--api", api.url])
    assert code == 0
    assert out.startswith(f"# Incident report: webapp failover run `{RUN_ID}`")
    assert "| promote-db | rds.promote_read_replica | succeeded | 2 | T+5.0s | 32.0 s |" in out
    target = tmp_path / "report.md"
    code, out = cli(["report", RUN_ID, "--api", api.url, "-o", str(target)])
    assert code == 0 and str(target) in out
    assert target.read_text().startswith("# Incident report")


def test_report_of_an_unknown_run_exits_2(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(["report", "no-such-run", "--api", api.url])
    assert code == 2 and out == ""
    assert "no run with id 'no-such-run'" in capsys.readouterr().err


def test_audit_shows_who_asked_from_where_why_and_what_came_of_it(api: Api) -> None:
    api.control.journal = [
        ar.command(ar.T0, "failover", "alice", "us-east-1 burns", command_id="c1", force=True),
        ar.answer(ar.T0 + 0.2, "c1", "failover", "alice", True, "failover to us-west-2 started"),
    ]
    code, out = cli(["audit", "--api", api.url])
    assert code == 0
    (row,) = [line for line in out.splitlines() if "operator_command" in line]
    assert row.endswith(
        "failover (forced) by alice via cli: us-east-1 burns"
        " -> accepted: failover to us-west-2 started"
    ), row
