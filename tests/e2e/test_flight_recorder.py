"""A real incident becomes a test: `failoverd sandbox`, us-east-1 taken down, the daemon fails
webapp over; `failoverd scenario export --run` writes what its flight recorder kept as a
scenario; `failoverd test` replays it to the same decisions; the same file under a policy
with a longer detection rule, through `failoverd diff`, shows the later failover. Everything
listens on 127.0.0.1; the sandbox is a subprocess on port 0, stopped with SIGINT."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from orchestrator.policy.loader import load_policy_file
from tests.e2e.support import (  # noqa: F401 - the fixture applies to this module
    COMMAND,
    ROOT,
    START_DEADLINE,
    _mosquitto_when_in_ci,
    get_json,
    read_until,
    stop,
    wait_for,
)

FAILOVERD = [sys.executable, "-m", "orchestrator"]
MOVE_DEADLINE = 60.0
AFTER = 20.0


def failoverd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FAILOVERD, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_sandbox_outage_exported_replays_and_diffs_against_a_slower_policy(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [*COMMAND, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    exported = tmp_path / "incidents" / "use1.yaml"
    policies = tmp_path / "policies"
    try:
        workdir = Path(read_until(proc, r"sandbox: working directory +(\S+)", START_DEADLINE)[1])
        api = read_until(proc, r"sandbox: api +(http://127\.0\.0\.1:\d+)/v1/status", 30)[1]
        control = read_until(proc, r"sandbox: control +(http://127\.0\.0\.1:\d+)", 5)[1]
        service = f"{api}/v1/services/webapp"

        policy = load_policy_file(workdir / "policies" / "webapp.yaml")
        assert policy.replication is not None

        def steady() -> bool:
            # Healthy both, and the standby's lag known, fresh and within the RPO: then the
            # failover waits for detection only (until the sandbox's first fresh lag
            # datapoint, it waits for the lag - and so would any detection rule).
            body = get_json(service)
            verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
            lag = {x["region"]: x for x in body["lag"]}.get("us-west-2")
            return (
                body["active_region"] == "us-east-1"
                and set(verdicts.values()) == {"healthy"}
                and lag is not None
                and lag["within_rpo"] is True
                and lag["age"] + 20 < policy.replication.max_age
            )

        wait_for(steady, "webapp steady in us-east-1, its lag fresh", START_DEADLINE)
        fault = subprocess.run(
            [*COMMAND, "fault", "region-down", "us-east-1", "--control", control],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fault.returncode == 0, fault.stderr

        def moved() -> str | None:
            body = get_json(service)
            run = body.get("run")
            done = run is not None and run["status"] == "succeeded"
            if body["active_region"] == "us-west-2" and done and body["phase"] == "steady":
                return str(run["run_id"])
            return None

        run_id = wait_for(moved, "the failover to us-west-2 to finish", MOVE_DEADLINE)
        # 20 s more of the daemon's own decisions in us-west-2: room for a slower policy's
        # later failover in the window exported.
        later = time.time() + AFTER

        def decided_later() -> bool:
            decision = get_json(service).get("decision")
            return decision is not None and decision["at"] >= later

        wait_for(decided_later, f"{AFTER:g}s of decisions after the move", AFTER + 15)
        # The policy the daemon ran, kept: the sandbox's folder goes when it stops.
        shutil.copytree(workdir / "policies", policies)
        exported.parent.mkdir()
        export = failoverd(
            "scenario",
            "export",
            "--config",
            str(workdir / "daemon.yaml"),
            "--service",
            "webapp",
            "--run",
            run_id,
            "--policy",
            str(policies / "webapp.yaml"),
            "-o",
            str(exported),
        )
        assert export.returncode == 0, export.stderr
    finally:
        assert stop(proc) == 0

    scenario = yaml.safe_load(exported.read_text())
    assert scenario["policy"] == "../policies/webapp.yaml"
    assert scenario["service"] == "webapp"
    failover = next(x["failover"] for x in scenario["expect"] if "failover" in x)
    assert failover["to"] == "us-west-2"
    assert {"failovers": {"count": 1}} in scenario["expect"]
    downs = [e for e in scenario["timeline"] if e.get("probes", {}).get("state") == "down"]
    assert downs and all(e["probes"]["region"] == "us-east-1" for e in downs)

    replay = failoverd("test", "-v", str(exported))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.splitlines()[-1] == "1 passed, 0 failed"

    # The same incident under a longer detection rule: ten failures in a row, and no
    # failure-ratio rule that could trip first.
    slower = tmp_path / "slower"
    slower.mkdir()
    text = (policies / "webapp.yaml").read_text()
    assert "consecutive_failures: 3" in text and "failure_ratio: 0.5" in text
    text = text.replace("consecutive_failures: 3", "consecutive_failures: 10")
    (slower / "webapp.yaml").write_text(text.replace("failure_ratio: 0.5", "failure_ratio: null"))
    diff = failoverd(
        "diff", str(policies / "webapp.yaml"), str(slower / "webapp.yaml"), str(exported)
    )
    assert diff.returncode == 1, diff.stdout + diff.stderr
    out = diff.stdout
    assert f"CHANGED {scenario['scenario']}" in out
    runs = re.findall(r"(old|new): (\S+) failover us-east-1 -> us-west-2", out)
    times = dict(runs)
    assert set(times) == {"old", "new"}, out
    assert _seconds(times["new"]) >= _seconds(times["old"]) + 5.0, out
    assert "expectations: pass -> FAIL" in out
    assert out.splitlines()[-1] == "1 scenarios, 1 changed, 1 now failing"


def _seconds(text: str) -> float:
    from orchestrator.policy.durations import parse_duration

    return parse_duration(text)
