"""`failoverd run` end to end, as a subprocess, against moto and loopback probe targets.

The webapp example policy (its runbook unchanged) runs with one vantage point, fast
detection and its probes aimed at two small aiohttp servers on 127.0.0.1, one per region.
The daemon's AWS clients talk to moto over HTTP. What a user relies on is checked from the
outside: the HTTP API (health, readiness, auth, bad input, status), the world in moto after
a failover, `/metrics`, and a clean exit on SIGTERM. Two failovers: one the engine decides
by itself when us-east-1's target starts answering 503, one an operator asks for.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.moto_server import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, MotoServer
from tests.fixtures.secrets import write_secret
from tests.integration.runbook.webapp_world import (
    EXAMPLE_ZONE_ID,
    POLICY_FILE,
    REPLICA_DB,
    SERVICE,
    SOURCE,
    TARGET,
    Seeded,
    assert_failed_over,
    seed_world,
)

ROOT = Path(__file__).parents[2]
TOKEN = "e2e-token-0123456789abcdef"
STEPS = {"notify-start", "promote-db", "scale-up", "flip-dns", "notify-done"}
START_DEADLINE = 20.0  # interpreter start, imports, first evaluation (2 cores, loaded CI)
FAILOVER_DEADLINE = 30.0  # detection (~2 s) plus the runbook against moto (~2 s)
STOP_DEADLINE = 10.0  # what the issue and systemd's TimeoutStopSec allow
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


# -- the probe targets ---------------------------------------------------------------------
@dataclass
class Target:
    """A loopback HTTP server standing in for one region's health endpoint."""

    port: int = 0
    status: int = 200
    hits: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


@asynccontextmanager
async def serve_targets(regions: Sequence[str]) -> AsyncIterator[dict[str, Target]]:
    """One loopback target per region; a test sets ``status`` to make a region fail."""
    out: dict[str, Target] = {}
    runners: list[web.AppRunner] = []
    try:
        for region in regions:
            target = Target()

            async def health(request: web.Request, target: Target = target) -> web.Response:
                target.hits += 1
                return web.Response(status=target.status, text='{"status":"ok"}')

            app = web.Application()
            app.router.add_get("/healthz", health)
            runner = web.AppRunner(app, access_log=None)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            target.port = runner.addresses[0][1]
            out[region] = target
        yield out
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, Target]]:
    """One target per region of the webapp (see :func:`serve_targets`)."""
    async with serve_targets((SOURCE, TARGET)) as out:
        yield out


# -- the world and the files ---------------------------------------------------------------
@pytest.fixture
def seeded(moto: MotoServer) -> Seeded:
    """The webapp world, and a fresh replica lag reading (5 s, well within the 1 m RPO) so
    the `on_lag_unknown: wait` guard lets a failover through."""
    world = seed_world(moto)
    moto.boto3_client("cloudwatch", TARGET).put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            {
                "MetricName": "ReplicaLag",
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": REPLICA_DB}],
                "Timestamp": datetime.now(UTC),
                "Value": 5.0,
                "Unit": "Seconds",
            }
        ],
    )
    return world


def e2e_policy(zone_id: str, targets: dict[str, Target]) -> str:
    """The webapp example with the seeded zone id, probes on the loopback targets, one
    vantage point and detection fast enough for a test; runbooks and guards unchanged."""
    text = POLICY_FILE.read_text()
    assert EXAMPLE_ZONE_ID in text, f"{POLICY_FILE} no longer names {EXAMPLE_ZONE_ID}"
    policy = yaml.safe_load(text.replace(EXAMPLE_ZONE_ID, zone_id))
    policy["vantage_points"] = ["local"]
    policy["detection"] = {
        "interval": "1s",
        "timeout": "500ms",
        "consecutive_failures": 2,
        "quorum": 1,
        "staleness": "3s",
    }
    policy["signals"] = [
        {
            "name": "api",
            "type": "http",
            "targets": {region: t.url for region, t in targets.items()},
            "expect_status": [200],
            "body_contains": '"status":"ok"',
        }
    ]
    return yaml.safe_dump(policy, sort_keys=False)


# -- the daemon ----------------------------------------------------------------------------
@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)
    base_url: str = ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                out.append(record)
        return out

    def tail(self, lines: int = 30) -> str:
        return "".join(self.stderr[-lines:])


async def until(
    check: Callable[[], Awaitable[bool]], what: str, within: float, daemon: DaemonProcess
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (with the daemon's last log
    lines) after ``within`` seconds, or at once if the daemon exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if daemon.proc.returncode is not None:
            pytest.fail(
                f"the daemon exited ({daemon.proc.returncode}) before {what}:\n" + daemon.tail()
            )
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}:\n" + daemon.tail())
        await asyncio.sleep(0.1)


def _listening_port(daemon: DaemonProcess) -> int | None:
    for event in daemon.events("api_listening"):
        for address in event.get("addresses", []):
            host, port = ast.literal_eval(address)[:2]
            if host == "127.0.0.1":
                return int(port)
    return None


@pytest.fixture
async def daemon(
    tmp_path: Path, moto: MotoServer, seeded: Seeded, targets: dict[str, Target]
) -> AsyncIterator[DaemonProcess]:
    """`python -m orchestrator run` on the test policy, its API on a kernel-chosen port;
    killed at the end if a test did not stop it."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "webapp.yaml").write_text(e2e_policy(seeded.zone_id, targets))
    token_file = write_secret(tmp_path / "token", TOKEN + "\n")
    async with running_daemon(daemon_config(tmp_path, moto, policies, token_file)) as handle:
        yield handle


def daemon_config(tmp_path: Path, moto: MotoServer, policies: Path, token_file: Path) -> Path:
    """The e2e daemon's settings file: node e2e-node, SQLite in ``tmp_path``, fast ticks and
    a 3 s lease, AWS in ``moto``, the API on a kernel-chosen loopback port, JSON logs."""
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node_id": "e2e-node",
                "policies": [str(policies)],
                "state": {"path": str(tmp_path / "state.db")},
                "engine": {"tick": "200ms"},
                "leader": {"ttl": "3s"},
                "aws": {"endpoint_url": moto.endpoint_url, "read_timeout": "5s"},
                "http": {"bind": "127.0.0.1", "port": 0, "token_file": str(token_file)},
                "log": {"format": "json"},
            }
        )
    )
    return config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        yield session


# -- helpers over the API ------------------------------------------------------------------
async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json(content_type=None)


async def service(http: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, Any]:
    status, body = await get_json(http, f"{daemon.base_url}/v1/services/{SERVICE}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def wait_ready_to_fail_over(http: aiohttp.ClientSession, daemon: DaemonProcess) -> None:
    """/healthz and /readyz answer 200, both regions are healthy and the standby's lag is
    known and within the RPO: the state in which a failover is allowed."""

    async def ready() -> bool:
        try:
            healthz, _ = await get_json(http, f"{daemon.base_url}/healthz")
            readyz, _ = await get_json(http, f"{daemon.base_url}/readyz")
            if (healthz, readyz) != (200, 200):
                return False
            body = await service(http, daemon)
        except (aiohttp.ClientError, TimeoutError):  # not listening yet, or slow to answer
            return False
        verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
        lag = {entry["region"]: entry["within_rpo"] for entry in body["lag"]}
        return verdicts == {SOURCE: "healthy", TARGET: "healthy"} and lag.get(TARGET) is True

    await until(
        ready, "ready, both regions healthy, the standby's lag known", START_DEADLINE, daemon
    )


async def wait_failed_over(http: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, Any]:
    """The service snapshot once us-west-2 is active and the run has succeeded."""
    snapshot: dict[str, Any] = {}

    async def moved() -> bool:
        nonlocal snapshot
        snapshot = await service(http, daemon)
        run = snapshot.get("run") or {}
        return snapshot["active_region"] == TARGET and run.get("status") == "succeeded"

    await until(
        moved, f"{SERVICE} active in {TARGET} after a succeeded run", FAILOVER_DEADLINE, daemon
    )
    return snapshot


def sample(metrics: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def check_metrics(http: aiohttp.ClientSession, daemon: DaemonProcess) -> None:
    async with http.get(f"{daemon.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    finished = "failoverd_runs_finished_total"
    assert sample(text, finished, service=SERVICE, kind="failover", outcome="succeeded") == 1
    assert sample(text, finished, service=SERVICE, outcome="failed") is None
    attempts = "failoverd_runbook_step_attempts_total"
    for action in ("rds.promote_read_replica", "autoscaling.set_capacity", "route53.set_record"):
        got = sample(text, attempts, service=SERVICE, action=action, outcome="succeeded")
        assert got is not None and got >= 1, (action, got)


async def stop(daemon: DaemonProcess) -> None:
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_DEADLINE):
            rc = await daemon.proc.wait()
    except TimeoutError:
        pytest.fail(f"no exit within {STOP_DEADLINE}s of SIGTERM:\n" + daemon.tail())
    assert rc == 0, daemon.tail()
    assert daemon.events("daemon_stopped")


# -- the tests -----------------------------------------------------------------------------
async def test_the_engine_fails_over_by_itself_when_the_primary_fails(
    daemon: DaemonProcess,
    http: aiohttp.ClientSession,
    targets: dict[str, Target],
    moto: MotoServer,
    seeded: Seeded,
) -> None:
    await wait_ready_to_fail_over(http, daemon)
    before = await service(http, daemon)
    assert before["active_region"] == SOURCE and before["run"] is None

    targets[SOURCE].status = 503

    after = await wait_failed_over(http, daemon)
    run = after["run"]
    assert run["kind"] == "failover" and (run["source"], run["target"]) == (SOURCE, TARGET)
    assert {s["name"] for s in run["steps"]} == STEPS
    assert all(s["status"] == "succeeded" for s in run["steps"]), run["steps"]
    assert any(
        d["action"] == "failover" and d["initiated_by"] == "policy"
        for d in after["recent_decisions"]
    ), after["recent_decisions"]
    assert run["detected_at"] is not None and not run["rto_exceeded"]
    assert_failed_over(moto, seeded, run["run_id"])
    await check_metrics(http, daemon)
    await stop(daemon)


async def test_an_operator_fails_over_through_the_api(
    daemon: DaemonProcess, http: aiohttp.ClientSession, moto: MotoServer, seeded: Seeded
) -> None:
    await wait_ready_to_fail_over(http, daemon)
    url = f"{daemon.base_url}/v1/services/{SERVICE}/failover"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"reason": "e2e: planned move to the standby", "to": TARGET}

    # No token: refused before anything happens.
    async with http.post(url, json=body) as response:
        assert response.status == 401
        refused = await response.json()
    assert refused["error"] and "Bearer" in refused["message"], refused
    async with http.post(url, json=body, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401

    # Malformed bodies: a 400 that says what is wrong.
    as_json = {**auth, "Content-Type": "application/json"}
    async with http.post(url, data=b"{not json", headers=as_json) as response:
        assert response.status == 400
        bad = await response.json()
    assert bad["error"] == "malformed_json" and "JSON" in bad["message"], bad
    async with http.post(url, json={"to": TARGET}, headers=auth) as response:
        assert response.status == 400
        missing = await response.json()
    assert "reason" in missing["message"], missing
    async with http.post(url, json={**body, "colour": "blue"}, headers=auth) as response:
        assert response.status == 400
        unknown = await response.json()
    assert "colour" in unknown["message"], unknown

    # None of that moved anything.
    still = await service(http, daemon)
    assert still["active_region"] == SOURCE and still["run"] is None

    async with http.post(url, json=body, headers=auth) as response:
        accepted = await response.json()
        assert response.status in (200, 202), accepted
    assert accepted["accepted"] is True and accepted["run_id"], accepted

    after = await wait_failed_over(http, daemon)
    run_id = accepted["run_id"]
    assert after["run"]["run_id"] == run_id
    status, run = await get_json(http, f"{daemon.base_url}/v1/runs/{run_id}")
    assert status == 200 and run["status"] == "succeeded", run
    assert {s["name"] for s in run["steps"]} == STEPS
    assert any(
        d["action"] == "failover" and d["initiated_by"] == "operator"
        for d in after["recent_decisions"]
    ), after["recent_decisions"]
    assert_failed_over(moto, seeded, run_id)
    await check_metrics(http, daemon)
    async with http.get(f"{daemon.base_url}/metrics") as response:
        commands = await response.text()
    assert (
        sample(commands, "failoverd_api_commands_total", command="failover", outcome="accepted")
        == 1
    )
    await stop(daemon)


def daemon_env() -> dict[str, str]:
    """Only the variables the daemon needs: no real AWS profile, no systemd socket, no
    FAILOVERD_* override from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "FAILOVERD_")) and k not in ("NOTIFY_SOCKET",)
    }
    env.update(
        AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=SOURCE,
    )
    return env


@asynccontextmanager
async def running_daemon(
    config: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[DaemonProcess]:
    """`python -m orchestrator run --config <config>`, yielded once its API listens;
    killed on the way out if still running. ``extra_env`` is added to its environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--config",
        str(config),
        env={**daemon_env(), **(extra_env or {})},
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    handle = DaemonProcess(proc)

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            handle.stderr.append(line.decode(errors="replace"))

    reader = asyncio.create_task(read_stderr())
    try:

        async def listening() -> bool:
            return _listening_port(handle) is not None

        await until(listening, "the API to listen", START_DEADLINE, handle)
        handle.base_url = f"http://127.0.0.1:{_listening_port(handle)}"
        yield handle
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
