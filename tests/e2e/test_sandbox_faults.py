"""`failoverd sandbox` under a flapping primary: the daemon moves the service at most once,
never back and forth. Everything listens on 127.0.0.1; the sandbox is a subprocess on port 0
and is stopped with SIGINT at the end."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
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

START_DEADLINE = 60.0
WINDOW = 25.0  # seconds of the daemon's own decisions watched after the fault
WINDOW_DEADLINE = WINDOW + 15.0  # wall-clock bound on seeing the engine reach the window's end
MOVES = ("failover", "switchover", "failback")
# The webapp's runs only: other examples share us-east-1 (catalog, storefront) and may move
# under the same flap.
RUNS_FINISHED = re.compile(
    r'^failoverd_runs_finished_total\{[^}]*service="webapp"[^}]*\} (\S+)$', re.MULTILINE
)


def test_a_flapping_primary_moves_the_service_at_most_once() -> None:
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
            [*COMMAND, "fault", "flap", "us-east-1", "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fault.returncode == 0, fault.stderr
        fault_at = time.time()

        run_ids: set[str] = set()
        actives: list[str] = ["us-east-1"]  # each change of the active region, in order
        moves: list[dict[str, Any]] = []  # the daemon's own record of its move decisions

        def watched_the_window() -> bool:
            body = get_json(service)
            run = body.get("run")
            if run and run["kind"] in MOVES:
                run_ids.add(run["run_id"])
            if body["active_region"] != actives[-1]:
                actives.append(body["active_region"])
            for d in body["recent_decisions"]:
                if d["action"] in MOVES and d["at"] >= fault_at and d not in moves:
                    moves.append(d)
            # The witness: the engine has decided (it decides every tick) up to the window's
            # end, so every decision of the window has been seen.
            decision = body.get("decision")
            return decision is not None and decision["at"] >= fault_at + WINDOW

        wait_for(watched_the_window, f"{WINDOW}s of decisions under the flap", WINDOW_DEADLINE)

        assert len(run_ids) <= 1, f"more than one move under a flap: {sorted(run_ids)}"
        assert len(actives) <= 2, f"the active region changed more than once: {actives}"
        targets = {d["target"] for d in moves}
        assert targets <= {"us-west-2"}, f"moves towards {targets}: {moves}"
        with urllib.request.urlopen(f"{api}/metrics", timeout=3) as response:
            finished = sum(float(n) for n in RUNS_FINISHED.findall(response.read().decode()))
        assert finished <= 1, f"{finished} runs finished under a flap"
    finally:
        rc = stop(proc)
    assert rc == 0
