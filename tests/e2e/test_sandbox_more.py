"""`failoverd sandbox` end to end, more views of the running daemon: the status page as a
real headless Chromium renders it from the live sandbox. Everything listens on 127.0.0.1;
the sandbox is a subprocess on port 0 and is stopped with SIGINT at the end."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path
from typing import Any

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
from tests.integration.api.test_status_page import card, run_chromium, visible_text

START_DEADLINE = 60.0
# Virtual time runs the page's first fetch and render without the test waiting on timers.
FIRST_REFRESH_BUDGET_MS = 2000
PHASE_WORDS = {"steady": "Steady", "suspect": "Suspect"}


def test_the_live_sandbox_status_page_shows_webapp_its_phase_and_active_region(
    tmp_path: Path,
) -> None:
    chromium = require_binary("chromium", "/usr/bin/chromium")
    proc, api, _control = start_sandbox()
    try:
        service = f"{api}/v1/services/webapp"

        def steady() -> bool:
            body = get_json(service)
            verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
            return (
                body["active_region"] == "us-east-1"
                and body["phase"] == "steady"
                and set(verdicts.values()) == {"healthy"}
            )

        wait_for(steady, "webapp steady in us-east-1, both regions healthy", START_DEADLINE)
        page = f"{api}/"
        budget = f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}"
        dom = asyncio.run(run_chromium(chromium, tmp_path, page, budget, "--dump-dom"))
        png = tmp_path / "sandbox-status.png"
        asyncio.run(
            run_chromium(
                chromium, tmp_path, page, budget, f"--screenshot={png}", "--window-size=1280,900"
            )
        )
        print(f"sandbox status page screenshot: {png}")
    finally:
        rc = stop(proc)
    assert rc == 0

    # Other services may share the sandbox: only the webapp card is this test's concern.
    assert "webapp" in re.findall(r'<section [^>]*data-service="([^"]+)"', dom), dom[-2000:]
    assert re.search(r'<section [^>]*data-service="webapp"[^>]*data-phase="steady"', dom)
    webapp = card(dom, "webapp")
    assert "Steady" in webapp
    assert "active:\nus-east-1" in webapp
    assert re.search(r"us-east-1\n\(active\)\nHealthy\n", webapp), webapp
    assert re.search(r"us-west-2\nHealthy\n", webapp), webapp
    # The broker is up (the module's fixture), so the agents' views are on the page too.
    for vantage in ("local", "agent-eu", "agent-ap"):
        assert f"{vantage}: passing" in webapp, webapp
    text = visible_text(dom)
    assert "Cannot reach" not in text and "Stale since" not in text, text

    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    # A blank or unstyled page compresses to a few kB; a rendered card is far larger.
    assert len(data) > 20_000, f"suspiciously small screenshot ({len(data)} bytes): {png}"


WINDOW = 20.0  # seconds of the daemon's own decisions watched after the fault
WINDOW_DEADLINE = WINDOW + 15.0  # wall-clock bound on seeing the engine reach the window's end
MOVES = ("failover", "switchover", "failback")


def _codes(reasons: list[dict[str, str]]) -> set[str]:
    return {r["code"] for r in reasons}


def test_only_the_daemons_own_vantage_failing_is_suspect_and_never_a_failover() -> None:
    proc, api, control = start_sandbox()
    try:
        service = f"{api}/v1/services/webapp"

        def steady() -> bool:
            body = get_json(service)
            verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
            lag = {x["region"]: x["within_rpo"] for x in body["lag"]}
            return (
                body["active_region"] == "us-east-1"
                and set(verdicts.values()) == {"healthy"}
                and lag.get("us-west-2") is True
            )

        wait_for(steady, "webapp steady in us-east-1, both regions healthy", START_DEADLINE)
        fault = subprocess.run(
            [*COMMAND, "fault", "local-down", "us-east-1", "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fault.returncode == 0, fault.stderr
        fault_at = time.time()

        suspect: list[dict[str, Any]] = []  # the service views where local alone failed
        moves: list[dict[str, Any]] = []
        actives: set[str] = set()

        def watched_the_window() -> bool:
            body = get_json(service)
            actives.add(body["active_region"])
            run = body.get("run")
            if run and run["kind"] in MOVES:
                moves.append(run)
            for d in body["recent_decisions"]:
                if d["action"] in MOVES and d["at"] >= fault_at:
                    moves.append(d)
            east = next(v for v in body["verdicts"] if v["region"] == "us-east-1")
            if east["failing"] == ["local"] and body["phase"] == "suspect":
                suspect.append(body)
            # The witness: the engine decides every tick, so once it has decided past the
            # window's end every decision of the window has been seen.
            decision = body.get("decision")
            return decision is not None and decision["at"] >= fault_at + WINDOW

        wait_for(watched_the_window, f"{WINDOW}s of decisions with local down", WINDOW_DEADLINE)
    finally:
        rc = stop(proc)
    assert rc == 0

    assert not moves, f"a move with only the daemon's own vantage failing: {moves}"
    assert actives == {"us-east-1"}, actives
    assert suspect, "the daemon never showed us-east-1 failing from local alone as suspect"
    last = suspect[-1]
    east = next(v for v in last["verdicts"] if v["region"] == "us-east-1")
    assert "no_quorum" in _codes(last["reasons"]) | _codes(east["reasons"]), last["reasons"]
    assert {"agent-eu", "agent-ap"} <= set(east["passing"]), east
    assert east["quorum"] == 2
