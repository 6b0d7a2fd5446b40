"""`failoverd sandbox` end to end, as a subprocess: the scripted outage demo, and a live
sandbox taking a fault through `sandbox fault`, failing over, and stopping cleanly on
SIGINT with none of its processes left behind. Everything listens on 127.0.0.1."""

from __future__ import annotations

import itertools
import re
import subprocess

from tests.e2e.support import (  # noqa: F401 - the fixture applies to this module
    COMMAND,
    ROOT,
    _mosquitto_when_in_ci,
    alive,
    get_json,
    read_until,
    start_sandbox,
    stop,
    wait_for,
)

DEMO_DEADLINE = 60.0  # the demo bounds itself at 45 s (--deadline) plus start and stop
START_DEADLINE = 60.0
FAILOVER_DEADLINE = 30.0
INTERVAL, FAILURES = 1.0, 3  # the sandbox policy's detection
LAST_LINE = re.compile(
    r"demo: failover to us-west-2 complete, detect_s=(?P<detect>[\d.]+)"
    r" failover_s=(?P<failover>[\d.]+) rto_budget_s=(?P<rto>\d+)"
)


def test_the_demo_fails_over_to_the_standby_and_says_how_fast() -> None:
    done = subprocess.run(
        [*COMMAND, "--demo", "--port", "0", "--deadline", "45"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_DEADLINE,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert 0 <= float(match["detect"]) <= INTERVAL * FAILURES + 2
    assert 0 < float(match["failover"]) < 10
    assert int(match["rto"]) == 900  # the example policy's 15m
    # Traffic moved as clients see it: the DNS answer for the service's name.
    moved = "traffic moved: DNS api.webapp.example.com -> api.us-west-2.webapp.example.com."
    assert any(moved in line for line in lines), lines
    for step in ("promote-db", "scale-up", "flip-dns"):
        assert any(f"step {step}" in line and "succeeded" in line for line in lines), step
    # The timeline as the README shows it: in time order (its indented lines), then the
    # numbers and the result line; the last word on stderr is the sandbox stopping.
    after = lines[lines.index("demo: timeline (seconds after the fault)") + 1 :]
    timeline = list(itertools.takewhile(lambda line: line.startswith("  "), after))
    assert after[len(timeline)].startswith("demo: numbers detect_s="), after
    offsets = [float(line.split()[0].rstrip("s")) for line in timeline]
    assert offsets == sorted(offsets) and offsets[0] == 0.0, timeline
    assert timeline[0].endswith("fault: region-down us-east-1"), timeline
    assert done.stderr.strip().splitlines()[-1] == "sandbox: stopped", done.stderr[-500:]


def test_a_fault_from_the_command_line_moves_the_service_and_ctrl_c_stops_everything() -> None:
    proc, api, control = start_sandbox()
    try:
        pids = {
            name: int(pid)
            for name, pid in re.findall(
                r"(\S+)=(\d+)", read_until(proc, r"sandbox: pids (.*)", 5)[1]
            )
        }
        assert {"daemon", "mosquitto", "agent-eu", "agent-ap"} <= set(pids), pids
        service = f"{api}/v1/services/webapp"

        def steady() -> bool:
            body = get_json(service)
            verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
            lag = {x["region"]: x["within_rpo"] for x in body["lag"]}
            return set(verdicts.values()) == {"healthy"} and lag.get("us-west-2") is True

        wait_for(steady, "both regions healthy and the lag known", START_DEADLINE)

        fault = subprocess.run(
            [*COMMAND, "fault", "region-down", "us-east-1", "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fault.returncode == 0, fault.stderr
        assert "us-east-1" in fault.stdout

        refused = subprocess.run(
            [*COMMAND, "fault", "region-down", "eu-north-9", "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode == 2 and "eu-north-9" in refused.stderr, refused.stderr

        def moved() -> bool:
            body = get_json(service)
            run = body.get("run") or {}
            return body["active_region"] == "us-west-2" and run.get("status") == "succeeded"

        wait_for(moved, "webapp active in us-west-2 after a succeeded run", FAILOVER_DEADLINE)
    finally:
        rc = stop(proc)
    assert rc == 0
    left = [name for name, pid in pids.items() if alive(pid)]
    assert not left, f"still running after the sandbox exited: {left}"
