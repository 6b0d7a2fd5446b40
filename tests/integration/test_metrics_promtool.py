"""`promtool check metrics` finds nothing to say about a live daemon's /metrics, taken after
the daemon has evaluated and finished a failover (so the run counters and histograms have
series), and the issue's new metrics are there with the values the run implies.

The daemon, its loopback probe targets and moto are the end-to-end test's fixtures
(tests/integration/test_daemon_e2e.py), reused as they are.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.fixtures.binaries import require_binary
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as e2e
from tests.integration.runbook.webapp_world import SERVICE, SOURCE, TARGET, Seeded
from tests.integration.test_daemon_e2e import (
    DaemonProcess,
    Target,
    sample,
    stop,
    until,
    wait_failed_over,
    wait_ready_to_fail_over,
)

# The end-to-end test's fixtures, used here by name.
daemon = e2e.daemon
http = e2e.http
seeded = e2e.seeded
targets = e2e.targets

PROMTOOL_DEADLINE = 30.0
EXPORT_DEADLINE = 10.0


async def promtool_check(promtool: str, text: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(PROMTOOL_DEADLINE):
            out, _ = await proc.communicate(text.encode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_promtool_finds_nothing_wrong_with_live_metrics_after_a_failover(
    daemon: DaemonProcess,
    http: aiohttp.ClientSession,
    targets: dict[str, Target],
    moto: MotoServer,
    seeded: Seeded,
) -> None:
    promtool = require_binary("promtool")
    await wait_ready_to_fail_over(http, daemon)
    targets[SOURCE].status = 503
    await wait_failed_over(http, daemon)
    text = ""

    async def exported() -> bool:
        # The exporter follows the engine's passes (at most a tick behind the API).
        nonlocal text
        async with http.get(f"{daemon.base_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        return sample(text, "failoverd_active_region", service=SERVICE, region=TARGET) == 1

    await until(exported, "the failover in /metrics", EXPORT_DEADLINE, daemon)

    rc, out = await promtool_check(promtool, text)
    assert (rc, out) == (0, ""), out

    run = {"service": SERVICE, "kind": "failover"}
    assert sample(text, "failoverd_runs_started_total", **run, initiator="policy") == 1
    done = {**run, "outcome": "succeeded"}
    assert sample(text, "failoverd_run_duration_seconds_count", **done) == 1
    assert sample(text, "failoverd_active_region", service=SERVICE, region=TARGET) == 1
    assert sample(text, "failoverd_active_region", service=SERVICE, region=SOURCE) == 0
    assert sample(text, "failoverd_region_verdict", service=SERVICE, region=TARGET) is not None
    assert sample(text, "failoverd_is_leader") == 1
    assert (sample(text, "failoverd_fencing_token") or 0) >= 1
    assert sample(text, "failoverd_store_up", backend="sqlite") == 1
    assert sample(text, "failoverd_build_info") == 1
    assert sample(text, "failoverd_policy_info") == 1
    up = sample(text, "failoverd_vantage_up", service=SERVICE, region=TARGET, vantage="local")
    assert up == 1
    assert sample(text, "failoverd_policy_last_reload_successful") == 1
    assert (sample(text, "failoverd_engine_tick_duration_seconds_count") or 0) > 0
    assert (sample(text, "failoverd_event_loop_lag_seconds_count") or 0) > 0
    # The run's AWS calls (RDS promotion, Auto Scaling, Route 53) and the lag reader's
    # CloudWatch calls are all counted.
    for aws_service in ("rds", "route53", "cloudwatch"):
        ok = sample(text, "failoverd_aws_api_calls_total", aws_service=aws_service, outcome="ok")
        assert ok is not None and ok > 0, aws_service
    assert sample(text, "failoverd_run_rto_budget_remaining_seconds", service=SERVICE) is None
    await stop(daemon)
