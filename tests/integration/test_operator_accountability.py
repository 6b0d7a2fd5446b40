"""Every approval on the record, end to end: a real `failoverd run` subprocess against moto
with named tokens (one token file of `label:token` lines, CRLF), operators using the CLI and
the raw API. A pause, a forced failover and an approval of the failback's gate each appear
in `failoverd audit` with who (the token's label), why and from where (cli, api), with what
came of them, and in the runs' reports; a token removed from the file stops working after
SIGHUP.

The daemon, its world and the probe targets are test_daemon_e2e's fixtures."""

from __future__ import annotations

import asyncio
import getpass
import io
import signal
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.cli.main import _parser
from orchestrator.cli.operator import run_operator
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as e2e
from tests.integration.runbook.webapp_world import SERVICE, SOURCE, TARGET, Seeded

http = e2e.http
targets = e2e.targets
seeded = e2e.seeded

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"
RUN_DEADLINE = 30.0


async def failoverd(*args: str) -> tuple[int, str]:
    """The CLI's own parser and code in a thread (it runs its own event loop); stderr is
    the test's."""
    out = io.StringIO()
    code = await asyncio.to_thread(run_operator, _parser().parse_args(list(args)), out)
    return code, out.getvalue()


async def until(check: Any, what: str, daemon: e2e.DaemonProcess) -> None:
    await e2e.until(check, what, RUN_DEADLINE, daemon)


async def test_a_pause_a_forced_failover_and_an_approval_are_on_the_record(
    tmp_path: Path,
    moto: MotoServer,
    seeded: Seeded,
    targets: dict[str, e2e.Target],
    http: aiohttp.ClientSession,
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "webapp.yaml").write_text(e2e.e2e_policy(seeded.zone_id, targets))
    tokens = tmp_path / "api-tokens"
    tokens.write_bytes(f"# operators\r\nalice:{ALICE}\r\nbob:{BOB}\r\n".encode())
    tokens.chmod(0o600)  # a secret file is the daemon user's alone
    alice = tmp_path / "alice.token"
    alice.write_text(ALICE + "\n")
    config = e2e.daemon_config(tmp_path, moto, policies, tokens)
    async with e2e.running_daemon(config) as daemon:
        await e2e.wait_ready_to_fail_over(http, daemon)
        api = ("--api", daemon.base_url, "--token-file", str(alice))

        # alice, from the CLI: a pause and a resume, then a forced failover.
        code, _ = await failoverd("pause", SERVICE, "--reason", "checking the replica", *api)
        assert code == 0
        code, _ = await failoverd("resume", SERVICE, "--reason", "the replica is fine", *api)
        assert code == 0
        code, out = await failoverd(
            "failover", SERVICE, "--to", TARGET, "--force", "--reason", "us-east-1 degraded", *api
        )
        assert code == 0, out
        failed_over = await e2e.wait_failed_over(http, daemon)
        failover_run = failed_over["run"]["run_id"]

        # The failback waits at its approval gate; bob approves through the API.
        code, out = await failoverd("failback", SERVICE, "--reason", "us-east-1 is back", *api)
        assert code == 0, out
        failback_run = out.split("(run ")[1].rstrip(")\n")

        async def at_the_gate() -> bool:
            body = await e2e.service(http, daemon)
            run = body.get("run") or {}
            return run.get("run_id") == failback_run and any(
                s["name"] == "approve-failback" and s["status"] == "running"
                for s in run.get("steps", [])
            )

        await until(at_the_gate, "the failback waiting at its gate", daemon)
        bob_auth = {"Authorization": f"Bearer {BOB}"}
        approve_url = f"{daemon.base_url}/v1/services/{SERVICE}/approve"
        body = {"reason": "old primary re-seeded", "by": "bob-laptop"}
        async with http.post(approve_url, json=body, headers=bob_auth) as response:
            assert response.status == 202, await response.text()

        async def back() -> bool:
            body = await e2e.service(http, daemon)
            run = body.get("run") or {}
            return body["active_region"] == SOURCE and run.get("status") == "succeeded"

        await until(back, f"{SERVICE} back in {SOURCE}", daemon)

        # Revoking bob: his line goes, SIGHUP; his token is refused, alice's still works.
        tokens.write_bytes(f"alice:{ALICE}\r\n".encode())
        daemon.proc.send_signal(signal.SIGHUP)

        async def revoked() -> bool:
            async with http.post(approve_url, json=body, headers=bob_auth) as response:
                return response.status == 401

        await until(revoked, "bob's token refused after SIGHUP", daemon)
        code, _ = await failoverd("resume", SERVICE, "--reason", "after the revocation", *api)
        assert code == 0

        # The audit: who, why, from where, and what came of it. The CLI names the OS user
        # beside the token's label.
        user = getpass.getuser()
        alice_cli = "alice via cli" if user == "alice" else f"alice (as {user}) via cli"
        code, out = await failoverd(
            "audit", "--service", SERVICE, "--limit", "1000", "--api", daemon.base_url
        )
        assert code == 0
        rows = [line for line in out.splitlines() if " operator_command " in line]
        assert any(
            f"pause by {alice_cli}: checking the replica -> accepted: webapp paused" in r
            for r in rows
        ), out
        assert any(
            f"failover to {TARGET} (forced) by {alice_cli}: us-east-1 degraded"
            f" -> accepted: failover to {TARGET} started" in r
            for r in rows
        ), out
        assert any(
            f"approve (step approve-failback of run {failback_run}) by bob (as bob-laptop) via"
            f" api: old primary re-seeded -> accepted: approved step approve-failback" in r
            for r in rows
        ), out

        # The reports: the failover names who forced it (and the pause before it); the
        # failback names its approver.
        code, report = await failoverd("report", failover_run, "--api", daemon.base_url)
        assert code == 0
        initiated = f'| Initiated by | operator: {alice_cli} (forced) ("us-east-1 degraded") |'
        assert initiated in report, report
        assert f"operator command: pause by {alice_cli}" in report, report
        code, report = await failoverd("report", failback_run, "--api", daemon.base_url)
        assert code == 0
        (row,) = [line for line in report.splitlines() if line.startswith("| Approved by |")]
        assert "bob (as bob-laptop) via api" in row and "step approve-failback" in row, row
        assert '("old primary re-seeded")' in row, row
        assert (
            "operator command: approve of step approve-failback by bob (as bob-laptop) via api"
            in report
        ), report
        await e2e.stop(daemon)
