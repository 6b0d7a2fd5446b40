"""`failoverd sandbox` with the orders example: `fault region-down us-east-2` → failoverd
decides → the Region switch plan executes in the emulator → the status page (headless
Chromium on the live sandbox) shows the plan's steps and the approval it waits for →
`failoverd approve orders` → the execution completes → the run succeeds with us-west-2
active. Everything listens on 127.0.0.1; the sandbox is stopped with SIGINT at the end."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.sandbox import region_switch_world as orders
from orchestrator.sandbox.runner import pointer_file
from tests.e2e.support import (  # noqa: F401 - the fixture applies to this module
    COMMAND,
    ROOT,
    _mosquitto_when_in_ci,
    get_json,
    start_sandbox,
    stop,
    wait_for,
)
from tests.fixtures.binaries import require_binary
from tests.integration.api.test_status_page import card, run_chromium

STEADY_DEADLINE = 60.0
MOVE_DEADLINE = 60.0
FIRST_REFRESH_BUDGET_MS = 2000


def region_switch_step(view: dict[str, Any]) -> dict[str, Any]:
    run = view.get("run") or {}
    return next((s for s in run.get("steps", []) if s["action"] == "arc.region_switch"), {})


def test_region_down_runs_the_plan_and_failoverd_approve_finishes_it(tmp_path: Path) -> None:
    chromium = require_binary("chromium", "/usr/bin/chromium")
    proc, api, control = start_sandbox()
    try:
        state = json.loads(pointer_file().read_text())
        service = f"{api}/v1/services/orders"

        def steady() -> bool:
            view = get_json(service)
            verdicts = {v["region"]: v["verdict"] for v in view["verdicts"]}
            lag = {x["region"]: x["within_rpo"] for x in view["lag"]}
            return (
                view["active_region"] == orders.PRIMARY
                and set(verdicts.values()) == {"healthy"}
                and lag.get(orders.STANDBY) is True
            )

        wait_for(steady, "orders steady in us-east-2", STEADY_DEADLINE)
        fault = subprocess.run(
            [*COMMAND, "fault", "region-down", orders.PRIMARY, "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fault.returncode == 0, fault.stderr

        def waiting() -> dict[str, Any] | None:
            view = get_json(service)
            step = region_switch_step(view)
            return view if step.get("awaiting_approval") == [orders.APPROVAL_STEP] else None

        view = wait_for(waiting, "the plan waiting at its approval step", MOVE_DEADLINE)
        assert view["phase"] == "awaiting_approval", view["phase"]
        page = f"{api}/"
        budget = f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}"
        dom = asyncio.run(run_chromium(chromium, tmp_path, page, budget, "--dump-dom"))

        approve = subprocess.run(
            [*COMMAND[:-1], "approve", "orders", "--reason", "sandbox: replica caught up"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env={
                "PATH": "/usr/bin:/bin",
                "FAILOVERD_API": api,
                "FAILOVERD_TOKEN_FILE": state["token_file"],
            },
        )
        assert approve.returncode == 0, (approve.stdout, approve.stderr)

        def moved() -> dict[str, Any] | None:
            view = get_json(service)
            run = view.get("run") or {}
            done = run.get("status") == "succeeded" and view["active_region"] == orders.STANDBY
            return view if done else None

        after = wait_for(moved, "the run to succeed with us-west-2 active", MOVE_DEADLINE)
        emulator = get_json(f"{state['region_switch']}/_emulator/state")
    finally:
        rc = stop(proc)
    assert rc == 0

    # The status page, while the plan waited: the plan's steps under the step, the approval.
    orders_card = card(dom, "orders")
    assert "arc.region_switch" in orders_card, orders_card
    assert "↳ scale-standby\nEC2AutoScaling\nSUCCEEDED" in orders_card, orders_card
    assert "↳ approve-promotion\nManualApproval\nWAITING APPROVAL" in orders_card, orders_card
    assert "failoverd approve orders" in orders_card, orders_card

    step = region_switch_step(after)
    assert [(x["name"], x["status"]) for x in step["substeps"]] == [
        (name, "succeeded") for name in orders.PLAN_STEPS
    ]
    [execution] = emulator["executions"]
    assert (execution["state"], execution["region"], execution["mode"]) == (
        "completed",
        orders.STANDBY,
        "ungraceful",
    )
    assert emulator["calls"][f"StartPlanExecution {orders.STANDBY}"] == 1
    assert emulator["calls"][f"ApprovePlanExecutionStep {orders.STANDBY}"] == 1
