"""The orders example end to end with a real daemon: a region goes down, failoverd starts the
Region switch plan in the emulator, the daemon is SIGKILLed while the plan waits at its
approval step, a new daemon on the same state follows the same execution (no second
StartPlanExecution, checked in the emulator), `failoverd approve` passes the approval on with
who and why, the execution completes and the run succeeds.

The world: moto (SNS topics, the Aurora lag metric), the Region switch emulator on the real
clock (the plan of policies/orders, steps of a second or two), loopback probe targets for
us-east-2 and us-west-2, the daemon on port 0 with `aws.service_endpoints` sending
arc-region-switch calls to the emulator.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.sandbox import region_switch_world as orders
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator
from tests.fixtures.moto_server import MotoServer
from tests.fixtures.secrets import write_secret
from tests.integration.test_daemon_e2e import (
    HTTP_TIMEOUT,
    ROOT,
    TOKEN,
    DaemonProcess,
    Target,
    daemon_env,
    get_json,
    running_daemon,
    serve_targets,
    stop,
    until,
)

SOURCE, TARGET = orders.PRIMARY, orders.STANDBY
DEADLINE = 40.0
APPROVE_DEADLINE = 30.0


class _Moto:
    """What the orders seed needs of a world: a boto3 client per service and region."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto

    def client(self, service: str, region: str) -> Any:
        return self.moto.boto3_client(service, region)


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, Target]]:
    async with serve_targets((SOURCE, TARGET)) as out:
        yield out


@pytest.fixture
def emulator(region_switch_server: RegionSwitchEmulator) -> Iterator[RegionSwitchEmulator]:
    region_switch_server.reset()
    region_switch_server.use_clock(SYSTEM_CLOCK)
    orders.seed_plan(region_switch_server)
    yield region_switch_server
    region_switch_server.reset()


def policy(targets: dict[str, Target]) -> str:
    """policies/orders with probes on the loopback targets, one vantage point, fast
    detection and reads; the runbook as shipped but for a 1 s poll of the execution."""
    doc = yaml.safe_load((ROOT / "policies" / "orders" / "orders.yaml").read_text())
    doc["vantage_points"] = ["local"]
    doc["detection"] = {
        "interval": "1s",
        "timeout": "500ms",
        "consecutive_failures": 2,
        "quorum": 1,
        "staleness": "3s",
    }
    doc["signals"] = [
        {
            "name": "api",
            "type": "http",
            "targets": {region: t.url for region, t in targets.items()},
            "body_contains": '"status":"ok"',
        }
    ]
    doc["replication"]["interval"] = "2s"
    doc["replication"]["max_age"] = "5m"
    for step in doc["runbooks"]["failover"]:
        if step["action"] == "arc.region_switch":
            step["params"]["poll_interval"] = "1s"
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def config(
    tmp_path: Path, moto: MotoServer, emulator: RegionSwitchEmulator, targets: dict[str, Target]
) -> Path:
    orders.seed_moto(_Moto(moto))  # type: ignore[arg-type]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "orders.yaml").write_text(policy(targets))
    token = write_secret(tmp_path / "token", TOKEN + "\n")
    path = tmp_path / "failoverd.yaml"
    settings = {
        "node_id": "e2e-orders",
        "policies": [str(policies)],
        "state": {"path": str(tmp_path / "state.db")},
        "engine": {"tick": "200ms"},
        "leader": {"ttl": "3s"},
        "aws": {
            "endpoint_url": moto.endpoint_url,
            "service_endpoints": {"arc-region-switch": emulator.endpoint_url},
            "read_timeout": "5s",
        },
        "http": {"bind": "127.0.0.1", "port": 0, "token_file": str(token)},
        "log": {"format": "json"},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        yield session


async def orders_view(http: aiohttp.ClientSession, daemon: DaemonProcess) -> dict[str, Any]:
    status, body = await get_json(http, f"{daemon.base_url}/v1/services/orders")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def plan_step(view: dict[str, Any]) -> dict[str, Any]:
    run = view.get("run") or {}
    return next((s for s in run.get("steps", []) if s["name"] == "region-switch"), {})


def approve(daemon: DaemonProcess, token_file: Path, reason: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "approve", "orders", "--reason", reason],
        cwd=ROOT,
        env={
            **daemon_env(),
            "FAILOVERD_API": daemon.base_url,
            "FAILOVERD_TOKEN_FILE": str(token_file),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


async def test_a_killed_daemon_follows_the_same_execution_and_approve_finishes_it(
    config: Path,
    http: aiohttp.ClientSession,
    targets: dict[str, Target],
    emulator: RegionSwitchEmulator,
) -> None:
    arn = orders.plan()["arn"]

    async with running_daemon(config) as first:

        async def ready() -> bool:
            view = await orders_view(http, first)
            verdicts = {v["region"]: v["verdict"] for v in view["verdicts"]}
            lag = {x["region"]: x["within_rpo"] for x in view["lag"]}
            return set(verdicts.values()) == {"healthy"} and lag.get(TARGET) is True

        await until(ready, "orders healthy in both regions with its lag known", DEADLINE, first)
        targets[SOURCE].status = 503
        emulator.set_region_down(SOURCE)  # its Region switch endpoint goes with it

        async def waiting() -> bool:
            step = plan_step(await orders_view(http, first))
            return step.get("awaiting_approval") == [orders.APPROVAL_STEP]

        await until(waiting, "the plan waiting at its approval step", DEADLINE, first)
        first.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.proc.wait(), 10) == -signal.SIGKILL

    [execution] = emulator.executions(arn)
    assert execution["state"] == "pendingManualApproval"
    assert execution["region"] == TARGET and execution["mode"] == "ungraceful"
    assert emulator.calls[("StartPlanExecution", TARGET)] == 1

    async with running_daemon(config) as second:

        async def resumed() -> bool:
            view = await orders_view(http, second)
            step = plan_step(view)
            return view["phase"] == "awaiting_approval" and len(step.get("attempts", [])) == 2

        await until(resumed, "the resumed step waiting for the approval", DEADLINE, second)
        out = approve(second, config.parent / "token", "replica caught up")
        assert f"region-switch/{orders.APPROVAL_STEP}" in out, out

        async def finished() -> bool:
            view = await orders_view(http, second)
            run = view.get("run") or {}
            return run.get("status") == "succeeded" and view["active_region"] == TARGET

        await until(finished, "the run to succeed with us-west-2 active", APPROVE_DEADLINE, second)
        view = await orders_view(http, second)
        step = plan_step(view)
        assert [(x["name"], x["status"]) for x in step["substeps"]] == [
            (name, "succeeded") for name in orders.PLAN_STEPS
        ], step
        assert all(x["duration"] is not None for x in step["substeps"])
        assert [e["run_id"] for e in second.events("run_resumed")] == [view["run"]["run_id"]]

        # One execution, started once, followed by both daemons, completed.
        assert [e["state"] for e in emulator.executions(arn)] == ["completed"]
        starts = [r for r in emulator.requests() if r["operation"] == "StartPlanExecution"]
        assert len(starts) == 1 and starts[0]["region"] == TARGET
        approvals = [r for r in emulator.requests() if r["operation"] == "ApprovePlanExecutionStep"]
        assert len(approvals) == 1
        assert "replica caught up" in approvals[0]["body"]["comment"]
        # The execution lived in the region recovered into, and was only ever used there.
        followed = ("StartPlanExecution", "GetPlanExecution", "ListPlanExecutionEvents")
        assert {r for (op, r) in emulator.calls if op in followed} == {TARGET}
        await stop(second)
