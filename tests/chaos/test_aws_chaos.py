"""Chaos row "AWS faults": the daemon (a subprocess) fails the webapp example over while 30%
of every AWS call it makes fails (throttling or a 5xx, seeded) and the failed region's
endpoints are blackholed. The runbook must complete inside the example's RTO, every change
reach the world once, and the retries show in the metrics.

Same daemon, world and probe targets as tests/integration/test_daemon_e2e.py (its fixtures
and helpers are reused), with the sandbox's fault proxy between the daemon and moto.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.sandbox.aws_faults import ErrorRate
from orchestrator.sandbox.fault_proxy import FaultProxy
from tests.e2e.test_daemon_kill_resume import write_config
from tests.fixtures.moto_server import MotoServer
from tests.integration import test_daemon_e2e as _e2e
from tests.integration.runbook.webapp_world import (
    SOURCE,
    Seeded,
    assert_failed_over,
    moto_mutations,
)
from tests.integration.test_daemon_e2e import (
    Target,
    e2e_policy,
    get_json,
    running_daemon,
    stop,
    wait_failed_over,
    wait_ready_to_fail_over,
)

http = _e2e.http
seeded = _e2e.seeded
targets = _e2e.targets

RTO = 15 * 60.0  # the webapp example's
OLD_ASG = f"webapp-{SOURCE}"
ERROR_RATE = 0.3
SEED = 1313


@pytest.fixture
async def proxy(moto: MotoServer) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(moto.endpoint_url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
def mutations(seeded: Seeded) -> Iterator[Counter[str]]:
    with moto_mutations() as counts:
        yield counts


def chaos_policy(zone_id: str, targets: dict[str, Target]) -> str:
    """The e2e webapp policy plus a step on the region being left, as the catalog and ledger
    examples have: scale its group to 0 (fencing old writers), ``on_failure: continue`` —
    with that region's endpoints blackholed it cannot succeed, and must not hold the move."""
    policy = yaml.safe_load(e2e_policy(zone_id, targets))
    policy["runbooks"]["failover"].insert(
        1,
        {
            "name": "fence-old",
            "action": "autoscaling.set_capacity",
            "params": {"region": "{source_region}", "auto_scaling_group": OLD_ASG, "desired": 0},
            "timeout": "20s",
            "on_failure": "continue",
        },
    )
    return yaml.safe_dump(policy, sort_keys=False)


def seed_old_group(moto: MotoServer) -> None:
    ec2 = moto.boto3_client("ec2", SOURCE)
    ec2.create_launch_template(
        LaunchTemplateName="webapp-old-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
    )
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    moto.boto3_client("autoscaling", SOURCE).create_auto_scaling_group(
        AutoScalingGroupName=OLD_ASG,
        LaunchTemplate={"LaunchTemplateName": "webapp-old-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=10,
        DesiredCapacity=2,
        AvailabilityZones=zones[:2],
    )


def config(tmp_path: Path, moto: MotoServer, endpoint: str, policy: str) -> Path:
    """The kill-resume test's settings, the AWS clients pointed at the proxy with short
    reads (a blackholed call costs little; botocore tries each call 3 times)."""
    path = write_config(tmp_path, moto, policy)
    settings = yaml.safe_load(path.read_text())
    settings["aws"] = {"endpoint_url": endpoint, "read_timeout": "2s", "connect_timeout": "1s"}
    path.write_text(yaml.safe_dump(settings))
    return path


def sums(metrics: str, name: str, by: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name:
                out[s.labels.get(by, "")] += s.value
    return out


async def test_failover_completes_within_the_rto_through_errors_and_a_blackholed_region(
    tmp_path: Path,
    proxy: FaultProxy,
    seeded: Seeded,
    targets: dict[str, Target],
    http: aiohttp.ClientSession,
    mutations: Counter[str],
    moto: MotoServer,
) -> None:
    seed_old_group(moto)
    proxy.chaos.set_errors(ErrorRate(ERROR_RATE, seed=SEED))  # from the start: reads too
    path = config(tmp_path, moto, proxy.endpoint_url, chaos_policy(seeded.zone_id, targets))
    async with running_daemon(path) as daemon:
        await wait_ready_to_fail_over(http, daemon)
        outage = time.time()
        proxy.chaos.set_blackhole(SOURCE)  # the region fails: its endpoints go quiet...
        targets[SOURCE].status = 503  # ...and its service with them
        after = await wait_failed_over(http, daemon)
        run_id = after["run"]["run_id"]
        status, run = await get_json(http, f"{daemon.base_url}/v1/runs/{run_id}")
        assert status == 200, run
        async with http.get(f"{daemon.base_url}/metrics") as response:
            metrics = await response.text()
        await stop(daemon)

    assert run["status"] == "succeeded", run
    took = run["finished_at"] - (run["detected_at"] or run["decided_at"])
    assert took < RTO, took
    assert_failed_over(moto, seeded, run_id)
    # Every change reached the world once: the proxy refuses a call instead of passing it.
    assert mutations["PromoteReadReplica"] == 1, mutations
    assert mutations["ChangeResourceRecordSets"] == 1, mutations
    assert mutations["SetDesiredCapacity"] == 1, mutations  # the standby's; the old is cut off
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["fence-old"]["status"] == "failed", steps["fence-old"]
    injected = proxy.chaos.injected
    retries = sums(metrics, "failoverd_aws_api_retries_total", "aws_service")
    attempts = {s["name"]: len(s["attempts"]) for s in run["steps"]}
    print(
        f"\naws chaos: failover in {took:.1f}s (RTO {RTO:.0f}s), outage to end"
        f" {run['finished_at'] - outage:.1f}s; injected {injected};"
        f" botocore retries {dict(retries)}; step attempts {attempts}"
    )
    assert injected["throttle"] > 0 and injected["5xx"] > 0 and injected["blackhole"] > 0
    assert sum(retries.values()) > 0  # the retries are visible where on-call looks
