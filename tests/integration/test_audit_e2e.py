"""The audit log and the post-incident report end to end: a real `failoverd run` subprocess
against moto fails over by itself when us-east-1's target starts failing; then the operator
commands `failoverd audit` and `failoverd report RUN_ID` (subprocesses, through the HTTP API)
show the decision change with its reasons and policy version, the run and each step, and a
Markdown report with the timeline, each step's duration and the RTO achieved vs the RTO.

The daemon, its world and the probe targets are test_daemon_e2e's fixtures."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import aiohttp

from orchestrator.cli.main import _parser
from orchestrator.cli.operator import run_operator
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as e2e
from tests.integration.runbook.webapp_world import SERVICE, SOURCE, TARGET, Seeded

# test_daemon_e2e's fixtures, used here by name.
daemon = e2e.daemon
http = e2e.http
targets = e2e.targets
seeded = e2e.seeded

CLI_DEADLINE = 30.0  # an interpreter start and one API round trip, on a loaded 2-core CI


async def failoverd_in_process(*args: str) -> tuple[int, str]:
    """The CLI's own parser and code, in a thread (it runs its own event loop): the audit
    calls skip an interpreter start each; the report below goes through the real entry
    point."""
    out = io.StringIO()
    code = await asyncio.to_thread(run_operator, _parser().parse_args(list(args)), out)
    return code, out.getvalue()


async def failoverd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        env=e2e.daemon_env(),
        cwd=e2e.ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_DEADLINE):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_audit_and_report_after_the_engine_fails_over(
    daemon: e2e.DaemonProcess,
    http: aiohttp.ClientSession,
    targets: dict[str, e2e.Target],
    moto: MotoServer,
    seeded: Seeded,
    tmp_path: Path,
) -> None:
    await e2e.wait_ready_to_fail_over(http, daemon)
    targets[SOURCE].status = 503
    after = await e2e.wait_failed_over(http, daemon)
    run_id = after["run"]["run_id"]
    version = (await e2e.get_json(http, f"{daemon.base_url}/v1/status"))[1]["policy_version"]
    api = ("--api", daemon.base_url)

    code, out = await failoverd_in_process("audit", "--service", SERVICE, "--limit", "1000", *api)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "SERVICE", "ENTRY"]
    start = [line for line in lines if f"(run {run_id})" in line]
    assert len(start) == 1, out
    assert " decision " in start[0] and version[:8] in start[0], start
    assert f"failover {SOURCE} -> {TARGET}" in start[0] and "[active_down]" in start[0], start
    body = lines[lines.index(start[0]) :]
    assert "run_started" in body[1], out  # the decision that started the run is right before
    for step in e2e.STEPS:
        assert any(f"step {step} attempt 1 succeeded" in line for line in body), (step, out)
    assert any("run_succeeded" in line for line in body), out

    code, out, err = await failoverd(
        "audit", "--service", SERVICE, "--since", "10m", "--json", *api
    )
    assert code == 0, err
    entries = json.loads(out)["entries"]
    decision = next(e for e in entries if e["detail"].get("run_id") == run_id)
    east = next(r for r in decision["detail"]["regions"] if r["region"] == SOURCE)
    assert east["verdict"] == "down" and east["failing"] == ["local"], east
    assert decision["policy_version"] == version

    report = tmp_path / "report.md"
    code, out, err = await failoverd("report", run_id, "--output", str(report), *api)
    assert code == 0, err
    text = report.read_text()
    assert text.startswith(f"# Incident report: {SERVICE} failover run `{run_id}`"), text
    assert "| Outcome | **succeeded** |" in text and "## Timeline" in text
    assert "run end - detection) vs RTO 15.0 min: met" in text, text
    assert "RPO achieved: 5.0 s" in text, text
    durations = text.split("## Step durations", 1)[1]
    for step in e2e.STEPS:
        row = next(line for line in durations.splitlines() if line.startswith(f"| {step} |"))
        assert "| succeeded | 1 |" in row and row.split(" | ")[5].endswith(" s"), row
    await e2e.stop(daemon)
