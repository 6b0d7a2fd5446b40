"""Traffic moves while us-east-1's control planes are down (issue 14), end to end: the
sandbox as a subprocess, faults from the command line, and the move proven by DNS queries
over UDP on loopback, as a client asks. The storefront fails over by ARC routing controls
with `control-plane-down us-east-1` and 4 of the 5 cluster endpoints down; the webapp, whose
flip edits a Route 53 record, cannot. Everything listens on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from orchestrator.sandbox.runner import pointer_file
from tests.e2e.support import (  # noqa: F401 - the fixture applies to this module
    COMMAND,
    ROOT,
    _mosquitto_when_in_ci,
    get_json,
    read_until,
    start_sandbox,
    stop,
    wait_for,
)

STEADY_DEADLINE = 60.0
FAILOVER_DEADLINE = 40.0
DEMO_DEADLINE = 90.0
STOREFRONT, WEBAPP = "www.storefront.example.com", "api.webapp.example.com"
LAST_LINE = re.compile(
    r"demo: failover to us-west-2 complete, detect_s=(?P<detect>[\d.]+)"
    r" failover_s=(?P<failover>[\d.]+) rto_budget_s=600 path=data-plane"
)


def cname(dns_address: str, name: str) -> str | None:
    host, port = dns_address.split(":")
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=2)
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            return str(rrset[0].target.to_text())
    return None


def fault(control: str, name: str, arg: str) -> str:
    done = subprocess.run(
        [*COMMAND, "fault", name, arg, "--control", control],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_with_us_east_1s_control_planes_and_four_arc_endpoints_down_dns_moves() -> None:
    proc, api, control = start_sandbox()
    try:
        dns_address = read_until(proc, r"sandbox: dns +(127\.0\.0\.1:\d+)", 5)[1]
        state: dict[str, Any] = json.loads(pointer_file().read_text())
        assert state["dns"] == dns_address and len(state["arc"]) == 5

        def steady() -> bool:
            body = get_json(f"{api}/v1/services/storefront")
            verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
            lag = {x["region"]: x["within_rpo"] for x in body["lag"]}
            return set(verdicts.values()) == {"healthy"} and lag.get("us-west-2") is True

        wait_for(steady, "storefront steady, lag known", STEADY_DEADLINE)
        assert cname(dns_address, STOREFRONT) == "www.us-east-1.storefront.example.com."
        assert cname(dns_address, WEBAPP) == "api.us-east-1.webapp.example.com."

        said = fault(control, "control-plane-down", "us-east-1")
        assert "Route 53's API and IAM included" in said and "blackholed" in said
        said = fault(control, "arc-endpoint-down", "eu-west-1,ap-northeast-1,ap-southeast-2")
        assert "1 of 5 endpoints answer" in said
        fault(control, "region-down", "us-east-1")

        def moved() -> bool:
            return cname(dns_address, STOREFRONT) == "www.us-west-2.storefront.example.com."

        wait_for(moved, "DNS answering the storefront's standby", FAILOVER_DEADLINE)

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = get_json(f"{api}/v1/services/storefront")
            return body if (body.get("run") or {}).get("status") == "succeeded" else None

        body = wait_for(done, "the storefront's run to succeed", FAILOVER_DEADLINE)
        run = body["run"]
        assert body["active_region"] == "us-west-2"
        flip = [s for s in run.get("steps", []) if s["name"] == "flip-traffic"]
        assert flip and flip[0]["status"] == "succeeded", run

        # The webapp's runbook edits its Route 53 record: Route 53's API does not answer.
        # Its detection may lag the storefront's: wait until its run reaches the edit.
        def webapp_at_flip() -> dict[str, Any] | None:
            body: dict[str, Any] = get_json(f"{api}/v1/services/webapp")
            steps = {s["name"]: s["status"] for s in (body.get("run") or {}).get("steps", [])}
            return body if steps.get("flip-dns") in ("running", "failed") else None

        webapp = wait_for(webapp_at_flip, "the webapp's run to reach flip-dns", FAILOVER_DEADLINE)
        assert webapp["active_region"] == "us-east-1", webapp["run"]
        assert cname(dns_address, WEBAPP) == "api.us-east-1.webapp.example.com."

        # `off` undoes both faults: Route 53's API answers again and the held edit lands.
        fault(control, "arc-endpoint-down", "off")
        fault(control, "control-plane-down", "off")
        state = get_json(f"{control}/state")
        assert state["control_plane_down"] is None
        assert set(state["arc_endpoints"].values()) == {"up"}

        def webapp_moved() -> bool:
            return cname(dns_address, WEBAPP) == "api.us-west-2.webapp.example.com."

        wait_for(webapp_moved, "the webapp's record edit after control-plane-down off", 60.0)
    finally:
        rc = stop(proc)
    assert rc == 0


def test_the_data_plane_demo_ends_with_its_path() -> None:
    done = subprocess.run(
        [*COMMAND, "--demo", "--control-plane-down", "--port", "0", "--deadline", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_DEADLINE,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert 0 < float(match["failover"]) < 20
    text = "\n".join(lines)
    assert "fault: control-plane-down us-east-1" in text
    assert "routing controls set: us-west-2 On, us-east-1 Off" in text
    assert "traffic moved: DNS www.storefront.example.com -> www.us-west-2" in text
    assert re.search(
        r"demo: numbers detect_s=[\d.]+ flip_s=[\d.]+ dns_s=[\d.]+ flip_step_s=[\d.]+", text
    )
    assert "meanwhile webapp (its flip edits a Route 53 record): active=us-east-1" in text
