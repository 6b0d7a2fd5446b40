"""`failoverd sandbox fault throttle route53`: the daemon's DNS flip meets AWS throttling
(answered by the sandbox's fault proxy in front of moto), retries with backoff, and the
failover still succeeds. Everything listens on 127.0.0.1; the sandbox is a subprocess on
port 0 and is stopped with SIGINT at the end."""

from __future__ import annotations

import re
import subprocess
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
FAILOVER_DEADLINE = 90.0
THROTTLED = re.compile(
    r'^failoverd_aws_api_calls_total\{(?=[^}]*aws_service="route53")(?=[^}]*outcome="throttled")'
    r"[^}]*\} (\S+)$",
    re.MULTILINE,
)


def _fault(control: str, fault: str, arg: str) -> str:
    done = subprocess.run(
        [*COMMAND, "fault", fault, arg, "--control", control],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flip_dns(run: dict[str, Any]) -> dict[str, Any] | None:
    steps = [s for s in run["steps"] if s["name"] == "flip-dns"]
    return steps[0] if steps else None


def test_a_throttled_route53_is_retried_and_the_failover_succeeds() -> None:
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

        # Until `off`, not a count: other callers of Route 53 cannot use the throttled calls
        # up before the flip does.
        assert "throttled" in _fault(control, "throttle", "route53")
        _fault(control, "region-down", "us-east-1")

        def throttled_attempt() -> bool:
            run = get_json(service).get("run")
            if not run:
                return False
            step = _flip_dns(get_json(f"{api}/v1/runs/{run['run_id']}"))
            return step is not None and any(
                a["retryable"] and "Throttling" in a["error"] for a in step["attempts"]
            )

        wait_for(throttled_attempt, "a flip-dns attempt failed by throttling", FAILOVER_DEADLINE)
        assert "off" in _fault(control, "throttle", "off")

        def moved() -> dict[str, Any] | None:
            body = get_json(service)
            run = body.get("run") or {}
            assert run.get("status") != "failed", f"the failover failed: {run.get('error')}"
            if body["active_region"] == "us-west-2" and run.get("status") == "succeeded":
                return dict(run)
            return None

        run = wait_for(moved, "the failover to us-west-2 to succeed", FAILOVER_DEADLINE)
        step = _flip_dns(get_json(f"{api}/v1/runs/{run['run_id']}"))
        assert step is not None and step["status"] == "succeeded", step
        assert len(step["attempts"]) > 1, step
        assert "Throttling" in step["attempts"][0]["error"], step
        with urllib.request.urlopen(f"{api}/metrics", timeout=3) as response:
            throttled = sum(float(n) for n in THROTTLED.findall(response.read().decode()))
        assert throttled > 0
    finally:
        rc = stop(proc)
    assert rc == 0
