"""An on-call engineer aborts a run whose ``arc.region_switch`` step follows an execution in
the Region switch emulator: through the API (as the CLI sends it), against a real Controller
over SQLite, the real action and aiobotocore clients, on virtual time shared with the
emulator. The execution is cancelled (CancelPlanExecution, saying who and why), the run
fails with the abort's error, the audit names who aborted it and why; and the engine does
not start the move again on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orchestrator.actions.registry import get_action
from orchestrator.api import make_app
from orchestrator.api.app import CLI_AGENT
from orchestrator.daemon.controller import Controller
from orchestrator.policy.loader import load_policy_set
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock
from tests.fixtures.region_switch_emulator import WallClock
from tests.integration.actions.step_support import TARGET
from tests.integration.actions.test_region_switch import World, orders_policy

TOKEN = "oncall-token-0123456789abcdef"
CLI = {"Authorization": f"Bearer {TOKEN}", "User-Agent": f"{CLI_AGENT}test"}
ABORTED = "aborted by oncall (as alice): wrong region, the database is still primary there"


@pytest.fixture
def world(region_switch: tuple[RegionSwitchEmulator, WallClock]) -> World:
    return World(region_switch[0], VirtualClock())


@dataclass
class Daemon:
    controller: Controller
    store: SqliteStore
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """What the daemon does on SIGTERM: drain, then cancel the runs still going."""
        await self.controller.drain(0.0)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def daemon(tmp_path: Path, world: World) -> AsyncIterator[Daemon]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "orders.yaml").write_text(orders_policy(world.arn))
    store = await SqliteStore.open(tmp_path / "state.db")
    c = Controller(
        load_policy_set([policies]),
        store,
        world.aws,
        node_id="node-a",
        clock=world.clock,
        lease_ttl=3600.0,
        debounce=0.0,
        actions=get_action,
    )
    await c.load()
    d = Daemon(c, store, asyncio.create_task(c.run()))
    try:
        yield d
    finally:
        await d.stop()
        await c.close()
        await store.close()


async def until(clock: VirtualClock, check: Callable[[], bool], what: str) -> None:
    """Move virtual time on a second at a time until ``check`` holds (bounded in real time)."""
    async with asyncio.timeout(20):
        while not check():
            clock.advance(1.0)
            await asyncio.sleep(0.01)
    assert check(), what


def plan_steps(world: World) -> dict[str, str]:
    """The status of each step of the plan's execution (none before it starts)."""
    executions = world.emulator.executions(world.arn)
    return dict(executions[0]["steps"]) if executions else {}


async def fail_over(api: TestClient[Any, Any], world: World, controller: Controller) -> str:
    """A forced failover by alice; returns its run id once the step follows the execution
    at the plan's approval step (its first step done)."""
    await until(world.clock, controller.is_leader, "the lease")
    resp = await api.post(
        "/v1/services/orders/failover",
        json={"reason": "us-east-1 is failing", "to": TARGET, "force": True, "by": "alice"},
        headers=CLI,
    )
    assert resp.status == 202, await resp.text()
    await until(
        world.clock,
        lambda: plan_steps(world).get("approve-db") == "pendingApproval",
        "the execution at its approval step",
    )
    return str((await resp.json())["run_id"])


async def test_an_abort_cancels_the_plan_execution_and_fails_the_run(
    world: World, daemon: Daemon
) -> None:
    controller = daemon.controller
    app = make_app(controller, tokens={"oncall": TOKEN}, metrics_registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        run_id = await fail_over(api, world, controller)

        resp = await api.post(
            "/v1/services/orders/abort",
            json={"reason": "wrong region, the database is still primary there", "by": "alice"},
            headers=CLI,
        )
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
        assert answer["run_id"] == run_id and answer["message"].startswith(f"run {run_id} aborted")

        # Region switch: the execution is cancelled, saying who and why; never a second one.
        [execution] = world.emulator.executions(world.arn)
        assert execution["state"] == "canceled"
        requests = world.emulator.requests()
        [cancel] = [r for r in requests if r["operation"] == "CancelPlanExecution"]
        assert cancel["region"] == TARGET and ABORTED in cancel["body"]["comment"]
        assert [r["operation"] for r in requests].count("StartPlanExecution") == 1

        # The run failed with the abort's error; the service stays failed where it was.
        service = await (await api.get("/v1/services/orders")).json()
        assert service["phase"] == "failed" and service["active_region"] == "us-east-1"
        run = service["run"]
        assert (run["run_id"], run["status"], run["error"]) == (run_id, "failed", ABORTED)
        [step] = run["steps"]
        assert step["status"] == "failed"
        assert step["error"] == f"interrupted in flight, its effect may have landed; {ABORTED}"

        # The audit: who aborted it, from where, why, and what came of it.
        assert await controller.audit.flush(5.0)
        audit = await (await api.get("/v1/audit", params={"service": "orders"})).json()
        commands = [e for e in audit["entries"] if e["entry"] == "operator_command"]
        abort: dict[str, Any] = commands[-1]
        detail = abort["detail"]
        assert (detail["command"], detail["by"], detail["user"], detail["source"]) == (
            "abort",
            "oncall",
            "alice",
            "cli",
        )
        assert detail["reason"] == "wrong region, the database is still primary there"
        assert abort["run_id"] == run_id and abort["outcome"].startswith("accepted: run")

        # Nothing automatic starts the move again: a second abort finds no run.
        world.clock.advance(60.0)
        await asyncio.sleep(0.05)
        resp = await api.post("/v1/services/orders/abort", json={"reason": "again"}, headers=CLI)
        assert resp.status == 409
        assert (await resp.json())["message"] == "no run of orders is running"
        assert len(world.emulator.executions(world.arn)) == 1


async def test_a_shutdown_leaves_the_execution_running_for_the_resumed_step(
    world: World, daemon: Daemon
) -> None:
    app = make_app(
        daemon.controller, tokens={"oncall": TOKEN}, metrics_registry=CollectorRegistry()
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        run_id = await fail_over(api, world, daemon.controller)
    await daemon.stop()  # SIGTERM mid-run: not an abort
    assert [e["state"] for e in world.emulator.executions(world.arn)] == ["pendingManualApproval"]
    assert all(r["operation"] != "CancelPlanExecution" for r in world.emulator.requests())
    assert await daemon.store.unfinished_runs() == [run_id]  # for the next leader to resume
